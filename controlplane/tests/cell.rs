//! A cell's broker nodes, on SQLite and PostgreSQL: heartbeats and the node list, the lease,
//! worker links (ONLINE while a live node links a worker), what each caller sees of the
//! nodes, and what the node routes refuse.

mod common;

use common::{assert_error, Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

on_both_backends!(
    heartbeats_list_the_live_nodes,
    a_node_whose_lease_runs_out_leaves_the_list,
    links_make_workers_online_and_count_nodes_reached,
    a_full_report_replaces_only_its_own_nodes_links,
    a_node_that_expires_or_leaves_disconnects_the_workers_only_it_linked,
    members_see_their_teams_workers_and_operators_the_totals,
    bad_node_ids_and_addresses_are_refused,
    node_routes_need_the_broker_token,
);

const A: &str = "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d80";
const B: &str = "1c6a7d3f-9a3b-4d2f-8e4c-3b8f5a2d7e91";
const C: &str = "2d7b8e4a-0b4c-4e3a-9f5d-4c9a6b3e8fa2";

/// A control plane whose node lease is `lease`.
async fn start(backend: Backend, lease: Duration) -> Harness {
    Harness::start_configured(backend, |settings| settings.node_lease = lease).await
}

/// Node `node`'s heartbeat, as a broker sends it; returns the status and the answer.
async fn beat(h: &Harness, node: &str, advertise: &str) -> (StatusCode, Value) {
    let body = json!({"advertise": advertise, "started_unix_ms": 1_700_000_000_000u64,
        "clients": 3, "workers": 2});
    h.call(
        Method::PUT,
        &format!("/api/v1/broker/nodes/{node}"),
        Some(&h.broker_token()),
        Some(body),
    )
    .await
}

/// The addresses of a heartbeat's answer.
fn addresses(list: &Value) -> Vec<String> {
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["advertise"].as_str().unwrap().to_string())
        .collect()
}

/// A report from `node` (`None`: a broker outside a cell) of workers of team `main`
/// (`(identity, online)`).
async fn report(
    h: &Harness,
    node: Option<&str>,
    full: bool,
    workers: &[(&str, bool)],
) -> (StatusCode, Value) {
    let workers: Vec<Value> = workers
        .iter()
        .map(|(identity, online)| {
            json!({"team": "main", "identity": identity,
                "state": if *online { "ONLINE" } else { "DISCONNECTED" },
                "at_unix_ms": 1_700_000_000_000u64, "generation": 1})
        })
        .collect();
    let mut body = json!({"workers": workers, "full": full});
    if let Some(node) = node {
        body["node"] = json!(node);
    }
    h.post("/api/v1/broker/report", &h.broker_token(), body)
        .await
}

async fn create_worker(h: &Harness, identity: &str) {
    let (status, body) = h
        .post(
            "/api/v1/workers",
            &h.admin_token,
            json!({"identity": identity}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Worker `identity`'s state and `reached/live`.
async fn worker(h: &Harness, identity: &str) -> (String, String) {
    let (status, w) = h
        .get(&format!("/api/v1/workers/{identity}"), &h.admin_token)
        .await;
    assert_eq!(status, StatusCode::OK, "{w}");
    (
        w["state"].as_str().unwrap().to_string(),
        format!("{}/{}", w["nodes"]["reached"], w["nodes"]["live"]),
    )
}

/// Polls `probe` until it gives `want`, for at most 10 s.
async fn until<F, Fut, T>(what: &str, want: T, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = probe().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn heartbeats_list_the_live_nodes(backend: Backend) {
    let h = &start(backend, Duration::from_secs(10)).await;
    let (status, list) = beat(h, B, "10.0.0.12:5555").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the first heartbeat registers: {list}"
    );
    assert_eq!(list["lease_ms"], 10_000);
    let (status, list) = beat(h, A, "tls://10.0.0.11:5555").await;
    assert_eq!(status, StatusCode::CREATED, "{list}");
    let (status, list) = beat(h, B, "10.0.0.12:5555").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a heartbeat of a known node: {list}"
    );
    assert_eq!(
        addresses(&list),
        ["10.0.0.12:5555", "tls://10.0.0.11:5555"],
        "ordered by address"
    );
    assert_eq!(list["nodes"][0]["node"], B);

    // A broker that restarts (a new id, the same address) replaces its earlier run in the
    // list at once; the earlier one stays in the table until its lease runs out.
    let (status, list) = beat(h, C, "10.0.0.12:5555").await;
    assert_eq!(status, StatusCode::CREATED, "{list}");
    assert_eq!(addresses(&list), ["10.0.0.12:5555", "tls://10.0.0.11:5555"]);

    let (status, brokers) = h.get("/api/v1/brokers", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{brokers}");
    let brokers = brokers.as_array().unwrap();
    assert_eq!(brokers.len(), 3, "{brokers:?}");
    assert_eq!(brokers[2]["node"], A);
    assert_eq!(brokers[2]["advertise"], "tls://10.0.0.11:5555");
    assert_eq!(brokers[2]["started_unix_ms"], 1_700_000_000_000u64);
    assert!(brokers[2]["last_seen_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(
        (&brokers[2]["clients"], &brokers[2]["workers"]),
        (&json!(3), &json!(2))
    );

    // A node that stops leaves; leaving again is no error.
    for _ in 0..2 {
        let answer = h
            .call(
                Method::DELETE,
                &format!("/api/v1/broker/nodes/{A}"),
                Some(&h.broker_token()),
                None,
            )
            .await;
        assert_eq!(answer.0, StatusCode::NO_CONTENT, "{}", answer.1);
    }
    let (_, list) = beat(h, B, "10.0.0.12:5555").await;
    assert_eq!(addresses(&list), ["10.0.0.12:5555"]);
}

async fn a_node_whose_lease_runs_out_leaves_the_list(backend: Backend) {
    let h = &start(backend, Duration::from_millis(1500)).await;
    assert_eq!(beat(h, A, "a.cell:5555").await.0, StatusCode::CREATED);
    let (_, list) = beat(h, B, "b.cell:5555").await;
    assert_eq!(addresses(&list), ["a.cell:5555", "b.cell:5555"]);
    assert_eq!(list["lease_ms"], 1500);
    // B heartbeats, A does not: A leaves the list, then the table (swept), and its next
    // heartbeat registers it anew.
    until(
        "A leaves the list",
        vec!["b.cell:5555".to_string()],
        || async move { addresses(&beat(h, B, "b.cell:5555").await.1) },
    )
    .await;
    let (_, brokers) = h.get("/api/v1/brokers", &h.admin_token).await;
    assert_eq!(brokers.as_array().unwrap().len(), 1, "{brokers}");
    assert_eq!(brokers[0]["node"], B);
    until("the gauge of live nodes", true, || async move {
        beat(h, B, "b.cell:5555").await;
        let metrics = h.http.get(h.url("/metrics")).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        text.contains("triggerfs_control_broker_nodes_live 1")
    })
    .await;
    // Swept: a report of A's is refused (until its next heartbeat).
    create_worker(h, "w1").await;
    until("A is swept", StatusCode::CONFLICT, || async move {
        beat(h, B, "b.cell:5555").await;
        report(h, Some(A), false, &[("w1", true)]).await.0
    })
    .await;
    let (status, list) = beat(h, A, "a.cell:5555").await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "swept, then registered anew: {list}"
    );
    assert_eq!(addresses(&list), ["a.cell:5555", "b.cell:5555"]);
}

async fn links_make_workers_online_and_count_nodes_reached(backend: Backend) {
    let h = &start(backend, Duration::from_secs(10)).await;
    create_worker(h, "w1").await;
    assert_eq!(
        worker(h, "w1").await,
        ("DISCONNECTED".into(), "0/0".into()),
        "no cell"
    );
    beat(h, A, "a.cell:5555").await;
    beat(h, B, "b.cell:5555").await;
    let (status, answer) = report(h, Some(A), false, &[("w1", true), ("ghost", true)]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["updated"], 1, "ghost is no worker");
    assert_eq!(worker(h, "w1").await, ("ONLINE".into(), "1/2".into()));
    report(h, Some(B), false, &[("w1", true)]).await;
    assert_eq!(worker(h, "w1").await, ("ONLINE".into(), "2/2".into()));
    let (status, list) = h.get("/api/v1/workers", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["nodes"], json!({"reached": 2, "live": 2}));

    // One node loses it: still ONLINE through the other; the other loses it too: gone.
    report(h, Some(A), false, &[("w1", false)]).await;
    assert_eq!(worker(h, "w1").await, ("ONLINE".into(), "1/2".into()));
    report(h, Some(B), false, &[("w1", false)]).await;
    assert_eq!(worker(h, "w1").await, ("DISCONNECTED".into(), "0/2".into()));

    // The metrics count the workers by nodes reached.
    report(h, Some(A), false, &[("w1", true)]).await;
    until("the gauge", true, || async move {
        let metrics = h.http.get(h.url("/metrics")).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        text.contains("triggerfs_control_workers_by_nodes_reached{reached=\"1\"} 1")
            && text.contains("triggerfs_control_broker_nodes_live 2")
    })
    .await;
}

async fn a_full_report_replaces_only_its_own_nodes_links(backend: Backend) {
    let h = &start(backend, Duration::from_secs(10)).await;
    for w in ["w1", "w2", "w3"] {
        create_worker(h, w).await;
    }
    beat(h, A, "a.cell:5555").await;
    beat(h, B, "b.cell:5555").await;
    report(h, Some(A), false, &[("w1", true), ("w2", true)]).await;
    report(h, Some(B), false, &[("w1", true), ("w3", true)]).await;
    // A restarts its view: it has w2 only. w1 stays through B; w3 was never A's.
    let (status, answer) = report(h, Some(A), true, &[("w2", true)]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(worker(h, "w1").await, ("ONLINE".into(), "1/2".into()));
    assert_eq!(worker(h, "w2").await, ("ONLINE".into(), "1/2".into()));
    assert_eq!(worker(h, "w3").await, ("ONLINE".into(), "1/2".into()));
    // An empty full report from B: w1 and w3 had no other link.
    report(h, Some(B), true, &[]).await;
    assert_eq!(worker(h, "w1").await, ("DISCONNECTED".into(), "0/2".into()));
    assert_eq!(worker(h, "w3").await, ("DISCONNECTED".into(), "0/2".into()));
    assert_eq!(worker(h, "w2").await, ("ONLINE".into(), "1/2".into()));

    // A broker outside a cell keeps today's rule: its full report speaks for every worker.
    let (status, answer) = report(h, None, true, &[("w1", true)]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(worker(h, "w1").await.0, "ONLINE");
    assert_eq!(worker(h, "w2").await.0, "DISCONNECTED");
}

async fn a_node_that_expires_or_leaves_disconnects_the_workers_only_it_linked(backend: Backend) {
    let h = &start(backend, Duration::from_millis(1500)).await;
    for w in ["w1", "w2", "w3"] {
        create_worker(h, w).await;
    }
    beat(h, A, "a.cell:5555").await;
    beat(h, B, "b.cell:5555").await;
    beat(h, C, "c.cell:5555").await;
    report(h, Some(A), false, &[("w1", true), ("w2", true)]).await;
    report(h, Some(B), false, &[("w2", true)]).await;
    report(h, Some(C), false, &[("w3", true)]).await;
    // C stops and says so: w3 goes at once.
    let answer = h
        .call(
            Method::DELETE,
            &format!("/api/v1/broker/nodes/{C}"),
            Some(&h.broker_token()),
            None,
        )
        .await;
    assert_eq!(answer.0, StatusCode::NO_CONTENT);
    assert_eq!(worker(h, "w3").await.0, "DISCONNECTED");
    // A goes silent, B heartbeats: w1 (only A's) goes, w2 stays through B.
    until(
        "w1 goes with A's lease",
        "DISCONNECTED".to_string(),
        || async move {
            beat(h, B, "b.cell:5555").await;
            worker(h, "w1").await.0
        },
    )
    .await;
    beat(h, B, "b.cell:5555").await;
    assert_eq!(worker(h, "w2").await, ("ONLINE".into(), "1/1".into()));
    // A report of the swept node is refused until it heartbeats again.
    until("A is swept", StatusCode::CONFLICT, || async move {
        beat(h, B, "b.cell:5555").await;
        report(h, Some(A), false, &[("w1", true)]).await.0
    })
    .await;
    assert_eq!(beat(h, A, "a.cell:5555").await.0, StatusCode::CREATED);
    let (status, answer) = report(h, Some(A), true, &[("w1", true)]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(worker(h, "w1").await, ("ONLINE".into(), "1/2".into()));
}

async fn members_see_their_teams_workers_and_operators_the_totals(backend: Backend) {
    let h = &start(backend, Duration::from_secs(10)).await;
    create_worker(h, "w1").await;
    create_worker(h, "w2").await;
    beat(h, A, "a.cell:5555").await;
    report(h, Some(A), false, &[("w1", true), ("w2", true)]).await;

    let (status, view) = h.get("/api/v1/brokers", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view[0]["clients"], 3, "the operator sees the totals");
    assert_eq!(view[0]["team_workers"], 2);

    let member = h.member("alice").await;
    let (status, view) = h.get("/api/v1/brokers", &member).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view[0]["advertise"], "a.cell:5555");
    assert_eq!(view[0]["clients"], Value::Null, "{view}");
    assert_eq!(view[0]["workers"], Value::Null, "{view}");
    assert_eq!(view[0]["team_workers"], 2);

    // A user of another team learns nothing of team main's workers.
    let (status, _) = h
        .post("/api/v1/teams", &h.admin_token, json!({"name": "other"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let other_admin = h.login("other", "admin", &h.admin.secret).await;
    let (status, body) = h
        .post(
            "/api/v1/teams/other/members",
            &other_admin,
            json!({"identity": "bob", "secret": "bob-secret"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bob = h.login("other", "bob", "bob-secret").await;
    let (status, view) = h.get("/api/v1/brokers", &bob).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view[0]["team_workers"], 0, "{view}");
    assert_eq!(view[0]["workers"], Value::Null, "{view}");
    // Without a login, nothing.
    let answer = h.call(Method::GET, "/api/v1/brokers", None, None).await;
    assert_error(&answer, 401, "Unauthorized");
}

async fn bad_node_ids_and_addresses_are_refused(backend: Backend) {
    let h = &start(backend, Duration::from_secs(10)).await;
    for node in [
        "node-1",
        "0B5F6C2E-8F2A-4C1E-9D3B-2A7E4F1C6D80",
        "0b5f6c2e8f2a4c1e9d3b2a7e4f1c6d80",
        "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d8",
    ] {
        let answer = beat(h, node, "a.cell:5555").await;
        assert_error(&answer, 422, "Unprocessable");
        let answer = h
            .call(
                Method::DELETE,
                &format!("/api/v1/broker/nodes/{node}"),
                Some(&h.broker_token()),
                None,
            )
            .await;
        assert_error(&answer, 422, "Unprocessable");
        assert_error(
            &report(h, Some(node), false, &[]).await,
            422,
            "Unprocessable",
        );
    }
    let long = format!("tls://{}:5555", vec!["a".repeat(63); 5].join("."));
    for advertise in [
        "",
        "a.cell",
        "a.cell:0",
        "a.cell:65536",
        "a cell:5555",
        "-a.cell:5555",
        "udp://a.cell:5555",
        "http://a.cell:5555",
        "a.cell:5555/x",
        long.as_str(),
    ] {
        let answer = beat(h, A, advertise).await;
        assert_error(&answer, 422, "Unprocessable");
    }
    for advertise in ["[::1]:5555", "tls://a-b.cell:65535", "127.0.0.1:1"] {
        assert_eq!(
            beat(h, A, advertise).await.0.as_u16() / 100,
            2,
            "{advertise}"
        );
    }
    // A report of a node that never heartbeated (an empty one asks only whether the control
    // plane is there).
    let answer = report(h, Some(B), false, &[("w1", true)]).await;
    assert_error(&answer, 409, "Conflict");
    assert_eq!(report(h, Some(B), false, &[]).await.0, StatusCode::OK);
    let (_, brokers) = h.get("/api/v1/brokers", &h.admin_token).await;
    assert_eq!(brokers.as_array().unwrap().len(), 1, "{brokers}");
}

async fn node_routes_need_the_broker_token(backend: Backend) {
    let h = &start(backend, Duration::from_secs(10)).await;
    let body =
        json!({"advertise": "a.cell:5555", "started_unix_ms": 1, "clients": 0, "workers": 0});
    let path = format!("/api/v1/broker/nodes/{A}");
    for token in [None, Some(h.admin_token.as_str()), Some("not-the-token")] {
        let answer = h.call(Method::PUT, &path, token, Some(body.clone())).await;
        assert_error(&answer, 401, "Unauthorized");
        let answer = h.call(Method::DELETE, &path, token, None).await;
        assert_error(&answer, 401, "Unauthorized");
    }
    let (_, brokers) = h.get("/api/v1/brokers", &h.admin_token).await;
    assert_eq!(brokers, json!([]), "no node was added");
}

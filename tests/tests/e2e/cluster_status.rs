//! A cell as its users see it (issue 27): two control-plane replicas on PostgreSQL, broker
//! nodes heartbeating and reporting their workers over HTTP with the broker token (as a
//! broker's feed does), and `triggerfs cluster status`, the console's `show brokers` and
//! `show workers` reading them through either replica: the nodes, their connections for the
//! operator only, each team's own workers, and a node whose lease runs out leaving with the
//! workers only it connected.

use anyhow::{ensure, Context, Result};
use api::brokers::BrokerNodeView;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::*;

const A: &str = "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d80";
const B: &str = "1c6a7d3f-9a3b-4d2f-8e4c-3b8f5a2d7e91";

/// A broker node as the control plane sees it: its heartbeats and reports, over HTTP with
/// the broker token.
struct Node {
    http: reqwest::Client,
    url: String,
    token: String,
    id: &'static str,
    advertise: &'static str,
}

impl Node {
    async fn beat(&self, clients: u32, workers: u32) -> Result<(StatusCode, Value)> {
        let body = json!({"advertise": self.advertise, "started_unix_ms": 1_700_000_000_000u64,
            "clients": clients, "workers": workers});
        let response = self
            .http
            .put(format!("{}/api/v1/broker/nodes/{}", self.url, self.id))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Reports workers of team `main` online at this node (a full report: every one).
    async fn report_online(&self, workers: &[&str]) -> Result<()> {
        let workers: Vec<Value> = workers
            .iter()
            .map(|w| {
                json!({"team": "main", "identity": w, "state": "ONLINE",
                    "at_unix_ms": 1_700_000_000_000u64, "generation": 1})
            })
            .collect();
        let body = json!({"workers": workers, "full": true, "node": self.id});
        let response = self
            .http
            .post(format!("{}/api/v1/broker/report", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::OK,
            "report: {}",
            response.text().await?
        );
        Ok(())
    }
}

/// `triggerfs <args>` logged in as `(team, identity, secret)` at `url`; its stdout, after
/// checking it exited 0.
async fn as_user(url: &str, who: (&str, &str, &str), args: &[&str]) -> Result<String> {
    let env: Vec<(String, String)> = vec![
        ("TRIGGERFS_URL".into(), url.into()),
        ("TRIGGERFS_TEAM".into(), who.0.into()),
        ("TRIGGERFS_IDENTITY".into(), who.1.into()),
        ("TRIGGERFS_SECRET".into(), who.2.into()),
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli_env(&args, &env, Duration::from_secs(30))
    })
    .await??;
    ensure!(code == 0, "exit {code}: {out}{err}");
    Ok(out)
}

/// The row of `table` (console lines) that names `needle`.
fn row<'t>(table: &'t str, needle: &str) -> Result<&'t str> {
    table
        .lines()
        .find(|l| l.contains(needle))
        .with_context(|| format!("no row of {needle} in\n{table}"))
}

/// The cells of a table row.
fn cells(row: &str) -> Vec<&str> {
    row.split('|').map(str::trim).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_and_the_console_show_the_cell() -> Result<()> {
    let lease = ["--node-lease", "2s"];
    let control = Control::start_with("127.0.0.1:1", Db::Postgres, &lease)?;
    let replica = control.replica("127.0.0.1:1", &lease)?;
    let (team, admin, secret) = control.admin.clone();
    let operator = Api::login(&control.url, &team, &admin, &secret).await?;
    operator.new_worker("w1").await?;
    operator.new_worker("w2").await?;
    operator
        .new_member(&team, "alice", "alice-secret-27")
        .await?;
    operator
        .ok("POST", "/api/v1/teams", json!({"name": "other"}))
        .await?;
    let in_other = Api::login(&control.url, "other", &admin, &secret).await?;
    in_other.new_member("other", "bob", "bob-secret-27").await?;

    // Outside a cell: no node, and `-` for every worker.
    let admin_login = (team.as_str(), admin.as_str(), secret.as_str());
    let out = as_user(&control.url, admin_login, &["cluster", "status"]).await?;
    ensure!(out.contains("no broker node"), "{out}");
    let workers = as_user(&control.url, admin_login, &["cli", "-c", "show workers"]).await?;
    ensure!(cells(row(&workers, " w1 ")?)[4] == "-", "{workers}");

    // Two nodes heartbeat to the first replica and report; w1 is on both, w2 on A only.
    let token = std::fs::read_to_string(control.broker_token_file())?
        .trim()
        .to_string();
    let node = |id, advertise| Node {
        http: reqwest::Client::new(),
        url: control.url.clone(),
        token: token.clone(),
        id,
        advertise,
    };
    let (a, b) = (node(A, "10.0.0.11:5555"), node(B, "tls://10.0.0.12:5555"));
    let (status, list) = a.beat(5, 2).await?;
    ensure!(status == StatusCode::CREATED, "{status} {list}");
    let (status, list) = b.beat(1, 1).await?;
    ensure!(status == StatusCode::CREATED, "{status} {list}");
    ensure!(list["lease_ms"] == 2000, "{list}");
    ensure!(list["nodes"].as_array().map(Vec::len) == Some(2), "{list}");
    a.report_online(&["w1", "w2"]).await?;
    b.report_online(&["w1"]).await?;
    // Both keep heartbeating (every 300 ms, the lease is 2 s) until A is told to stop.
    let (a, b) = (Arc::new(a), Arc::new(b));
    let a_silent = Arc::new(AtomicBool::new(false));
    let beating = {
        let (a, b, a_silent) = (a.clone(), b.clone(), a_silent.clone());
        tokio::spawn(async move {
            loop {
                if !a_silent.load(Ordering::Relaxed) {
                    let _ = a.beat(5, 2).await;
                }
                let _ = b.beat(1, 1).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // `cluster status --json` through the other replica: the operator sees the totals.
    let out = as_user(&replica.url, admin_login, &["cluster", "status", "--json"]).await?;
    let nodes: Vec<BrokerNodeView> = serde_json::from_str(&out).context(out.clone())?;
    ensure!(nodes.len() == 2, "{out}");
    ensure!(
        (nodes[0].node.as_str(), nodes[0].advertise.as_str()) == (A, "10.0.0.11:5555"),
        "{out}"
    );
    ensure!(
        (nodes[0].clients, nodes[0].workers, nodes[0].team_workers) == (Some(5), Some(2), 2),
        "{out}"
    );
    ensure!(
        (nodes[1].clients, nodes[1].team_workers) == (Some(1), 1),
        "{out}"
    );

    // A member sees the team's workers on each node, not the cell's connections.
    let alice = (team.as_str(), "alice", "alice-secret-27");
    let table = as_user(&replica.url, alice, &["cluster", "status"]).await?;
    let header = cells(table.lines().next().context("a header")?);
    ensure!(
        header
            == [
                "node",
                "advertise",
                "last seen",
                "clients",
                "workers",
                "team workers",
                "up since",
            ],
        "{table}"
    );
    let a_row = cells(row(&table, "10.0.0.11:5555")?);
    ensure!(a_row[0] == A && a_row[2].ends_with("s ago"), "{table}");
    ensure!(a_row[3..6] == ["-", "-", "2"], "{table}");
    ensure!(a_row[6] == "Tue, 14 Nov 2023 22:13:20 UTC", "{table}");
    // Another team's user learns nothing of team main's workers.
    let bob = ("other", "bob", "bob-secret-27");
    let out = as_user(&control.url, bob, &["cluster", "status", "--json"]).await?;
    let nodes: Vec<BrokerNodeView> = serde_json::from_str(&out).context(out.clone())?;
    ensure!(
        nodes
            .iter()
            .all(|n| n.team_workers == 0 && n.clients.is_none() && n.workers.is_none()),
        "{out}"
    );

    // The console: `show brokers`, and `show workers` with the nodes each reaches.
    let brokers = as_user(&control.url, admin_login, &["cli", "-c", "show brokers"]).await?;
    ensure!(
        cells(row(&brokers, "tls://10.0.0.12:5555")?)[3..6] == ["1", "1", "1"],
        "{brokers}"
    );
    let workers = as_user(&replica.url, admin_login, &["cli", "-c", "show workers"]).await?;
    let w1 = cells(row(&workers, " w1 ")?);
    ensure!((w1[2], w1[4]) == ("ONLINE", "2/2"), "{workers}");
    ensure!(cells(row(&workers, " w2 ")?)[4] == "1/2", "{workers}");

    // A goes silent while B heartbeats: A leaves the cell, and w2 (only A's) with it.
    a_silent.store(true, Ordering::Relaxed);
    operator
        .wait_worker_state("w2", "DISCONNECTED", Duration::from_secs(15))
        .await?;
    let workers = as_user(&control.url, admin_login, &["cli", "-c", "show workers"]).await?;
    ensure!(cells(row(&workers, " w1 ")?)[2] == "ONLINE", "{workers}");
    ensure!(cells(row(&workers, " w1 ")?)[4] == "1/1", "{workers}");
    ensure!(cells(row(&workers, " w2 ")?)[4] == "0/1", "{workers}");
    let out = as_user(&replica.url, admin_login, &["cluster", "status", "--json"]).await?;
    let nodes: Vec<BrokerNodeView> = serde_json::from_str(&out).context(out.clone())?;
    ensure!(nodes.len() == 1 && nodes[0].node == B, "{out}");
    beating.abort();
    Ok(())
}

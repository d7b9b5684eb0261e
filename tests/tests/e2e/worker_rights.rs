//! Who may use a worker (issue 25, findings 2 to 4): binding a worker to a service needs the
//! right to use it, and the broker never routes a configured service to another user's
//! `local` worker; an ad-hoc service belongs to the owner of the workers that announce it;
//! a removed member's workers stop serving until an admin gives them a new owner; a worker
//! started the moment it was created comes online. Control plane and broker are separate
//! processes, each test on SQLite and on PostgreSQL.

use super::trust::run;
use anyhow::{Context, Result};
use proto::ErrorKind;
use serde_json::{json, Value};
use std::time::Duration;
use tests::*;

/// Creates worker `identity` with `visibility` as `api`'s user; its token.
async fn new_worker(api: &Api, identity: &str, visibility: &str) -> Result<String> {
    let w = api
        .ok(
            "POST",
            "/api/v1/workers",
            json!({"identity": identity, "visibility": visibility}),
        )
        .await?;
    let token = w["token"].as_str().context("token")?.to_string();
    remember_secret(&token);
    Ok(token)
}

/// A control plane on `db` (admin logged in as `api`), with member `carol` logged in, and
/// the broker's port (no broker yet).
struct Team {
    control: Control,
    port: u16,
    broker_addr: String,
    team: String,
    api: Api,
    carol: Api,
    plugins: Plugins,
}

async fn team(db: Db) -> Result<Team> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_on(&broker_addr, db)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let carol = api.new_member(&team, "carol", "carol-secret-1").await?;
    Ok(Team {
        control,
        port,
        broker_addr,
        team,
        api,
        carol,
        plugins: Plugins::core()?,
    })
}

impl Team {
    fn broker(&self) -> Result<Proc> {
        Ok(start_controlled_broker(&self.control, self.port, &[])?.0)
    }

    /// Starts worker `identity` with `token`, announcing `services`.
    fn worker(&self, identity: &str, token: &str, services: &[&str]) -> Result<Proc> {
        let mut args = vec!["--team", self.team.as_str(), "--token", token];
        for s in services {
            args.extend(["--service", s]);
        }
        start_worker(self.broker_addr.parse()?, identity, &self.plugins, &args)
    }

    async fn client(&self, api: &Api) -> Result<client::Client> {
        Ok(connect_jwt(&self.broker_addr, api.token().as_deref().context("jwt")?).await?)
    }
}

/// Asserts a 403 `Forbidden` that names `worker`.
fn refused(status: reqwest::StatusCode, body: &Value, worker: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "Forbidden", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("worker {worker}")), "{body}");
}

/// Finding 2: a plain member binds only workers they may use: their own (into any service of
/// theirs), another's `team` worker into a service no wider than `team`, never another's
/// `local` worker; checked on create, on `PATCH` (workers or visibility) and on
/// `POST .../workers`. An admin may bind a `team` worker anywhere, never another's `local` one.
async fn binding_needs_the_right_to_use_the_worker(db: Db) -> Result<()> {
    let t = team(db).await?;
    let (api, carol) = (&t.api, &t.carol);
    new_worker(api, "aw", "local").await?;
    new_worker(api, "tw", "team").await?;
    new_worker(carol, "cw", "team").await?;
    new_worker(carol, "cl", "local").await?;

    for (visibility, worker) in [
        ("public", "aw"),
        ("team", "aw"),
        ("local", "aw"),
        ("public", "tw"),
    ] {
        let (status, body) = carol
            .call(
                "POST",
                "/api/v1/services",
                json!({"name": "carolpub", "visibility": visibility, "workers": ["cw", worker]}),
            )
            .await?;
        refused(status, &body, worker);
    }
    // The admin may not bind carol's `local` worker either.
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/services",
            json!({"name": "adm", "visibility": "team", "workers": ["cl"]}),
        )
        .await?;
    refused(status, &body, "cl");

    // What is allowed: her own workers anywhere, the admin's `team` worker in a team service;
    // the admin binds a `team` worker of anyone anywhere.
    carol
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "carolpub", "visibility": "public", "workers": ["cw", "cl"]}),
        )
        .await?;
    carol
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "carolteam", "visibility": "team", "workers": ["tw", "cw"]}),
        )
        .await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "adm", "visibility": "public", "workers": ["tw", "cw", "aw"]}),
    )
    .await?;

    widening_and_new_bindings_are_checked(api, carol).await?;
    // Allowed changes: unbinding, a narrower visibility, the admin widening carol's service.
    carol
        .ok(
            "PATCH",
            "/api/v1/services/carolteam",
            json!({"visibility": "local", "workers": ["tw"]}),
        )
        .await?;
    api.ok(
        "PATCH",
        "/api/v1/services/carolteam",
        json!({"visibility": "public"}),
    )
    .await?;
    Ok(())
}

/// Widening a service re-checks every bound worker; new bindings are checked; nothing refused
/// is stored.
async fn widening_and_new_bindings_are_checked(api: &Api, carol: &Api) -> Result<()> {
    // Widening a service re-checks every bound worker; new bindings are checked.
    let (status, body) = carol
        .call(
            "PATCH",
            "/api/v1/services/carolteam",
            json!({"visibility": "public"}),
        )
        .await?;
    refused(status, &body, "tw");
    let (status, body) = carol
        .call(
            "PATCH",
            "/api/v1/services/carolpub",
            json!({"workers": ["cw", "tw"]}),
        )
        .await?;
    refused(status, &body, "tw");
    let (status, body) = carol
        .call(
            "POST",
            "/api/v1/services/carolpub/workers",
            json!({"identity": "aw"}),
        )
        .await?;
    refused(status, &body, "aw");
    let (status, body) = carol
        .call(
            "POST",
            "/api/v1/services/carolteam/workers",
            json!({"identity": "aw"}),
        )
        .await?;
    refused(status, &body, "aw");
    // The admin, changing carol's service, still may not bind their own `local` worker to it.
    let (status, body) = api
        .call(
            "PATCH",
            "/api/v1/services/carolteam",
            json!({"workers": ["tw", "aw"]}),
        )
        .await?;
    refused(status, &body, "aw");
    // Nothing refused was stored.
    for (service, workers) in [
        ("carolpub", json!(["cw", "cl"])),
        ("carolteam", json!(["tw", "cw"])),
    ] {
        let view = carol
            .ok("GET", &format!("/api/v1/services/{service}"), Value::Null)
            .await?;
        assert_eq!(view["workers"], workers, "{view}");
        let expected = if service == "carolpub" {
            "public"
        } else {
            "team"
        };
        assert_eq!(view["visibility"], expected, "{view}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_needs_the_right_to_use_the_worker_sqlite() -> Result<()> {
    binding_needs_the_right_to_use_the_worker(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_needs_the_right_to_use_the_worker_postgres() -> Result<()> {
    binding_needs_the_right_to_use_the_worker(Db::Postgres).await
}

/// Finding 2, at the broker: a configured service reaches a `local` worker only when the
/// service's owner owns the worker, whatever the database binds (a worker made `local` after
/// it was bound to another user's service).
async fn a_service_reaches_a_local_worker_only_of_its_owner(db: Db) -> Result<()> {
    let t = team(db).await?;
    let (api, carol) = (&t.api, &t.carol);
    let cw = new_worker(carol, "cw", "team").await?;
    // The admin may bind carol's `team` worker to a service of theirs.
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "adm", "visibility": "team", "workers": ["cw"]}),
    )
    .await?;
    carol
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "carols", "visibility": "team", "workers": ["cw"]}),
        )
        .await?;
    let _broker = t.broker()?;
    let _cw = t.worker("cw", &cw, &[])?;
    api.wait_worker_state("cw", "ONLINE", Duration::from_secs(20))
        .await?;
    let admin = t.client(api).await?;
    let (workers, error) = run(&admin, "adm", "echo hi").await?;
    assert_eq!((workers, error), (vec!["cw".to_string()], None));

    // Carol makes her worker `local`: the admin's service no longer reaches it.
    carol
        .ok(
            "PATCH",
            "/api/v1/workers/cw",
            json!({"visibility": "local"}),
        )
        .await?;
    wait_until(
        Duration::from_secs(10),
        "adm refused to reach carol's local worker",
        || async {
            matches!(
                run(&admin, "adm", "echo hi").await,
                Ok((w, Some(ErrorKind::Forbidden))) if w.is_empty()
            )
        },
    )
    .await?;
    // Carol's own service still reaches it, for her.
    let carol_client = t.client(carol).await?;
    let (workers, error) = run(&carol_client, "carols", "echo hi").await?;
    assert_eq!((workers, error), (vec!["cw".to_string()], None));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reaches_a_local_worker_only_of_its_owner_sqlite() -> Result<()> {
    a_service_reaches_a_local_worker_only_of_its_owner(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reaches_a_local_worker_only_of_its_owner_postgres() -> Result<()> {
    a_service_reaches_a_local_worker_only_of_its_owner(Db::Postgres).await
}

/// Runs `command` on `service` `n` times; the workers that answered, and any error.
async fn spread(
    c: &client::Client,
    service: &str,
    n: usize,
) -> Result<(Vec<String>, Option<ErrorKind>)> {
    let mut served = Vec::new();
    for _ in 0..n {
        let (workers, error) = run(c, service, "echo hi").await?;
        if error.is_some() {
            return Ok((served, error));
        }
        served.extend(workers);
    }
    Ok((served, None))
}

/// Finding 3: an ad-hoc service belongs to the owner of the workers that announce it. A
/// caller's request reaches their own announcers; one who announces nothing of that name
/// reaches the `team` announcers of one other owner, and is refused when several owners
/// announce it.
async fn adhoc_names_belong_to_their_announcer(db: Db) -> Result<()> {
    let t = team(db).await?;
    let (api, carol) = (&t.api, &t.carol);
    let ivan = api.new_member(&t.team, "ivan", "ivan-secret-1").await?;
    let aw = new_worker(api, "aw", "local").await?;
    let cw = new_worker(carol, "cw", "team").await?;
    let iw = new_worker(&ivan, "iw", "team").await?;
    let _broker = t.broker()?;
    let _aw = t.worker("aw", &aw, &["adhoc1"])?;
    let _cw = t.worker("cw", &cw, &["adhoc1", "adhoc2"])?;
    let _iw = t.worker("iw", &iw, &["adhoc2"])?;
    for w in ["aw", "cw", "iw"] {
        api.wait_worker_state(w, "ONLINE", Duration::from_secs(20))
            .await?;
    }
    let admin = t.client(api).await?;
    let (served, error) = spread(&admin, "adhoc1", 10).await?;
    assert_eq!(error, None);
    assert_eq!(
        served,
        vec!["aw"; 10],
        "the admin's adhoc1 reached another owner's worker"
    );
    let carol_client = t.client(carol).await?;
    let (served, error) = spread(&carol_client, "adhoc1", 4).await?;
    assert_eq!((served, error), (vec!["cw".to_string(); 4], None));
    // Ivan announces no adhoc1: carol's is the one he may use.
    let ivan_client = t.client(&ivan).await?;
    let (served, error) = spread(&ivan_client, "adhoc1", 4).await?;
    assert_eq!((served, error), (vec!["cw".to_string(); 4], None));
    // adhoc2: carol and ivan each reach their own; the admin, announcing none, is refused:
    // two owners announce it.
    let (served, error) = spread(&carol_client, "adhoc2", 4).await?;
    assert_eq!((served, error), (vec!["cw".to_string(); 4], None));
    let (served, error) = spread(&ivan_client, "adhoc2", 4).await?;
    assert_eq!((served, error), (vec!["iw".to_string(); 4], None));
    let (served, error) = spread(&admin, "adhoc2", 1).await?;
    assert_eq!((served, error), (vec![], Some(ErrorKind::NoSuchService)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_names_belong_to_their_announcer_sqlite() -> Result<()> {
    adhoc_names_belong_to_their_announcer(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_names_belong_to_their_announcer_postgres() -> Result<()> {
    adhoc_names_belong_to_their_announcer(Db::Postgres).await
}

/// Finding 4: removing a member stops their workers at once (the broker cuts them, refuses
/// their token, and the worker stops); the API says why (`owner_is_member`), and an admin
/// who gives the worker a new owner brings it back.
async fn a_removed_members_workers_stop(db: Db) -> Result<()> {
    let t = team(db).await?;
    let api = &t.api;
    let ivan = api.new_member(&t.team, "ivan", "ivan-secret-1").await?;
    let iw = new_worker(&ivan, "iw", "team").await?;
    let _broker = t.broker()?;
    let mut iw_proc = t.worker("iw", &iw, &["ivanjob"])?;
    api.wait_worker_state("iw", "ONLINE", Duration::from_secs(20))
        .await?;
    let admin = t.client(api).await?;
    for service in ["iw", "ivanjob"] {
        let (workers, error) = run(&admin, service, "echo hi").await?;
        assert_eq!((workers, error), (vec!["iw".to_string()], None));
    }

    api.ok(
        "DELETE",
        &format!("/api/v1/teams/{}/members/ivan", t.team),
        Value::Null,
    )
    .await?;
    wait_until(
        Duration::from_secs(10),
        "the removed member's worker to stop serving",
        || async {
            matches!(
                run(&admin, "iw", "echo hi").await,
                Ok((w, Some(ErrorKind::NoSuchService))) if w.is_empty()
            )
        },
    )
    .await?;
    let (workers, error) = run(&admin, "ivanjob", "echo hi").await?;
    assert_eq!((workers, error), (vec![], Some(ErrorKind::NoSuchService)));
    api.wait_worker_state("iw", "DISCONNECTED", Duration::from_secs(10))
        .await?;
    let view = api.ok("GET", "/api/v1/workers/iw", Value::Null).await?;
    assert_eq!(view["owner_is_member"], false, "{view}");
    // The worker is refused from now on, and stops (after its few seconds of retries).
    let status = iw_proc.wait_exit(Duration::from_secs(20))?;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = iw_proc.stderr();
    assert!(log.contains("no longer a member"), "{log}");

    // Only an admin gives it a new owner, who must be a member.
    let (status, body) = api
        .call("PATCH", "/api/v1/workers/iw", json!({"owner": "ivan"}))
        .await?;
    assert_eq!(
        (status.as_u16(), &body["code"]),
        (422, &json!("Unprocessable")),
        "{body}"
    );
    let (status, body) = t
        .carol
        .call("PATCH", "/api/v1/workers/iw", json!({"owner": "carol"}))
        .await?;
    assert_eq!(status, 403, "{body}");
    let admin_identity = t.control.admin.1.clone();
    let view = api
        .ok(
            "PATCH",
            "/api/v1/workers/iw",
            json!({"owner": admin_identity}),
        )
        .await?;
    assert_eq!(
        (&view["owner"], &view["owner_is_member"]),
        (&json!(admin_identity), &json!(true)),
        "{view}"
    );
    let _iw_again = t.worker("iw", &iw, &["ivanjob"])?;
    api.wait_worker_state("iw", "ONLINE", Duration::from_secs(20))
        .await?;
    let (workers, error) = run(&admin, "ivanjob", "echo hi").await?;
    assert_eq!((workers, error), (vec!["iw".to_string()], None));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_workers_stop_sqlite() -> Result<()> {
    a_removed_members_workers_stop(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_workers_stop_postgres() -> Result<()> {
    a_removed_members_workers_stop(Db::Postgres).await
}

/// Finding 4: a worker started the moment `POST /workers` answered comes online, although
/// the broker may not have seen its token yet: 20 rounds, all online and running.
async fn a_worker_started_at_once_comes_online(db: Db) -> Result<()> {
    let t = team(db).await?;
    let _broker = t.broker()?;
    let mut procs = Vec::new();
    for i in 0..20 {
        let identity = format!("fresh{i}");
        let token = t.api.new_worker(&identity).await?;
        procs.push((identity.clone(), t.worker(&identity, &token, &[])?));
    }
    let mut refused = 0;
    for (identity, proc) in &mut procs {
        let online = t
            .api
            .wait_worker_state(identity, "ONLINE", Duration::from_secs(30))
            .await;
        let exited = proc.wait_exit(Duration::ZERO)?;
        assert!(
            online.is_ok() && exited.is_none(),
            "worker {identity} did not come online ({exited:?}): {}",
            proc.stderr()
        );
        refused += usize::from(proc.stderr().contains("broker refused the worker"));
    }
    println!("{refused} of 20 workers were refused at first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_at_once_comes_online_sqlite() -> Result<()> {
    a_worker_started_at_once_comes_online(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_at_once_comes_online_postgres() -> Result<()> {
    a_worker_started_at_once_comes_online(Db::Postgres).await
}

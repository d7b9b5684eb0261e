//! Trust inside a team (issue 10, findings 1 and 2): configured services stay with the
//! workers bound to them, revocation reaches the broker's open connections within a second,
//! and worker states stay true across a broker crash. Control plane and broker are separate
//! processes, on SQLite and on PostgreSQL where the store is involved.

use anyhow::{bail, Result};
use client::{ClientError, ClientEvent, RequestSpec};
use futures::StreamExt;
use proto::control::Claims;
use proto::ErrorKind;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::*;

pub(crate) fn spec(service: &str, command: &str) -> RequestSpec {
    RequestSpec {
        service: service.into(),
        plugin: "command".into(),
        command: vec![command.into()],
        timeout: Some(Duration::from_secs(30)),
        ..RequestSpec::default()
    }
}

/// Runs `command` on `service`; the workers that answered, and the error kind if it failed.
pub(crate) async fn run(
    c: &client::Client,
    service: &str,
    command: &str,
) -> Result<(Vec<String>, Option<ErrorKind>)> {
    let mut handle = c.request(spec(service, command)).await?;
    let mut workers = Vec::new();
    let mut error = None;
    while let Some(event) = handle.next().await {
        match event {
            ClientEvent::Output { worker, .. } => workers.push(worker.to_string()),
            ClientEvent::Error { kind, .. } => error = Some(kind),
            _ => {}
        }
    }
    Ok((workers, error))
}

/// Finding 1: a plain member's worker that announces the name of the admin's configured
/// service gets none of its requests; the API shows who serves it, and the broker says once
/// why the announcement was ignored. A `local` worker and what it announces are its owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_worker_cannot_take_over_a_configured_service() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let admin_token = api.new_worker("aw").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "demo", "visibility": "team", "workers": ["aw"]}),
    )
    .await?;
    api.ok(
        "POST",
        &format!("/api/v1/teams/{team}/members"),
        json!({"identity": "carol", "secret": "carol-secret-1"}),
    )
    .await?;
    let carol = Api::login(&control.url, &team, "carol", "carol-secret-1").await?;
    let carol_token = carol.new_worker("cw").await?;

    let (broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let addr = broker_addr.parse()?;
    let _aw = start_worker(
        addr,
        "aw",
        &plugins,
        &["--team", &team, "--token", &admin_token],
    )?;
    let _cw = start_worker(
        addr,
        "cw",
        &plugins,
        &[
            "--team",
            &team,
            "--token",
            &carol_token,
            "--service",
            "demo",
            "--service",
            "carols",
        ],
    )?;
    for w in ["aw", "cw"] {
        api.wait_worker_state(w, "ONLINE", Duration::from_secs(20))
            .await?;
    }
    let c = connect_jwt(&broker_addr, api.token().as_deref().unwrap()).await?;
    let mut served_by = Vec::new();
    for _ in 0..10 {
        let (workers, error) = run(&c, "demo", "echo $TRIGGERFS_WORKER").await?;
        assert_eq!(error, None);
        served_by.extend(workers);
    }
    assert_eq!(served_by, vec!["aw"; 10], "demo reached another worker");

    let demo = api.ok("GET", "/api/v1/services/demo", Value::Null).await?;
    assert_eq!(demo["serving"], json!(["aw"]), "{demo}");
    let cw = api.ok("GET", "/api/v1/workers/cw", Value::Null).await?;
    assert_eq!(cw["announces"], json!(["demo", "carols"]), "{cw}");
    let log = broker.stderr();
    let ignored = "announced a configured service it is not bound to";
    assert_eq!(log.matches(ignored).count(), 1, "{log}");

    // Carol's ad-hoc service is open to the team until she makes her worker `local`.
    let (workers, _) = run(&c, "carols", "true; echo hi").await?;
    assert_eq!(workers, ["cw"]);
    carol
        .ok(
            "PATCH",
            "/api/v1/workers/cw",
            json!({"visibility": "local"}),
        )
        .await?;
    wait_until(
        Duration::from_secs(2),
        "carols closed to the admin",
        || async {
            matches!(
                run(&c, "carols", "echo hi").await,
                Ok((_, Some(ErrorKind::NoSuchService)))
            )
        },
    )
    .await?;
    let (_, error) = run(&c, "cw", "echo hi").await?;
    assert_eq!(error, Some(ErrorKind::Forbidden));
    let carol_client = connect_jwt(&broker_addr, carol.token().as_deref().unwrap()).await?;
    let (workers, error) = run(&carol_client, "carols", "echo hi").await?;
    assert_eq!((workers, error), (vec!["cw".to_string()], None));
    Ok(())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(key: &[u8], team: &str, sub: &str, uid: i64) -> String {
    let claims = Claims {
        sub: sub.into(),
        uid,
        sgen: 0,
        team: team.into(),
        role: proto::control::TeamRole::Admin,
        iat: now_s(),
        exp: now_s() + 3600,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

/// Waits for `handle` to end; its last error kind and when it ended.
pub(crate) async fn ends(mut handle: client::RequestHandle) -> (Option<ErrorKind>, Instant) {
    let mut error = None;
    while let Some(event) = handle.next().await {
        if let ClientEvent::Error { kind, .. } = event {
            error = Some(kind);
        }
    }
    (error, Instant::now())
}

/// A control plane on `db`, a broker taking its configuration from it, workers `workers`
/// (online) bound to the team service `svc`, and member `dave` (secret `dave-secret-1`).
struct Stack {
    control: Control,
    broker_addr: String,
    api: Api,
    dave: Api,
    team: String,
    broker: Proc,
    _workers: Vec<Proc>,
    _plugins: Plugins,
}

async fn stack(db: Db, workers: &[&str]) -> Result<Stack> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_on(&broker_addr, db)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let mut tokens = Vec::new();
    for w in workers {
        tokens.push(api.new_worker(w).await?);
    }
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "svc", "visibility": "team", "workers": workers}),
    )
    .await?;
    api.ok(
        "POST",
        &format!("/api/v1/teams/{team}/members"),
        json!({"identity": "dave", "secret": "dave-secret-1"}),
    )
    .await?;
    let dave = Api::login(&control.url, &team, "dave", "dave-secret-1").await?;
    let (broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let addr = broker_addr.parse()?;
    let mut procs = Vec::new();
    for (w, token) in workers.iter().zip(&tokens) {
        procs.push(start_worker(
            addr,
            w,
            &plugins,
            &["--team", &team, "--token", token],
        )?);
    }
    for w in workers {
        api.wait_worker_state(w, "ONLINE", Duration::from_secs(20))
            .await?;
    }
    Ok(Stack {
        control,
        broker_addr,
        api,
        dave,
        team,
        broker,
        _workers: procs,
        _plugins: plugins,
    })
}

/// Opens `/api/v1/events` with `jwt`.
pub(crate) async fn open_events(
    control: &Control,
    jwt: &str,
) -> Result<impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin> {
    let events = reqwest::Client::new()
        .get(format!("{}/api/v1/events", control.url))
        .bearer_auth(jwt)
        .send()
        .await?;
    assert!(events.status().is_success(), "{}", events.status());
    Ok(events.bytes_stream())
}

/// Whether an event stream ends within 5 s (a keep-alive may come first).
async fn stream_ends(
    mut events: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = events.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await
    .is_ok()
}

/// Finding 2: removing a member, deleting a worker or regenerating its token closes the
/// connections they hold at the broker within a second; their JWTs and tokens are refused
/// from then on, as is a validly signed JWT for a user who never existed; a removed member's
/// `/events` stream ends.
async fn revocation_reaches_the_broker(db: Db) -> Result<()> {
    // Bound as a whole: the workers and plugins must live as long as the test.
    let s = stack(db, &["w1", "w2"]).await?;
    let (control, broker_addr, api, team, broker) =
        (&s.control, &s.broker_addr, &s.api, &s.team, &s.broker);
    let dave = &s.dave;
    let dave_jwt = dave.token().unwrap();

    // A JWT signed with the right key for a user who never existed.
    let key = control.jwt_key()?;
    match connect_jwt(broker_addr, &mint(&key, team, "ghost", 999)).await {
        Err(ClientError::Refused { kind, reason }) => {
            assert_eq!(kind, ErrorKind::Unauthorized);
            assert!(reason.contains("not a member"), "{reason}");
        }
        Err(e) => bail!("unexpected error for a ghost's JWT: {e}"),
        Ok(_) => bail!("the broker accepted a JWT for a user who never existed"),
    }

    // Dave, connected, runs something long; his event stream is open.
    let c = connect_jwt(broker_addr, &dave_jwt).await?;
    let (_, error) = run(&c, "svc", "id -un").await?;
    assert_eq!(error, None);
    let long = c.request(spec("svc", "sleep 30")).await?;
    let events = open_events(control, &dave_jwt).await?;
    let long = tokio::spawn(ends(long));
    // The long request has reached a worker before he is removed.
    tokio::time::sleep(Duration::from_millis(300)).await;

    api.ok(
        "DELETE",
        &format!("/api/v1/teams/{team}/members/dave"),
        Value::Null,
    )
    .await?;
    let removed = Instant::now();
    let (error, ended) = tokio::time::timeout(Duration::from_secs(10), long).await??;
    let took = ended - removed;
    println!("removed member's request ended after {took:?}");
    assert_eq!(error, Some(ErrorKind::Revoked));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(c.is_closed(), "the removed member's connection is open");
    match connect_jwt(broker_addr, &dave_jwt).await {
        Err(ClientError::Refused { kind, .. }) => assert_eq!(kind, ErrorKind::Unauthorized),
        Err(e) => bail!("unexpected error for a removed member's JWT: {e}"),
        Ok(_) => bail!("the broker accepted a removed member's JWT"),
    }
    // His event stream ends.
    assert!(
        stream_ends(events).await,
        "the removed member's event stream goes on"
    );

    // A regenerated token, a deleted worker: their connections close within a second.
    let admin_client = connect_jwt(broker_addr, api.token().as_deref().unwrap()).await?;
    for (identity, method, path) in [
        ("w1", "POST", "/api/v1/workers/w1/regenerate"),
        ("w2", "DELETE", "/api/v1/workers/w2"),
    ] {
        api.ok(method, path, Value::Null).await?;
        let changed = Instant::now();
        wait_until(
            Duration::from_secs(5),
            &format!("{identity} cut"),
            || async {
                broker
                    .stderr()
                    .contains(&format!("worker {team}/{identity} was"))
            },
        )
        .await?;
        println!(
            "{identity}: {method} {path} took effect after {:?}",
            changed.elapsed()
        );
        assert!(changed.elapsed() < Duration::from_secs(1));
    }
    let (_, error) = run(&admin_client, "svc", "echo hi").await?;
    assert_eq!(error, Some(ErrorKind::NoWorkersOnline));
    // The old token is refused from now on.
    let log = broker.stderr();
    assert!(log.contains("regenerated"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_broker_sqlite() -> Result<()> {
    revocation_reaches_the_broker(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_the_broker_postgres() -> Result<()> {
    revocation_reaches_the_broker(Db::Postgres).await
}

/// A user who changes their secret cuts the broker connections and the event streams of
/// every token issued before, within a second; those tokens are refused from then on, and the
/// token the change answers with works.
async fn a_secret_change_revokes_older_tokens(db: Db) -> Result<()> {
    let s = stack(db, &["w1"]).await?;
    let (control, broker_addr, dave) = (&s.control, &s.broker_addr, &s.dave);
    let old_jwt = dave.token().unwrap();
    let c = connect_jwt(broker_addr, &old_jwt).await?;
    let (_, error) = run(&c, "svc", "id -un").await?;
    assert_eq!(error, None);
    let long = tokio::spawn(ends(c.request(spec("svc", "sleep 30")).await?));
    let events = open_events(control, &old_jwt).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let answer = dave
        .ok(
            "PUT",
            "/api/v1/users/dave/secret",
            json!({"current": "dave-secret-1", "new": "dave-secret-2"}),
        )
        .await?;
    let changed = Instant::now();
    let new_jwt = answer["token"].as_str().unwrap().to_string();
    let (error, ended) = tokio::time::timeout(Duration::from_secs(10), long).await??;
    let took = ended - changed;
    println!("the older token's request ended after {took:?}");
    assert_eq!(error, Some(ErrorKind::Revoked));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(c.is_closed(), "the older token's connection is open");
    match connect_jwt(broker_addr, &old_jwt).await {
        Err(ClientError::Refused { kind, reason }) => {
            assert_eq!(kind, ErrorKind::Unauthorized);
            assert!(reason.contains("secret"), "{reason}");
        }
        Err(e) => bail!("unexpected error for a token older than the secret: {e}"),
        Ok(_) => bail!("the broker accepted a token older than the secret"),
    }
    assert!(
        stream_ends(events).await,
        "the older token's event stream goes on"
    );
    let c = connect_jwt(broker_addr, &new_jwt).await?;
    let (_, error) = run(&c, "svc", "id -un").await?;
    assert_eq!(error, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_change_revokes_older_tokens_sqlite() -> Result<()> {
    a_secret_change_revokes_older_tokens(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_change_revokes_older_tokens_postgres() -> Result<()> {
    a_secret_change_revokes_older_tokens(Db::Postgres).await
}

/// A client's connection ends when its JWT expires (no grace): its request ends with
/// `Revoked`, and the token is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_token_expires() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_with(&broker_addr, Db::Sqlite, &["--jwt-ttl", "3s"])?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("w1").await?;
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let _w1 = start_worker(
        broker_addr.parse()?,
        "w1",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    api.wait_worker_state("w1", "ONLINE", Duration::from_secs(20))
        .await?;
    // A fresh token, valid for 3 s from its `iat` (whole seconds).
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let jwt = api.token().unwrap();
    let claims: Claims = jsonwebtoken::decode(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(&control.jwt_key()?),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )?
    .claims;
    let c = connect_jwt(&broker_addr, &jwt).await?;
    let long = tokio::spawn(ends(c.request(spec("w1", "sleep 30")).await?));
    let (error, ended) = tokio::time::timeout(Duration::from_secs(10), long).await??;
    assert_eq!(error, Some(ErrorKind::Revoked));
    let ended_at = SystemTime::now() - ended.elapsed();
    let past_exp = ended_at
        .duration_since(UNIX_EPOCH + Duration::from_secs(claims.exp))
        .unwrap_or_default();
    println!("the connection ended {past_exp:?} after the token's exp");
    // Every shard looks at its earliest expiry each tick (10 ms).
    assert!(past_exp < Duration::from_secs(1), "{past_exp:?}");
    match connect_jwt(&broker_addr, &jwt).await {
        Err(ClientError::Refused { kind, reason }) => {
            assert_eq!(kind, ErrorKind::Unauthorized);
            assert!(reason.contains("expired"), "{reason}");
        }
        Err(e) => bail!("unexpected error for an expired JWT: {e}"),
        Ok(_) => bail!("the broker accepted an expired JWT"),
    }
    Ok(())
}

/// From 8: a worker whose broker crashed (and which then went away too) is not shown
/// `ONLINE` forever: the restarted broker lists who is online and the rest is
/// `DISCONNECTED`.
async fn states_are_true_after_a_broker_crash(db: Db) -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_on(&broker_addr, db)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("gone").await?;
    let stays_token = api.new_worker("stays").await?;
    let (mut broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let addr = broker_addr.parse()?;
    let mut gone = start_worker(
        addr,
        "gone",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    let _stays = start_worker(
        addr,
        "stays",
        &plugins,
        &["--team", &team, "--token", &stays_token],
    )?;
    for w in ["gone", "stays"] {
        api.wait_worker_state(w, "ONLINE", Duration::from_secs(20))
            .await?;
    }
    // The broker dies without a word, then the worker: nobody tells the control plane.
    broker.kill();
    gone.kill();
    assert_eq!(api.worker_state("gone").await?, "ONLINE");
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    api.wait_worker_state("gone", "DISCONNECTED", Duration::from_secs(10))
        .await?;
    api.wait_worker_state("stays", "ONLINE", Duration::from_secs(20))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_are_true_after_a_broker_crash_sqlite() -> Result<()> {
    states_are_true_after_a_broker_crash(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_are_true_after_a_broker_crash_postgres() -> Result<()> {
    states_are_true_after_a_broker_crash(Db::Postgres).await
}

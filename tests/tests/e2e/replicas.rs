//! Control-plane replicas on one PostgreSQL database (issue 27, point 5): they share the JWT
//! key and the brokers' token, each one's `/events` carries the changes made through the
//! others (`LISTEN/NOTIFY`), so a member removed through one replica is cut at a broker that
//! follows another; wrong secrets spread over both lock as on one; and with one replica
//! killed, the other serves on, and the broker, `jobs` and the console fail over to it.

use super::api_abuse::{client_from, loopback};
use super::trust::{ends, open_events, run, spec};
use anyhow::{Context, Result};
use futures::StreamExt;
use proto::ErrorKind;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

/// Reads an event stream until a `config` event whose data contains `needle`; how long it
/// took. Fails after `within`.
pub(crate) async fn config_event_naming(
    events: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    needle: &str,
    within: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut seen = String::new();
    tokio::time::timeout(within, async {
        while let Some(chunk) = events.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk?));
            let found = seen
                .split("\n\n")
                .any(|e| e.contains("event: config") && e.contains(needle));
            if found {
                return Ok(start.elapsed());
            }
        }
        anyhow::bail!("the event stream ended: {seen}")
    })
    .await
    .with_context(|| format!("no config event naming {needle} within {within:?}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_keys_events_and_revocation() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let mut a = Control::start_on(&broker_addr, Db::Postgres)?;
    let b = a.replica(&broker_addr, &[])?;
    // One JWT key and one broker token, whichever replica's data dir is read.
    assert_eq!(a.jwt_key()?, b.jwt_key()?);
    assert_eq!(
        std::fs::read_to_string(a.broker_token_file())?,
        std::fs::read_to_string(b.broker_token_file())?
    );

    // The admin through A, the member dave made and logged in through B.
    let (team, admin, secret) = a.admin.clone();
    let api_a = Api::login(&a.url, &team, &admin, &secret).await?;
    let api_b = Api::login(&b.url, &team, &admin, &secret).await?;
    let token = api_a.new_worker("w1").await?;
    api_b
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "svc", "visibility": "team", "workers": ["w1"]}),
        )
        .await?;
    api_b
        .ok(
            "POST",
            &format!("/api/v1/teams/{team}/members"),
            json!({"identity": "dave", "secret": "dave-secret-1"}),
        )
        .await?;
    let dave = Api::login(&b.url, &team, "dave", "dave-secret-1").await?;

    // The broker follows A (B when A is gone); dave's token from B is good there.
    let urls = format!("{},{}", a.url, b.url);
    let (_broker, _) = start_broker_following(&urls, &a.broker_token_file(), port, &[])?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(
        broker_addr.parse()?,
        "w1",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    api_b
        .wait_worker_state("w1", "ONLINE", Duration::from_secs(20))
        .await?;
    let dave_jwt = dave.token().context("dave's token")?;
    let c = connect_jwt(&broker_addr, &dave_jwt).await?;
    let (workers, error) = run(&c, "svc", "echo hi").await?;
    assert_eq!((workers, error), (vec!["w1".to_string()], None));

    // A change through B is an event on A's stream.
    let mut events = open_events(&a, &api_a.token().context("token")?).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    api_b
        .ok("POST", "/api/v1/services", json!({"name": "svc2"}))
        .await?;
    let took = config_event_naming(&mut events, "svc2", Duration::from_secs(2)).await?;
    println!("a change through B reached A's /events after {took:?}");

    // Dave removed through B: his request at the broker (following A) ends within 2 s.
    let long = tokio::spawn(ends(c.request(spec("svc", "sleep 30")).await?));
    tokio::time::sleep(Duration::from_millis(300)).await;
    api_b
        .ok(
            "DELETE",
            &format!("/api/v1/teams/{team}/members/dave"),
            Value::Null,
        )
        .await?;
    let removed = Instant::now();
    let (error, ended) = tokio::time::timeout(Duration::from_secs(10), long).await??;
    println!(
        "removed through B, cut at A's broker after {:?}",
        ended - removed
    );
    assert_eq!(error, Some(ErrorKind::Revoked));
    assert!(ended - removed < Duration::from_secs(2));

    guesses_count_alike_on_both(&a, &b, &team).await?;

    // A killed: B serves on, with the tokens A issued.
    a.proc.kill();
    let killed = Instant::now();
    let api_a_token = api_a.token().context("token")?;
    let through_b = reqwest::Client::new()
        .get(format!("{}/api/v1/services", b.url))
        .bearer_auth(&api_a_token)
        .send()
        .await?;
    assert!(through_b.status().is_success(), "{}", through_b.status());
    let services: Vec<api::services::ServiceView> = through_b.json().await?;
    let mut names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["svc", "svc2"]);

    broker_fails_over(&api_b, &b, &team, &broker_addr, killed).await?;
    tools_fail_over(&format!("{},{}", a.url, b.url), &a.admin)
}

/// With A killed, `jobs` and the console given `--url A,B` log in and answer through B.
fn tools_fail_over(urls: &str, (team, admin, secret): &(String, String, String)) -> Result<()> {
    let login = [
        "--url",
        urls,
        "--team",
        team,
        "--identity",
        admin,
        "--secret",
        secret,
    ];
    let jobs: Vec<&str> = ["jobs", "list", "--json"]
        .into_iter()
        .chain(login)
        .collect();
    let (code, out, err) = run_cli(&jobs, Duration::from_secs(60))?;
    assert_eq!(code, 0, "jobs list through A,B with A dead: {out}{err}");
    let page: api::jobs::JobPage = serde_json::from_str(&out)?;
    println!("jobs list through B: {} jobs", page.jobs.len());
    let cli: Vec<&str> = ["cli"]
        .into_iter()
        .chain(login)
        .chain(["-c", "show services"])
        .collect();
    let (code, out, err) = run_cli(&cli, Duration::from_secs(60))?;
    assert_eq!(code, 0, "the console through A,B with A dead: {out}{err}");
    assert!(out.contains("svc2"), "{out}");
    Ok(())
}

/// Wrong secrets for `mallory` from 127.0.0.3, alternately through A and B: the 11th is
/// refused as on one replica (10 in a row lock that address), through either.
async fn guesses_count_alike_on_both(a: &Control, b: &Control, team: &str) -> Result<()> {
    let mut answers = Vec::new();
    for i in 0..12 {
        let replica = if i % 2 == 0 { a } else { b };
        let answer = client_from(loopback(3))?
            .post(format!("{}/api/v1/login", replica.url))
            .json(&json!({"team": team, "identity": "mallory", "secret": "wrong"}))
            .send()
            .await?;
        let status = answer.status();
        let body: api::ErrorBody = answer.json().await?;
        answers.push((status, body.code));
    }
    let unauthorized = (StatusCode::UNAUTHORIZED, api::ErrorCode::Unauthorized);
    let locked = (StatusCode::TOO_MANY_REQUESTS, api::ErrorCode::LockedOut);
    assert_eq!(answers[..10], vec![unauthorized; 10][..], "{answers:?}");
    assert_eq!(answers[10..], [locked, locked], "{answers:?}");
    Ok(())
}

/// With A killed, the broker (following A then B) fails over to B: a member added through B
/// is let in there.
async fn broker_fails_over(
    api_b: &Api,
    b: &Control,
    team: &str,
    broker_addr: &str,
    killed: Instant,
) -> Result<()> {
    api_b
        .ok(
            "POST",
            &format!("/api/v1/teams/{team}/members"),
            json!({"identity": "erin", "secret": "erin-secret-1"}),
        )
        .await?;
    let erin = Api::login(&b.url, team, "erin", "erin-secret-1").await?;
    let erin_jwt = erin.token().context("erin's token")?;
    wait_until(Duration::from_secs(10), "erin let in", || async {
        connect_jwt(broker_addr, &erin_jwt).await.is_ok()
    })
    .await?;
    println!(
        "the broker took B's change {:?} after A was killed",
        killed.elapsed()
    );
    Ok(())
}

/// Fail closed (issue 27, point 6): a broker that reaches no control plane for longer than
/// `--max-staleness` closes its connections and refuses new ones with `Stale`, so that cutting
/// it off cannot keep a revoked member in; once a control plane answers again it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_from_its_control_plane_fails_closed() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("w1").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "svc", "visibility": "team", "workers": ["w1"]}),
    )
    .await?;
    let (_broker, _) = start_controlled_broker(&control, port, &["--max-staleness", "2s"])?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(
        broker_addr.parse()?,
        "w1",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    api.wait_worker_state("w1", "ONLINE", Duration::from_secs(20))
        .await?;
    let jwt = api.token().context("token")?;
    let c = connect_jwt(&broker_addr, &jwt).await?;
    assert_eq!(run(&c, "svc", "echo hi").await?.1, None);
    // A quiet but reachable control plane (no change for 3 s, longer than the staleness) is
    // not a silent one: the broker's probes keep it serving.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(run(&c, "svc", "echo still").await?.1, None);
    assert!(!c.is_closed());

    // The control plane is gone: past 2 s the connection is closed, and a new one refused.
    let mut control = control;
    control.proc.kill();
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "the connection closed", || async {
        c.is_closed()
    })
    .await?;
    let closed = killed.elapsed();
    println!("closed {closed:?} after the control plane was killed");
    assert!(closed >= Duration::from_secs(2), "{closed:?}");
    match connect_jwt(&broker_addr, &jwt).await {
        Err(client::ClientError::Refused { kind, reason }) => {
            assert_eq!(kind, ErrorKind::Stale, "{reason}");
            assert!(reason.contains("--max-staleness"), "{reason}");
        }
        Err(e) => anyhow::bail!("unexpected error from a stale broker: {e}"),
        Ok(_) => anyhow::bail!("a stale broker let a client in"),
    }

    // The control plane is back: the broker serves again.
    let _control = control.restart(&broker_addr)?;
    let back = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the broker serving again",
        || async { connect_jwt(&broker_addr, &jwt).await.is_ok() },
    )
    .await?;
    println!(
        "serving again {:?} after the control plane's restart",
        back.elapsed()
    );
    // The worker, cut too, is back and answers.
    wait_until(Duration::from_secs(20), "w1 answering again", || async {
        match connect_jwt(&broker_addr, &jwt).await {
            Ok(c) => run(&c, "svc", "echo again")
                .await
                .is_ok_and(|(w, e)| e.is_none() && w == ["w1"]),
            Err(_) => false,
        }
    })
    .await?;
    Ok(())
}

//! Idempotency keys (the fs module's spool): a keyed request sent again runs nothing twice:
//! the broker answers a replay from its window (marked `replayed`), and after the broker was
//! SIGKILLed and restarted the worker's window does. A key is scoped by its caller: another
//! member sending the same key gets a run of its own.

use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tests::*;

fn key(seq: u64) -> proto::IdemKey {
    proto::IdemKey {
        source: *b"spool-id-0123456",
        seq,
    }
}

/// A keyed `append` of `line` to `path` on service `service`.
fn append(service: &str, path: &Path, line: &str, seq: u64) -> client::RequestSpec {
    client::RequestSpec {
        service: service.into(),
        plugin: "append".into(),
        payload: format!("{line}\n").into_bytes(),
        args: vec![("path".into(), path.display().to_string())],
        timeout: Some(Duration::from_secs(30)),
        key: Some(key(seq)),
        fleet: Default::default(),
        ..client::RequestSpec::default()
    }
}

/// Sends `spec`; its outcome, which must have exited 0.
async fn send(c: &client::Client, spec: client::RequestSpec) -> Result<client::Outcome> {
    let outcome = c.request(spec).await?.collect().await;
    anyhow::ensure!(outcome.exit_status() == 0, "{outcome:?}");
    Ok(outcome)
}

fn replayed(outcome: &client::Outcome) -> bool {
    outcome.summary.is_some_and(|s| s.replayed)
}

fn lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text.lines().map(str::to_string).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_key_runs_once_and_is_marked_replayed() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(broker.addr, "iw", &plugins, &[])?;
    wait_for_workers(broker.addr, &["iw"]).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");

    let c = connect(broker.addr).await?;
    let first = send(&c, append("iw", &log, "one", 1)).await?;
    assert!(!replayed(&first), "{first:?}");
    // The same key again, on another connection (which may be on the other shard).
    let c2 = connect(broker.addr).await?;
    let second = send(&c2, append("iw", &log, "one", 1)).await?;
    assert!(replayed(&second), "{second:?}");
    assert_eq!(second.workers.len(), 1, "{second:?}");
    assert_eq!(second.workers[0].worker, "iw");
    assert_eq!(lines(&log)?, ["one"]);
    // Another key of the same source runs.
    send(&c, append("iw", &log, "two", 2)).await?;
    assert_eq!(lines(&log)?, ["one", "two"]);
    // An unkeyed request runs every time.
    for _ in 0..2 {
        let spec = client::RequestSpec {
            key: None,
            ..append("iw", &log, "free", 0)
        };
        assert!(!replayed(&send(&c, spec).await?));
    }
    assert_eq!(lines(&log)?, ["one", "two", "free", "free"]);

    // A plain `command`, with its exit code, runs once too.
    let marks = dir.path().join("marks");
    let command = client::RequestSpec {
        service: "iw".into(),
        plugin: "command".into(),
        command: vec![format!("echo ran >> {}; exit 3", marks.display())],
        timeout: Some(Duration::from_secs(30)),
        key: Some(key(3)),
        ..client::RequestSpec::default()
    };
    let first = c.request(command.clone()).await?.collect().await;
    let second = c.request(command).await?.collect().await;
    let code = |o: &client::Outcome| o.workers.first().and_then(|w| w.exit_code);
    assert_eq!(
        (code(&first), code(&second)),
        (Some(3), Some(3)),
        "{second:?}"
    );
    assert!(replayed(&second), "{second:?}");
    assert_eq!(lines(&marks)?, ["ran"]);
    Ok(())
}

/// A broker of 2 shards with the core plugins' worker `iw` online (the worker and its
/// plugins' directory, kept while the test runs), and a temporary directory.
async fn broker_with_worker() -> Result<(Broker, (Proc, Plugins), tempfile::TempDir)> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let worker = start_worker(broker.addr, "iw", &plugins, &[])?;
    wait_for_workers(broker.addr, &["iw"]).await?;
    Ok((broker, (worker, plugins), tempfile::tempdir()?))
}

/// A new broker on `addr` (the last was SIGKILLed), once `iw` is back, and a client of it.
async fn restart_broker(addr: std::net::SocketAddr) -> Result<(Broker, client::Client)> {
    let broker = Broker::start_on(&addr.to_string(), "", 2)?;
    wait_for_workers(addr, &["iw"]).await?;
    let c = connect(addr).await?;
    Ok((broker, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_remembers_a_key_across_a_broker_restart() -> Result<()> {
    let (mut broker, _worker, dir) = broker_with_worker().await?;
    let addr = broker.addr;
    let log = dir.path().join("log");
    let c = connect(addr).await?;
    send(&c, append("iw", &log, "once", 7)).await?;
    drop(c);

    broker.proc.kill();
    let (_broker2, c) = restart_broker(addr).await?;
    let again = send(&c, append("iw", &log, "once", 7)).await?;
    // The new broker's window is empty: the worker answered, without running append.
    assert!(!replayed(&again), "{again:?}");
    assert_eq!(again.workers.len(), 1, "{again:?}");
    assert_eq!(lines(&log)?, ["once"]);
    Ok(())
}

/// A keyed run still going when the broker is SIGKILLed (with the fs module: the spool sends
/// the line again to the next broker) runs once: the worker lets it finish instead of
/// stopping it with its connection, and the replay through the new broker waits for it.
/// Before, the run was stopped and forgotten, and the replay ran the plugin a second time
/// (the double kill of issue 25 duplicated 62 and 102 lines of 150,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_run_in_flight_when_the_broker_dies_runs_once() -> Result<()> {
    let (mut broker, _worker, dir) = broker_with_worker().await?;
    let addr = broker.addr;
    let marks = dir.path().join("marks");
    let spec = client::RequestSpec {
        service: "iw".into(),
        plugin: "command".into(),
        command: vec![format!(
            "echo ran >> {}; sleep 3; echo finished",
            marks.display()
        )],
        timeout: Some(Duration::from_secs(60)),
        key: Some(key(11)),
        ..client::RequestSpec::default()
    };
    let c = connect(addr).await?;
    let first = c.request(spec.clone()).await?;
    wait_until(Duration::from_secs(30), "the first run started", || async {
        lines(&marks).is_ok_and(|l| !l.is_empty())
    })
    .await?;
    broker.proc.kill();
    drop(first);
    drop(c);
    let (_broker2, c) = restart_broker(addr).await?;
    let again = c.request(spec).await?.collect().await;
    assert_eq!(
        again.workers.first().and_then(|w| w.exit_code),
        Some(0),
        "the replay is answered with the first run's end: {again:?}"
    );
    assert_eq!(lines(&marks)?, ["ran"], "the plugin ran once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_member_with_the_same_key_gets_its_own_run() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("iw").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "svc", "visibility": "team", "workers": ["iw"]}),
    )
    .await?;
    let erin = api.new_member(&team, "erin", "erin-secret-1").await?;

    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(
        broker_addr.parse()?,
        "iw",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    let admin_c = connect_jwt(&broker_addr, api.token().as_deref().context("jwt")?).await?;
    let erin_c = connect_jwt(&broker_addr, erin.token().as_deref().context("jwt")?).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    wait_until(
        Duration::from_secs(20),
        "the worker serving svc",
        || async {
            let probe = client::RequestSpec {
                service: "svc".into(),
                plugin: "echo".into(),
                timeout: Some(Duration::from_secs(5)),
                ..client::RequestSpec::default()
            };
            match admin_c.request(probe).await {
                Ok(h) => h.collect().await.exit_status() == 0,
                Err(_) => false,
            }
        },
    )
    .await?;

    let first = send(&admin_c, append("svc", &log, "admin", 1)).await?;
    let theirs = send(&erin_c, append("svc", &log, "erin", 1)).await?;
    assert!(!replayed(&first) && !replayed(&theirs), "{theirs:?}");
    assert_eq!(lines(&log)?, ["admin", "erin"]);
    // Each one's own replay is answered from the window.
    assert!(replayed(
        &send(&erin_c, append("svc", &log, "erin", 1)).await?
    ));
    assert!(replayed(
        &send(&admin_c, append("svc", &log, "admin", 1)).await?
    ));
    assert_eq!(lines(&log)?, ["admin", "erin"]);
    Ok(())
}

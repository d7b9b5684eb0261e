//! Workers and brokers that die, and requests that run too long.

use anyhow::Result;
use client::{ClientEvent, RequestSpec, WorkerStatus};
use proto::ErrorKind;
use std::time::{Duration, Instant};
use tests::*;

const CONFIG: &str = r#"
[broker.services.pair]
algorithm = "roundrobin"
workers = ["wa", "wb"]

[broker.services.trio]
algorithm = "mirror"
workers = ["x1", "x2", "x3"]
"#;

fn spec(service: &str, command: &str) -> RequestSpec {
    RequestSpec {
        service: service.into(),
        plugin: "command".into(),
        command: vec![command.into()],
        args: vec![],
        payload: vec![],
        timeout: Some(Duration::from_secs(30)),
        wait: true,
        key: None,
        fleet: Default::default(),
        tag: None,
        trigger: None,
    }
}

/// Reads events until one matches `pred`; returns everything read.
async fn until(
    handle: &mut client::RequestHandle,
    pred: impl Fn(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(20), handle.next())
        .await
        .expect("event within 20 s")
    {
        let hit = pred(&e);
        seen.push(e);
        if hit {
            break;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_fails_over_before_accepted() -> Result<()> {
    let broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    // wa runs one plugin at a time, so a second dispatch waits there, not yet Accepted.
    let mut wa = start_worker(broker.addr, "wa", &plugins, &["--max-concurrency", "1"])?;
    let _wb = start_worker(broker.addr, "wb", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wa", "wb"]).await?;
    let c = connect(broker.addr).await?;

    let mut busy = c.request(spec("wa", "echo busy; sleep 4")).await?;
    until(&mut busy, |e| matches!(e, ClientEvent::Output { .. })).await;

    // The first request to `pair` goes to its first worker, wa, and waits for a slot.
    let mut req = c
        .request(spec("pair", "echo served by $TRIGGERFS_WORKER"))
        .await?;
    until(&mut req, |e| matches!(e, ClientEvent::Routed { .. })).await;
    // Give the dispatch time to reach wa (it cannot be observed from outside: it is queued).
    tokio::time::sleep(Duration::from_millis(300)).await;
    wa.kill();

    let outcome = req.collect().await;
    assert_eq!(outcome.workers.len(), 1, "{outcome:?}");
    let w = &outcome.workers[0];
    assert_eq!(w.worker, "wb", "{outcome:?}");
    assert_eq!(w.status, WorkerStatus::Ok);
    assert_eq!(w.output[0].line, "served by wb");
    assert_eq!(outcome.summary.unwrap().lost, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_lost_after_accepted_and_in_mirror() -> Result<()> {
    let broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    let mut wc = start_worker(broker.addr, "wc", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wc"]).await?;
    let c = connect(broker.addr).await?;

    // After Accepted: WorkerLost, with the output so far, and no re-run elsewhere.
    let mut req = c
        .request(spec("wc", "echo before; sleep 5; echo after"))
        .await?;
    until(&mut req, |e| matches!(e, ClientEvent::Output { .. })).await;
    wc.kill();
    let rest = until(&mut req, |e| e.is_final()).await;
    assert!(
        rest.iter().any(|e| matches!(e, ClientEvent::Failed { kind: ErrorKind::WorkerLost, worker, .. } if worker == "wc")),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|e| matches!(e, ClientEvent::Summary(s) if s.lost == 1 && s.ok == 0)),
        "{rest:?}"
    );

    // mirror: the lost worker is reported as lost, the others finish.
    let mut workers = Vec::new();
    for id in ["x1", "x2", "x3"] {
        workers.push(start_worker(broker.addr, id, &plugins, &[])?);
    }
    wait_for_workers(broker.addr, &["x1", "x2", "x3"]).await?;
    let script = r#"echo started; if [ "$TRIGGERFS_WORKER" = x2 ]; then sleep 5; fi"#;
    let mut req = c.request(spec("trio", script)).await?;
    let before = until(
        &mut req,
        |e| matches!(e, ClientEvent::Output { worker, .. } if worker == "x2"),
    )
    .await;
    workers[1].kill();
    let outcome = req.collect().await;
    let s = outcome.summary.expect("summary");
    assert_eq!((s.workers, s.ok, s.lost), (3, 2, 1), "{outcome:?}");
    let x2 = outcome.workers.iter().find(|w| w.worker == "x2").unwrap();
    assert_eq!(x2.status, WorkerStatus::Lost);
    // x2's output before it was lost reached us (it is in the events read before the kill).
    assert!(before.iter().any(
        |e| matches!(e, ClientEvent::Output { worker, data, .. } if worker == "x2" && data == b"started")
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_after_broker_restart() -> Result<()> {
    let mut broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    let _w = start_worker(broker.addr, "wr", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wr"]).await?;
    let addr = broker.addr;

    broker.proc.kill();
    let restarted = Instant::now();
    let _broker2 = Broker::start_on(&addr.to_string(), CONFIG, 2)?;
    wait_until(Duration::from_secs(5), "worker serving again", || async {
        match connect(addr).await {
            Ok(c) => matches!(
                request(&c, "wr", "echo", "again", Duration::from_secs(2)).await,
                Ok(o) if o.exit_status() == 0
            ),
            Err(_) => false,
        }
    })
    .await?;
    assert!(restarted.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_plugin_and_reports_timeout() -> Result<()> {
    let broker = Broker::start(CONFIG, 1)?;
    let plugins = Plugins::core()?;
    let _w = start_worker(broker.addr, "wt", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wt"]).await?;
    let addr = broker.addr.to_string();

    // A background child and a foreground one; both must be gone after the timeout.
    let marker = "301.4159";
    let script = format!("sleep {marker} & echo waiting; sleep {marker}");
    let started = Instant::now();
    let (code, out, err) = run_cli(
        &[
            "client",
            "--broker",
            &addr,
            "--service",
            "wt",
            "--plugin",
            "command",
            "--timeout",
            "1s",
            "--json",
            "--command",
            &script,
        ],
        Duration::from_secs(20),
    )?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 3, "a timeout exits 3: {out}\n{err}");
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(doc["workers"][0]["status"], "timeout", "{doc}");
    assert_eq!(
        doc["workers"][0]["error"]["message"], "timed out after 1s",
        "one text whichever side noticed: {doc}"
    );
    assert_eq!(doc["workers"][0]["error"]["kind"], "Timeout", "{doc}");
    assert_eq!(doc["summary"]["timed_out"], 1);
    wait_until(
        Duration::from_secs(5),
        "plugin processes to be killed",
        || async { !process_running(marker) },
    )
    .await?;
    Ok(())
}

//! roundrobin, mirror and serial through the broker, with the `triggerfs client` binary.

use anyhow::Result;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::*;

const CONFIG: &str = r#"
[broker.services.rr]
algorithm = "roundrobin"
workers = ["w1", "w2", "w3"]

[broker.services.fleet]
algorithm = "mirror"
workers = ["m1", "m2", "m3", "m4", "m5"]

[broker.services.chain]
algorithm = "serial"
workers = ["s1", "s2", "s3"]

[broker.services.chainstop]
algorithm = "serial"
workers = ["s1", "s2", "s3"]
stop_on_failure = true
"#;

fn client_args<'a>(addr: &'a str, service: &'a str, command: &'a str) -> Vec<&'a str> {
    vec![
        "client",
        "--broker",
        addr,
        "--service",
        service,
        "--plugin",
        "command",
        "--timeout",
        "20s",
        "--command",
        command,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_spreads_nine_requests_three_three_three() -> Result<()> {
    let broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    let _workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| start_worker(broker.addr, id, &plugins, &[]))
        .collect::<Result<_>>()?;
    wait_for_workers(broker.addr, &["w1", "w2", "w3"]).await?;

    let addr = broker.addr.to_string();
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..9 {
        let cmd = format!("echo hello $TRIGGERFS_WORKER {i}");
        let (code, out, err) = run_cli(&client_args(&addr, "rr", &cmd), Duration::from_secs(30))?;
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
        assert!(
            err.contains("Sending message to service rr (roundrobin)"),
            "{err}"
        );
        let line = out.lines().next().expect("one output line");
        // `[command@w2] hello w2 4`
        let worker = line
            .strip_prefix("[command@")
            .and_then(|r| r.split(']').next())
            .expect("tagged line")
            .to_string();
        assert_eq!(line, format!("[command@{worker}] hello {worker} {i}"));
        assert!(out.contains("Exit code: 0"), "{out}");
        assert!(out.contains("Total messages: 1"), "{out}");
        assert!(out.contains("Time ran: "), "{out}");
        *per_worker.entry(worker).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> =
        [("w1".into(), 3), ("w2".into(), 3), ("w3".into(), 3)].into();
    assert_eq!(per_worker, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_streams_every_worker_live_and_summarises() -> Result<()> {
    let broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    let ids = ["m1", "m2", "m3", "m4", "m5"];
    let _workers: Vec<_> = ids
        .iter()
        .map(|id| start_worker(broker.addr, id, &plugins, &[]))
        .collect::<Result<_>>()?;
    wait_for_workers(broker.addr, &ids).await?;

    // Three lines 400 ms apart: the first must reach us long before the plugin ends.
    let script = "for i in 1 2 3; do echo line$i from $TRIGGERFS_WORKER; sleep 0.4; done";
    let addr = broker.addr.to_string();
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(client_args(&addr, "fleet", script))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first_line_at = BTreeMap::new();
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("[command@") {
            let worker = rest.split(']').next().unwrap().to_string();
            first_line_at.entry(worker).or_insert(started.elapsed());
        }
        lines.push(line);
    }
    let status = child.wait()?;
    let ended = started.elapsed();
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    for id in ids {
        for i in 1..=3 {
            assert!(
                text.contains(&format!("[command@{id}] line{i} from {id}")),
                "{id} line{i} missing:\n{text}"
            );
        }
        let first = first_line_at[id];
        assert!(
            ended - first >= Duration::from_millis(600),
            "{id}'s first line came {first:?} after start, the run ended at {ended:?}: not live"
        );
        assert!(text.contains(&format!("Exit code [{id}]: 0")), "{text}");
    }
    assert!(
        text.contains("Summary: 5 workers, 5 ok, 0 failed, 0 timed out, 0 lost"),
        "{text}"
    );
    assert!(text.contains("Total messages: 15"), "{text}");

    // A failing worker shows as failed with its exit code; the process exits non-zero.
    let script = r#"if [ "$TRIGGERFS_WORKER" = m3 ]; then echo broken; exit 7; fi; echo fine"#;
    let (code, out, _) = run_cli(
        &client_args(&addr, "fleet", script),
        Duration::from_secs(30),
    )?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Exit code [m3]: 7"), "{out}");
    assert!(
        out.contains("Summary: 5 workers, 4 ok, 1 failed, 0 timed out, 0 lost"),
        "{out}"
    );

    // --json: one document, per-worker results.
    let mut args = client_args(&addr, "fleet", "echo json");
    args.push("--json");
    let (code, out, _) = run_cli(&args, Duration::from_secs(30))?;
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(doc["summary"]["ok"], 5);
    assert_eq!(doc["workers"].as_array().unwrap().len(), 5);
    assert_eq!(doc["workers"][0]["output"][0]["line"], "json");
    Ok(())
}

/// `start <ms>` / `end <ms>` lines of each serial worker, as (worker, start, end).
fn spans(out: &str) -> Vec<(String, u128, u128)> {
    let mut spans: Vec<(String, u128, u128)> = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("[command@") else {
            continue;
        };
        let (worker, msg) = rest.split_once("] ").unwrap();
        let mut words = msg.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|t| t.parse::<u128>().ok()),
        ) {
            (Some("start"), Some(t)) => spans.push((worker.to_string(), t, 0)),
            (Some("end"), Some(t)) => {
                let s = spans.iter_mut().rev().find(|s| s.0 == worker).unwrap();
                s.2 = t;
            }
            _ => {}
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_runs_one_after_another_and_stops_on_failure() -> Result<()> {
    let broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    let ids = ["s1", "s2", "s3"];
    let _workers: Vec<_> = ids
        .iter()
        .map(|id| start_worker(broker.addr, id, &plugins, &[]))
        .collect::<Result<_>>()?;
    wait_for_workers(broker.addr, &ids).await?;
    let addr = broker.addr.to_string();

    let script = "echo start $(date +%s%3N); sleep 0.3; echo end $(date +%s%3N)";
    let (code, out, err) = run_cli(
        &client_args(&addr, "chain", script),
        Duration::from_secs(30),
    )?;
    assert_eq!(code, 0, "{out}\n{err}");
    let spans = spans(&out);
    let order: Vec<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(order, ids, "serial runs in the configured order:\n{out}");
    for pair in spans.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} started at {} before {} ended at {}",
            pair[1].0,
            pair[1].1,
            pair[0].0,
            pair[0].2
        );
    }
    assert!(
        out.contains("Summary: 3 workers, 3 ok, 0 failed, 0 timed out, 0 lost"),
        "{out}"
    );

    let script = r#"echo ran; [ "$TRIGGERFS_WORKER" != s2 ]"#;
    let (code, out, _) = run_cli(
        &client_args(&addr, "chainstop", script),
        Duration::from_secs(30),
    )?;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[command@s1] ran") && out.contains("[command@s2] ran"),
        "{out}"
    );
    assert!(
        !out.contains("[command@s3]"),
        "s3 must not run after s2 failed:\n{out}"
    );
    assert!(
        out.contains("Exit code [s3]: skipped (Skipped: "),
        "s3 is reported, not left out:\n{out}"
    );
    assert!(
        out.contains("Summary: 3 workers, 1 ok, 1 failed, 0 timed out, 0 lost, 1 skipped"),
        "{out}"
    );
    Ok(())
}

/// A plugin that floods ~15 MB of output to a client that reads slowly: every line arrives, in
/// order, once. The client's queue, its socket, the broker's outbox towards it (256 frames)
/// and the worker's socket fill up in turn and push back instead of dropping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_output_to_a_slow_client_loses_nothing() -> Result<()> {
    const LINES: usize = 30_000;
    let broker = Broker::start(CONFIG, 2)?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(broker.addr, "w1", &plugins, &[])?;
    wait_for_workers(broker.addr, &["w1"]).await?;
    let c = connect(broker.addr).await?;
    let spec = client::RequestSpec {
        service: "w1".into(),
        plugin: "command".into(),
        // ~15 MB: more than the socket buffers on the way can hold.
        command: vec![format!(
            "seq 1 {LINES} | awk '{{printf \"%s %0500d\\n\", $1, 0}}'"
        )],
        timeout: Some(Duration::from_secs(60)),
        wait: true,
        ..client::RequestSpec::default()
    };
    let mut handle = c.request(spec).await?;
    let mut seen = 0usize;
    let mut summary = None;
    while let Some(event) = handle.next().await {
        match event {
            client::ClientEvent::Output { data, .. } => {
                seen += 1;
                let line = String::from_utf8_lossy(&data);
                assert!(line.starts_with(&format!("{seen} 000")), "in order: {seen}");
                assert_eq!(line.len(), seen.to_string().len() + 501);
                if seen.is_multiple_of(2_000) {
                    // Stall now and then, long enough for every queue on the way to fill.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            client::ClientEvent::Summary(s) => summary = Some(s),
            _ => {}
        }
    }
    assert_eq!(seen, LINES);
    assert_eq!(summary.map(|s| s.ok), Some(1));
    Ok(())
}

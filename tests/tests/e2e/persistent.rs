//! Persistent plugins (a `plugin.toml` with `persistent = true`) on a real worker: many
//! concurrent requests on one instance, crashes, cancels that are ignored, protocol errors,
//! and the two example plugins of `plugins/examples/`.

use anyhow::{ensure, Context, Result};
use client::{ClientEvent, Outcome, RequestSpec, WorkerStatus};
use proto::ErrorKind;
use std::time::{Duration, Instant};
use tests::*;

/// A persistent plugin in Python driven by its command words, a thread per request:
/// `ok` prints `ok <pid>`; `hold` prints `holding <pid>` and answers only a cancel; `hang`
/// prints `hanging <pid>` and never answers, not even a cancel; `garbage` writes a line that
/// is not a frame to stdout.
const TEST_PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, sys, threading
lock = threading.Lock()
events = {}
pid = os.getpid()
def send(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
def serve(rid, op, cancelled):
    if op == "ok":
        send({"type": "output", "id": rid, "data": "ok %d" % pid})
    elif op == "hold":
        send({"type": "output", "id": rid, "data": "holding %d" % pid})
        cancelled.wait()
    elif op == "hang":
        send({"type": "output", "id": rid, "data": "hanging %d" % pid})
        return
    elif op == "garbage":
        with lock:
            sys.stdout.write("<html>this is not a frame</html>\n")
            sys.stdout.flush()
        return
    send({"type": "done", "id": rid, "exit_code": 0})
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "request":
        events[msg["id"]] = threading.Event()
        threading.Thread(target=serve, args=(msg["id"], msg["command"][0], events[msg["id"]]),
                         daemon=True).start()
    elif msg["type"] == "cancel" and msg["id"] in events:
        events[msg["id"]].set()
    elif msg["type"] == "shutdown":
        break
"#;

/// A persistent plugin in sh that ignores cancels: it answers `ping` with `pong <pid>`;
/// for any other request it prints `hanging <pid>` and never answers.
const STUBBORN_PLUGIN: &str = r#"#!/bin/sh
while IFS= read -r line; do
  case $line in
    *'"type":"request"'*)
      id=${line#*'"id":'}
      id=${id%%,*}
      case $line in
        *'"command":["ping"]'*)
          printf '{"type":"output","id":%s,"data":"pong %s"}\n' "$id" "$$"
          printf '{"type":"done","id":%s,"exit_code":0}\n' "$id" ;;
        *)
          printf '{"type":"output","id":%s,"data":"hanging %s"}\n' "$id" "$$" ;;
      esac ;;
  esac
done
"#;

fn spec(plugin: &str, command: &str, timeout: Duration) -> RequestSpec {
    RequestSpec {
        service: "wp".into(),
        plugin: plugin.into(),
        command: vec![command.into()],
        timeout: Some(timeout),
        ..RequestSpec::default()
    }
}

/// The one worker's part of an outcome.
fn only(outcome: &Outcome) -> Result<&client::WorkerOutcome> {
    ensure!(outcome.workers.len() == 1, "{outcome:?}");
    Ok(&outcome.workers[0])
}

/// The pid in an output line such as `ok 1234`.
fn pid_in(line: &str) -> Result<i32> {
    line.rsplit(' ')
        .next()
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("no pid in {line:?}"))
}

/// Is `pid` a live process (a zombie counts as dead)?
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X') | None
        ),
        Err(_) => false,
    }
}

/// A process's resident memory (KiB, `VmRSS`) and open descriptors.
fn footprint(pid: u32) -> Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

/// Reads events until one matches `pred`.
async fn until(
    handle: &mut client::RequestHandle,
    mut pred: impl FnMut(&ClientEvent) -> bool,
) -> Result<ClientEvent> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), handle.next())
            .await
            .context("no event within 20 s")?
            .context("request ended")?;
        if pred(&event) {
            return Ok(event);
        }
    }
}

fn output_line(event: &ClientEvent) -> Option<String> {
    match event {
        ClientEvent::Output { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// (a) One Python instance serves 1,000 requests in flight at once from 4 clients; every
/// request gets exactly its own lines and its own exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_on_one_instance() -> Result<()> {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 250;
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    plugins.add_example("pyecho")?;
    let _w = start_worker(broker.addr, "wp", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wp"]).await?;

    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let client = connect(broker.addr).await?;
        clients.push(tokio::spawn(async move {
            // Every request is sent before any is collected: all 250 are in flight at once.
            let mut handles = Vec::new();
            for i in 0..PER_CLIENT {
                let mut spec = spec("pyecho", &format!("c{c}-r{i}"), Duration::from_secs(120));
                spec.args = vec![
                    ("repeat".into(), (1 + i % 3).to_string()),
                    ("exit".into(), ((c + i) % 5).to_string()),
                ];
                handles.push((i, client.request(spec).await?));
            }
            let mut outcomes = Vec::new();
            for (i, handle) in handles {
                outcomes.push((i, handle.collect().await));
            }
            anyhow::Ok((c, outcomes))
        }));
    }
    let mut checked = 0;
    for client in clients {
        let (c, outcomes) = client.await??;
        for (i, outcome) in outcomes {
            let w = only(&outcome)?;
            let want_code = ((c + i) % 5) as i32;
            ensure!(w.exit_code == Some(want_code), "c{c}-r{i}: {outcome:?}");
            let want_status = if want_code == 0 {
                WorkerStatus::Ok
            } else {
                WorkerStatus::Failed
            };
            ensure!(w.status == want_status, "c{c}-r{i}: {outcome:?}");
            let lines: Vec<&str> = w.output.iter().map(|l| l.line.as_str()).collect();
            let want = vec![format!("c{c}-r{i}"); 1 + i % 3];
            ensure!(lines == want, "c{c}-r{i}: {lines:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, CLIENTS * PER_CLIENT);
    eprintln!(
        "1,000 requests on one persistent instance in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// (b) `kill -9` of the instance while requests are in flight: each ends with
/// `PluginCrashed` within a second; the next request starts a new instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fails_requests_in_flight_within_a_second() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let manifest = "persistent = true\nrestart_backoff = \"100ms\"\n";
    plugins.add_executable("crashy", TEST_PLUGIN, Some(manifest))?;
    let w = start_worker(broker.addr, "wp", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wp"]).await?;
    let c = connect(broker.addr).await?;

    let mut held = Vec::new();
    let mut pid = None;
    for _ in 0..3 {
        let mut h = c
            .request(spec("crashy", "hold", Duration::from_secs(30)))
            .await?;
        let line = output_line(&until(&mut h, |e| output_line(e).is_some()).await?).unwrap();
        let this = pid_in(&line)?;
        ensure!(
            *pid.get_or_insert(this) == this,
            "one instance serves them all"
        );
        held.push(h);
    }
    let pid = pid.unwrap();
    let killed = Instant::now();
    // SAFETY: kill(2) on a pid this test read from its own plugin.
    ensure!(unsafe { libc::kill(pid, libc::SIGKILL) } == 0);
    let mut latencies = Vec::new();
    for mut h in held {
        let failed = until(&mut h, |e| matches!(e, ClientEvent::Failed { .. })).await?;
        latencies.push(killed.elapsed());
        let ClientEvent::Failed { kind, message, .. } = failed else {
            unreachable!()
        };
        ensure!(kind == ErrorKind::PluginCrashed, "{kind}: {message}");
        ensure!(
            message == "persistent plugin `crashy` was killed by signal 9",
            "{message}"
        );
        ensure!(!message.contains(plugins.path().to_str().unwrap()));
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!("kill -9 to PluginCrashed: {latencies:?}");
    ensure!(worst < Duration::from_secs(1), "{latencies:?}");

    // The next request starts a new instance (after the 100 ms backoff) and succeeds.
    let outcome = c
        .request(spec("crashy", "ok", Duration::from_secs(30)))
        .await?
        .collect()
        .await;
    let w0 = only(&outcome)?;
    ensure!(w0.status == WorkerStatus::Ok, "{outcome:?}");
    let new_pid = pid_in(&w0.output[0].line)?;
    ensure!(new_pid != pid, "a new instance");
    let log = w.stderr();
    ensure!(
        log.contains("persistent plugin instance ended") && log.contains("killed by signal 9"),
        "the worker logs why:\n{log}"
    );
    Ok(())
}

/// (c) An instance that ignores cancel is killed after the grace and restarted, 100 times;
/// the worker's memory and descriptors stay where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_cancels_kill_and_restart_without_growth() -> Result<()> {
    const CYCLES: usize = 100;
    /// Allowed growth of the worker's VmRSS over the cycles: 10 KiB a cycle.
    const RSS_BOUND_KIB: u64 = 1024;
    /// Cycles run before the first measurement last this long after the worker started:
    /// tokio's blocking-pool thread (used at start-up) exits after 10 s idle and frees
    /// more than a MiB, which would hide growth if it happened between the measurements.
    const WARMUP: Duration = Duration::from_secs(11);
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let manifest = "persistent = true\nrestart_backoff = \"5ms\"\ncancel_grace = \"50ms\"\n";
    // In sh: it starts in a few milliseconds, well within the requests' timeout.
    plugins.add_executable("stubborn", STUBBORN_PLUGIN, Some(manifest))?;
    let w = start_worker(broker.addr, "wp", &plugins, &[])?;
    let worker_started = Instant::now();
    wait_for_workers(broker.addr, &["wp"]).await?;
    let c = connect(broker.addr).await?;

    let mut last_pid = 0;
    // A request answered, then one whose cancel is ignored: the instance is killed after
    // the grace. (Answering resets the restart backoff, which would otherwise double with
    // each kill: 5 ms, 10 ms, … 30 s.)
    let mut cycle = async |n: usize| -> Result<()> {
        let pong = c
            .request(spec("stubborn", "ping", Duration::from_secs(10)))
            .await?
            .collect()
            .await;
        let answered = only(&pong)?;
        ensure!(answered.status == WorkerStatus::Ok, "cycle {n}: {pong:?}");
        let pid = pid_in(&answered.output[0].line)?;
        // The same instance gets this one (whether its `hanging` line beats the timeout
        // depends on the machine's load; the kill does not).
        let outcome = c
            .request(spec("stubborn", "hang", Duration::from_millis(100)))
            .await?
            .collect()
            .await;
        let w0 = only(&outcome)?;
        ensure!(w0.status == WorkerStatus::Timeout, "cycle {n}: {outcome:?}");
        ensure!(pid != last_pid, "cycle {n}: a new instance each time");
        last_pid = pid;
        // Killed after the grace: the next request cannot land on it.
        wait_until(
            Duration::from_secs(5),
            "the instance to be killed",
            || async { !alive(pid) },
        )
        .await?;
        Ok(())
    };
    let mut n = 0;
    while n < 10 || worker_started.elapsed() < WARMUP {
        cycle(n).await?;
        n += 1;
    }
    let settle = || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        footprint(w.pid())
    };
    let (rss_before, fds_before) = settle().await?;
    let started = Instant::now();
    for i in 0..CYCLES {
        cycle(n + i).await?;
    }
    let took = started.elapsed();
    let (rss_after, fds_after) = settle().await?;
    eprintln!(
        "{CYCLES} kill/restart cycles (after {n} to warm up) in {took:?}: worker VmRSS {rss_before} -> {rss_after} KiB, fds {fds_before} -> {fds_after}"
    );
    ensure!(fds_after <= fds_before, "fds {fds_before} -> {fds_after}");
    ensure!(
        rss_after <= rss_before + RSS_BOUND_KIB,
        "VmRSS {rss_before} -> {rss_after} KiB"
    );
    Ok(())
}

/// (d) A plugin that writes garbage to stdout: its requests, also those in flight, get
/// `PluginProtocol`; the worker goes on serving other plugins, plain and persistent, and
/// the instance restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdout_is_a_protocol_error_for_that_plugin_only() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let manifest = "persistent = true\nrestart_backoff = \"10ms\"\n";
    plugins.add_executable("garbler", TEST_PLUGIN, Some(manifest))?;
    plugins.add_executable("bystander", TEST_PLUGIN, Some(manifest))?;
    let w = start_worker(broker.addr, "wp", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wp"]).await?;
    let c = connect(broker.addr).await?;
    let t = Duration::from_secs(30);
    let ok = |outcome: &Outcome| -> Result<i32> {
        let w0 = only(outcome)?;
        ensure!(w0.status == WorkerStatus::Ok, "{outcome:?}");
        pid_in(&w0.output[0].line)
    };

    let garbler = ok(&c.request(spec("garbler", "ok", t)).await?.collect().await)?;
    let bystander = ok(&c.request(spec("bystander", "ok", t)).await?.collect().await)?;
    let mut held = c.request(spec("garbler", "hold", t)).await?;
    until(&mut held, |e| output_line(e).is_some()).await?;

    let outcome = c
        .request(spec("garbler", "garbage", t))
        .await?
        .collect()
        .await;
    let w0 = only(&outcome)?;
    let error = w0.error.as_ref().context("an error")?;
    ensure!(error.kind == ErrorKind::PluginProtocol, "{outcome:?}");
    ensure!(
        error
            .message
            .starts_with("persistent plugin `garbler` broke the plugin protocol"),
        "{}",
        error.message
    );
    ensure!(!error.message.contains(plugins.path().to_str().unwrap()));
    let failed = until(&mut held, |e| matches!(e, ClientEvent::Failed { .. })).await?;
    ensure!(
        matches!(
            failed,
            ClientEvent::Failed {
                kind: ErrorKind::PluginProtocol,
                ..
            }
        ),
        "the request in flight: {failed:?}"
    );
    wait_until(
        Duration::from_secs(5),
        "the garbler to be killed",
        || async { !alive(garbler) },
    )
    .await?;

    // Everything else is served: a plain plugin, another persistent one (the same instance).
    let echo = request(&c, "wp", "echo", "still here", t).await?;
    ensure!(
        echo.exit_status() == 0 && only(&echo)?.output[0].line == "still here",
        "{echo:?}"
    );
    let again = ok(&c.request(spec("bystander", "ok", t)).await?.collect().await)?;
    ensure!(again == bystander, "the other instance was not touched");
    // And the garbler's next request gets a new instance.
    let restarted = ok(&c.request(spec("garbler", "ok", t)).await?.collect().await)?;
    ensure!(restarted != garbler);
    let log = w.stderr();
    ensure!(
        log.contains("persistent plugin broke the protocol")
            && log.contains("<html>this is not a frame</html>"),
        "the worker logs the offending line:\n{log}"
    );
    Ok(())
}

/// The plain example in sh (`greet`): arguments from the environment, streamed lines, exit
/// code, cancel; and a manifest with an unknown key is refused without paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sh_example_and_a_bad_manifest() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    plugins.add_example("greet")?;
    plugins.add_executable("typo", TEST_PLUGIN, Some("persistant = true\n"))?;
    let _w = start_worker(broker.addr, "wp", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wp"]).await?;
    let c = connect(broker.addr).await?;

    let mut greet = spec("greet", "", Duration::from_secs(30));
    greet.args = vec![
        ("name".into(), "Ada".into()),
        ("count".into(), "2".into()),
        ("exit".into(), "3".into()),
    ];
    let outcome = c.request(greet.clone()).await?.collect().await;
    let w0 = only(&outcome)?;
    ensure!(w0.exit_code == Some(3), "{outcome:?}");
    // stdout and stderr are two pipes: each keeps its order, not their interleaving.
    let on = |stream: proto::Stream| -> Vec<&str> {
        w0.output
            .iter()
            .filter(|l| l.stream == stream)
            .map(|l| l.line.as_str())
            .collect()
    };
    let stdout = on(proto::Stream::Stdout);
    ensure!(stdout.len() == 3, "{stdout:?}");
    ensure!(
        stdout[0].starts_with("request ") && stdout[0].contains("to service wp"),
        "{stdout:?}"
    );
    ensure!(
        stdout[1..] == ["hello, Ada (1/2) from wp", "hello, Ada (2/2) from wp"],
        "{stdout:?}"
    );
    ensure!(on(proto::Stream::Stderr) == ["greet: done"]);

    // Cancelled in its sleep. (What it prints after the cancel, its TERM trap's line, does
    // not reach the client: the broker ends a cancelled request at once.)
    greet.args = vec![("count".into(), "3".into()), ("delay".into(), "30".into())];
    let mut h = c.request(greet).await?;
    until(&mut h, |e| {
        output_line(e).is_some_and(|l| l.starts_with("hello"))
    })
    .await?;
    h.cancel().await?;
    let failed = until(&mut h, |e| matches!(e, ClientEvent::Failed { .. })).await?;
    ensure!(
        matches!(
            failed,
            ClientEvent::Failed {
                kind: ErrorKind::Cancelled,
                ..
            }
        ),
        "{failed:?}"
    );

    let outcome = c
        .request(spec("typo", "ok", Duration::from_secs(30)))
        .await?
        .collect()
        .await;
    let error = only(&outcome)?.error.clone().context("an error")?;
    ensure!(error.kind == ErrorKind::PluginFailed, "{outcome:?}");
    ensure!(
        error
            .message
            .contains("invalid plugin.toml: unknown field `persistant`"),
        "{}",
        error.message
    );
    ensure!(!error.message.contains(plugins.path().to_str().unwrap()));
    Ok(())
}

/// No instance outlives its worker: a stopped worker asks its instance to stop (the plugin
/// says so on its stderr, which the worker logs); a SIGKILLed one takes it along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_end_with_their_worker() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    plugins.add_example("pyecho")?;
    plugins.add_executable("crashy", TEST_PLUGIN, Some("persistent = true\n"))?;
    let c = connect(broker.addr).await?;
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut w = start_worker(broker.addr, "wp", &plugins, &[])?;
        wait_for_workers(broker.addr, &["wp"]).await?;
        let outcome = c
            .request(spec("crashy", "ok", Duration::from_secs(30)))
            .await?
            .collect()
            .await;
        let pid = pid_in(&only(&outcome)?.output[0].line)?;
        let echoed = c
            .request(spec("pyecho", "hi", Duration::from_secs(30)))
            .await?
            .collect()
            .await;
        ensure!(echoed.exit_status() == 0, "{echoed:?}");
        // SAFETY: kill(2) on the worker this test started.
        ensure!(unsafe { libc::kill(w.pid() as i32, signal) } == 0);
        wait_until(Duration::from_secs(5), "the instance to end", || async {
            !alive(pid)
        })
        .await?;
        if signal == libc::SIGTERM {
            wait_until(
                Duration::from_secs(5),
                "the worker to log pyecho stopping",
                || async { w.stderr().contains("pyecho: stopping") },
            )
            .await?;
        }
        w.kill();
    }
    Ok(())
}

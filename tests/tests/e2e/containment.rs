//! Containment and exactly-once under the worst faults: plugin processes that escape their
//! process group (`setsid -f`, a double fork) are gone when their request ends and when the
//! worker stops; and a line spooled by the fs runs once even when the fs and the broker are
//! SIGKILLed together.

use super::fs::{assert_exactly_once_in_order, read_sink, write_lines, Rig};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::{
    connect, pids_running, start_worker, wait_for_workers, wait_until, Broker, Plugins, Proc,
};

const LINES: usize = 12_000;
const ROUNDS: usize = 8;
const PER_WRITE: usize = 1;

/// A plugin that starts two processes meant to outlive it, each a `sleep` whose argument is
/// a marker: one with `setsid -f` (a session and group of its own) and one by a double
/// fork (reparented to init); then it says `spawned` and, with `stay`, runs on.
fn escaping_plugin(plugins: &Plugins, name: &str, markers: [&str; 2], stay: bool) -> Result<()> {
    let [a, b] = markers;
    let stay = if stay { "exec sleep 600" } else { "" };
    plugins.add_script(
        name,
        &format!(
            "setsid -f sleep {a} </dev/null >/dev/null 2>&1\n\
             ( (sleep {b} </dev/null >/dev/null 2>&1 &) & )\n\
             echo spawned\n{stay}"
        ),
    )
}

/// Waits until no process carries one of `markers`; kills those left either way (this test
/// started them), so a failure leaves nothing behind.
async fn all_gone(markers: &[&str], within: Duration, what: &str) -> Result<()> {
    let running = || {
        markers
            .iter()
            .flat_map(|m| pids_running(m))
            .collect::<Vec<_>>()
    };
    let gone = wait_until(within, what, || async { running().is_empty() }).await;
    let left = running();
    for &pid in &left {
        // SAFETY: kill(2) on a process this test's plugin started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    gone.with_context(|| format!("{} escaped plugin processes still running", left.len()))
}

/// The plugin cgroups of the worker with this pid still present (`<pid>.<n>` under a
/// `triggerfs-worker-*` directory of the cgroup v2 mount).
fn cgroups_of(worker_pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("{worker_pid}.");
    let mut found = Vec::new();
    for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let Ok(top) = std::fs::read_dir(root) else {
            continue;
        };
        for base in top.flatten() {
            if !base
                .file_name()
                .to_string_lossy()
                .starts_with("triggerfs-worker-")
            {
                continue;
            }
            let Ok(inner) = std::fs::read_dir(base.path()) else {
                continue;
            };
            found.extend(
                inner
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// Issue 25, finding 8: processes a plugin started and that left its process group are gone
/// once its request ended (the plugin exited 0), and no cgroup of the run is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_plugin_processes_end_with_their_request() -> Result<()> {
    let markers = ["1001.25801", "1002.25802"];
    let broker = Broker::start("", 1)?;
    let plugins = Plugins::core()?;
    escaping_plugin(&plugins, "escape", markers, false)?;
    let worker = start_worker(broker.addr, "we", &plugins, &[])?;
    wait_for_workers(broker.addr, &["we"]).await?;
    let c = connect(broker.addr).await?;
    for round in 0..3 {
        let spec = client::RequestSpec {
            service: "we".into(),
            plugin: "escape".into(),
            timeout: Some(Duration::from_secs(60)),
            wait: true,
            ..client::RequestSpec::default()
        };
        let outcome = c.request(spec).await?.collect().await;
        let exit = outcome.workers.first().and_then(|w| w.exit_code);
        assert_eq!(exit, Some(0), "round {round}: {outcome:?}");
        all_gone(
            &markers,
            Duration::from_secs(10),
            &format!("round {round}: the escaped processes to end with the request"),
        )
        .await?;
    }
    wait_until(Duration::from_secs(10), "no plugin cgroup left", || async {
        cgroups_of(worker.pid()).is_empty()
    })
    .await
    .with_context(|| format!("left: {:?}", cgroups_of(worker.pid())))?;
    Ok(())
}

/// Issue 25, finding 8: a worker stopped with SIGTERM while a plugin with escaped processes
/// runs leaves none of them running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_plugin_processes_end_with_a_stopped_worker() -> Result<()> {
    let markers = ["1003.25803", "1004.25804"];
    let broker = Broker::start("", 1)?;
    let plugins = Plugins::core()?;
    escaping_plugin(&plugins, "linger", markers, true)?;
    let mut worker: Proc = start_worker(broker.addr, "wl", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wl"]).await?;
    let c = connect(broker.addr).await?;
    let spec = client::RequestSpec {
        service: "wl".into(),
        plugin: "linger".into(),
        timeout: Some(Duration::from_secs(600)),
        wait: true,
        ..client::RequestSpec::default()
    };
    let _handle = c.request(spec).await?;
    let started = wait_until(
        Duration::from_secs(10),
        "the escaped processes to run",
        || async { markers.iter().all(|m| !pids_running(m).is_empty()) },
    )
    .await;
    if let Err(e) = started {
        all_gone(&markers, Duration::ZERO, "cleanup").await.ok();
        return Err(e);
    }
    worker.signal(libc::SIGTERM);
    let exited = worker.wait_exit(Duration::from_secs(20))?;
    assert!(exited.is_some(), "the worker did not stop on SIGTERM");
    all_gone(
        &markers,
        Duration::from_secs(5),
        "the escaped processes to end with the worker",
    )
    .await?;
    assert!(
        cgroups_of(worker.pid()).is_empty(),
        "{:?}",
        cgroups_of(worker.pid())
    );
    Ok(())
}

/// The fs and the broker are SIGKILLed together while lines stream (one line per `write(2)`,
/// so the sender has many records in flight and the spool's acknowledged position lags),
/// then both are started again; three times. Every line whose write returned arrives
/// exactly once, in order: the replays of the restarted fs, which the new broker's window
/// does not know, are answered by the worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_and_broker_killed_together_run_each_line_once() -> Result<()> {
    let mut rig = Rig::start(&[]).await?;
    rig.log_trigger("access", json!({})).await?;
    let file = rig.mnt().join("logs/access");
    let sink = rig.sink("access");
    // Lines acknowledged per round; each round writes lines of its own tag, and the next
    // round's kill comes while the fs still sends this round's backlog.
    let mut acknowledged = Vec::new();
    for round in 0..ROUNDS {
        let progress = Arc::new(AtomicUsize::new(0));
        let (p, f) = (progress.clone(), file.clone());
        let tag = format!("r{round}");
        let writer = std::thread::spawn(move || {
            write_lines(&f, &tag, 0, LINES, PER_WRITE, Duration::ZERO, Some(p))
        });
        wait_until(
            Duration::from_secs(60),
            "the writer a third of the way",
            || async { progress.load(Ordering::Relaxed) >= LINES / 3 },
        )
        .await?;
        // Both at once: neither sees the other go first.
        let fs_pid = rig.fs.as_ref().map(|p| p.pid() as i32);
        let broker_pid = rig.broker.as_ref().map(|p| p.pid() as i32);
        for pid in [fs_pid, broker_pid].into_iter().flatten() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut fs) = rig.fs.take() {
            fs.kill();
        }
        rig.kill_broker();
        let (n, err) = writer.join().unwrap();
        assert!(err.is_some(), "round {round}: the writer saw the fs die");
        acknowledged.push(n);
        rig.restart_broker()?;
        rig.start_fs()?;
    }
    let complete = |by_tag: &std::collections::HashMap<String, Vec<usize>>| {
        acknowledged.iter().enumerate().all(|(round, &n)| {
            let got = by_tag
                .get(&format!("r{round}"))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            got.iter().collect::<BTreeSet<_>>().len() >= n
        })
    };
    // Every acknowledged line there (duplicates do not count), then a moment for any late
    // replay to land.
    wait_until(
        Duration::from_secs(120),
        "every acknowledged line at the worker",
        || async { complete(&read_sink(&sink)) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_tag = read_sink(&sink);
    let mut duplicated = 0;
    for (round, &n) in acknowledged.iter().enumerate() {
        let got = &by_tag[&format!("r{round}")];
        let distinct = got.iter().collect::<BTreeSet<_>>().len();
        duplicated += got.len() - distinct;
        eprintln!(
            "round {round}: {} lines, {distinct} distinct, {n} acknowledged",
            got.len()
        );
    }
    assert_eq!(
        duplicated, 0,
        "lines run twice after the fs and the broker were killed together"
    );
    for (round, &n) in acknowledged.iter().enumerate() {
        let got = &by_tag[&format!("r{round}")];
        // The write in flight when the fs died may or may not have reached the spool.
        let distinct = got.iter().collect::<BTreeSet<_>>().len();
        assert!(
            distinct == n || distinct == n + PER_WRITE,
            "round {round}: {distinct} distinct lines for {n} acknowledged"
        );
        assert_exactly_once_in_order(got, distinct, &format!("round {round}"));
    }
    Ok(())
}

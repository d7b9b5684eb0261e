//! The core plugins served inside the worker (issue 11): `plugins install` writes manifests,
//! not copies of the binary; `echo`, `file` and `append` start no process; `append` writes
//! every line once; `command` runs with the worker's shell.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tests::*;

/// Total size of the files under `dir`.
fn tree_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            tree_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// The live children of `pid` (every thread's), from `/proc`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Samples `pid`'s children as fast as it can until stopped; every child pid seen.
fn watch_children(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<BTreeSet<u32>> {
    std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::SeqCst) {
            seen.extend(children(pid));
        }
        seen
    })
}

fn spec(plugin: &str, payload: Vec<u8>, args: &[(&str, &str)]) -> client::RequestSpec {
    client::RequestSpec {
        service: "core".into(),
        plugin: plugin.into(),
        payload,
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        timeout: Some(Duration::from_secs(30)),
        ..client::RequestSpec::default()
    }
}

/// Runs `spec` and returns (exit status, stdout lines).
async fn run(c: &client::Client, spec: client::RequestSpec) -> Result<(i32, Vec<String>)> {
    let outcome = c.request(spec).await?.collect().await;
    let lines = outcome
        .workers
        .iter()
        .flat_map(|w| w.output.iter())
        .map(|l| l.line.clone())
        .collect();
    Ok((outcome.exit_status(), lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_plugins_run_inside_the_worker() -> Result<()> {
    let plugins = Plugins::core()?;
    let installed = tree_bytes(plugins.path());
    println!("plugins install wrote {installed} bytes");
    assert!(installed < 1024 * 1024, "{installed} bytes installed");

    let broker = Broker::start("", 1)?;
    let worker = start_worker(broker.addr, "core", &plugins, &[])?;
    wait_for_workers(broker.addr, &["core"]).await?;
    let c = connect(broker.addr).await?;
    let out = tempfile::tempdir()?;
    let log = out.path().join("log");
    let file = out.path().join("file");
    let (log_arg, file_arg) = (log.display().to_string(), file.display().to_string());

    // 1,000 requests, 50 at a time, while the worker's children are watched.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_children(worker.pid(), stop.clone());
    let mut i = 0u32;
    while i < 1000 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let spec = match i % 3 {
                0 => spec("echo", format!("echo {i}").into_bytes(), &[]),
                1 => spec(
                    "append",
                    format!("line {i}").into_bytes(),
                    &[("path", &log_arg)],
                ),
                _ => spec(
                    "file",
                    format!("file {i}").into_bytes(),
                    &[("path", &file_arg)],
                ),
            };
            let c = c.clone();
            let n = i;
            batch.push(tokio::spawn(async move { (n, run(&c, spec).await) }));
            i += 1;
        }
        for task in batch {
            let (n, result) = task.await?;
            let (status, lines) = result?;
            assert_eq!(status, 0, "request {n}: {lines:?}");
            match n % 3 {
                0 => assert_eq!(lines, [format!("echo {n}")]),
                1 => assert!(lines.is_empty(), "{lines:?}"),
                _ => assert_eq!(lines, ["file has been written."]),
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let spawned = watcher.join().unwrap();
    assert!(
        spawned.is_empty(),
        "echo/file/append started processes: {spawned:?}"
    );

    // Every appended line is in the file exactly once.
    let text = std::fs::read_to_string(&log).context("the appended log")?;
    let lines: Vec<&str> = text.lines().collect();
    let unique: BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!((lines.len(), unique.len()), (333, 333));
    assert!(std::fs::read_to_string(&file)?.starts_with("file "));

    // The watcher does see processes: `command` runs one per request.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_children(worker.pid(), stop.clone());
    let (status, lines) = run(
        &c,
        client::RequestSpec {
            command: vec!["sleep 0.2; echo $0".into()],
            ..spec("command", Vec::new(), &[])
        },
    )
    .await?;
    stop.store(true, Ordering::SeqCst);
    assert_eq!((status, lines), (0, vec!["sh".to_string()]));
    assert!(
        !watcher.join().unwrap().is_empty(),
        "the watcher saw no `command` process"
    );
    Ok(())
}

/// `command` runs with the worker's shell: `sh` by default, `--shell bash` for bash syntax.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_runs_with_the_workers_shell() -> Result<()> {
    let plugins = Plugins::core()?;
    let broker = Broker::start("", 1)?;
    let _sh = start_worker(broker.addr, "with-sh", &plugins, &[])?;
    let _bash = start_worker(broker.addr, "with-bash", &plugins, &["--shell", "bash"])?;
    wait_for_workers(broker.addr, &["with-sh", "with-bash"]).await?;
    let c = connect(broker.addr).await?;
    let script = "echo ${BASH_VERSION:+bash}$0; [[ 1 == 1 ]] && echo double-brackets";
    // `sh` (dash here) has no `[[`: its error goes to stderr, which is output too.
    for (service, want) in [
        ("with-bash", vec!["bashbash", "double-brackets"]),
        ("with-sh", vec!["sh"]),
    ] {
        let (_, lines) = run(
            &c,
            client::RequestSpec {
                service: service.into(),
                command: vec![script.into()],
                ..spec("command", Vec::new(), &[])
            },
        )
        .await?;
        let ok: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .filter(|l| !l.contains("not found"))
            .collect();
        assert_eq!(ok, want, "{service}: {lines:?}");
    }
    Ok(())
}

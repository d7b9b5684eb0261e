//! The fs module (`triggerfs fs`): trigger files over a real FUSE mount, and log shipping that
//! loses nothing — through broker restarts, an fs killed mid-run, and a full spool.
//!
//! Each test runs a control plane, a broker that takes its configuration from it, a worker
//! with the core plugins, and `triggerfs fs` mounted on a temporary directory, all on
//! 127.0.0.1. Log-shipping triggers are bound to the in-worker `append` plugin; the file it
//! appends to is the truth every test checks line by line.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{
    free_port, start_controlled_broker, start_worker, wait_until, Api, Control, Plugins, Proc,
    TestApi,
};

/// A whole system with an fs module mounted (also used by `containment`).
pub(crate) struct Rig {
    pub(crate) control: Control,
    pub(crate) api: Api,
    pub(crate) port: u16,
    pub(crate) broker: Option<Proc>,
    pub(crate) _worker: Proc,
    pub(crate) _plugins: Plugins,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) fs: Option<Proc>,
    /// What the fs printed on its terminal.
    pub(crate) fs_out: Arc<Mutex<Vec<String>>>,
    /// Extra `triggerfs fs` flags.
    pub(crate) fs_flags: Vec<String>,
    /// The fs's `--broker`.
    pub(crate) brokers: String,
}

impl Rig {
    /// Control plane, broker, worker `w1` bound to service `ship`, directory `/logs`.
    pub(crate) async fn start(fs_flags: &[&str]) -> Result<Rig> {
        let port = free_port();
        let broker_addr = format!("127.0.0.1:{port}");
        let control = Control::start(&broker_addr)?;
        let (team, admin, secret) = control.admin.clone();
        let api = Api::login(&control.url, &team, &admin, &secret).await?;
        let token = api.new_worker("w1").await?;
        api.ok(
            "POST",
            "/api/v1/services",
            json!({"name": "ship", "workers": ["w1"]}),
        )
        .await?;
        api.ok("POST", "/api/v1/directories", json!({"path": "/logs"}))
            .await?;
        let (broker, _) = start_controlled_broker(&control, port, &[])?;
        let plugins = Plugins::core()?;
        let worker = start_worker(
            broker_addr.parse()?,
            "w1",
            &plugins,
            &["--team", &team, "--token", &token],
        )?;
        api.wait_worker_state("w1", "ONLINE", Duration::from_secs(20))
            .await?;
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("mnt"))?;
        let mut rig = Rig {
            control,
            api,
            port,
            broker: Some(broker),
            _worker: worker,
            _plugins: plugins,
            dir,
            fs: None,
            fs_out: Arc::new(Mutex::new(Vec::new())),
            fs_flags: fs_flags.iter().map(|s| s.to_string()).collect(),
            brokers: broker_addr,
        };
        rig.start_fs()?;
        Ok(rig)
    }

    pub(crate) fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn logfile(&self) -> PathBuf {
        self.dir.path().join("triggerfs.log")
    }

    /// Where `append` writes for trigger `name`.
    pub(crate) fn sink(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.out"))
    }

    /// Starts `triggerfs fs` and waits for it to be serving.
    pub(crate) fn start_fs(&mut self) -> Result<()> {
        let (team, admin, secret) = self.control.admin.clone();
        let broker = self.brokers.clone();
        let mnt = self.mnt();
        let spool = self.dir.path().join("spool");
        let logfile = self.logfile();
        let mut args = vec![
            "fs",
            "--mount",
            mnt.to_str().unwrap(),
            "--url",
            &self.control.url,
            "--broker",
            &broker,
            "--team",
            &team,
            "--identity",
            &admin,
            "--secret",
            &secret,
            "--spool",
            spool.to_str().unwrap(),
            "--logfile",
            logfile.to_str().unwrap(),
        ];
        args.extend(self.fs_flags.iter().map(String::as_str));
        let (proc, stdout) = Proc::spawn("fs", &args)?;
        let out = self.fs_out.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if line.ends_with("Ready and running in foreground...") {
                    let _ = ready_tx.send(());
                }
                out.lock().unwrap().push(line);
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            bail!(
                "the fs did not get ready:\n{}\n{}",
                self.fs_out.lock().unwrap().join("\n"),
                proc.stderr()
            );
        }
        self.fs = Some(proc);
        Ok(())
    }

    /// Creates trigger `/logs/<name>` bound to `append` writing to [`Rig::sink`].
    pub(crate) async fn log_trigger(&self, name: &str, extra: Value) -> Result<Value> {
        let mut body = json!({
            "path": format!("/logs/{name}"),
            "plugin": "append",
            "service": "ship",
            "split": "lines",
            "args": {"path": self.sink(name).display().to_string()},
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let t = self.api.ok("POST", "/api/v1/triggers", body).await?;
        wait_until(
            Duration::from_secs(5),
            "the trigger in the mount",
            || async { self.mnt().join("logs").join(name).exists() },
        )
        .await?;
        Ok(t)
    }

    pub(crate) fn kill_broker(&mut self) {
        if let Some(mut b) = self.broker.take() {
            b.kill();
        }
    }

    /// Starts the broker again on its port. While it was down, another test's connection may
    /// have taken the port as its local one for a moment: a few attempts.
    pub(crate) fn restart_broker(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            match start_controlled_broker(&self.control, self.port, &[]) {
                Ok((broker, _)) => {
                    self.broker = Some(broker);
                    return Ok(());
                }
                Err(e) if attempt < 20 => {
                    eprintln!("the broker did not start again ({e:#}); trying again");
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn fs_output(&self) -> String {
        self.fs_out.lock().unwrap().join("\n")
    }

    /// Waits until `sink` has at least `n` lines; the error says how many and what the fs
    /// printed.
    pub(crate) async fn wait_lines(&self, sink: &Path, n: usize, within: Duration) -> Result<()> {
        wait_until(within, &format!("{n} lines at the worker"), || async {
            count_lines(sink) >= n
        })
        .await
        .with_context(|| {
            format!(
                "{} of {n} lines; fs said:\n{}",
                count_lines(sink),
                self.fs_output()
            )
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut fs) = self.fs.take() {
            fs.kill();
        }
        // A killed fs leaves its mount behind: clear it before the directory goes.
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(self.mnt())
            .status();
    }
}

/// Writes `lines` lines `"<tag> <n>"` (n from `from`) to `path`, `per_write` lines per
/// `write(2)`, pausing `pause` between writes; returns how many lines were in writes that
/// returned, and the error that stopped it, if one did.
pub(crate) fn write_lines(
    path: &Path,
    tag: &str,
    from: usize,
    lines: usize,
    per_write: usize,
    pause: Duration,
    progress: Option<Arc<std::sync::atomic::AtomicUsize>>,
) -> (usize, Option<std::io::Error>) {
    let mut file = match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    let mut written = 0;
    while written < lines {
        let n = per_write.min(lines - written);
        let mut buf = String::new();
        for i in 0..n {
            buf.push_str(&format!("{tag} {:08}\n", from + written + i));
        }
        // One write(2) per batch: the fs sees each as one write.
        if let Err(e) = file.write_all(buf.as_bytes()) {
            return (written, Some(e));
        }
        written += n;
        if let Some(p) = &progress {
            p.store(written, std::sync::atomic::Ordering::Relaxed);
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    (written, None)
}

/// The lines of the sink file, grouped by tag: each tag's numbers in file order.
pub(crate) fn read_sink(path: &Path) -> HashMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_tag: HashMap<String, Vec<usize>> = HashMap::new();
    for line in text.lines() {
        let (tag, n) = line.split_once(' ').unwrap_or((line, ""));
        by_tag
            .entry(tag.to_string())
            .or_default()
            .push(n.parse().unwrap_or(usize::MAX));
    }
    by_tag
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Every number from 0 to `n` once, in order.
pub(crate) fn assert_exactly_once_in_order(got: &[usize], n: usize, what: &str) {
    if got.len() == n && got.iter().enumerate().all(|(i, v)| *v == i) {
        return;
    }
    let mut seen = std::collections::BTreeSet::new();
    let dups: Vec<usize> = got
        .iter()
        .filter(|v| !seen.insert(**v))
        .copied()
        .take(5)
        .collect();
    let missing: Vec<usize> = (0..n).filter(|i| !seen.contains(i)).take(5).collect();
    let disorder = got.windows(2).position(|w| w[1] < w[0]);
    panic!(
        "{what}: {} lines for {n}; duplicates {dups:?}, missing {missing:?}, first out of order at {disorder:?}",
        got.len()
    );
}

/// Acceptance 1, the original's Get Started: a directory and a trigger made through the API
/// show in `ls -l`; `echo uptime > mnt/newtrigger/demotrigger` runs `command` on the
/// worker; the response is in the fs log and in `cat` of the file; the hit count is 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow() -> Result<()> {
    let rig = Rig::start(&[]).await?;
    rig.api
        .ok(
            "POST",
            "/api/v1/directories",
            json!({"path": "/newtrigger"}),
        )
        .await?;
    let t = rig
        .api
        .ok(
            "POST",
            "/api/v1/triggers",
            json!({"path": "/newtrigger/demotrigger", "plugin": "command", "service": "ship", "timeout": "10s"}),
        )
        .await?;
    let mnt = rig.mnt();
    let ls = |args: &[&str]| -> Result<String> {
        let out = Command::new("ls").args(args).current_dir(&mnt).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_until(
        Duration::from_secs(2),
        "newtrigger/demotrigger in ls",
        || async { ls(&["-l", "newtrigger"]).is_ok_and(|s| s.contains("demotrigger")) },
    )
    .await?;
    let listing = ls(&["-l", "newtrigger"])?;
    let row = listing
        .lines()
        .find(|l| l.ends_with("demotrigger"))
        .context("row")?;
    // A trigger made without a mode is 0600 (issue 25): its responses are the mounting user's.
    assert!(row.starts_with("-rw------- 1 root root"), "{listing}");
    assert!(ls(&["-l"])?
        .lines()
        .any(|l| l.starts_with("drwxr-xr-x") && l.ends_with("newtrigger")));

    let status = Command::new("bash")
        .args(["-c", "echo uptime > mnt/newtrigger/demotrigger"])
        .current_dir(rig.dir.path())
        .status()?;
    assert!(status.success());
    let id = t["id"].as_i64().context("id")?;
    wait_until(
        Duration::from_secs(10),
        "the response in the fs log",
        || async {
            std::fs::read_to_string(rig.logfile())
                .is_ok_and(|l| l.contains("/newtrigger/demotrigger worker w1 exit 0"))
        },
    )
    .await?;
    let log = std::fs::read_to_string(rig.logfile())?;
    assert!(log.contains("=== triggerfs module started ==="), "{log}");
    assert!(
        log.contains(&format!("Serving filesystem in {}", mnt.display())),
        "{log}"
    );
    assert!(
        log.contains("load average"),
        "uptime's output is logged: {log}"
    );
    assert!(
        rig.fs_output()
            .contains("/newtrigger/demotrigger worker w1 exit 0"),
        "and printed"
    );
    let cat = std::fs::read_to_string(mnt.join("newtrigger/demotrigger"))?;
    assert!(
        cat.contains("/newtrigger/demotrigger worker w1 exit 0") && cat.contains("load average"),
        "{cat}"
    );
    wait_until(Duration::from_secs(5), "hits 1", || async {
        matches!(rig.api.ok("GET", &format!("/api/v1/triggers/{id}"), Value::Null).await,
            Ok(t) if t["hits"] == 1)
    })
    .await?;
    Ok(())
}

/// Acceptance 2: two writers append 100,000 lines each to one `split = "lines"` trigger
/// bound to `append`: every line arrives exactly once, in order per writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_every_line_once_in_order() -> Result<()> {
    let rig = Rig::start(&[]).await?;
    rig.log_trigger("access", json!({})).await?;
    let file = rig.mnt().join("logs/access");
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let file = file.clone();
            std::thread::spawn(move || {
                write_lines(&file, tag, 0, 100_000, 37, Duration::ZERO, None)
            })
        })
        .collect();
    for w in writers {
        let (n, err) = w.join().unwrap();
        assert_eq!((n, err.map(|e| e.to_string())), (100_000, None));
    }
    let sink = rig.sink("access");
    rig.wait_lines(&sink, 200_000, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = read_sink(&sink);
    assert_eq!(got.len(), 2, "only the two writers' tags");
    assert_exactly_once_in_order(&got["a"], 100_000, "writer a");
    assert_exactly_once_in_order(&got["b"], 100_000, "writer b");
    Ok(())
}

/// Acceptance 3: the broker is SIGKILLed halfway through a 100,000-line run and started again
/// 5 s later; the writer never waits, and every line arrives exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_and_repeats_nothing() -> Result<()> {
    let mut rig = Rig::start(&[]).await?;
    rig.log_trigger("access", json!({})).await?;
    let file = rig.mnt().join("logs/access");
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = progress.clone();
    // 100,000 lines in 10,000 writes, 1.5 ms apart: the run lasts 15 s or more, so the writer
    // is still writing while the broker is down (unpaced, a fast writer could finish first)
    // and requests are in flight when it dies.
    let writer = std::thread::spawn(move || {
        write_lines(
            &file,
            "x",
            0,
            100_000,
            10,
            Duration::from_micros(1500),
            Some(p),
        )
    });
    wait_until(Duration::from_secs(60), "the writer halfway", || async {
        progress.load(std::sync::atomic::Ordering::Relaxed) >= 50_000
    })
    .await?;
    rig.kill_broker();
    let killed_at = progress.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = progress.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        during > killed_at,
        "writes went on while the broker was down ({killed_at} → {during})"
    );
    rig.restart_broker()?;
    let (n, err) = writer.join().unwrap();
    assert_eq!((n, err.map(|e| e.to_string())), (100_000, None));
    let sink = rig.sink("access");
    rig.wait_lines(&sink, 100_000, Duration::from_secs(90))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once_in_order(&read_sink(&sink)["x"], 100_000, "after a broker restart");
    let replays = rig
        ._worker
        .stderr()
        .matches("answered from the idempotency window")
        .count();
    eprintln!("the worker answered {replays} replayed requests from its window");
    Ok(())
}

/// Acceptance 4: the fs is SIGKILLed halfway through a run and started again (clearing the
/// mount the dead process left): every line whose `write(2)` returned arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fs_killed_mid_run_loses_no_acknowledged_write() -> Result<()> {
    let mut rig = Rig::start(&[]).await?;
    rig.log_trigger("access", json!({})).await?;
    let file = rig.mnt().join("logs/access");
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p = progress.clone();
    let f = file.clone();
    // One line per write(2), as nginx without `buffer=`.
    let writer =
        std::thread::spawn(move || write_lines(&f, "k", 0, 20_000, 1, Duration::ZERO, Some(p)));
    wait_until(Duration::from_secs(60), "the writer halfway", || async {
        progress.load(std::sync::atomic::Ordering::Relaxed) >= 10_000
    })
    .await?;
    if let Some(mut fs) = rig.fs.take() {
        fs.kill();
    }
    let (acknowledged, err) = writer.join().unwrap();
    assert!(err.is_some(), "the writer saw the fs die");
    assert!(acknowledged < 20_000);
    // Started again on the same mount point: the stale mount is cleared.
    rig.start_fs()?;
    let sink = rig.sink("access");
    rig.wait_lines(&sink, acknowledged, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = &read_sink(&sink)["k"];
    // The write that was in flight when the fs died may or may not have reached the spool.
    let n = got.len();
    assert!(
        n == acknowledged || n == acknowledged + 1,
        "{n} lines for {acknowledged} acknowledged"
    );
    assert_exactly_once_in_order(got, n, "after the fs was killed");
    // And the mount works again.
    let (n2, err) = write_lines(&file, "k", n, 100, 10, Duration::ZERO, None);
    assert_eq!((n2, err.map(|e| e.to_string())), (100, None));
    rig.wait_lines(&sink, n + 100, Duration::from_secs(20))
        .await?;
    Ok(())
}

/// Acceptance 5: with the broker down, a full spool fails writes with ENOSPC (counted and
/// logged); once the broker is back the spool drains and writes succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_says_enospc_until_it_drains() -> Result<()> {
    let mut rig = Rig::start(&["--spool-max", "256KiB"]).await?;
    rig.log_trigger("access", json!({})).await?;
    let file = rig.mnt().join("logs/access");
    rig.kill_broker();
    // ~100 bytes a line, 100 lines a write: 256 KiB is about 25 writes.
    let (accepted, err) = write_lines(&file, "s", 0, 100_000, 100, Duration::ZERO, None);
    let err = err.context("the spool never filled")?;
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(accepted > 0 && accepted < 100_000, "{accepted}");
    wait_until(Duration::from_secs(5), "ENOSPC in the fs log", || async {
        std::fs::read_to_string(rig.logfile()).is_ok_and(|l| l.contains("ENOSPC"))
    })
    .await?;
    rig.restart_broker()?;
    let sink = rig.sink("access");
    rig.wait_lines(&sink, accepted, Duration::from_secs(60))
        .await?;
    // The lines are at the worker; their answers (which free the spool) may still be on
    // their way back to the fs, so a write may be refused for a moment more. A refused
    // write leaves nothing behind, so it is simply tried again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut more = 0;
    while more < 1000 {
        let (n, err) = write_lines(&file, "s", accepted + more, 100, 100, Duration::ZERO, None);
        more += n;
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(e) => bail!("a write after the spool drained failed: {e}"),
        }
    }
    rig.wait_lines(&sink, accepted + 1000, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once_in_order(
        &read_sink(&sink)["s"],
        accepted + 1000,
        "across a full spool",
    );
    Ok(())
}

/// Acceptance 6: the tree follows the API within a second; `mv` and `chmod` go to the
/// control plane and back; creating files and removing triggers is refused with EPERM; a
/// trigger bound to a service that does not exist is refused by the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_follows_the_api_and_refuses_the_rest() -> Result<()> {
    let rig = Rig::start(&[]).await?;
    let mnt = rig.mnt();
    let t = rig
        .api
        .ok(
            "POST",
            "/api/v1/triggers",
            json!({"path": "/logs/app", "plugin": "append", "service": "ship"}),
        )
        .await?;
    let id = t["id"].as_i64().context("id")?;
    let started = Instant::now();
    wait_until(
        Duration::from_secs(1),
        "a new trigger in ls within 1 s",
        || async {
            std::fs::read_dir(mnt.join("logs"))
                .is_ok_and(|d| d.flatten().any(|e| e.file_name() == "app"))
        },
    )
    .await?;
    eprintln!("a new trigger showed in {:?}", started.elapsed());

    mv_and_chmod_go_to_the_control_plane(&rig, &mnt, id).await?;

    directories_and_what_is_refused(&rig, &mnt).await?;

    // A trigger bound to a service that does not exist: the API says so.
    let (status, body) = rig
        .api
        .call(
            "POST",
            "/api/v1/triggers",
            json!({"path": "/logs/bad", "plugin": "append", "service": "nosuch"}),
        )
        .await?;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no service nosuch"),
        "{body}"
    );

    // A deleted trigger leaves the mount.
    rig.api
        .ok("DELETE", &format!("/api/v1/triggers/{id}"), Value::Null)
        .await?;
    wait_until(Duration::from_secs(1), "a deleted trigger gone", || async {
        !mnt.join("logs/app3").exists()
    })
    .await?;
    Ok(())
}

/// mv: renamed in the control plane, the new name works at once, and an API rename shows in
/// the mount; chmod: stored, and shown back.
async fn mv_and_chmod_go_to_the_control_plane(rig: &Rig, mnt: &Path, id: i64) -> Result<()> {
    // mv: renamed in the control plane, and the new name works at once.
    std::fs::rename(mnt.join("logs/app"), mnt.join("logs/app2"))?;
    let t = rig
        .api
        .ok("GET", &format!("/api/v1/triggers/{id}"), Value::Null)
        .await?;
    assert_eq!(t["path"], "/logs/app2");
    assert!(mnt.join("logs/app2").exists() && !mnt.join("logs/app").exists());
    // A rename through the API shows in the mount within a second.
    rig.api
        .ok(
            "PATCH",
            &format!("/api/v1/triggers/{id}"),
            json!({"path": "/logs/app3"}),
        )
        .await?;
    wait_until(
        Duration::from_secs(1),
        "the API's rename in the mount",
        || async { mnt.join("logs/app3").exists() && !mnt.join("logs/app2").exists() },
    )
    .await?;

    // chmod: stored, and shown back.
    std::fs::set_permissions(
        mnt.join("logs/app3"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let t = rig
        .api
        .ok("GET", &format!("/api/v1/triggers/{id}"), Value::Null)
        .await?;
    assert_eq!(t["mode"], 0o600);
    assert_eq!(
        std::fs::metadata(mnt.join("logs/app3"))?
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    Ok(())
}

/// mkdir and rmdir; refused: new regular files, removing a trigger, a trigger moved to the
/// root; `touch` of a trigger sets its mtime.
async fn directories_and_what_is_refused(rig: &Rig, mnt: &Path) -> Result<()> {
    // mkdir / rmdir.
    std::fs::create_dir(mnt.join("made"))?;
    let dirs = rig
        .api
        .ok("GET", "/api/v1/directories", Value::Null)
        .await?;
    assert!(
        dirs.as_array().unwrap().iter().any(|d| d["name"] == "made"),
        "{dirs}"
    );
    let e = std::fs::remove_dir(mnt.join("logs")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
    std::fs::remove_dir(mnt.join("made"))?;
    assert!(!mnt.join("made").exists());

    // Refused: new regular files, removing a trigger, a trigger in the root.
    let shell = |cmd: &str| -> Result<String> {
        let out = Command::new("bash")
            .args(["-c", cmd])
            .current_dir(mnt)
            .output()?;
        assert!(!out.status.success(), "`{cmd}` succeeded");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert!(shell("touch logs/newfile")?.contains("Operation not permitted"));
    assert!(shell("rm logs/app3")?.contains("Operation not permitted"));
    assert!(shell("mv logs/app3 app3")?.contains("Operation not permitted"));
    // `touch` of a trigger works, and sets its mtime.
    let status = Command::new("touch")
        .arg("-d")
        .arg("2020-01-02 03:04:05")
        .arg(mnt.join("logs/app3"))
        .status()?;
    assert!(status.success());
    let mtime = std::fs::metadata(mnt.join("logs/app3"))?.modified()?;
    let day = mtime.duration_since(std::time::UNIX_EPOCH)?.as_secs() / 86400;
    assert!(
        (18262..=18263).contains(&day),
        "2020-01-02 in any time zone: day {day}"
    );
    Ok(())
}

/// Issue 28: directories at any depth through the mount. `mkdir -p` makes each level in the
/// control plane; the seed's weather station (`echo ... > weatherstation/rpi/station1`)
/// reaches the worker; `rmdir` refuses a directory with anything in it (`ENOTEMPTY`) and
/// removes an empty one; `mv` of a trigger and of a directory (with a trigger inside) go to
/// the control plane, keep every inode (`stat` before and after), and the moved trigger
/// still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_directories_through_the_mount() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let rig = Rig::start(&[]).await?;
    let mnt = rig.mnt();
    let sh = |cmd: &str| -> Result<()> {
        let out = Command::new("bash")
            .args(["-c", cmd])
            .current_dir(&mnt)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "`{cmd}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let paths = || async {
        let dirs = rig
            .api
            .ok("GET", "/api/v1/directories", Value::Null)
            .await?;
        let paths = dirs.as_array().context("a list")?.iter();
        Ok::<Vec<String>, anyhow::Error>(
            paths
                .map(|d| d["path"].as_str().unwrap_or_default().to_string())
                .collect(),
        )
    };
    sh("mkdir -p weatherstation/rpi/spare")?;
    assert_eq!(
        paths().await?,
        [
            "/logs",
            "/weatherstation",
            "/weatherstation/rpi",
            "/weatherstation/rpi/spare"
        ]
    );
    let sink = rig.sink("station1");
    let body = json!({"path": "/weatherstation/rpi/station1", "plugin": "append", "service": "ship",
        "split": "lines", "args": {"path": sink.display().to_string()}});
    let t = rig.api.ok("POST", "/api/v1/triggers", body).await?;
    let station = mnt.join("weatherstation/rpi/station1");
    wait_until(
        Duration::from_secs(5),
        "the trigger in the mount",
        || async { station.exists() },
    )
    .await?;
    sh("echo 'somedata 31F;10°;3.2' > weatherstation/rpi/station1")?;
    rig.wait_lines(&sink, 1, Duration::from_secs(15)).await?;
    assert_eq!(std::fs::read_to_string(&sink)?, "somedata 31F;10°;3.2\n");

    // rmdir: an empty directory goes; one with a trigger or a directory in it stays.
    for full in ["weatherstation", "weatherstation/rpi"] {
        let e = std::fs::remove_dir(mnt.join(full)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{full}: {e}");
    }
    std::fs::remove_dir(mnt.join("weatherstation/rpi/spare"))?;
    assert_eq!(
        paths().await?,
        ["/logs", "/weatherstation", "/weatherstation/rpi"]
    );

    // mv of a trigger to another directory: the same inode, the new path in the API.
    let ino = std::fs::metadata(&station)?.ino();
    std::fs::rename(&station, mnt.join("weatherstation/station2"))?;
    assert_eq!(
        std::fs::metadata(mnt.join("weatherstation/station2"))?.ino(),
        ino
    );
    let url = format!("/api/v1/triggers/{}", t["id"]);
    assert_eq!(
        rig.api.ok("GET", &url, Value::Null).await?["path"],
        "/weatherstation/station2"
    );
    std::fs::rename(mnt.join("weatherstation/station2"), &station)?;

    // mv of a directory into another: everything under it moves, every inode stays.
    let dir_ino = std::fs::metadata(mnt.join("weatherstation/rpi"))?.ino();
    std::fs::create_dir(mnt.join("sites"))?;
    std::fs::rename(mnt.join("weatherstation"), mnt.join("sites/garden"))?;
    assert_eq!(
        std::fs::metadata(mnt.join("sites/garden/rpi"))?.ino(),
        dir_ino
    );
    let moved = mnt.join("sites/garden/rpi/station1");
    assert_eq!(std::fs::metadata(&moved)?.ino(), ino);
    assert!(!mnt.join("weatherstation").exists());
    assert_eq!(
        paths().await?,
        ["/logs", "/sites", "/sites/garden", "/sites/garden/rpi"]
    );
    assert_eq!(
        rig.api.ok("GET", &url, Value::Null).await?["path"],
        "/sites/garden/rpi/station1"
    );
    // The moved trigger still works, and a directory does not go into itself.
    sh("echo 'moved 30F' > sites/garden/rpi/station1")?;
    rig.wait_lines(&sink, 2, Duration::from_secs(15)).await?;
    let e = std::fs::rename(mnt.join("sites"), mnt.join("sites/garden/rpi/x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    // 16 levels, and no more: the 17th is ENAMETOOLONG.
    let deep: Vec<String> = (1..=17).map(|i| format!("l{i}")).collect();
    sh(&format!("mkdir -p {}", deep[..16].join("/")))?;
    let e = std::fs::create_dir(mnt.join(deep.join("/"))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}");
    Ok(())
}

/// A trigger created before it is configured (the console's `set trigger NAME /dir/name`):
/// a write to it fails with EDESTADDRREQ and one log line says what to set, nothing is
/// spooled; once a PATCH gives it a service and a plugin, writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_without_service_or_plugin_says_edestaddrreq() -> Result<()> {
    let rig = Rig::start(&[]).await?;
    let sink = rig.sink("pending");
    let t = rig
        .api
        .ok(
            "POST",
            "/api/v1/triggers",
            json!({"path": "/logs/pending", "split": "lines",
                   "args": {"path": sink.display().to_string()}}),
        )
        .await?;
    assert_eq!(
        (t["plugin"].as_str(), t["service"].as_str()),
        (Some(""), Some(""))
    );
    let id = t["id"].as_i64().context("id")?;
    let file = rig.mnt().join("logs/pending");
    wait_until(
        Duration::from_secs(5),
        "the trigger in the mount",
        || async { file.exists() },
    )
    .await?;
    let write = |line: &str| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(&file)?;
        f.write_all(line.as_bytes())
    };
    let logfile = rig.logfile();
    let refused = |what: &str| {
        let what = what.to_string();
        let (write, logfile) = (&write, &logfile);
        async move {
            // The fs learns each change through its event stream: try until it has.
            let said = format!("trigger /logs/pending has no {what}: set trigger pending {what}");
            wait_until(
                Duration::from_secs(5),
                &format!("no {what} in the log"),
                || async {
                    let e = write("early\n").expect_err("a write to an unconfigured trigger");
                    assert_eq!(e.raw_os_error(), Some(libc::EDESTADDRREQ), "{e}");
                    std::fs::read_to_string(logfile).is_ok_and(|l| l.contains(&said))
                },
            )
            .await
        }
    };
    refused("service").await?;
    rig.api
        .ok(
            "PATCH",
            &format!("/api/v1/triggers/{id}"),
            json!({"service": "ship"}),
        )
        .await?;
    refused("plugin").await?;
    let log = std::fs::read_to_string(rig.logfile())?;
    assert!(
        log.contains("set trigger pending service attach SERVICE"),
        "{log}"
    );
    rig.api
        .ok(
            "PATCH",
            &format!("/api/v1/triggers/{id}"),
            json!({"plugin": "append"}),
        )
        .await?;
    wait_until(
        Duration::from_secs(5),
        "a write that goes through",
        || async {
            match write("shipped\n") {
                Ok(()) => true,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EDESTADDRREQ), "{e}");
                    false
                }
            }
        },
    )
    .await?;
    rig.wait_lines(&sink, 1, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing written before was spooled: the one line that went through is all there is.
    assert_eq!(std::fs::read_to_string(&sink)?, "shipped\n");
    Ok(())
}

/// SIGTERM unmounts cleanly, and a later start on the same directory works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_unmounts() -> Result<()> {
    let mut rig = Rig::start(&[]).await?;
    let fs = rig.fs.take().context("fs")?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(fs.pid() as i32, libc::SIGTERM) };
    let mnt = rig.mnt().display().to_string();
    wait_until(Duration::from_secs(10), "the mount gone", || async {
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&format!(" {mnt} "))
    })
    .await?;
    wait_until(Duration::from_secs(5), "the stop line", || async {
        rig.fs_output().contains("Stopped.")
    })
    .await?;
    drop(fs);
    rig.start_fs()?;
    assert!(rig.mnt().join("logs").is_dir());
    Ok(())
}

/// `--allow-other`: another user (a web server's workers) may write to a trigger whose mode
/// lets them; without it, or without the mode bits, they may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_write_only_with_allow_other_and_the_mode() -> Result<()> {
    let mut rig = Rig::start(&["--allow-other"]).await?;
    std::fs::set_permissions(rig.dir.path(), std::fs::Permissions::from_mode(0o755))?;
    rig.log_trigger("www", json!({"mode": 0o622})).await?;
    let file = rig.mnt().join("logs/www");
    let as_nobody = |text: &str| -> Result<std::process::Output> {
        Ok(Command::new("runuser")
            .args(["-u", "nobody", "--", "sh", "-c"])
            .arg(format!("printf '{text}\\n' >> {}", file.display()))
            .output()?)
    };
    let out = as_nobody("from nobody 1")?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sink = rig.sink("www");
    rig.wait_lines(&sink, 1, Duration::from_secs(10)).await?;
    // chmod 644: nobody may no longer write.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let out = as_nobody("from nobody 2")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    // Without --allow-other, nobody cannot even look.
    if let Some(mut fs) = rig.fs.take() {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(fs.pid() as i32, libc::SIGTERM) };
        wait_until(Duration::from_secs(10), "the fs stopped", || async {
            rig.fs_output().contains("Stopped.")
        })
        .await?;
        fs.kill();
    }
    rig.fs_flags.clear();
    rig.start_fs()?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    let out = as_nobody("from nobody 3")?;
    assert!(!out.status.success(), "nobody wrote without --allow-other");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&sink)?, "from nobody 1\n");
    Ok(())
}

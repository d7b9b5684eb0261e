//! Harness for the end-to-end tests: start the real `triggerfs` binary on 127.0.0.1 and
//! drive it.
//!
//! Every server binds port 0 and prints one `listening on <addr>` line that the harness
//! reads. Nothing sleeps for readiness: [`wait_until`] polls with a deadline. Every child
//! process is killed when its handle drops.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod netns;

/// The `triggerfs` binary under test: `$TRIGGERFS_BIN`, else the one cargo built beside
/// this test executable (`target/<profile>/triggerfs`).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRIGGERFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/triggerfs
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let candidate = profile_dir.join("triggerfs");
    assert!(
        candidate.exists(),
        "{} not built: run `cargo build` (or cargo test --workspace) first",
        candidate.display()
    );
    candidate
}

/// A child process killed on drop, with its stderr kept for failure messages.
pub struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Starts `triggerfs <args>`; stdout is returned for the caller to read.
    pub fn spawn(
        name: &str,
        args: &[&str],
    ) -> Result<(Proc, BufReader<std::process::ChildStdout>)> {
        let mut command = Command::new(bin());
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("TRIGGERFS_CONFIG");
        Proc::start(name, command)
    }

    /// Starts `command` with stdin from /dev/null; stdout is returned for the caller to read.
    pub fn start(
        name: &str,
        mut command: Command,
    ) -> Result<(Proc, BufReader<std::process::ChildStdout>)> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let mut kept = kept_log(name, child.id());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Some(file) = kept.as_mut() {
                    use std::io::Write;
                    let _ = file.write_all(&buf[..n]);
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok((
            Proc {
                child,
                stderr,
                name: name.to_string(),
            },
            stdout,
        ))
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped (`kill`/`wait_exit`
        // reap it), so the pid is still its own.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker process.
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on 127.0.0.1:0 with this `triggerfs.toml` text and `shards` shards.
    pub fn start(config: &str, shards: usize) -> Result<Broker> {
        Broker::start_on("127.0.0.1:0", config, shards)
    }

    /// Starts a broker on a given address (e.g. the port of one that was killed).
    pub fn start_on(listen: &str, config: &str, shards: usize) -> Result<Broker> {
        Broker::start_with(listen, config, shards, &[])
    }

    /// Starts a broker with extra `triggerfs broker` flags.
    pub fn start_with(listen: &str, config: &str, shards: usize, extra: &[&str]) -> Result<Broker> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("triggerfs.toml");
        std::fs::write(&path, config)?;
        let shards = shards.to_string();
        let mut args = vec![
            "broker",
            "--listen",
            listen,
            "--config",
            path.to_str().unwrap(),
            "--shards",
            &shards,
        ];
        args.extend_from_slice(extra);
        let (proc, mut stdout) = Proc::spawn("broker", &args)?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("broker did not start: {line:?}\n{}", proc.stderr()))?
            .parse()?;
        Ok(Broker {
            proc,
            addr,
            _dir: dir,
        })
    }
}

/// A plugins directory with the core plugins and any extra scripts.
pub struct Plugins {
    dir: tempfile::TempDir,
}

impl Plugins {
    /// Installs the core plugins with `triggerfs plugins install`.
    pub fn core() -> Result<Plugins> {
        let dir = tempfile::tempdir()?;
        let out = Command::new(bin())
            .args(["plugins", "install"])
            .arg(dir.path())
            .output()?;
        if !out.status.success() {
            bail!(
                "plugins install failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Plugins { dir })
    }

    /// Adds an executable script as plugin `<name>/<name>`.
    pub fn add_script(&self, name: &str, body: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d)?;
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n"))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Adds plugin `<name>/<name>` with this whole text (its own `#!` line) and, when given,
    /// the `plugin.toml` beside it.
    pub fn add_executable(&self, name: &str, text: &str, manifest: Option<&str>) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d)?;
        let p = d.join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        if let Some(manifest) = manifest {
            std::fs::write(d.join("plugin.toml"), manifest)?;
        }
        Ok(())
    }

    /// Copies `plugins/examples/<name>/` of this repository in as plugin `<name>`.
    pub fn add_example(&self, name: &str) -> Result<()> {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/examples")
            .join(name);
        let to = self.dir.path().join(name);
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from).with_context(|| format!("{}", from.display()))? {
            let entry = entry?;
            // `copy` keeps the mode: the executable stays executable.
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Starts `triggerfs worker` with this identity, announcing `services`.
pub fn start_worker(
    broker: SocketAddr,
    identity: &str,
    plugins: &Plugins,
    extra: &[&str],
) -> Result<Proc> {
    let addr = broker.to_string();
    let mut args = vec![
        "worker",
        "--identity",
        identity,
        "--broker",
        &addr,
        "--pluginspath",
        plugins.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (proc, _stdout) = Proc::spawn(&format!("worker {identity}"), &args)?;
    Ok(proc)
}

/// Connects one in-process worker (the worker library, as `triggerfs worker` runs it) per
/// identity in `ids` to the broker at `broker`, in team `default`, each announcing
/// `services`; they stop when the returned sender sends `true` or is dropped.
pub fn library_workers(
    broker: SocketAddr,
    plugins: &Plugins,
    ids: &[String],
    services: &[&str],
) -> tokio::sync::watch::Sender<bool> {
    let workers: Vec<(String, String)> = ids.iter().map(|id| (id.clone(), String::new())).collect();
    team_library_workers(&broker.to_string(), plugins, "default", &workers, services)
}

/// Connects one in-process worker per (identity, token) of `workers` to the broker at
/// `broker`, in `team`, each announcing `services`; they stop when the returned sender
/// sends `true` or is dropped.
pub fn team_library_workers(
    broker: &str,
    plugins: &Plugins,
    team: &str,
    workers: &[(String, String)],
    services: &[&str],
) -> tokio::sync::watch::Sender<bool> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for (id, token) in workers {
        let config = worker::WorkerConfig {
            brokers: client::BrokerList::one(broker),
            team: team.into(),
            identity: id.clone(),
            token: token.clone(),
            pluginspath: plugins.path().to_path_buf(),
            services: services.iter().map(|s| s.to_string()).collect(),
            max_concurrency: 4,
            shell: worker::DEFAULT_SHELL.into(),
            reconnect_max: Duration::from_secs(1),
            debug: false,
            max_output: worker::DEFAULT_MAX_OUTPUT,
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(worker::run(config, async move {
            let _ = stop.changed().await;
        }));
    }
    stop_tx
}

/// Runs a request through the control plane's HTTP gateway with `curl` (as a user would)
/// and returns its NDJSON stream, one value per event.
pub fn gateway_events(
    control_url: &str,
    token: &str,
    service: &str,
    body: &serde_json::Value,
) -> Result<Vec<serde_json::Value>> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
        ])
        .arg(format!("authorization: Bearer {token}"))
        .arg("--data")
        .arg(body.to_string())
        .arg(format!("{control_url}/api/v1/services/{service}/requests"))
        .output()?;
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("not JSON lines: {text}"))
}

/// A client connection to the broker at `addr` presenting JWT `token`.
pub async fn connect_jwt(
    addr: &str,
    token: &str,
) -> std::result::Result<client::Client, client::ClientError> {
    client::Client::connect(
        &client::BrokerList::one(addr),
        proto::Credential::Jwt {
            token: token.to_string(),
        },
    )
    .await
}

/// Polls `check` every 20 ms until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects a library client to the broker.
pub async fn connect(addr: SocketAddr) -> Result<client::Client> {
    Ok(client::Client::connect(
        &client::BrokerList::one(addr.to_string()),
        proto::Credential::Jwt {
            token: String::new(),
        },
    )
    .await?)
}

/// A waited request with one command word, no arguments and no payload.
pub fn request_spec(
    service: &str,
    plugin: &str,
    command: &str,
    timeout: Duration,
) -> client::RequestSpec {
    client::RequestSpec {
        service: service.into(),
        plugin: plugin.into(),
        command: vec![command.into()],
        args: vec![],
        payload: vec![],
        timeout: Some(timeout),
        wait: true,
        key: None,
        fleet: Default::default(),
        tag: None,
        trigger: None,
    }
}

/// Sends one request through the library and collects it.
pub async fn request(
    c: &client::Client,
    service: &str,
    plugin: &str,
    command: &str,
    timeout: Duration,
) -> Result<client::Outcome> {
    let spec = request_spec(service, plugin, command, timeout);
    Ok(c.request(spec).await?.collect().await)
}

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`); `None` once the process is
/// gone (or a zombie, which has no memory lines).
pub fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Samples `pid`'s resident set every 20 ms until `stop` is set; the largest value seen.
pub fn sample_rss(
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(now) = proc_status_bytes(pid, "VmRSS") {
                peak = peak.max(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

/// Waits until every identity answers an `echo` request (the worker is connected and every
/// shard of the broker knows it).
pub async fn wait_for_workers(addr: SocketAddr, identities: &[&str]) -> Result<()> {
    let c = connect(addr).await?;
    for id in identities {
        wait_until(Duration::from_secs(20), &format!("worker {id}"), || async {
            matches!(
                request(&c, id, "echo", "ping", Duration::from_secs(5)).await,
                Ok(o) if o.exit_status() == 0
            )
        })
        .await?;
    }
    Ok(())
}

/// Where the suite keeps what its processes log, when `TRIGGERFS_TEST_LOGS` names a
/// directory (`scripts/test` sets it, then `scripts/check-logs` greps the logs for every
/// secret, worker token and JWT the tests handled: none may be there).
fn test_logs() -> Option<PathBuf> {
    std::env::var_os("TRIGGERFS_TEST_LOGS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A file for process `name`'s stderr in the kept logs, if they are kept.
fn kept_log(name: &str, pid: u32) -> Option<std::fs::File> {
    let dir = test_logs()?;
    let _ = std::fs::create_dir_all(&dir);
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::fs::File::create(dir.join(format!("{safe}-{pid}.log"))).ok()
}

/// Notes a secret, worker token or JWT the test handled, so that `scripts/check-logs` can
/// look for it in the logs. Short test-chosen words are not noted (they match prose).
pub fn remember_secret(secret: &str) {
    const SHORTEST: usize = 12;
    let Some(dir) = test_logs() else { return };
    if secret.len() < SHORTEST || secret.contains('\n') {
        return;
    }
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("secrets.txt"))
    {
        use std::io::Write;
        let _ = writeln!(file, "{secret}");
    }
}

/// Runs `triggerfs <args>` to completion with a deadline; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], timeout: Duration) -> Result<(i32, String, String)> {
    run_cli_env(args, &[], timeout)
}

/// [`run_cli`] with these environment variables set.
pub fn run_cli_env(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(i32, String, String)> {
    let mut child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("TRIGGERFS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "`triggerfs {}` did not finish within {timeout:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok((
        status.code().unwrap_or(-1),
        t_out.join().unwrap(),
        t_err.join().unwrap(),
    ))
}

/// The pids of live processes whose command line contains `marker`.
pub fn pids_running(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(marker)
                .then_some(pid)
        })
        .collect()
}

/// True while some process's command line contains `marker`.
pub fn process_running(marker: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for e in entries.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                // Zombies have an empty cmdline, so a match is a live process.
                return true;
            }
        }
    }
    false
}

/// Reads stdout lines until one starts with `listening on `; returns (earlier lines, addr).
pub fn read_until_listening(
    proc: &Proc,
    stdout: &mut BufReader<std::process::ChildStdout>,
) -> Result<(Vec<String>, String)> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            bail!(
                "{} exited before listening:\n{}\n{}",
                proc.name,
                lines.join("\n"),
                proc.stderr()
            );
        }
        let line = line.trim_end().to_string();
        if let Some(addr) = line.strip_prefix("listening on ") {
            return Ok((lines, addr.to_string()));
        }
        lines.push(line);
    }
}

/// `triggerfs up` on a data dir, on ports 0, and what it printed on its first start.
pub struct Up {
    /// The process.
    pub proc: Proc,
    /// The broker's address.
    pub broker: String,
    /// The control plane, `http://127.0.0.1:PORT` (`https://` with `--tls`).
    pub url: String,
    /// The first admin: team, identity and secret.
    pub team: String,
    /// The admin's identity.
    pub identity: String,
    /// The admin's secret.
    pub secret: String,
}

impl Up {
    /// Starts `triggerfs up --data <data>` and reads until it is listening.
    pub fn start(data: &Path) -> Result<Up> {
        Up::start_with(data, &[])
    }

    /// Starts `triggerfs up --data <data>` with extra flags (e.g. `--tls`).
    pub fn start_with(data: &Path, extra: &[&str]) -> Result<Up> {
        let (proc, lines, broker) = Up::restart(data, extra)?;
        let secret = line_value(&lines, "secret:").with_context(|| format!("{lines:?}"))?;
        remember_secret(&secret);
        let url = line_value(&lines, "control plane listening on ").context("api line")?;
        let created = line_value(&lines, "created team `").context("team line")?;
        // "main` and admin `admin`"
        let team = created.split('`').next().unwrap_or_default().to_string();
        let identity = created.split('`').nth(2).unwrap_or_default().to_string();
        Ok(Up {
            proc,
            broker,
            url,
            team,
            identity,
            secret,
        })
    }

    /// Starts `triggerfs up --data <data>` on ports 0 with `extra` flags, on a data dir that
    /// may have been set up before (nothing is read of a first start's lines), and reads
    /// until it is listening: the process, the lines before, and the broker's address.
    pub fn restart(data: &Path, extra: &[&str]) -> Result<(Proc, Vec<String>, String)> {
        let mut args = vec![
            "up",
            "--data",
            data.to_str().context("a data dir path that is UTF-8")?,
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (proc, mut stdout) = Proc::spawn("up", &args)?;
        let (lines, broker) = read_until_listening(&proc, &mut stdout)?;
        Ok((proc, lines, broker))
    }
}

/// The value after `prefix` on the first line that has it.
pub fn line_value(lines: &[String], prefix: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
}

/// A port for a server that must be known before it starts (the control plane is told the
/// broker's address before the broker listens), kept for this test process.
///
/// A port the kernel hands out for `127.0.0.1:0` comes from its ephemeral range, from which
/// every outgoing connection of every test running meanwhile also takes its source port: one
/// could take it before the server binds it (suspected behind a CI failure early in an e2e
/// test whose broker was started on such a port). So
/// the port is taken below that range (`ip_local_port_range`), free when tried, and claimed
/// across test processes by a lock on a file named after it, held until this process ends.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    assert!(
        span > 1_000,
        "the ephemeral port range starts at {ephemeral_low}"
    );
    let dir = std::env::temp_dir().join("triggerfs-test-ports");
    std::fs::create_dir_all(&dir).expect("a directory for port claims");
    // Each process starts somewhere else, so that claims rarely meet.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let start = (std::process::id().wrapping_mul(7_919) ^ nanos) % span;
    for i in 0..span {
        let port = (LOWEST + (start + i) % span) as u16;
        let Ok(claim) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if claim.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap().push(claim);
            return port;
        }
    }
    panic!("no free port between {LOWEST} and {ephemeral_low}");
}

/// The store a control plane runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// SQLite in the data dir (the default).
    Sqlite,
    /// A PostgreSQL database of its own on 127.0.0.1:5432 (`scripts/test` starts it).
    Postgres,
}

/// A PostgreSQL database made for one test with `psql`, dropped with it.
pub struct PgDb {
    /// Its name.
    pub name: String,
}

fn psql(sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            sql,
        ])
        .output()
        .context("psql (PostgreSQL client) is needed for the PostgreSQL tests")?;
    if !out.status.success() {
        bail!("psql `{sql}`: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl PgDb {
    /// Creates a database with a fresh name.
    pub fn create() -> Result<PgDb> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!("tfs_e2e_{}_{nanos}", std::process::id());
        psql(&format!("CREATE DATABASE {name}"))?;
        Ok(PgDb { name })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// `triggerfs control` with a fresh data dir (SQLite) or a fresh PostgreSQL database.
pub struct Control {
    /// The process.
    pub proc: Proc,
    /// API base, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The first admin: (team, identity, secret).
    pub admin: (String, String, String),
    /// The data dir (JWT key, broker token).
    pub data: tempfile::TempDir,
    /// The PostgreSQL database, when it runs on one (dropped after the process).
    pub pg: Option<PgDb>,
}

impl Control {
    /// Starts the control plane on SQLite; its gateway sends through `broker`.
    pub fn start(broker: &str) -> Result<Control> {
        Control::start_on(broker, Db::Sqlite)
    }

    /// Starts the control plane on `db`; its gateway sends through `broker`.
    pub fn start_on(broker: &str, db: Db) -> Result<Control> {
        Control::start_with(broker, db, &[])
    }

    /// Starts the control plane on `db` with extra `triggerfs control` flags.
    pub fn start_with(broker: &str, db: Db, extra: &[&str]) -> Result<Control> {
        let data = tempfile::tempdir()?;
        let pg = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(PgDb::create()?),
        };
        let url = pg.as_ref().map(PgDb::url);
        let mut args = vec![
            "control",
            "--data",
            data.path().to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--broker",
            broker,
        ];
        if let Some(url) = &url {
            args.extend(["--database-url", url.as_str()]);
        }
        args.extend_from_slice(extra);
        let (proc, mut stdout) = Proc::spawn("control", &args)?;
        let (lines, addr) = read_until_listening(&proc, &mut stdout)?;
        let created = line_value(&lines, "created team `")
            .with_context(|| format!("no admin line in {lines:?}"))?;
        // "main` and admin `admin`"
        let team = created.split('`').next().unwrap_or_default().to_string();
        let identity = created.split('`').nth(2).unwrap_or_default().to_string();
        let secret = line_value(&lines, "secret:").context("no secret line")?;
        remember_secret(&secret);
        Ok(Control {
            proc,
            url: format!("http://{addr}"),
            admin: (team, identity, secret),
            data,
            pg,
        })
    }

    /// Kills the control plane and starts it again on the same address and data dir.
    pub fn restart(mut self, broker: &str) -> Result<Control> {
        self.proc.kill();
        let listen = self.url.trim_start_matches("http://").to_string();
        let url = self.pg.as_ref().map(PgDb::url);
        let mut args = vec![
            "control",
            "--data",
            self.data.path().to_str().unwrap(),
            "--api-listen",
            &listen,
            "--broker",
            broker,
        ];
        if let Some(url) = &url {
            args.extend(["--database-url", url.as_str()]);
        }
        let (proc, mut stdout) = Proc::spawn("control", &args)?;
        read_until_listening(&proc, &mut stdout)?;
        self.proc = proc;
        Ok(self)
    }

    /// Another `triggerfs control` on this one's PostgreSQL database (a replica), with a data
    /// dir of its own; `extra` flags added.
    pub fn replica(&self, broker: &str, extra: &[&str]) -> Result<Control> {
        let url = self
            .pg
            .as_ref()
            .map(PgDb::url)
            .context("a replica needs PostgreSQL")?;
        let data = tempfile::tempdir()?;
        let mut args = vec![
            "control",
            "--data",
            data.path().to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--broker",
            broker,
            "--database-url",
            &url,
        ];
        args.extend_from_slice(extra);
        let (proc, mut stdout) = Proc::spawn("control", &args)?;
        let (_, addr) = read_until_listening(&proc, &mut stdout)?;
        Ok(Control {
            proc,
            url: format!("http://{addr}"),
            admin: self.admin.clone(),
            data,
            pg: None,
        })
    }

    /// The broker token file.
    pub fn broker_token_file(&self) -> PathBuf {
        self.data.path().join("broker.token")
    }

    /// The JWT signing key (hex) from the data dir.
    pub fn jwt_key(&self) -> Result<Vec<u8>> {
        let hex = std::fs::read_to_string(self.data.path().join("jwt.key"))?;
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("jwt.key is hex"))
            .collect()
    }
}

/// A broker that takes its configuration from a control plane.
pub fn start_controlled_broker(
    control: &Control,
    port: u16,
    extra: &[&str],
) -> Result<(Proc, Vec<String>)> {
    start_broker_following(&control.url, &control.broker_token_file(), port, extra)
}

/// The arguments of `triggerfs broker` listening on `listen` with 2 shards, taking its
/// configuration from `control_urls` (comma-separated) with the broker token in
/// `token_file`, then `extra`.
pub fn broker_following_args<'a>(
    listen: &'a str,
    control_urls: &'a str,
    token_file: &'a Path,
    extra: &[&'a str],
) -> Result<Vec<&'a str>> {
    let mut args = vec![
        "broker",
        "--listen",
        listen,
        "--shards",
        "2",
        "--control",
        control_urls,
        "--broker-token-file",
        token_file.to_str().context("a UTF-8 token file path")?,
    ];
    args.extend_from_slice(extra);
    Ok(args)
}

/// A broker on `port` that takes its configuration from `control_urls` (comma-separated),
/// with the broker token in `token_file`.
pub fn start_broker_following(
    control_urls: &str,
    token_file: &Path,
    port: u16,
    extra: &[&str],
) -> Result<(Proc, Vec<String>)> {
    let listen = format!("127.0.0.1:{port}");
    let args = broker_following_args(&listen, control_urls, token_file, extra)?;
    let (proc, mut stdout) = Proc::spawn("broker", &args)?;
    let (lines, _addr) = read_until_listening(&proc, &mut stdout)?;
    Ok((proc, lines))
}

/// The control plane's client as the tests hold it: [`api::Api`] with the JWT of one
/// login, never renewed (a test sees exactly what the API answers), driven through
/// [`TestApi`].
pub use api::Api;

/// A test's calls: no test waits this long on one.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// What the tests call on the API: JSON in and out, the method by name, paths from `/api/v1`.
// The tests' own trait, on the one client: no caller needs its futures to be `Send`-bounded.
#[allow(async_fn_in_trait)]
pub trait TestApi: Sized {
    /// Logs in and returns a client carrying the JWT.
    async fn login(url: &str, team: &str, identity: &str, secret: &str) -> Result<Self>;

    /// One call; returns status and JSON body (Null when none).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(reqwest::StatusCode, serde_json::Value)>;

    /// A call that must succeed.
    async fn ok(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (status, body) = self.call(method, path, body).await?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Creates worker `identity` in the caller's team; its token.
    async fn new_worker(&self, identity: &str) -> Result<String> {
        let body = serde_json::json!({ "identity": identity });
        let w = self.ok("POST", "/api/v1/workers", body).await?;
        let token = w["token"].as_str().context("token")?.to_string();
        remember_secret(&token);
        Ok(token)
    }

    /// A worker's state as the API shows it (`ONLINE`, `DISCONNECTED`).
    async fn worker_state(&self, identity: &str) -> Result<String> {
        let path = format!("/api/v1/workers/{identity}");
        let w = self.ok("GET", &path, serde_json::Value::Null).await?;
        Ok(w["state"].as_str().context("state")?.to_string())
    }

    /// Waits until the API shows worker `identity` in state `want`.
    async fn wait_worker_state(&self, identity: &str, want: &str, within: Duration) -> Result<()> {
        wait_until(within, &format!("{identity} {want}"), || async {
            self.worker_state(identity).await.is_ok_and(|s| s == want)
        })
        .await
    }

    /// Adds member `identity` with `secret` to `team` and logs them in.
    async fn new_member(&self, team: &str, identity: &str, secret: &str) -> Result<Self>;
}

impl TestApi for Api {
    async fn login(url: &str, team: &str, identity: &str, secret: &str) -> Result<Api> {
        let anonymous = Api::builder(url.split(',')).timeout(CALL_TIMEOUT).build()?;
        let body = serde_json::json!({"team": team, "identity": identity, "secret": secret});
        let (status, body) = anonymous.call("POST", "/api/v1/login", body).await?;
        if !status.is_success() {
            bail!("login {team}/{identity} failed: {status} {body}");
        }
        let token = body["token"].as_str().context("token")?;
        remember_secret(token);
        let api = Api::builder(url.split(',')).token(token);
        Ok(api.timeout(CALL_TIMEOUT).build()?)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(reqwest::StatusCode, serde_json::Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let path = path
            .strip_prefix("/api/v1")
            .with_context(|| format!("{path} is not under /api/v1"))?;
        let body = (!body.is_null()).then(|| body.to_string());
        let (status, bytes) = self
            .raw(method, path, body.as_deref().map(str::as_bytes))
            .await?;
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }

    async fn new_member(&self, team: &str, identity: &str, secret: &str) -> Result<Api> {
        remember_secret(secret);
        let path = format!("/api/v1/teams/{team}/members");
        let body = serde_json::json!({"identity": identity, "secret": secret});
        self.ok("POST", &path, body).await?;
        Api::login(&self.urls().join(","), team, identity, secret).await
    }
}

/// A `bash` session fed one command at a time, as in a terminal: variables, the working
/// directory and background jobs carry over from one command to the next. Each command reads
/// stdin from /dev/null, and its stderr goes where its stdout goes, interleaved as a terminal
/// shows them. The session is a process group of its own, killed whole on drop (background
/// jobs with it).
pub struct Shell {
    child: Child,
    stdin: std::process::ChildStdin,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    marker: String,
}

impl Shell {
    /// Starts `bash` (with `set -o pipefail`) as `command` says (working directory,
    /// environment): `Command::new("bash")` and its settings.
    pub fn start(mut command: Command) -> Result<Shell> {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command.spawn().context("spawn bash")?;
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        // bash's own complaints (syntax errors) go where the commands' output goes.
        stdin.write_all(b"exec 2>&1\nset -o pipefail\n")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        Ok(Shell {
            child,
            stdin,
            output,
            pending: Vec::new(),
            marker: format!("__shell_done_{}_{nanos}__", std::process::id()),
        })
    }

    /// Runs `command` to completion; returns its exit status and output. Fails when it takes
    /// longer than `timeout` (the session is then left as it is, to be dropped).
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        use std::io::Write;
        // `{ }` rather than a subshell: assignments and `cd` stay. The status line starts
        // with a newline of its own in case the output does not end with one.
        let script = format!(
            "{{\n{command}\n}} </dev/null 2>&1\nprintf '\\n%s %d\\n' {} \"$?\"\n",
            self.marker
        );
        self.stdin
            .write_all(script.as_bytes())
            .and_then(|()| self.stdin.flush())
            .context("the shell is gone")?;
        let deadline = Instant::now() + timeout;
        let end = format!("\n{} ", self.marker);
        loop {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            if let Some(at) = text.find(&end) {
                let rest = &text[at + end.len()..];
                if let Some(nl) = rest.find('\n') {
                    let status: i32 = rest[..nl]
                        .trim()
                        .parse()
                        .with_context(|| format!("status line {rest:?}"))?;
                    let consumed = at + end.len() + nl + 1;
                    let output = text[..at].to_string();
                    self.pending = text.as_bytes()[consumed..].to_vec();
                    return Ok((status, output));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.pending.extend_from_slice(&chunk),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    bail!("did not finish within {timeout:?}; its output so far:\n{text}")
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the shell exited; its output:\n{text}")
                }
            }
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        // SAFETY: kill(2) with the group id of the session we started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

// The cell (issue 27): broker nodes advertised to a control plane.

/// A node of a cell: a broker on `port` following `control_urls` with `--advertise
/// 127.0.0.1:<port>` and its metrics on a port of their own; the process, its `/metrics` URL
/// and its node id.
pub fn start_cell_node(
    control_urls: &str,
    token_file: &Path,
    port: u16,
    extra: &[&str],
) -> Result<(Proc, String, String)> {
    let advertise = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--advertise",
        advertise.as_str(),
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (proc, lines) = start_broker_following(control_urls, token_file, port, &args)?;
    let metrics = line_value(&lines, "metrics on ")
        .with_context(|| format!("no metrics line in {lines:?}"))?;
    // "node <id> of the cell, advertised as <address>"
    let node = line_value(&lines, "node ")
        .and_then(|rest| Some(rest.split_whitespace().next()?.to_string()))
        .with_context(|| format!("no node line in {lines:?}"))?;
    Ok((proc, metrics, node))
}

/// The connections with `role` (`client`, `worker`) a broker has open, over its shards, from
/// its `/metrics` at `url`.
pub async fn broker_connections(url: &str, role: &str) -> Result<u64> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let prefix = format!("triggerfs_broker_connected{{role=\"{role}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// The control plane's first admin, logged in.
pub async fn admin_api(control: &Control) -> Result<Api> {
    let (team, admin, secret) = &control.admin;
    Api::login(&control.url, team, admin, secret).await
}

#[cfg(test)]
mod tests {
    use super::free_port;

    #[test]
    fn ports_given_are_distinct_below_the_ephemeral_range_and_claimed() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768);
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in &ports {
            assert!((10_000..low).contains(port), "{port} is not below {low}");
            // Claimed: another process (or another open of the claim) cannot take it.
            let claim = std::fs::OpenOptions::new()
                .write(true)
                .open(
                    std::env::temp_dir()
                        .join("triggerfs-test-ports")
                        .join(port.to_string()),
                )
                .unwrap();
            assert!(claim.try_lock().is_err(), "{port} is not claimed");
            // And the server can bind it.
            std::net::TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
    }
}

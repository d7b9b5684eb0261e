//! The processes a benchmark starts: every system runs in processes of its own (the
//! `triggerfs broker` and `triggerfs worker` binaries, or this binary's hidden `bench-child`
//! roles), so no system shares a process or a runtime with another, or with the bench.
//!
//! A child dies with the bench: it is killed when its [`Spawned`] drops (also on an error
//! or a panic), and it asks the kernel for SIGKILL when the bench's main thread ends
//! (`PR_SET_PDEATHSIG`), as a backstop when the bench itself is killed.

use anyhow::{bail, Context};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a child may take to be ready (listening, connected, workers online): generous,
/// because many processes start at once on a busy 2-core machine.
pub(crate) const READY_DEADLINE: Duration = Duration::from_secs(120);

/// Lines a child prints on stdout.
pub(crate) type StdoutLines = Lines<BufReader<ChildStdout>>;

/// A child process, killed when this drops.
pub(crate) struct Spawned {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

/// `program args…` with stdin and stdout piped, stderr inherited (its warnings reach the
/// user), no `TRIGGERFS_*` variable of ours, and `RUST_LOG` as ours or `warn`.
///
/// Spawn it from the thread that runs the bench (`PR_SET_PDEATHSIG` fires when the thread
/// that forked the child ends, so not from a pooled thread that may be retired).
pub(crate) fn command<I, S>(program: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("TRIGGERFS_") {
            cmd.env_remove(key);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "warn");
    }
    // SAFETY: getpid before the fork; in the child, prctl and getppid are async-signal-safe
    // and touch no memory of the parent's.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the bench exited"));
            }
            Ok(())
        });
    }
    cmd
}

impl Spawned {
    /// Starts `cmd` and returns it with its stdout as lines (`None` unless piped).
    pub(crate) fn start(
        name: &str,
        mut cmd: Command,
    ) -> anyhow::Result<(Spawned, Option<StdoutLines>)> {
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name} process"))?;
        let lines = child.stdout.take().map(|out| BufReader::new(out).lines());
        let spawned = Spawned {
            name: name.to_string(),
            child,
        };
        Ok((spawned, lines))
    }

    /// Starts `cmd` and waits for a line starting with `prefix`; returns the process, the
    /// rest of that line and its stdout's further lines.
    pub(crate) async fn start_until(
        name: &str,
        cmd: Command,
        prefix: &str,
    ) -> anyhow::Result<(Spawned, String, StdoutLines)> {
        let (mut spawned, lines) = Spawned::start(name, cmd)?;
        let mut lines = lines.context("child stdout is piped")?;
        let rest = spawned.expect_line(&mut lines, prefix).await?;
        Ok((spawned, rest, lines))
    }

    /// SIGKILLs the child and reaps it.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// The process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Takes the child's stdin (once).
    pub(crate) fn stdin(&mut self) -> anyhow::Result<tokio::process::ChildStdin> {
        self.child
            .stdin
            .take()
            .with_context(|| format!("the {} process's stdin is taken", self.name))
    }

    /// Why the child is gone, if it is.
    fn exit_note(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        }
    }

    /// Reads lines until one starts with `prefix` and returns the rest of it; fails when the
    /// child closes its stdout first or `READY_DEADLINE` passes.
    pub(crate) async fn expect_line(
        &mut self,
        lines: &mut StdoutLines,
        prefix: &str,
    ) -> anyhow::Result<String> {
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(Some(rest.trim().to_string()));
                }
            }
            anyhow::Ok(None)
        };
        match tokio::time::timeout(READY_DEADLINE, read).await {
            Ok(Ok(Some(rest))) => Ok(rest),
            Ok(Ok(None)) => {
                // Give it a moment to be reaped, for its exit status.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let note = self.exit_note();
                bail!(
                    "the {} process ended before printing `{prefix}`{note}",
                    self.name
                )
            }
            Ok(Err(e)) => Err(e),
            Err(_) => bail!(
                "the {} process did not print `{prefix}` within {READY_DEADLINE:?}",
                self.name
            ),
        }
    }

    /// Starts `cmd` and waits for its `listening on ADDR` line; the rest of its stdout is
    /// read and dropped so that it can never block on a full pipe.
    pub(crate) async fn listening(name: &str, cmd: Command) -> anyhow::Result<(Spawned, String)> {
        let (spawned, addr, lines) = Spawned::start_until(name, cmd, "listening on ").await?;
        drain(lines);
        Ok((spawned, addr))
    }
}

/// Blocks until stdin reaches its end: the bench closed it, or exited. The server roles of
/// `bench-child` run until then.
pub(crate) fn wait_stdin_closed() {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
}

/// Reads and drops the rest of a child's stdout.
pub(crate) fn drain(mut lines: StdoutLines) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// The `triggerfs` processes of one system: a broker and its workers, started from `bin`.
pub(crate) struct TriggerfsProcs {
    /// The broker's address.
    pub addr: String,
    /// The broker (first) and the workers.
    pub procs: Vec<Spawned>,
    /// Holds the config file, the plugins directory (`plugins/`) and `append`'s file.
    dir: tempfile::TempDir,
}

impl TriggerfsProcs {
    /// The file the `append` plugin kind writes to.
    pub(crate) fn append_file(&self) -> std::path::PathBuf {
        self.dir.path().join("append.log")
    }
}

/// What to start with `triggerfs broker` / `triggerfs worker`.
pub(crate) struct TriggerfsSetup<'a> {
    /// The binary (this one, `--triggerfs-bin` or `--baseline-bin`).
    pub bin: &'a Path,
    pub shards: usize,
    pub spin: Duration,
    /// The service and its algorithm (`roundrobin` or `mirror`).
    pub service: &'a str,
    pub algorithm: &'a str,
    /// Worker processes (`<prefix><i>`), each announcing `service`, with every plugin kind
    /// laid out in their plugins path (`write_plugins`).
    pub workers: usize,
    pub prefix: &'a str,
    /// TLS: the broker serves this certificate; workers trust its CA and connect to
    /// `tls://`.
    pub tls: Option<&'a tls::DevFiles>,
}

/// Starts a broker (no control plane: services from its own config file) and workers.
pub(crate) async fn start_triggerfs(setup: &TriggerfsSetup<'_>) -> anyhow::Result<TriggerfsProcs> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let config = dir.path().join("triggerfs.toml");
    // The workers announce the service: a roundrobin one needs no configuration (and a build
    // from before `announced` existed, run by `--baseline-bin`, reads the same file); any
    // other algorithm is configured and opened to the announcing workers.
    let services = if setup.algorithm == "roundrobin" {
        String::new()
    } else {
        format!(
            "[broker.services.{}]\nalgorithm = \"{}\"\nannounced = true\n",
            setup.service, setup.algorithm
        )
    };
    std::fs::write(&config, services).context("cannot write the broker's config")?;
    let config = config.display().to_string();
    let spin = format!("{}us", setup.spin.as_micros());
    let shards = setup.shards.to_string();
    let mut broker_args = vec![
        "--config",
        &config,
        "broker",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        &shards,
        "--spin",
        &spin,
    ];
    let tls_files = setup.tls.map(|files| {
        (
            files.cert.display().to_string(),
            files.key.display().to_string(),
            files.ca.display().to_string(),
        )
    });
    if let Some((cert, key, _)) = &tls_files {
        broker_args.extend(["--tls-cert", cert, "--tls-key", key]);
    }
    let (broker, addr) = Spawned::listening("broker", command(setup.bin, broker_args))
        .await
        .map_err(|e| {
            e.context(
                "cannot start the broker (io_uring needs locked memory: try `ulimit -l unlimited`)",
            )
        })?;
    let addr = match setup.tls {
        Some(_) => format!("tls://{addr}"),
        None => addr,
    };
    let mut procs = vec![broker];
    // A build from before the worker served core plugins answered `echo` in-process and
    // ignores the manifests.
    let plugins_dir = dir.path().join("plugins");
    write_plugins(&plugins_dir)?;
    let plugins = plugins_dir.display().to_string();
    for i in 0..setup.workers {
        let identity = format!("{}{i}", setup.prefix);
        let mut args = vec![
            "--config",
            &config,
            "worker",
            "--identity",
            &identity,
            "--broker",
            &addr,
            "--service",
            setup.service,
            "--pluginspath",
            &plugins,
            "--max-concurrency",
            "1024",
        ];
        if let Some((_, _, ca)) = &tls_files {
            args.extend(["--ca", ca]);
        }
        let mut cmd = command(setup.bin, args);
        cmd.stdout(Stdio::null());
        let (worker, _) = Spawned::start(&format!("worker {identity}"), cmd)?;
        procs.push(worker);
    }
    Ok(TriggerfsProcs { addr, procs, dir })
}

/// A fork-per-request echo as a user would write one in shell: it prints the request's
/// `payload` (the bench's payloads are plain ASCII without quotes) and exits.
const FORK_ECHO: &str = "#!/bin/sh\nsed -n 's/.*\"payload\":\"\\([^\"]*\\)\".*/\\1/p'\n";

/// The persistent Python example plugin, as users would install it.
const PYECHO: &str = include_str!("../../plugins/examples/pyecho/pyecho");
const PYECHO_MANIFEST: &str = include_str!("../../plugins/examples/pyecho/plugin.toml");

/// Lays out under `dir` the plugins of every kind (`PluginKind::plugin`): the core plugins
/// `echo` and `append` (manifests), `fecho`, a shell script run per request, and `pyecho`,
/// the persistent Python example.
pub(crate) fn write_plugins(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let write = |relative: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("echo/plugin.toml", "core = \"echo\"\n")?;
    write("append/plugin.toml", "core = \"append\"\n")?;
    write("fecho/fecho", FORK_ECHO)?;
    write("pyecho/pyecho", PYECHO)?;
    write("pyecho/plugin.toml", PYECHO_MANIFEST)?;
    for exe in ["fecho/fecho", "pyecho/pyecho"] {
        std::fs::set_permissions(dir.join(exe), std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {exe} executable"))?;
    }
    Ok(())
}

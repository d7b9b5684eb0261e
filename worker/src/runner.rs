//! Runs one dispatch: waits for a slot, resolves the plugin, starts it in its own process
//! group, streams its output as frames and stops it. A plugin whose `plugin.toml` says
//! `persistent = true` is handed to [`crate::persistent`] instead, once resolved.
//!
//! The runner knows nothing about sockets: it sends frames into an `mpsc` channel that the
//! session's writer task drains, and learns about `Cancel` (or the connection going away)
//! through a `oneshot`. Every frame of one dispatch is sent from one task, so they are in
//! order.
//!
//! Stopping a plugin is three steps: SIGTERM to the group, [`TERM_GRACE`], SIGKILL to the
//! group. When the plugin's main process exits on its own, its pipes are drained until they
//! stay silent for [`DRAIN_AFTER_EXIT`] (or [`DRAIN_MAX`], or [`DRAIN_MAX_BYTES`] were read
//! since), then whatever is left of its group is killed: a background child holding a pipe
//! neither keeps the dispatch open nor outlives it.

use crate::core::Lookup;
use crate::lines::{LineReader, MAX_LINE};
use crate::persistent::Route;
use crate::WorkerError;
use plugins::CorePlugin;
use proto::{Dispatch, ErrorKind, Frame, Stream};
use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

/// How long a plugin has between SIGTERM and SIGKILL: enough to flush and clean up, short
/// enough that a cancel is felt at once.
pub const TERM_GRACE: Duration = Duration::from_secs(2);

/// After the plugin's main process exited, its pipes are read until no line came for this
/// long: its last lines are already in the pipes, and a background child may hold a pipe
/// forever. (Counted from the last line, not from the exit: a slow client, which makes every
/// line wait for room, must not lose the end of the output.)
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// At most this long is spent draining after the exit, time paused or waiting for room
/// towards the broker not counted: a background child that writes now and then does not keep
/// the dispatch open.
pub const DRAIN_MAX: Duration = Duration::from_secs(10);

/// At most this much output is read after the exit: more than the pipes and the line queue
/// can hold, so anything past it was written after the exit (a background child).
pub const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// Lines buffered between a plugin's pipe readers and its dispatch task.
const LINE_QUEUE: usize = 64;

/// A line (or chunk) read from a plugin's pipe, with the pipe's stream.
type PipeLine = (Stream, Vec<u8>);

/// How often a spawn that fails with ETXTBSY is tried again: the file was just written (an
/// install in progress, or another thread's fork still holds a write descriptor).
const SPAWN_ATTEMPTS: u32 = 5;

/// Why a dispatch must stop before its plugin exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The broker sent `Cancel`.
    Cancel,
}

/// What the session tells a running dispatch.
#[derive(Debug)]
pub(crate) struct Signals {
    /// Yields [`Stop::Cancel`] on `Cancel`; its sender dropped means the connection is gone.
    pub(crate) stop: oneshot::Receiver<Stop>,
    /// `true` while the broker asks for the dispatch's output to be paused (`Pause`, until
    /// `Resume`): a plain plugin's pipes are not read meanwhile, so it blocks in `write`
    /// once they are full. A persistent or in-worker plugin is not paused.
    pub(crate) paused: watch::Receiver<bool>,
}

/// What the runner needs from the worker's configuration.
#[derive(Debug)]
pub struct RunnerConfig {
    /// Where plugins live.
    pub pluginspath: PathBuf,
    /// The worker identity, handed to plugins.
    pub identity: String,
    /// Marks every plugin process of this worker (see [`crate::leftovers`]).
    pub instance: String,
    /// The shell that runs the core plugin `command`.
    pub shell: String,
    /// The core plugins' manifests and `append` writers.
    pub core: crate::core::CoreState,
    /// The worker's running persistent plugins (see [`crate::persistent`]).
    pub persistent: Arc<crate::persistent::Manager>,
    /// Bytes of output one plain plugin run may write (see [`crate::WorkerConfig`]).
    pub max_output: u64,
    /// How plugin process trees are contained (see [`crate::contain`]).
    pub contain: Arc<crate::contain::Containment>,
}

/// A plugin that passed every check: the file to execute and how to present it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPlugin {
    /// The canonical path of the executable (symlinks resolved, inside the plugins path).
    pub path: PathBuf,
    /// `<pluginspath>/<name>` as requested: the plugin's `argv[0]`, so that the `triggerfs`
    /// binary copied in as a core plugin sees its name even behind an internal symlink.
    pub argv0: PathBuf,
    /// The plugin's directory, its working directory.
    pub dir: PathBuf,
    /// Whether a `plugin.toml` in `dir` is its own: not for an executable directly in the
    /// plugins path, whose directory is every such plugin's.
    pub has_manifest: bool,
}

/// Resolves plugin `name` under `pluginspath`: `x` means the file `<pluginspath>/x` (the
/// seed's layout) or, when `x` is a directory, `<pluginspath>/x/x`; `x/y` means
/// `<pluginspath>/x/y`. Refuses bad names, anything whose canonical path leaves the canonical
/// plugins path, and anything that is not an executable regular file.
pub fn resolve_plugin(pluginspath: &Path, name: &str) -> Result<ResolvedPlugin, WorkerError> {
    // The reason goes to the client and names no path of this host; the detail is logged.
    let refuse = |reason: &str, detail: String| WorkerError::PluginNotFound {
        plugin: name.to_string(),
        reason: reason.to_string(),
        detail,
    };
    proto::names::check_plugin(name).map_err(|e| refuse(&e.to_string(), e.to_string()))?;
    let flat = !name.contains('/') && pluginspath.join(name).is_file();
    let relative = if name.contains('/') || flat {
        PathBuf::from(name)
    } else {
        Path::new(name).join(name)
    };
    let root = pluginspath.canonicalize().map_err(|e| {
        refuse(
            "the worker's plugins path is not usable",
            format!("plugins path {} is not usable: {e}", pluginspath.display()),
        )
    })?;
    let argv0 = pluginspath.join(&relative);
    let path = argv0.canonicalize().map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such plugin on this worker".to_string(),
            _ => format!("cannot open it: {}", without_paths(&e)),
        };
        refuse(&reason, format!("{}: {e}", argv0.display()))
    })?;
    if !path.starts_with(&root) {
        return Err(refuse(
            "it resolves outside the plugins path",
            format!(
                "{} resolves to {}, outside the plugins path",
                argv0.display(),
                path.display()
            ),
        ));
    }
    let meta = std::fs::metadata(&path).map_err(|e| {
        refuse(
            &format!("cannot open it: {}", without_paths(&e)),
            format!("{}: {e}", path.display()),
        )
    })?;
    if !meta.is_file() {
        return Err(refuse(
            "it is not a regular file",
            format!("{} is not a regular file", path.display()),
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(refuse(
            "it is not executable",
            format!("{} is not executable", path.display()),
        ));
    }
    let dir = path.parent().unwrap_or(&root).to_path_buf();
    Ok(ResolvedPlugin {
        path,
        argv0,
        dir,
        has_manifest: !flat,
    })
}

/// An I/O error's text without the path some errors carry: its kind, or its OS message.
pub(crate) fn without_paths(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.kind().to_string(),
    }
}

/// The JSON request a plugin reads on stdin.
pub fn plugin_request(dispatch: &Dispatch, identity: &str) -> plugins::PluginRequest {
    let mut request = plugins::PluginRequest {
        request_id: dispatch.id,
        service: dispatch.service.clone(),
        plugin: dispatch.plugin.clone(),
        worker: identity.to_string(),
        command: dispatch.command.clone(),
        args: dispatch
            .args
            .iter()
            .map(|arg| (arg.key.clone(), arg.value.clone()))
            .collect(),
        timeout_ms: dispatch.timeout_ms,
        ..Default::default()
    };
    request.set_payload(&dispatch.payload);
    request
}

/// `TRIGGERFS_ARG_<KEY>`: the key uppercased, anything but letters, digits and `_` as `_`,
/// so that no argument name can make an invalid (or `=`-splitting) variable name.
pub fn arg_env_name(key: &str) -> String {
    let key: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("TRIGGERFS_ARG_{key}")
}

/// Serves one dispatch to the end, sending `Accepted`/`Output`/`Done` or `Failed` to `out`.
///
/// `lookup` is the core plugin the dispatch names, as the caller looked it up.
/// `signals.stop` yields [`Stop::Cancel`] on `Cancel`; its sender being dropped means the
/// connection is gone: the plugin is stopped the same way, and nothing more is reported.
pub(crate) async fn serve_dispatch(
    runner: Arc<RunnerConfig>,
    dispatch: Dispatch,
    lookup: Lookup,
    slots: Arc<Semaphore>,
    signals: Signals,
    out: mpsc::Sender<Frame>,
) {
    let Signals { mut stop, paused } = signals;
    // The session serves `echo` and `append` itself; a caller that did not is served here.
    let dispatch = match crate::core::serve_inline(&runner.core, &lookup, dispatch, &out).await {
        Ok(Some(dispatch)) => dispatch,
        Ok(None) | Err(()) => return,
    };
    let id = dispatch.id;
    // The dispatch's time counts from its arrival, slot wait included: that is the time the
    // client waits.
    let deadline = (dispatch.timeout_ms > 0)
        .then(|| Instant::now() + Duration::from_millis(dispatch.timeout_ms));
    // `file` takes no slot (no process); `command` takes one like any plugin process.
    let core = match lookup {
        Lookup::NotCore => None,
        Lookup::Invalid(reason) => {
            let message = format!("plugin `{}` cannot be used: {reason}", dispatch.plugin);
            let _ = out.send(failed(id, ErrorKind::PluginFailed, message)).await;
            return;
        }
        Lookup::Core(CorePlugin::File, _) => {
            let _ = crate::core::send_frames(&out, crate::core::file(&dispatch).await).await;
            return;
        }
        Lookup::Core(core, _) => Some(core),
    };
    let _permit = match unless_stopped(slots.acquire_owned(), &mut stop, deadline).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_closed)) => return,
        Err(why) => return interrupted(&out, id, why, "a free plugin slot").await,
    };
    let signals = Signals { stop, paused };
    if core == Some(CorePlugin::Command) {
        run_shell(&runner, &dispatch, deadline, signals, &out).await;
        return;
    }
    let plugin = match resolve_plugin(&runner.pluginspath, &dispatch.plugin) {
        Ok(plugin) => plugin,
        Err(e) => {
            if let WorkerError::PluginNotFound { detail, .. } = &e {
                warn!(id, plugin = %dispatch.plugin, %detail, "plugin refused");
            }
            let _ = out
                .send(failed(id, ErrorKind::PluginNotFound, e.to_string()))
                .await;
            return;
        }
    };
    match crate::persistent::route(&plugin, &dispatch, &out).await {
        Route::Fork => run_plugin(&runner, &plugin, &dispatch, deadline, signals, &out).await,
        Route::Persistent(manifest) => {
            // Its instance's `max_concurrency` bounds it, not the worker's process slots.
            drop(_permit);
            let manager = runner.persistent.clone();
            let request = crate::persistent::Request {
                runner: &runner,
                plugin: &plugin,
                dispatch: &dispatch,
                deadline,
            };
            manager.serve(request, manifest, signals.stop, &out).await;
        }
        Route::Refused => {}
    }
}

pub(crate) fn failed(id: u64, kind: ErrorKind, message: impl Into<String>) -> Frame {
    Frame::Failed {
        id,
        kind,
        message: message.into(),
    }
}

/// Runs `fut` unless the dispatch is stopped or times out first.
pub(crate) async fn unless_stopped<T>(
    fut: impl std::future::Future<Output = T>,
    stop: &mut oneshot::Receiver<Stop>,
    deadline: Option<Instant>,
) -> Result<T, Cause> {
    tokio::select! {
        value = fut => Ok(value),
        stopped = stop => Err(Cause::of_stop(stopped)),
        () = until(deadline) => Err(Cause::Timeout),
    }
}

/// Sends the last frame of a dispatch stopped for `why` while it waited for `waiting_for`,
/// before its plugin started; nothing when its connection is gone.
pub(crate) async fn interrupted(out: &mpsc::Sender<Frame>, id: u64, why: Cause, waiting_for: &str) {
    let frame = match why {
        Cause::Cancel => failed(id, ErrorKind::Cancelled, "cancelled before it started"),
        Cause::Timeout => failed(
            id,
            ErrorKind::Timeout,
            format!("timed out waiting for {waiting_for}"),
        ),
        Cause::ConnectionLost | Cause::OutputLimit(_) => return,
    };
    let _ = out.send(frame).await;
}

/// Completes at `deadline`, never without one.
pub(crate) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends `signal` to process group `pgid`; a group that is already gone is not an error.
pub(crate) fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: killpg has no memory-safety preconditions.
    let rc = unsafe { libc::killpg(pgid, signal) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            warn!(pgid, signal, error = %err, "killpg failed");
        }
    }
}

/// A plugin process's group and confinement ([`crate::contain`]): [`GroupGuard::kill`]
/// SIGKILLs both, and so does dropping it: at the end of every run, and also if the dispatch
/// task itself is dropped (runtime shutdown), so no plugin, nor a process it started that
/// left its group, outlives its task.
pub(crate) struct GroupGuard {
    pub(crate) pgid: i32,
    contain: Arc<crate::contain::Containment>,
    confinement: crate::contain::Confinement,
}

impl GroupGuard {
    /// Kills the group and everything its confinement holds.
    pub(crate) fn kill(&mut self) {
        kill_group(self.pgid, libc::SIGKILL);
        self.contain.release(&mut self.confinement, self.pgid);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` (made by [`plugin_command`]) confined: its process, and every process it
/// starts, can be killed through the returned guard.
pub(crate) async fn spawn_confined(
    runner: &RunnerConfig,
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, GroupGuard)> {
    let confinement = runner.contain.confine()?;
    confinement.prepare(cmd);
    let child = spawn_with_retry(cmd).await?;
    let Some(pid) = child.id() else {
        return Err(std::io::Error::other("the plugin vanished"));
    };
    let pgid = pid as i32;
    runner.contain.spawned(pgid);
    let guard = GroupGuard {
        pgid,
        contain: runner.contain.clone(),
        confinement,
    };
    Ok((child, guard))
}

/// Why the plugin was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Cancel,
    Timeout,
    ConnectionLost,
    /// It wrote more than this many bytes of output.
    OutputLimit(u64),
}

impl Cause {
    /// Why a dispatch stops on what its stop receiver yields: `Cancel`, or its sender
    /// dropped (the connection is gone).
    pub(crate) fn of_stop(stopped: Result<Stop, oneshot::error::RecvError>) -> Cause {
        match stopped {
            Ok(Stop::Cancel) => Cause::Cancel,
            Err(_) => Cause::ConnectionLost,
        }
    }

    /// The last frame of `dispatch`, stopped for this cause; `None` when its connection is
    /// gone (nothing more is sent).
    pub(crate) fn last_frame(self, dispatch: &Dispatch) -> Option<Frame> {
        let id = dispatch.id;
        match self {
            Cause::Timeout => Some(failed(
                id,
                ErrorKind::Timeout,
                format!(
                    "plugin {} ran past its timeout of {} ms",
                    dispatch.plugin, dispatch.timeout_ms
                ),
            )),
            Cause::Cancel => Some(failed(id, ErrorKind::Cancelled, "cancelled")),
            Cause::OutputLimit(limit) => Some(failed(
                id,
                ErrorKind::OutputLimit,
                format!(
                    "plugin {} wrote more than {limit} bytes of output, the worker's limit (--max-output); its run was stopped",
                    dispatch.plugin
                ),
            )),
            Cause::ConnectionLost => None,
        }
    }
}

/// The request's environment: `TRIGGERFS_REQUEST_ID`, `_SERVICE`, `_PLUGIN`, `_TIMEOUT_MS`
/// and one `TRIGGERFS_ARG_<KEY>` per argument.
fn request_env(cmd: &mut tokio::process::Command, dispatch: &Dispatch) {
    cmd.env("TRIGGERFS_REQUEST_ID", dispatch.id.to_string())
        .env("TRIGGERFS_SERVICE", &dispatch.service)
        .env("TRIGGERFS_PLUGIN", &dispatch.plugin)
        .env("TRIGGERFS_TIMEOUT_MS", dispatch.timeout_ms.to_string());
    for arg in &dispatch.args {
        // A NUL cannot be in the environment; the plugin still sees the argument on stdin.
        if arg.value.contains('\0') {
            continue;
        }
        cmd.env(arg_env_name(&arg.key), &arg.value);
    }
}

/// A plugin process, for a dispatch or as a persistent instance: `program` run in `dir`, in a
/// process group of its own whose leader dies with the worker, marked with the worker's
/// instance, with piped stdin, stdout and stderr.
pub(crate) fn plugin_command(
    runner: &RunnerConfig,
    program: &Path,
    dir: &Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    let worker_pid = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only prctl(2),
    // getppid(2) and errno reads, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The plugin (its process group's leader) is killed when the worker dies, even
            // by SIGKILL, when nothing is left to stop it in three steps.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker died between fork and prctl: the signal will not come.
            if libc::getppid() != worker_pid {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    cmd.current_dir(dir)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("TRIGGERFS_WORKER", &runner.identity)
        .env(crate::leftovers::INSTANCE_ENV, &runner.instance);
    cmd
}

pub(crate) async fn spawn_with_retry(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 1;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

async fn read_pipe(stream: Stream, pipe: impl AsyncRead + Unpin, lines: mpsc::Sender<PipeLine>) {
    let mut reader = LineReader::new(pipe, MAX_LINE);
    loop {
        let line = match reader.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => return debug!(?stream, error = %e, "plugin pipe read failed"),
        };
        if lines.send((stream, line)).await.is_err() {
            return;
        }
    }
}

/// The core plugin `command`: `<shell> -c <command line>` (with no command words, the payload
/// is the script; with both, the payload is its stdin), started straight from the worker in
/// the `command` plugin's directory.
async fn run_shell(
    runner: &RunnerConfig,
    dispatch: &Dispatch,
    deadline: Option<Instant>,
    signals: Signals,
    out: &mpsc::Sender<Frame>,
) {
    let run = match crate::core::request(dispatch).shell() {
        Ok(run) => run,
        Err(e) => {
            let _ = crate::core::send_frames(out, crate::core::refused(dispatch.id, &e)).await;
            return;
        }
    };
    // The plugin's directory: `command`, or `x` of the seed's spelling `x/x`.
    let dir_name = dispatch.plugin.split('/').next().unwrap_or_default();
    let dir = runner.pluginspath.join(dir_name);
    let mut cmd = plugin_command(runner, Path::new(&runner.shell), &dir);
    cmd.arg("-c").arg(&run.script);
    let label = format!("{} -c", runner.shell);
    run_process(
        runner, cmd, run.stdin, &label, dispatch, deadline, signals, out,
    )
    .await;
}

/// Starts the plugin and follows it to the end.
async fn run_plugin(
    runner: &RunnerConfig,
    plugin: &ResolvedPlugin,
    dispatch: &Dispatch,
    deadline: Option<Instant>,
    signals: Signals,
    out: &mpsc::Sender<Frame>,
) {
    let mut cmd = plugin_command(runner, &plugin.path, &plugin.dir);
    cmd.arg0(&plugin.argv0);
    let mut request = serde_json::to_vec(&plugin_request(dispatch, &runner.identity))
        .expect("a PluginRequest always serialises");
    request.push(b'\n');
    let label = plugin.path.display().to_string();
    run_process(
        runner, cmd, request, &label, dispatch, deadline, signals, out,
    )
    .await;
}

/// Starts `cmd` with `stdin` on its standard input and follows it to the end; `label` names
/// it in the worker's log only. Past the runner's `max_output` bytes of output it is stopped (as for a
/// timeout) and the dispatch ends with `OutputLimit`; nothing past the limit is sent.
///
/// While `signals.paused` is set (and the plugin is not being stopped), its lines are not
/// taken: the pipe readers wait, the pipes fill and the plugin blocks in `write`. After the
/// main process exited, what is left in the pipes is read until they are silent for
/// [`DRAIN_AFTER_EXIT`] (at most [`DRAIN_MAX`] and [`DRAIN_MAX_BYTES`]; time paused or
/// waiting for room towards the broker does not count), so a slow client never loses the end
/// of the output.
#[allow(clippy::too_many_arguments)]
async fn run_process(
    runner: &RunnerConfig,
    mut cmd: tokio::process::Command,
    request: Vec<u8>,
    label: &str,
    dispatch: &Dispatch,
    deadline: Option<Instant>,
    signals: Signals,
    out: &mpsc::Sender<Frame>,
) {
    let id = dispatch.id;
    request_env(&mut cmd, dispatch);
    let (mut child, mut group) = match spawn_confined(runner, &mut cmd).await {
        Ok(spawned) => spawned,
        Err(e) => {
            warn!(id, plugin = %dispatch.plugin, path = %label, error = %e, "cannot start plugin");
            // No path of this host in what the client sees.
            let message = format!(
                "cannot start plugin `{}`: {}",
                dispatch.plugin,
                without_paths(&e)
            );
            let _ = out.send(failed(id, ErrorKind::PluginFailed, message)).await;
            return;
        }
    };
    debug!(id, pid = group.pgid, plugin = %dispatch.plugin, "plugin started");
    let (lines, _pipe_tasks) = pipe_tasks(&mut child, request);
    let mut process = ProcessRun {
        run: DispatchRun::accept(dispatch, out, runner.max_output).await,
        pgid: group.pgid,
        status: None,
        paused: false,
        drain: Drain::default(),
    };
    process.follow(&mut child, lines, signals, deadline).await;
    // Whatever is left of the group and its confinement (background children, escaped
    // ones) goes now, not when `group` drops after the last frame is queued.
    group.kill();
    let end = match process.status {
        Some(Ok(status)) => Ok(plugins::core::exit_code_of(status)),
        Some(Err(e)) => Err(format!("cannot wait for the plugin: {e}")),
        None => Err("plugin state lost".to_string()),
    };
    let end = end.map_err(|message| failed(id, ErrorKind::PluginFailed, message));
    process.run.finish(end).await;
}

/// Starts the tasks that write `request` to the child's stdin and read its stdout and stderr
/// into the returned queue; dropping the returned handles aborts them.
fn pipe_tasks(
    child: &mut tokio::process::Child,
    request: Vec<u8>,
) -> (mpsc::Receiver<PipeLine>, Vec<AbortOnDropHandle<()>>) {
    let (line_tx, line_rx) = mpsc::channel(LINE_QUEUE);
    let mut tasks = Vec::with_capacity(3);
    if let Some(mut stdin) = child.stdin.take() {
        tasks.push(AbortOnDropHandle::new(tokio::spawn(async move {
            // A plugin that exits without reading its stdin is not an error.
            let _ = stdin.write_all(&request).await;
        })));
    }
    if let Some(pipe) = child.stdout.take() {
        let reader = read_pipe(Stream::Stdout, pipe, line_tx.clone());
        tasks.push(AbortOnDropHandle::new(tokio::spawn(reader)));
    }
    if let Some(pipe) = child.stderr.take() {
        let reader = read_pipe(Stream::Stderr, pipe, line_tx);
        tasks.push(AbortOnDropHandle::new(tokio::spawn(reader)));
    }
    (line_rx, tasks)
}

/// What a dispatch's run has sent and why it is being stopped, alike for a plugin process
/// ([`run_process`]) and a request to a persistent plugin ([`crate::persistent`]).
pub(crate) struct DispatchRun<'a> {
    pub(crate) dispatch: &'a Dispatch,
    out: &'a mpsc::Sender<Frame>,
    max_output: u64,
    /// Frames still reach the broker.
    pub(crate) connected: bool,
    /// The next `Output`'s sequence number.
    seq: u64,
    /// Bytes of output read so far.
    written: u64,
    /// Why the run is being stopped, once it is.
    pub(crate) cause: Option<Cause>,
}

impl<'a> DispatchRun<'a> {
    /// Sends the dispatch's `Accepted`: its run begins. Past `max_output` bytes of output it
    /// is stopped.
    pub(crate) async fn accept(
        dispatch: &'a Dispatch,
        out: &'a mpsc::Sender<Frame>,
        max_output: u64,
    ) -> DispatchRun<'a> {
        let connected = out.send(Frame::Accepted { id: dispatch.id }).await.is_ok();
        DispatchRun {
            dispatch,
            out,
            max_output,
            connected,
            seq: 0,
            written: 0,
            cause: None,
        }
    }

    /// Counts `len` bytes of output: `Ok` within the output limit; past it they are not sent,
    /// and `Err` holds the cause to stop the run for (`None` when it is stopping already).
    pub(crate) fn count(&mut self, len: usize) -> Result<(), Option<Cause>> {
        self.written = self.written.saturating_add(len as u64);
        if self.written <= self.max_output {
            return Ok(());
        }
        if self.cause.is_some() {
            return Err(None);
        }
        let (id, plugin, limit) = (self.dispatch.id, &self.dispatch.plugin, self.max_output);
        warn!(id, %plugin, limit, "plugin output past the limit; stopping it");
        Err(Some(Cause::OutputLimit(limit)))
    }

    /// Sends `data` as the next `Output` frame, while the connection is there.
    pub(crate) async fn output(&mut self, stream: Stream, data: Vec<u8>) {
        if self.connected {
            let (id, seq) = (self.dispatch.id, self.seq);
            self.seq += 1;
            let frame = Frame::Output {
                id,
                seq,
                stream,
                data,
            };
            self.connected = self.out.send(frame).await.is_ok();
        }
    }

    /// The run is being stopped for `cause`.
    pub(crate) fn stopping(&mut self, cause: Cause) {
        self.cause = Some(cause);
        if cause == Cause::ConnectionLost {
            self.connected = false;
        }
    }

    /// Sends the run's last frame: its stop's, else `Done` with the exit code `end` holds,
    /// else the frame it holds; nothing once the connection is gone.
    pub(crate) async fn finish(self, end: Result<i32, Frame>) {
        let id = self.dispatch.id;
        let last = match (self.cause, end) {
            (Some(cause), _) => cause.last_frame(self.dispatch),
            (None, Ok(exit_code)) => Some(Frame::Done { id, exit_code }),
            (None, Err(frame)) => Some(frame),
        };
        if let (true, Some(last)) = (self.connected, last) {
            let _ = self.out.send(last).await;
        }
    }
}

/// One plugin process being followed by [`run_process`]: its dispatch's run, how it exited,
/// and the drain after its exit.
struct ProcessRun<'a> {
    run: DispatchRun<'a>,
    pgid: i32,
    /// How the main process exited, once it did.
    status: Option<std::io::Result<ExitStatus>>,
    /// The broker asked for the output to be paused.
    paused: bool,
    drain: Drain,
}

/// The reading of the pipes after the main process exited.
#[derive(Default)]
struct Drain {
    /// Its end, once the main process exited; pushed back by time paused or waiting for room
    /// towards the broker.
    cap: Option<Instant>,
    /// When the pause under way began.
    held_since: Option<Instant>,
    /// Bytes read since the exit.
    bytes: u64,
}

impl Drain {
    /// Starts the drain: the main process exited now.
    fn start(&mut self, sleep: Pin<&mut Sleep>) {
        let now = Instant::now();
        self.cap = Some(now + DRAIN_MAX);
        sleep.reset(now + DRAIN_AFTER_EXIT);
    }

    /// The output was paused (`true`) or resumed: the drain counts only time spent waiting on
    /// the pipes.
    fn pause(&mut self, paused: bool, sleep: Pin<&mut Sleep>) {
        if paused {
            self.held_since.get_or_insert_with(Instant::now);
        } else {
            let held = self.held_since.take().map(|since| since.elapsed());
            self.extend(held.unwrap_or_default(), sleep);
        }
    }

    /// Once draining: pushes the end back by `held`, and sets `sleep` to
    /// [`DRAIN_AFTER_EXIT`] of silence from now, at the latest the end.
    fn extend(&mut self, held: Duration, sleep: Pin<&mut Sleep>) {
        if let Some(cap) = &mut self.cap {
            *cap += held;
            sleep.reset((Instant::now() + DRAIN_AFTER_EXIT).min(*cap));
        }
    }
}

impl ProcessRun<'_> {
    /// Serves the plugin's lines, exit, stop signals and timers until its pipes are closed
    /// and it exited (or the drain after its exit is over).
    async fn follow(
        &mut self,
        child: &mut tokio::process::Child,
        mut lines: mpsc::Receiver<PipeLine>,
        signals: Signals,
        deadline: Option<Instant>,
    ) {
        let Signals {
            mut stop,
            paused: mut pause,
        } = signals;
        // Timers not armed yet wait for a time no run reaches.
        let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
        let term_sleep = tokio::time::sleep_until(far_future);
        let drain_sleep = tokio::time::sleep_until(far_future);
        let timeout = until(deadline);
        tokio::pin!(term_sleep, drain_sleep, timeout);
        let (mut term_armed, mut pause_open, mut lines_open) = (false, true, true);
        self.paused = *pause.borrow_and_update();
        while lines_open || self.status.is_none() {
            let mut stop_now = None;
            // A plugin being stopped is drained whatever the flow control says.
            let hold = self.paused && self.run.cause.is_none();
            tokio::select! {
                changed = pause.changed(), if pause_open => match changed {
                    Ok(()) => {
                        self.paused = *pause.borrow_and_update();
                        self.drain.pause(self.paused, drain_sleep.as_mut());
                    }
                    Err(_) => (pause_open, self.paused) = (false, false),
                },
                line = lines.recv(), if lines_open && !hold => match line {
                    Some((stream, data)) => match self.line(stream, data, drain_sleep.as_mut()).await {
                        ControlFlow::Continue(stop_for) => stop_now = stop_for,
                        ControlFlow::Break(()) => break,
                    },
                    None => lines_open = false,
                },
                exited = child.wait(), if self.status.is_none() => {
                    self.status = Some(exited);
                    self.drain.start(drain_sleep.as_mut());
                }
                stopped = &mut stop, if self.run.cause.is_none() => stop_now = Some(Cause::of_stop(stopped)),
                () = &mut timeout, if self.run.cause.is_none() => stop_now = Some(Cause::Timeout),
                () = &mut term_sleep, if term_armed && self.status.is_none() => {
                    debug!(id = self.run.dispatch.id, pgid = self.pgid, "plugin ignored SIGTERM; killing its group");
                    kill_group(self.pgid, libc::SIGKILL);
                    term_armed = false;
                }
                () = &mut drain_sleep, if self.drain.cap.is_some() && lines_open && !hold => {
                    debug!(id = self.run.dispatch.id, pgid = self.pgid, "plugin pipes still open after it exited; killing its group");
                    break;
                }
            }
            if let Some(cause) = stop_now {
                self.stop(cause);
                if self.status.is_none() {
                    term_sleep.as_mut().reset(Instant::now() + TERM_GRACE);
                    term_armed = true;
                }
            }
        }
    }

    /// Sends one line of output (see [`DispatchRun::count`] for the output limit). `Break`
    /// ends the run: the plugin goes on writing after it exited.
    async fn line(
        &mut self,
        stream: Stream,
        data: Vec<u8>,
        drain_sleep: Pin<&mut Sleep>,
    ) -> ControlFlow<(), Option<Cause>> {
        let len = data.len() as u64;
        if let Err(stop_for) = self.run.count(data.len()) {
            return ControlFlow::Continue(stop_for);
        }
        if !self.run.connected {
            return ControlFlow::Continue(None);
        }
        let sent_at = Instant::now();
        self.run.output(stream, data).await;
        if self.drain.cap.is_some() {
            // Waiting for room towards the broker is not draining.
            self.drain.extend(sent_at.elapsed(), drain_sleep);
            self.drain.bytes += len;
            if self.drain.bytes > DRAIN_MAX_BYTES {
                let (id, pgid) = (self.run.dispatch.id, self.pgid);
                debug!(
                    id,
                    pgid, "plugin output goes on after it exited; killing its group"
                );
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(None)
    }

    /// Starts stopping the plugin for `cause`: SIGTERM to its group (the caller arms the
    /// SIGKILL).
    fn stop(&mut self, cause: Cause) {
        self.run.stopping(cause);
        let (id, pgid) = (self.run.dispatch.id, self.pgid);
        debug!(id, pgid, ?cause, "stopping plugin");
        kill_group(pgid, libc::SIGTERM);
    }
}

#[cfg(test)]
pub(crate) mod tests;

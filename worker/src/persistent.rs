//! Persistent plugins: one long-running instance per plugin, serving many requests at once.
//!
//! A plugin whose `plugin.toml` (beside its executable) says `persistent = true` is started on
//! its first request, with the same process group, `PR_SET_PDEATHSIG` and instance marker as
//! a plain plugin ([`runner::plugin_command`]), and kept running. Requests and answers are
//! JSON lines over its stdin and stdout ([`plugins::persistent`], `plugins/README.md`); each
//! request carries an id chosen here, unique within the instance.
//!
//! One [`Manager`] per worker holds a [`Slot`] per plugin executable (canonical path): the
//! manifest read at first use, a semaphore of `max_concurrency` permits and the current
//! instance. An instance has four tasks: a writer owning its stdin (fed by an unbounded
//! channel that holds at most one request line and one cancel per permit, plus `shutdown`),
//! a reader of its stdout that parses frames and routes them to the requests' channels, a
//! logger of its stderr, and a supervisor that owns the child and ends the instance.
//!
//! Invariants:
//! - Every request ends with one frame (`Done`, or `Failed` with `PluginCrashed`,
//!   `PluginProtocol`, `Cancelled`, `Timeout`…) unless its connection is gone: an instance
//!   that ends fails every request in flight (its reason is recorded before their channels
//!   close), and a request that was cancelled waits for `done` at most the manifest's
//!   `cancel_grace` before it kills the instance.
//! - No instance outlives its worker: [`Manager::shutdown`] sends `shutdown` and kills the
//!   group after [`SHUTDOWN_GRACE`]; dropping an instance's supervisor kills its group; the
//!   group's leader has `PR_SET_PDEATHSIG(SIGKILL)`.
//! - Memory is bounded per instance: requests in flight by `max_concurrency`, the lines to its
//!   stdin by twice that plus one, each request's queue by [`EVENT_QUEUE`], a stdout line by
//!   [`MAX_FRAME_LINE`]. An instance that ends releases its tasks, pipes and map.
//! - Nothing a plugin writes can make the worker panic: every line is parsed into a typed
//!   frame, and anything else ends that instance only.

use crate::lines::{output_chunks, LineReader, MAX_LINE};
use crate::lock;
use crate::runner::{
    self, failed, interrupted, plugin_request, unless_stopped, until, without_paths, Cause,
    DispatchRun, GroupGuard, ResolvedPlugin, RunnerConfig, Stop, DRAIN_AFTER_EXIT,
};
use plugins::persistent::{output_bytes, FromPlugin, OutStream, ToPlugin};
use plugins::{Manifest, ManifestError};
use proto::{Dispatch, ErrorKind, Frame, Stream};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

/// Longest line a persistent plugin may write to stdout: one frame. A 64 KiB line of output
/// in base64 with its JSON fits many times over.
pub const MAX_FRAME_LINE: usize = 1024 * 1024;

/// Events (output lines, `done`) queued for one request.
const EVENT_QUEUE: usize = 64;

/// How long [`Manager::shutdown`] waits for an instance to exit after `shutdown`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long the supervisor waits to reap an instance it killed.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// The bytes of a bad stdout line kept for the log.
const LOGGED_LINE: usize = 200;

/// Where a dispatch goes once its plugin is resolved.
#[derive(Debug)]
pub(crate) enum Route {
    /// A plain plugin: one process per request.
    Fork,
    /// A persistent plugin, with its manifest.
    Persistent(Manifest),
    /// The manifest is unusable; the dispatch was answered `Failed`.
    Refused,
}

/// Reads the manifest beside `plugin` and decides how to serve `dispatch`.
pub(crate) async fn route(
    plugin: &ResolvedPlugin,
    dispatch: &Dispatch,
    out: &mpsc::Sender<Frame>,
) -> Route {
    if !plugin.has_manifest {
        return Route::Fork;
    }
    match Manifest::load(&plugin.dir) {
        Ok(Some(manifest)) if manifest.persistent => Route::Persistent(manifest),
        Ok(_) => Route::Fork,
        Err(e) => {
            warn!(id = dispatch.id, plugin = %dispatch.plugin, dir = %plugin.dir.display(), error = %e, "plugin manifest refused");
            let message = manifest_message(&dispatch.plugin, &e);
            let _ = out
                .send(failed(dispatch.id, ErrorKind::PluginFailed, message))
                .await;
            Route::Refused
        }
    }
}

/// What the client is told about a bad manifest (its text names no path).
fn manifest_message(plugin: &str, e: &ManifestError) -> String {
    format!("plugin `{plugin}` cannot run: {e}")
}

/// One dispatch for a persistent plugin, as the runner resolved it.
pub(crate) struct Request<'a> {
    pub(crate) runner: &'a RunnerConfig,
    pub(crate) plugin: &'a ResolvedPlugin,
    pub(crate) dispatch: &'a Dispatch,
    /// When the dispatch times out; its waits count against it.
    pub(crate) deadline: Option<Instant>,
}

/// The running persistent plugins of one worker, by canonical executable path.
#[derive(Default)]
pub struct Manager {
    slots: Mutex<HashMap<PathBuf, Arc<Slot>>>,
    /// Set by [`Manager::shutdown`]: no instance starts after it.
    closed: AtomicBool,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plugins: Vec<PathBuf> = lock(&self.slots).keys().cloned().collect();
        f.debug_struct("Manager")
            .field("plugins", &plugins)
            .finish()
    }
}

/// One plugin executable: its manifest, its concurrency bound and its current instance.
struct Slot {
    manifest: Manifest,
    permits: Arc<Semaphore>,
    current: Mutex<Option<Arc<Instance>>>,
    /// Held while an instance is (re)started, so that one request starts it and the others
    /// wait for it.
    restart: tokio::sync::Mutex<Restart>,
}

/// Restart backoff of a slot.
#[derive(Default)]
struct Restart {
    /// Failures since an instance last answered a request.
    failures: u32,
    /// No instance starts before this.
    not_before: Option<Instant>,
}

/// Why an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The process exited or was killed from outside (the text says how).
    Exited(String),
    /// It closed its stdout but went on running.
    StdoutClosed,
    /// Writing to its stdin failed while it went on running.
    StdinClosed,
    /// It broke the protocol (the text says how; no line content).
    Protocol(String),
    /// A cancelled request got no `done` within the grace.
    Unresponsive(Duration),
    /// The worker stops.
    Shutdown,
}

impl Failure {
    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Protocol(_) => ErrorKind::PluginProtocol,
            _ => ErrorKind::PluginCrashed,
        }
    }

    /// For the client: names the plugin as requested, never a path.
    fn message(&self, plugin: &str) -> String {
        match self {
            Failure::Exited(how) => format!("persistent plugin `{plugin}` {how}"),
            Failure::StdoutClosed => format!("persistent plugin `{plugin}` closed its stdout"),
            Failure::StdinClosed => {
                format!("persistent plugin `{plugin}` stopped reading its stdin")
            }
            Failure::Protocol(how) => {
                format!("persistent plugin `{plugin}` broke the plugin protocol: {how}")
            }
            Failure::Unresponsive(grace) => format!(
                "persistent plugin `{plugin}` was killed: a cancelled request got no `done` within {grace:?}"
            ),
            Failure::Shutdown => "the worker is shutting down".to_string(),
        }
    }
}

/// How a process ended, for people.
fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended".to_string(),
        },
        Err(e) => format!("ended (cannot wait for it: {})", without_paths(e)),
    }
}

/// What the reader hands a request.
#[derive(Debug)]
enum Event {
    Output(Stream, Vec<u8>),
    Done(i32),
}

/// An instance's requests in flight, and whether (and why) it ended.
#[derive(Default)]
struct Inflight {
    requests: HashMap<u64, mpsc::Sender<Event>>,
    ended: Option<(Failure, Instant)>,
}

/// What an instance's tasks share.
struct Shared {
    /// The plugin's name as first requested, for logs.
    name: String,
    path: PathBuf,
    pid: u32,
    state: Mutex<Inflight>,
    /// Tells the supervisor that a failure was recorded: kill the group.
    wake: Notify,
    /// Some request was answered `done`: resets the restart backoff.
    answered: AtomicBool,
    /// [`Manager::shutdown`] asked it to stop.
    shutting_down: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    /// Records why the instance ends (the first reason wins), fails every request in flight
    /// and wakes the supervisor. Returns how many requests were in flight, or `None` when it
    /// had ended already.
    fn fail(&self, failure: Failure) -> Option<usize> {
        let requests = {
            let mut state = lock(&self.state);
            if state.ended.is_some() {
                return None;
            }
            state.ended = Some((failure, Instant::now()));
            std::mem::take(&mut state.requests)
        };
        self.wake.notify_one();
        // Their senders drop here, outside the lock: each request reads the reason.
        Some(requests.len())
    }

    fn failure(&self) -> Option<Failure> {
        lock(&self.state).ended.as_ref().map(|(f, _)| f.clone())
    }

    fn sender(&self, id: u64) -> Option<mpsc::Sender<Event>> {
        lock(&self.state).requests.get(&id).cloned()
    }

    fn take(&self, id: u64) -> Option<mpsc::Sender<Event>> {
        lock(&self.state).requests.remove(&id)
    }
}

/// A running instance of a persistent plugin.
struct Instance {
    shared: Arc<Shared>,
    /// Lines to its stdin; `true` closes stdin after the line.
    to_plugin: mpsc::UnboundedSender<(Vec<u8>, bool)>,
    /// Closed when the supervisor ends.
    ended: watch::Receiver<()>,
    _supervisor: AbortOnDropHandle<()>,
}

/// A request registered with an instance: its id there and its events.
struct Registration {
    id: u64,
    events: mpsc::Receiver<Event>,
}

impl Instance {
    async fn start(
        runner: &RunnerConfig,
        plugin: &ResolvedPlugin,
        name: &str,
    ) -> std::io::Result<Instance> {
        let mut cmd = runner::plugin_command(runner, &plugin.path, &plugin.dir);
        cmd.arg0(&plugin.argv0);
        cmd.env("TRIGGERFS_PERSISTENT", "1");
        let (mut child, group) = runner::spawn_confined(runner, &mut cmd).await?;
        let pid = group.pgid as u32;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the plugin's pipes are missing"));
        };
        let shared = Arc::new(Shared {
            name: name.to_string(),
            path: plugin.path.clone(),
            pid,
            state: Mutex::new(Inflight::default()),
            wake: Notify::new(),
            answered: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        });
        info!(plugin = %name, path = %plugin.path.display(), pid, "persistent plugin started");
        let (to_plugin, lines) = mpsc::unbounded_channel();
        let writer = AbortOnDropHandle::new(tokio::spawn(write_lines(stdin, lines)));
        let reader = AbortOnDropHandle::new(tokio::spawn(read_frames(stdout, shared.clone())));
        let logger = AbortOnDropHandle::new(tokio::spawn(log_stderr(stderr, shared.clone())));
        let (ended_tx, ended) = watch::channel(());
        let supervisor = tokio::spawn(supervise(Supervised {
            child,
            shared: shared.clone(),
            group,
            writer,
            reader,
            _logger: logger,
            _ended: ended_tx,
        }));
        Ok(Instance {
            shared,
            to_plugin,
            ended,
            _supervisor: AbortOnDropHandle::new(supervisor),
        })
    }

    fn is_alive(&self) -> bool {
        lock(&self.shared.state).ended.is_none()
    }

    /// Registers a request; `None` when the instance has ended.
    fn register(&self) -> Option<Registration> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let mut state = lock(&self.shared.state);
        if state.ended.is_some() {
            return None;
        }
        state.requests.insert(id, tx);
        Some(Registration { id, events })
    }

    /// Queues a line for the plugin's stdin; a closed writer means the instance is ending,
    /// which the request learns from its events.
    fn send(&self, frame: &ToPlugin) {
        let _ = self.to_plugin.send((frame.to_line(), false));
    }

    /// Asks the instance to exit, and kills its group when it has not after
    /// [`SHUTDOWN_GRACE`].
    async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.to_plugin.send((ToPlugin::Shutdown.to_line(), true));
        let mut ended = self.ended.clone();
        // The receiver only ever sees its sender dropped: the supervisor ended.
        if tokio::time::timeout(SHUTDOWN_GRACE, ended.changed())
            .await
            .is_err()
        {
            debug!(plugin = %self.shared.name, pid = self.shared.pid, "persistent plugin ignored shutdown; killing its group");
            self.shared.fail(Failure::Shutdown);
            let _ = tokio::time::timeout(REAP_WAIT, ended.changed()).await;
        }
    }
}

/// Writes queued lines to the plugin's stdin, a burst per flush. Returns `true` when a write
/// failed (the plugin closed its stdin, or exited).
async fn write_lines(
    stdin: ChildStdin,
    mut lines: mpsc::UnboundedReceiver<(Vec<u8>, bool)>,
) -> bool {
    let mut stdin = BufWriter::new(stdin);
    while let Some((line, mut close)) = lines.recv().await {
        let mut written = stdin.write_all(&line).await;
        while written.is_ok() && !close {
            match lines.try_recv() {
                Ok((line, last)) => {
                    written = stdin.write_all(&line).await;
                    close = last;
                }
                Err(_) => break,
            }
        }
        if written.is_ok() {
            written = stdin.flush().await;
        }
        if let Err(e) = written {
            debug!(error = %e, "cannot write to a persistent plugin's stdin");
            return true;
        }
        if close {
            // Dropping stdin: the plugin reads end-of-file after `shutdown`.
            return false;
        }
    }
    false
}

/// Reads frames from the plugin's stdout and routes them; a line that is not a valid frame
/// ends the instance with a protocol failure.
async fn read_frames(stdout: ChildStdout, shared: Arc<Shared>) {
    // One byte over the limit tells an overlong line from one exactly at it.
    let mut reader = LineReader::new(stdout, MAX_FRAME_LINE + 1);
    let mut line_no = 0u64;
    loop {
        let line = match reader.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                debug!(plugin = %shared.name, error = %e, "persistent plugin stdout read failed");
                return;
            }
        };
        line_no += 1;
        if let Err(reason) = route_frame(&shared, &line).await {
            let shown = String::from_utf8_lossy(&line[..line.len().min(LOGGED_LINE)]);
            if let Some(in_flight) = shared.fail(Failure::Protocol(reason.clone())) {
                warn!(plugin = %shared.name, path = %shared.path.display(), pid = shared.pid, line_no, line = %shown, %reason, in_flight, "persistent plugin broke the protocol; killing it");
            }
            return;
        }
    }
}

/// Hands one stdout line to its request. The error says what is wrong, for the client too.
async fn route_frame(shared: &Shared, line: &[u8]) -> Result<(), String> {
    if line.len() > MAX_FRAME_LINE {
        return Err(format!("a stdout line longer than {MAX_FRAME_LINE} bytes"));
    }
    let frame = FromPlugin::parse(line).map_err(|e| format!("a stdout line is {e}"))?;
    match frame {
        FromPlugin::Output {
            id,
            stream,
            data,
            data_base64,
        } => {
            let bytes = output_bytes(data, data_base64).map_err(|e| e.to_string())?;
            let Some(events) = shared.sender(id) else {
                return Err(format!("output for unknown request id {id}"));
            };
            let stream = match stream {
                OutStream::Stdout => Stream::Stdout,
                OutStream::Stderr => Stream::Stderr,
            };
            // A request that went away (its task dropped) no longer reads: dropped.
            let _ = events.send(Event::Output(stream, bytes)).await;
        }
        FromPlugin::Done { id, exit_code } => {
            let Some(events) = shared.take(id) else {
                return Err(format!("done for unknown request id {id}"));
            };
            shared.answered.store(true, Ordering::Relaxed);
            let _ = events.send(Event::Done(exit_code)).await;
        }
    }
    Ok(())
}

/// Logs what the plugin writes to stderr (it goes to no client).
async fn log_stderr(stderr: tokio::process::ChildStderr, shared: Arc<Shared>) {
    let mut reader = LineReader::new(stderr, MAX_LINE);
    while let Ok(Some(line)) = reader.next_line().await {
        info!(plugin = %shared.name, pid = shared.pid, line = %String::from_utf8_lossy(&line), "persistent plugin stderr");
    }
}

/// What the supervisor owns; all of it goes when it ends.
struct Supervised {
    child: Child,
    shared: Arc<Shared>,
    /// SIGKILLs the group when dropped, even when the supervisor is aborted.
    group: GroupGuard,
    writer: AbortOnDropHandle<bool>,
    reader: AbortOnDropHandle<()>,
    _logger: AbortOnDropHandle<()>,
    _ended: watch::Sender<()>,
}

/// Completes with the handle's task; never when there is none.
async fn joined<T>(handle: &mut Option<AbortOnDropHandle<T>>) -> Option<T> {
    match handle {
        Some(task) => {
            let result = task.await.ok();
            *handle = None;
            result
        }
        None => std::future::pending().await,
    }
}

/// Follows an instance to its end: its exit, a recorded failure, or a pipe closed while it
/// runs on. Then kills its group, lets the reader deliver what it wrote before it exited,
/// fails whatever is still in flight, reaps it and says why it ended.
async fn supervise(s: Supervised) {
    let Supervised {
        mut child,
        shared,
        mut group,
        writer,
        reader,
        _logger,
        _ended,
    } = s;
    let (mut writer, mut reader) = (Some(writer), Some(reader));
    // A pipe closed while the process runs: it gets a moment to exit before it is killed.
    let mut closing: Option<(Instant, Failure)> = None;
    let status = loop {
        let closing_at = closing.as_ref().map(|(at, _)| *at);
        tokio::select! {
            status = child.wait() => break Some(status),
            () = shared.wake.notified() => break None,
            _ = joined(&mut reader) => {
                closing.get_or_insert((Instant::now() + DRAIN_AFTER_EXIT, Failure::StdoutClosed));
            }
            failed = joined(&mut writer) => {
                if failed == Some(true) {
                    closing.get_or_insert((Instant::now() + DRAIN_AFTER_EXIT, Failure::StdinClosed));
                }
            }
            () = until(closing_at) => {
                if let Some((_, failure)) = closing.take() {
                    shared.fail(failure);
                }
                break None;
            }
        }
    };
    group.kill();
    let mut in_flight = None;
    if let Some(status) = &status {
        // Its last frames are in the pipe, and with the group dead nothing holds it open.
        if let Some(task) = reader.take() {
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, task).await;
        }
        let failure = if shared.shutting_down.load(Ordering::Relaxed) {
            Failure::Shutdown
        } else {
            Failure::Exited(describe(status))
        };
        in_flight = shared.fail(failure);
    } else if tokio::time::timeout(REAP_WAIT, child.wait()).await.is_err() {
        warn!(plugin = %shared.name, pid = shared.pid, "persistent plugin not reaped after SIGKILL");
    }
    let failure = shared.failure().unwrap_or(Failure::Shutdown);
    let status = status
        .as_ref()
        .map(describe)
        .unwrap_or_else(|| "was killed".to_string());
    if failure == Failure::Shutdown {
        info!(plugin = %shared.name, pid = shared.pid, %status, "persistent plugin stopped");
    } else {
        warn!(plugin = %shared.name, path = %shared.path.display(), pid = shared.pid, %status, reason = %failure.message(&shared.name), in_flight = in_flight.unwrap_or(0), "persistent plugin instance ended; it restarts on its next request");
    }
    // Killed above and reaped: a second kill could only hit a group that reused the id.
    std::mem::forget(group);
}

impl Slot {
    /// The running instance, started (after the restart backoff) when there is none.
    async fn instance(
        &self,
        manager: &Manager,
        runner: &RunnerConfig,
        plugin: &ResolvedPlugin,
        name: &str,
    ) -> Result<Arc<Instance>, String> {
        if let Some(instance) = self.alive() {
            return Ok(instance);
        }
        let mut restart = self.restart.lock().await;
        // Another request may have started it while this one waited.
        if let Some(instance) = self.alive() {
            return Ok(instance);
        }
        if let Some(dead) = lock(&self.current).take() {
            let (answered, ended_at) = {
                let state = lock(&dead.shared.state);
                let at = state
                    .ended
                    .as_ref()
                    .map_or_else(Instant::now, |(_, at)| *at);
                (dead.shared.answered.load(Ordering::Relaxed), at)
            };
            restart.failures = if answered { 1 } else { restart.failures + 1 };
            restart.not_before = Some(ended_at + self.manifest.restart_delay(restart.failures));
        }
        if let Some(at) = restart.not_before {
            if at > Instant::now() {
                debug!(plugin = %name, failures = restart.failures, "persistent plugin restart backoff");
            }
            tokio::time::sleep_until(at).await;
        }
        if manager.closed.load(Ordering::Relaxed) {
            return Err("the worker is shutting down".to_string());
        }
        match Instance::start(runner, plugin, name).await {
            Ok(instance) if manager.closed.load(Ordering::Relaxed) => {
                // Shutdown began while it started: it would be missed.
                instance.shutdown().await;
                Err("the worker is shutting down".to_string())
            }
            Ok(instance) => {
                restart.not_before = None;
                let instance = Arc::new(instance);
                *lock(&self.current) = Some(instance.clone());
                Ok(instance)
            }
            Err(e) => {
                warn!(plugin = %name, path = %plugin.path.display(), error = %e, "cannot start persistent plugin");
                restart.failures += 1;
                restart.not_before =
                    Some(Instant::now() + self.manifest.restart_delay(restart.failures));
                Err(format!(
                    "cannot start plugin `{name}`: {}",
                    without_paths(&e)
                ))
            }
        }
    }

    fn alive(&self) -> Option<Arc<Instance>> {
        lock(&self.current)
            .as_ref()
            .filter(|instance| instance.is_alive())
            .cloned()
    }
}

impl Manager {
    /// No plugins running yet.
    pub fn new() -> Manager {
        Manager::default()
    }

    fn slot(&self, plugin: &ResolvedPlugin, manifest: Manifest) -> Arc<Slot> {
        lock(&self.slots)
            .entry(plugin.path.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    permits: Arc::new(Semaphore::new(manifest.max_concurrency)),
                    manifest,
                    current: Mutex::new(None),
                    restart: tokio::sync::Mutex::new(Restart::default()),
                })
            })
            .clone()
    }

    /// Serves one dispatch on the plugin's instance, sending `Accepted`, `Output` and `Done`
    /// or `Failed` to `out`, as a plain plugin's run does.
    pub(crate) async fn serve(
        &self,
        request: Request<'_>,
        manifest: Manifest,
        mut stop: oneshot::Receiver<Stop>,
        out: &mpsc::Sender<Frame>,
    ) {
        let Request {
            runner,
            plugin,
            dispatch,
            deadline,
        } = request;
        let id = dispatch.id;
        let name = dispatch.plugin.as_str();
        let slot = self.slot(plugin, manifest);
        let permit = slot.permits.clone().acquire_owned();
        let _permit: OwnedSemaphorePermit = match unless_stopped(permit, &mut stop, deadline).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return,
            Err(why) => {
                let waiting = format!("a free request slot in persistent plugin `{name}`");
                return interrupted(out, id, why, &waiting).await;
            }
        };
        let (instance, registration) = loop {
            let instance = slot.instance(self, runner, plugin, name);
            let instance = match unless_stopped(instance, &mut stop, deadline).await {
                Ok(Ok(instance)) => instance,
                Ok(Err(message)) => {
                    let _ = out.send(failed(id, ErrorKind::PluginFailed, message)).await;
                    return;
                }
                Err(why) => {
                    let waiting = format!("persistent plugin `{name}` to (re)start");
                    return interrupted(out, id, why, &waiting).await;
                }
            };
            // It may have ended since: the next turn restarts it.
            if let Some(registration) = instance.register() {
                break (instance, registration);
            }
        };
        let request = plugin_request(dispatch, &runner.identity);
        instance.send(&ToPlugin::Request {
            id: registration.id,
            request,
        });
        debug!(id, plugin = %name, instance_id = registration.id, pid = instance.shared.pid, "request sent to persistent plugin");
        follow(
            &instance,
            registration,
            &slot.manifest,
            dispatch,
            deadline,
            stop,
            out,
            runner.max_output,
        )
        .await;
    }

    /// Stops every instance: `shutdown`, then SIGKILL to the group of those still running
    /// after [`SHUTDOWN_GRACE`]. No instance starts afterwards.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut stopping = tokio::task::JoinSet::new();
        for slot in slots {
            let Some(instance) = lock(&slot.current).take() else {
                continue;
            };
            if instance.is_alive() {
                stopping.spawn(async move { instance.shutdown().await });
            }
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// Forwards one request's output until its `done` or the instance's end; on cancel,
/// timeout or output past `max_output` (the request ends `OutputLimit`; the instance serves
/// on) sends `cancel` and kills the instance when no `done` comes within the grace.
#[allow(clippy::too_many_arguments)]
async fn follow(
    instance: &Instance,
    mut registration: Registration,
    manifest: &Manifest,
    dispatch: &Dispatch,
    deadline: Option<Instant>,
    mut stop: oneshot::Receiver<Stop>,
    out: &mpsc::Sender<Frame>,
    max_output: u64,
) {
    let id = dispatch.id;
    let mut run = DispatchRun::accept(dispatch, out, max_output).await;
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let grace = tokio::time::sleep_until(far_future);
    let timeout = until(deadline);
    tokio::pin!(grace, timeout);
    let mut grace_armed = false;
    let end = loop {
        let mut stop_now = None;
        tokio::select! {
            event = registration.events.recv() => match event {
                Some(Event::Output(stream, bytes)) => match run.count(bytes.len()) {
                    Ok(()) => {
                        for data in output_chunks(&bytes) {
                            run.output(stream, data.to_vec()).await;
                        }
                    }
                    Err(stop_for) => stop_now = stop_for,
                },
                Some(Event::Done(exit_code)) => break Ok(exit_code),
                None => {
                    let failure = instance.shared.failure().unwrap_or(Failure::Shutdown);
                    break Err(failed(id, failure.kind(), failure.message(&dispatch.plugin)));
                }
            },
            stopped = &mut stop, if run.cause.is_none() => stop_now = Some(Cause::of_stop(stopped)),
            () = &mut timeout, if run.cause.is_none() => stop_now = Some(Cause::Timeout),
            () = &mut grace, if grace_armed => {
                grace_armed = false;
                let waited = manifest.cancel_grace;
                if let Some(in_flight) = instance.shared.fail(Failure::Unresponsive(waited)) {
                    warn!(id, plugin = %dispatch.plugin, pid = instance.shared.pid, ?waited, in_flight, "persistent plugin did not answer a cancel; killing it");
                }
            }
        }
        if let Some(cause) = stop_now {
            run.stopping(cause);
            debug!(id, ?cause, "cancelling a request of a persistent plugin");
            instance.send(&ToPlugin::Cancel {
                id: registration.id,
            });
            grace.as_mut().reset(Instant::now() + manifest.cancel_grace);
            grace_armed = true;
        }
    };
    run.finish(end).await;
}

#[cfg(test)]
mod tests;

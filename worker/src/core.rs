//! The core plugins the worker serves itself: `echo`, `file` and `append` as tasks (no
//! process), `command` as `<shell> -c` started straight from the worker (see
//! [`crate::runner`]).
//!
//! A core plugin exists on a worker only where its directory does: `<pluginspath>/<name>/`
//! with a `plugin.toml` naming it (`core = "append"`), as `triggerfs plugins install` lays them
//! out. Manifests are read at most once a second per name (a cache), so a request costs no
//! file read.
//!
//! `append` batches: the requests for one file that arrive together go out in one `write(2)`
//! on a file opened with `O_APPEND` (reopened per batch, so a rotated log is followed), in the
//! order they arrived, then are answered; the manifest's `sync` says when the data is flushed
//! (`none`, `batch`: before answering, `interval:<d>`: at most once per interval).

use crate::lines::MAX_LINE;
use crate::lock;
use plugins::core::{append_records, CoreError, CoreRequest};
use plugins::{CorePlugin, Manifest, SyncPolicy};
use proto::{Dispatch, Frame, Stream};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

/// How long a manifest read (or its absence) is trusted.
const MANIFEST_TTL: Duration = Duration::from_secs(1);

/// How long an idle file's appender task lives.
const APPENDER_IDLE: Duration = Duration::from_secs(1);

/// The most bytes one `append` batch writes at once.
const MAX_BATCH: usize = 4 * 1024 * 1024;

/// What the worker keeps for its core plugins.
#[derive(Debug, Default)]
pub struct CoreState {
    manifests: Mutex<HashMap<String, (Instant, Lookup)>>,
    appenders: Arc<Appenders>,
}

/// The core plugin behind a plugin name, if any.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Not a core plugin: run the executable.
    NotCore,
    /// A core plugin, with its manifest.
    Core(CorePlugin, Manifest),
    /// The directory has a manifest that cannot be used (the reason names no host path).
    Invalid(String),
}

impl CoreState {
    /// The core plugin `name` resolves to under `pluginspath`.
    pub fn lookup(&self, pluginspath: &Path, name: &str) -> Lookup {
        // `x/y` names an executable inside `x`, except `x/x` (the seed's spelling, as in
        // `command/command`): that is the plugin of directory `x`, a core one if its
        // manifest says so.
        let name = match name.split_once('/') {
            Some((dir, executable)) if dir == executable => dir,
            Some(_) => return Lookup::NotCore,
            None => name,
        };
        if proto::names::check_plugin(name).is_err() {
            return Lookup::NotCore;
        }
        let now = Instant::now();
        if let Some((at, found)) = lock(&self.manifests).get(name) {
            if now.duration_since(*at) < MANIFEST_TTL {
                return found.clone();
            }
        }
        let found = read_manifest(pluginspath, name);
        let mut cache = lock(&self.manifests);
        // Bounded by the names that exist under the plugins path plus those tried within a
        // second; stale entries go when the cache grows.
        if cache.len() > 1024 {
            cache.retain(|_, (at, _)| now.duration_since(*at) < MANIFEST_TTL);
        }
        cache.insert(name.to_string(), (now, found.clone()));
        found
    }
}

fn read_manifest(pluginspath: &Path, name: &str) -> Lookup {
    let Ok(root) = pluginspath.canonicalize() else {
        return Lookup::NotCore;
    };
    let Ok(dir) = root.join(name).canonicalize() else {
        return Lookup::NotCore;
    };
    // A directory that resolves outside the plugins path is nobody's core plugin.
    if !dir.starts_with(&root) || !dir.is_dir() {
        return Lookup::NotCore;
    }
    match Manifest::load(&dir) {
        Ok(Some(manifest)) => match manifest.core {
            Some(core) => Lookup::Core(core, manifest),
            None => Lookup::NotCore,
        },
        Ok(None) => Lookup::NotCore,
        Err(e) => {
            warn!(plugin = name, dir = %dir.display(), error = %e, "plugin manifest refused");
            Lookup::Invalid(e.to_string())
        }
    }
}

/// Frames of one in-worker run, in order.
struct Reply {
    id: u64,
    seq: u64,
    frames: Vec<Frame>,
}

impl Reply {
    fn new(id: u64) -> Reply {
        Reply {
            id,
            seq: 0,
            frames: vec![Frame::Accepted { id }],
        }
    }

    /// Adds `data` as lines, as a plugin's output pipe would be read
    /// ([`crate::lines::output_chunks`]).
    fn lines(&mut self, stream: Stream, data: &[u8]) {
        for chunk in crate::lines::output_chunks(data) {
            self.frames.push(Frame::Output {
                id: self.id,
                seq: self.seq,
                stream,
                data: chunk.to_vec(),
            });
            self.seq += 1;
        }
    }

    fn done(mut self, exit_code: i32) -> Vec<Frame> {
        self.frames.push(Frame::Done {
            id: self.id,
            exit_code,
        });
        self.frames
    }

    /// Ends with `error`: its line on stderr, then `Done` with its exit code.
    fn error(mut self, error: &CoreError) -> Vec<Frame> {
        self.lines(Stream::Stderr, error.to_string().as_bytes());
        self.done(error.exit_code())
    }
}

/// All the frames of dispatch `id`, which core plugin refused with `error`.
pub(crate) fn refused(id: u64, error: &CoreError) -> Vec<Frame> {
    Reply::new(id).error(error)
}

/// What the core plugins read of `dispatch`.
pub(crate) fn request(dispatch: &Dispatch) -> CoreRequest<'_> {
    let arg = |name: &str| {
        let found = dispatch.args.iter().find(|arg| arg.key == name);
        found.map(|arg| arg.value.as_str())
    };
    CoreRequest {
        command: &dispatch.command,
        payload: &dispatch.payload,
        path: plugins::core::path_arg(arg),
    }
}

/// [`echo`] taking the dispatch: a payload of one line is sent on without a copy.
pub fn echo_owned(dispatch: Dispatch) -> Vec<Frame> {
    let one_line = {
        let body = dispatch
            .payload
            .strip_suffix(b"\n")
            .unwrap_or(&dispatch.payload);
        !body.is_empty() && body.len() <= MAX_LINE && !body.contains(&b'\n')
    };
    if !one_line {
        return echo(&dispatch);
    }
    let id = dispatch.id;
    let mut data = dispatch.payload;
    if data.last() == Some(&b'\n') {
        data.pop();
    }
    vec![
        Frame::Accepted { id },
        Frame::Output {
            id,
            seq: 0,
            stream: Stream::Stdout,
            data,
        },
        Frame::Done { id, exit_code: 0 },
    ]
}

/// `echo`: the payload (or the command line) as output lines.
pub fn echo(dispatch: &Dispatch) -> Vec<Frame> {
    let mut reply = Reply::new(dispatch.id);
    reply.lines(Stream::Stdout, &request(dispatch).text());
    reply.done(0)
}

/// `file`: writes the payload (or the command line) with a trailing newline to the file in
/// arg `path`, replacing its content.
pub async fn file(dispatch: &Dispatch) -> Vec<Frame> {
    let mut reply = Reply::new(dispatch.id);
    let req = request(dispatch);
    let written = match req.target(CorePlugin::File) {
        Ok(path) => {
            let (path, record) = (path.to_path_buf(), req.record());
            let write = move || plugins::core::write_file(&path, &record);
            tokio::task::spawn_blocking(write)
                .await
                .unwrap_or_else(|e| {
                    let reason = format!("the write did not finish: {e}");
                    Err(CoreError::Failure(CorePlugin::File, reason))
                })
        }
        Err(e) => Err(e),
    };
    match written {
        Ok(printed) => {
            reply.lines(Stream::Stdout, printed.as_bytes());
            reply.done(0)
        }
        Err(e) => reply.error(&e),
    }
}

struct AppendJob {
    data: Vec<u8>,
    /// The dispatch, answered when its line is written.
    id: u64,
    /// Where its last frames go: the session's queue.
    out: mpsc::Sender<Frame>,
}

impl AppendJob {
    /// Queues the dispatch's last frames: `Done`, after a line on stderr if the write failed.
    async fn answer(self, result: Result<(), CoreError>) {
        let reply = Reply {
            id: self.id,
            seq: 0,
            frames: Vec::new(),
        };
        let frames = match result {
            Ok(()) => reply.done(0),
            Err(e) => reply.error(&e),
        };
        let _ = send_frames(&self.out, frames).await;
    }
}

/// Serves the core `echo` and `append` on the caller's task, with no task or stop channel of
/// their own (they start no process and need no cancel): `echo` answers at once, `append`
/// hands its line to the file's writer, which queues `Done`. Any other dispatch is given back.
/// `Err` once the session is gone.
pub async fn serve_inline(
    state: &CoreState,
    lookup: &Lookup,
    dispatch: Dispatch,
    out: &mpsc::Sender<Frame>,
) -> Result<Option<Dispatch>, ()> {
    match lookup {
        Lookup::Core(CorePlugin::Echo, _) => {
            send_frames(out, echo_owned(dispatch)).await?;
            Ok(None)
        }
        Lookup::Core(CorePlugin::Append, manifest) => {
            append(state, manifest.sync, dispatch, out).await?;
            Ok(None)
        }
        _ => Ok(Some(dispatch)),
    }
}

/// Queues `frames` in order ([`send_frame`]); `Err` once the session is gone.
pub async fn send_frames(out: &mpsc::Sender<Frame>, frames: Vec<Frame>) -> Result<(), ()> {
    for frame in frames {
        send_frame(out, frame).await?;
    }
    Ok(())
}

/// Queues `frame`, waiting only when the queue is full; `Err` once the session is gone.
pub async fn send_frame(out: &mpsc::Sender<Frame>, frame: Frame) -> Result<(), ()> {
    match out.try_send(frame) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(frame)) => out.send(frame).await.map_err(|_| ()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    }
}

/// `append`: appends the payload (or the command line), newline-terminated, to the file in
/// arg `path`; prints nothing on success. Served without a task of its own: `Accepted` now,
/// then the file's writer (module docs) queues `Done`, or the error, into `out` once the line
/// is written. `Err` once the session is gone.
pub async fn append(
    state: &CoreState,
    sync: SyncPolicy,
    dispatch: Dispatch,
    out: &mpsc::Sender<Frame>,
) -> Result<(), ()> {
    let id = dispatch.id;
    let req = request(&dispatch);
    let path = match req.target(CorePlugin::Append) {
        Ok(path) => path.to_path_buf(),
        Err(e) => {
            return send_frames(out, refused(id, &e)).await;
        }
    };
    send_frame(out, Frame::Accepted { id }).await?;
    let job = AppendJob {
        data: req.record(),
        id,
        out: out.clone(),
    };
    if let Err((job, e)) = state.appenders.submit(path, sync, job) {
        job.answer(Err(e)).await;
    }
    Ok(())
}

/// One task per file being appended to, fed through a channel.
#[derive(Debug, Default)]
struct Appenders {
    files: Mutex<HashMap<PathBuf, mpsc::UnboundedSender<AppendJob>>>,
}

impl Appenders {
    /// Hands `job` to the writer of `path` (started if need be). `Err` gives the job back
    /// when no writer could take it.
    fn submit(
        self: &Arc<Self>,
        path: PathBuf,
        sync: SyncPolicy,
        mut job: AppendJob,
    ) -> Result<(), (AppendJob, CoreError)> {
        // A task that is exiting (idle) may have dropped its receiver: start another.
        for _ in 0..3 {
            let sender = {
                let mut files = lock(&self.files);
                files
                    .entry(path.clone())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        tokio::spawn(append_loop(path.clone(), sync, rx, self.clone()));
                        tx
                    })
                    .clone()
            };
            match sender.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => {
                    job = back;
                    let mut files = lock(&self.files);
                    if files.get(&path).is_some_and(|s| s.same_channel(&sender)) {
                        files.remove(&path);
                    }
                }
            }
        }
        let reason = "the file's writer is not available".to_string();
        Err((job, CoreError::Failure(CorePlugin::Append, reason)))
    }
}

/// Writes the batches for `path` until it has been idle for [`APPENDER_IDLE`].
async fn append_loop(
    path: PathBuf,
    sync: SyncPolicy,
    mut jobs: mpsc::UnboundedReceiver<AppendJob>,
    appenders: Arc<Appenders>,
) {
    let mut last_sync = Instant::now();
    let mut dirty = false;
    loop {
        let wait = match sync {
            SyncPolicy::Interval(every) if dirty => every.saturating_sub(last_sync.elapsed()),
            _ => APPENDER_IDLE,
        };
        let first = match tokio::time::timeout(wait, jobs.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_elapsed) if dirty => {
                let target = path.clone();
                let _ = tokio::task::spawn_blocking(move || sync_file(&target)).await;
                last_sync = Instant::now();
                dirty = false;
                continue;
            }
            Err(_elapsed) => {
                // Leave only if nothing arrived meanwhile; senders look us up under this lock.
                let mut files = lock(&appenders.files);
                if jobs.is_empty() {
                    files.remove(&path);
                    return;
                }
                continue;
            }
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].data.len();
        while bytes < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.data.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let mut buf = Vec::with_capacity(bytes);
        for job in &mut batch {
            buf.extend_from_slice(&std::mem::take(&mut job.data));
        }
        let sync_now = match sync {
            SyncPolicy::None => false,
            SyncPolicy::Batch => true,
            SyncPolicy::Interval(every) => last_sync.elapsed() >= every,
        };
        let target = path.clone();
        let write = move || append_records(&target, &buf, sync_now);
        let result = tokio::task::spawn_blocking(write)
            .await
            .unwrap_or_else(|e| {
                let reason = format!("the write did not finish: {e}");
                Err(CoreError::Failure(CorePlugin::Append, reason))
            });
        if sync_now {
            last_sync = Instant::now();
            dirty = false;
        } else if result.is_ok() {
            dirty = sync != SyncPolicy::None;
        }
        for job in batch {
            job.answer(result.clone()).await;
        }
    }
}

fn sync_file(path: &Path) {
    if let Err(e) = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|f| f.sync_data())
    {
        warn!(path = %path.display(), error = %e, "append: cannot sync");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugins::core::{EXIT_FAILURE, EXIT_USAGE};
    use proto::Arg;

    fn dispatch(id: u64, payload: &[u8], args: &[(&str, &str)]) -> Dispatch {
        Dispatch {
            id,
            service: "s".into(),
            plugin: "append".into(),
            command: vec!["a".into(), "b".into()],
            args: args
                .iter()
                .map(|(k, v)| Arg {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            payload: payload.to_vec(),
            timeout_ms: 0,
            key: None,
        }
    }

    fn outputs(frames: &[Frame]) -> Vec<(Stream, Vec<u8>)> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Output { stream, data, .. } => Some((*stream, data.clone())),
                _ => None,
            })
            .collect()
    }

    fn exit(frames: &[Frame]) -> i32 {
        match frames.last() {
            Some(Frame::Done { exit_code, .. }) => *exit_code,
            other => panic!("no Done: {other:?}"),
        }
    }

    #[test]
    fn echo_prints_lines_like_a_pipe_would_be_read() {
        let frames = echo(&dispatch(1, b"one\ntwo\n", &[]));
        assert!(matches!(frames[0], Frame::Accepted { id: 1 }));
        assert_eq!(
            outputs(&frames),
            [
                (Stream::Stdout, b"one".to_vec()),
                (Stream::Stdout, b"two".to_vec())
            ]
        );
        assert_eq!(exit(&frames), 0);
        assert_eq!(outputs(&echo(&dispatch(2, b"", &[])))[0].1, b"a b");
        for payload in [&b"one\ntwo\n"[..], b"one line\n", b"one line", b"", b"\n"] {
            let d = dispatch(4, payload, &[]);
            assert_eq!(echo_owned(d.clone()), echo(&d), "{payload:?}");
        }
        let long = vec![b'x'; MAX_LINE + 3];
        let out = outputs(&echo(&dispatch(3, &long, &[])));
        assert_eq!(
            (out.len(), out[0].1.len(), out[1].1.len()),
            (2, MAX_LINE, 3)
        );
    }

    #[tokio::test]
    async fn file_writes_and_reports_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let frames = file(&dispatch(1, b"hello", &[("path", path.to_str().unwrap())])).await;
        assert_eq!(exit(&frames), 0);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        let frames = file(&dispatch(2, b"x", &[])).await;
        assert_eq!(exit(&frames), EXIT_USAGE);
        assert_eq!(outputs(&frames)[0].0, Stream::Stderr);
    }

    /// Runs `append` and collects its frames up to its `Done`.
    async fn append(state: &CoreState, sync: SyncPolicy, d: &Dispatch) -> Vec<Frame> {
        let (out, mut frames) = mpsc::channel(16);
        super::append(state, sync, d.clone(), &out).await.unwrap();
        let mut got = Vec::new();
        while let Some(frame) = frames.recv().await {
            let last = matches!(frame, Frame::Done { .. });
            got.push(frame);
            if last {
                break;
            }
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_land_once_each_in_order_per_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let state = Arc::new(CoreState::default());
        let p = path.to_str().unwrap().to_string();
        let mut tasks = Vec::new();
        for i in 0..2000u64 {
            let state = state.clone();
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let d = dispatch(i, format!("line {i}").as_bytes(), &[("path", &p)]);
                exit(&append(&state, SyncPolicy::Batch, &d).await)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 0);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        lines.sort();
        lines.dedup();
        assert_eq!(lines.len(), 2000, "a line was written twice");
        // The appender leaves when idle, and a later append starts another.
        tokio::time::sleep(APPENDER_IDLE * 2).await;
        assert!(lock(&state.appenders.files).is_empty());
        let d = dispatch(9, b"later", &[("path", &p)]);
        assert_eq!(
            exit(&append(&state, SyncPolicy::Interval(Duration::from_millis(50)), &d).await),
            0
        );
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("later\n"));
    }

    #[tokio::test]
    async fn append_to_an_unwritable_path_fails_the_request() {
        let state = CoreState::default();
        let d = dispatch(1, b"x", &[("path", "/proc/definitely/not/here")]);
        let frames = append(&state, SyncPolicy::None, &d).await;
        assert_eq!(exit(&frames), EXIT_FAILURE);
        assert!(String::from_utf8_lossy(&outputs(&frames)[0].1).starts_with("append: cannot open"));
    }

    #[test]
    fn lookup_finds_core_manifests_and_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        plugins::install(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("mine")).unwrap();
        std::fs::create_dir(dir.path().join("bad")).unwrap();
        std::fs::write(dir.path().join("bad/plugin.toml"), "core = \"rm\"").unwrap();
        let state = CoreState::default();
        assert!(matches!(
            state.lookup(dir.path(), "append"),
            Lookup::Core(CorePlugin::Append, _)
        ));
        assert!(matches!(state.lookup(dir.path(), "mine"), Lookup::NotCore));
        assert!(matches!(state.lookup(dir.path(), "nope"), Lookup::NotCore));
        // The seed's `<dir>/<executable>` spelling of a core plugin is that core plugin.
        assert!(matches!(
            state.lookup(dir.path(), "echo/echo"),
            Lookup::Core(CorePlugin::Echo, _)
        ));
        assert!(matches!(
            state.lookup(dir.path(), "command/command"),
            Lookup::Core(CorePlugin::Command, _)
        ));
        // Any other `x/y` is an executable inside `x`, never a core plugin.
        assert!(matches!(
            state.lookup(dir.path(), "echo/command"),
            Lookup::NotCore
        ));
        assert!(matches!(
            state.lookup(dir.path(), "echo/echo/echo"),
            Lookup::NotCore
        ));
        assert!(matches!(
            state.lookup(dir.path(), "mine/mine"),
            Lookup::NotCore
        ));
        assert!(matches!(state.lookup(dir.path(), ".."), Lookup::NotCore));
        assert!(matches!(state.lookup(dir.path(), "../.."), Lookup::NotCore));
        assert!(matches!(state.lookup(dir.path(), "/echo"), Lookup::NotCore));
        match state.lookup(dir.path(), "bad") {
            Lookup::Invalid(reason) => assert!(!reason.contains(dir.path().to_str().unwrap())),
            other => panic!("{other:?}"),
        }
    }
}

//! `serve_dispatch` with persistent plugins written in Python, run as real processes.

use super::*;
use crate::runner::serve_dispatch;
use crate::runner::tests::{dispatch, process_alive, wait_gone, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A persistent plugin driven by its command words; one thread per request.
/// `echo W…` prints the words; `exit N` answers `done N`; `lines` prints two lines in one
/// output; `binary` prints bytes that are not UTF-8; `pid` prints its pid; `sleep MS`
/// answers after MS ms; `wait` answers only when cancelled; `hang` never answers, not even
/// a cancel; `garbage` writes a line that is not a frame; `crash` exits with code 3;
/// `unknown` answers for an id it was never sent; `log` writes to its stderr outside frames.
/// The copy named `stubborn` ignores `shutdown`.
const PLUGIN: &str = r#"#!/usr/bin/env python3
import base64, json, os, sys, threading, time
lock = threading.Lock()
events = {}
def send(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
def out(rid, text):
    send({"type": "output", "id": rid, "stream": "stdout", "data": text})
def done(rid, code):
    send({"type": "done", "id": rid, "exit_code": code})
def serve(rid, req, cancelled):
    words = req["command"]
    op = words[0]
    if op == "echo":
        out(rid, " ".join(words[1:]))
    elif op == "exit":
        return done(rid, int(words[1]))
    elif op == "lines":
        out(rid, "first\nsecond\n")
    elif op == "binary":
        send({"type": "output", "id": rid, "stream": "stderr",
              "data_base64": base64.b64encode(b"\xff\x00").decode()})
    elif op == "pid":
        out(rid, str(os.getpid()))
    elif op == "sleep":
        time.sleep(int(words[1]) / 1000)
        out(rid, "slept")
    elif op == "wait":
        out(rid, "waiting")
        cancelled.wait()
        return done(rid, 143)
    elif op == "flood":
        while not cancelled.is_set():
            out(rid, "x" * 1000)
        return done(rid, 143)
    elif op == "hang":
        out(rid, "hanging")
        return
    elif op == "garbage":
        with lock:
            sys.stdout.write("this is not a frame\n")
            sys.stdout.flush()
        return
    elif op == "crash":
        out(rid, "crashing")
        os._exit(3)
    elif op == "unknown":
        return done(rid + 1000, 0)
    elif op == "log":
        sys.stderr.write("a line for the worker's log\n")
        sys.stderr.flush()
    done(rid, 0)
stubborn = os.path.basename(sys.argv[0]) == "stubborn"
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "request":
        ev = threading.Event()
        events[msg["id"]] = ev
        threading.Thread(target=serve, args=(msg["id"], msg, ev), daemon=True).start()
    elif msg["type"] == "cancel":
        ev = events.get(msg["id"])
        if ev:
            ev.set()
    elif msg["type"] == "shutdown" and not stubborn:
        break
if stubborn:
    time.sleep(3600)
"#;

/// Installs the test plugin as `<root>/<name>/<name>` with this manifest.
fn install(root: &Path, name: &str, manifest: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, PLUGIN).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
}

struct Worker {
    runner: Arc<RunnerConfig>,
    slots: Arc<Semaphore>,
    tmp: TempDir,
}

/// A dispatch under way: its frames and its stop sender.
struct Run {
    frames: mpsc::Receiver<Frame>,
    stop: Option<oneshot::Sender<Stop>>,
}

impl Worker {
    fn new(label: &str, plugins: &[(&str, &str)]) -> Worker {
        Worker::with_max_output(label, plugins, crate::DEFAULT_MAX_OUTPUT)
    }

    fn with_max_output(label: &str, plugins: &[(&str, &str)], max_output: u64) -> Worker {
        let tmp = TempDir::new(label);
        for (name, manifest) in plugins {
            install(tmp.path(), name, manifest);
        }
        Worker {
            runner: Arc::new(RunnerConfig {
                pluginspath: tmp.path().to_path_buf(),
                identity: "w1".into(),
                instance: format!("t/w1@{}", tmp.path().display()),
                persistent: Arc::new(Manager::new()),
                shell: crate::DEFAULT_SHELL.into(),
                core: Default::default(),
                max_output,
                contain: Default::default(),
            }),
            // One process slot: persistent requests must not be held by it.
            slots: Arc::new(Semaphore::new(1)),
            tmp,
        }
    }

    fn start(&self, id: u64, plugin: &str, command: &str, timeout_ms: u64) -> Run {
        let mut d = dispatch(id, plugin, timeout_ms);
        d.command = command.split(' ').map(String::from).collect();
        let (out, frames) = mpsc::channel(256);
        let (stop_tx, stop_rx) = oneshot::channel();
        let lookup = self.runner.core.lookup(&self.runner.pluginspath, &d.plugin);
        let signals = crate::runner::Signals {
            stop: stop_rx,
            paused: tokio::sync::watch::channel(false).1,
        };
        tokio::spawn(serve_dispatch(
            self.runner.clone(),
            d,
            lookup,
            self.slots.clone(),
            signals,
            out,
        ));
        Run {
            frames,
            stop: Some(stop_tx),
        }
    }

    async fn run(&self, id: u64, plugin: &str, command: &str) -> Vec<Frame> {
        self.start(id, plugin, command, 0).all().await
    }

    /// The pid of the plugin's current instance.
    async fn pid(&self, plugin: &str) -> i32 {
        let frames = self.run(900, plugin, "pid").await;
        lines(&frames)[0].parse().unwrap()
    }
}

impl Run {
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), self.frames.recv())
            .await
            .expect("no frame within 10 s")
            .expect("dispatch ended without a final frame")
    }

    async fn all(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let last = matches!(frame, Frame::Done { .. } | Frame::Failed { .. });
            frames.push(frame);
            if last {
                return frames;
            }
        }
    }

    /// Reads up to the first `Output`.
    async fn started(&mut self) {
        assert!(matches!(self.next().await, Frame::Accepted { .. }));
        assert!(matches!(self.next().await, Frame::Output { .. }));
    }
}

fn lines(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Output { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
            _ => None,
        })
        .collect()
}

fn last(frames: &[Frame]) -> &Frame {
    frames.last().unwrap()
}

/// The last frame's kind and message, for a `Failed`.
fn failure(frames: &[Frame]) -> (ErrorKind, String) {
    match last(frames) {
        Frame::Failed { kind, message, .. } => (*kind, message.clone()),
        other => panic!("expected Failed, got {other:?}"),
    }
}

const MANIFEST: &str = "persistent = true\nrestart_backoff = \"10ms\"\ncancel_grace = \"200ms\"\n";

#[tokio::test]
async fn one_instance_serves_concurrent_requests() {
    let w = Worker::new("persist-serve", &[("p", MANIFEST)]);
    let runs: Vec<Run> = (0..40)
        .map(|i| w.start(i, "p", &format!("echo request {i}"), 0))
        .collect();
    for (i, mut run) in runs.into_iter().enumerate() {
        let frames = run.all().await;
        let id = i as u64;
        assert_eq!(frames[0], Frame::Accepted { id });
        assert_eq!(lines(&frames), [format!("request {i}")]);
        assert_eq!(*last(&frames), Frame::Done { id, exit_code: 0 });
    }
    let frames = w.run(50, "p", "exit 7").await;
    assert_eq!(
        *last(&frames),
        Frame::Done {
            id: 50,
            exit_code: 7
        }
    );
    let frames = w.run(51, "p", "lines").await;
    assert_eq!(lines(&frames), ["first", "second"]);
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Output { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [0, 1]);
    let frames = w.run(52, "p", "binary").await;
    assert!(matches!(
        &frames[1],
        Frame::Output { stream: Stream::Stderr, data, .. } if data == &[0xff, 0x00]
    ));
    // Stderr outside frames is logged, not sent.
    let frames = w.run(53, "p", "log").await;
    assert_eq!(
        frames,
        [
            Frame::Accepted { id: 53 },
            Frame::Done {
                id: 53,
                exit_code: 0
            }
        ]
    );
    // One process served all of them, and `p/p` is the same plugin as `p`.
    let pid = w.pid("p").await;
    assert_eq!(w.pid("p/p").await, pid);
    assert!(process_alive(pid));
}

#[tokio::test]
async fn max_concurrency_bounds_requests_and_the_wait_counts_against_the_deadline() {
    let manifest = "persistent = true\nmax_concurrency = 1\n";
    let w = Worker::new("persist-bound", &[("p", manifest)]);
    let mut first = w.start(1, "p", "sleep 600", 0);
    assert_eq!(first.next().await, Frame::Accepted { id: 1 });
    let started = Instant::now();
    let frames = w.start(2, "p", "echo late", 200).all().await;
    let (kind, message) = failure(&frames);
    assert_eq!(kind, ErrorKind::Timeout, "{message}");
    assert!(message.contains("free request slot"), "{message}");
    assert!(started.elapsed() < Duration::from_millis(500));
    // A third waits, and runs once the first is done.
    let mut third = w.start(3, "p", "echo third", 0);
    let frames = first.all().await;
    assert_eq!(lines(&frames), ["slept"]);
    assert_eq!(lines(&third.all().await), ["third"]);
}

#[tokio::test]
async fn protocol_errors_fail_the_instance_and_it_restarts() {
    let w = Worker::new("persist-proto", &[("p", MANIFEST)]);
    let pid = w.pid("p").await;
    let mut waiting = w.start(1, "p", "wait", 0);
    waiting.started().await;
    let frames = w.run(2, "p", "garbage").await;
    let (kind, message) = failure(&frames);
    assert_eq!(kind, ErrorKind::PluginProtocol);
    assert!(message.contains("is not a protocol frame"), "{message}");
    let (kind, _) = failure(&waiting.all().await);
    assert_eq!(
        kind,
        ErrorKind::PluginProtocol,
        "in flight on the same instance"
    );
    assert!(wait_gone(pid, Duration::from_secs(5)).await, "killed");
    // A frame for an id the worker never sent is a protocol error too.
    let new_pid = w.pid("p").await;
    assert_ne!(new_pid, pid);
    let (kind, message) = failure(&w.run(3, "p", "unknown").await);
    assert_eq!(kind, ErrorKind::PluginProtocol);
    assert!(message.contains("unknown request id"), "{message}");
    assert!(
        !message.contains(w.tmp.path().to_str().unwrap()),
        "{message}"
    );
    assert!(wait_gone(new_pid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_crash_fails_requests_in_flight_and_restarts_after_the_backoff() {
    let manifest = "persistent = true\nrestart_backoff = \"300ms\"\n";
    let w = Worker::new("persist-crash", &[("p", manifest)]);
    let mut waiting = w.start(1, "p", "wait", 0);
    waiting.started().await;
    let frames = w.run(2, "p", "crash").await;
    let (kind, message) = failure(&frames);
    assert_eq!(kind, ErrorKind::PluginCrashed);
    assert_eq!(message, "persistent plugin `p` exited with code 3");
    assert_eq!(
        lines(&frames),
        ["crashing"],
        "output before the crash is delivered"
    );
    assert_eq!(failure(&waiting.all().await).0, ErrorKind::PluginCrashed);
    // The next request waits out the backoff, counted from the crash.
    let started = Instant::now();
    assert_eq!(
        *last(&w.run(3, "p", "echo back").await),
        Frame::Done {
            id: 3,
            exit_code: 0
        }
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    // Crashing again before answering anything doubles it: 600 ms.
    assert_eq!(
        failure(&w.run(4, "p", "crash").await).0,
        ErrorKind::PluginCrashed
    );
    let started = Instant::now();
    w.run(5, "p", "crash").await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    w.run(6, "p", "echo again").await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_cancel_without_done_kills_the_instance_after_the_grace() {
    let w = Worker::new("persist-cancel", &[("p", MANIFEST)]);
    let pid = w.pid("p").await;
    // A cancel that is answered leaves the instance alone.
    let mut polite = w.start(1, "p", "wait", 0);
    polite.started().await;
    polite.stop.take().unwrap().send(Stop::Cancel).unwrap();
    assert_eq!(failure(&polite.all().await).0, ErrorKind::Cancelled);
    assert!(process_alive(pid));

    let mut bystander = w.start(2, "p", "wait", 0);
    bystander.started().await;
    let mut hanging = w.start(3, "p", "hang", 0);
    hanging.started().await;
    let cancelled = Instant::now();
    hanging.stop.take().unwrap().send(Stop::Cancel).unwrap();
    assert_eq!(failure(&hanging.all().await).0, ErrorKind::Cancelled);
    let took = cancelled.elapsed();
    assert!(
        took >= Duration::from_millis(180) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let (kind, message) = failure(&bystander.all().await);
    assert_eq!(kind, ErrorKind::PluginCrashed);
    assert!(message.contains("got no `done` within 200ms"), "{message}");
    assert!(wait_gone(pid, Duration::from_secs(5)).await);

    // A timeout takes the same path, and ends as Timeout.
    let frames = w.start(4, "p", "hang", 100).all().await;
    assert_eq!(failure(&frames).0, ErrorKind::Timeout);
    // A lost connection too, with nothing reported.
    let pid = w.pid("p").await;
    let mut lost = w.start(5, "p", "hang", 0);
    lost.started().await;
    drop(lost.stop.take());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), lost.frames.recv())
            .await
            .unwrap()
            .is_none()
    );
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
}

/// Without a `cancel_grace`, a persistent plugin gets the plain plugins' SIGTERM grace.
#[test]
fn the_default_cancel_grace_is_the_term_grace() {
    assert_eq!(Manifest::default().cancel_grace, runner::TERM_GRACE);
}

#[tokio::test]
async fn a_bad_manifest_is_refused_without_paths() {
    let w = Worker::new(
        "persist-manifest",
        &[("p", "persistent = true\npersistant = 1\n")],
    );
    let frames = w.run(1, "p", "echo x").await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let (kind, message) = failure(&frames);
    assert_eq!(kind, ErrorKind::PluginFailed);
    assert!(message.contains("unknown field `persistant`"), "{message}");
    assert!(message.contains("line 2"), "{message}");
    assert!(
        !message.contains(w.tmp.path().to_str().unwrap()),
        "{message}"
    );
}

#[tokio::test]
async fn a_plugin_that_cannot_start_fails_its_request() {
    let w = Worker::new("persist-nostart", &[]);
    let dir = w.tmp.path().join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken");
    std::fs::write(&path, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("plugin.toml"), "persistent = true\n").unwrap();
    let (kind, message) = failure(&w.run(1, "broken", "x").await);
    assert_eq!(kind, ErrorKind::PluginFailed);
    assert!(
        message.starts_with("cannot start plugin `broken`"),
        "{message}"
    );
    assert!(
        !message.contains(w.tmp.path().to_str().unwrap()),
        "{message}"
    );
}

#[tokio::test]
async fn shutdown_stops_every_instance() {
    let w = Worker::new(
        "persist-shutdown",
        &[("p", MANIFEST), ("stubborn", MANIFEST)],
    );
    let polite = w.pid("p").await;
    let stubborn = w.pid("stubborn").await;
    let started = Instant::now();
    w.runner.persistent.shutdown().await;
    let took = started.elapsed();
    assert!(!process_alive(polite) && !process_alive(stubborn));
    // The stubborn one is killed after the grace; the polite one does not hold it up more.
    assert!(
        took >= SHUTDOWN_GRACE && took < SHUTDOWN_GRACE * 3,
        "{took:?}"
    );
    // Nothing starts afterwards.
    let (kind, message) = failure(&w.run(1, "p", "echo x").await);
    assert_eq!(kind, ErrorKind::PluginFailed);
    assert!(message.contains("shutting down"), "{message}");
}

/// The plugin's current instance.
fn current(w: &Worker, plugin: &str) -> Arc<Instance> {
    let slots = lock(&w.runner.persistent.slots);
    let slot = slots
        .iter()
        .find(|(path, _)| path.ends_with(format!("{plugin}/{plugin}")))
        .map(|(_, slot)| slot.clone())
        .expect("a slot");
    drop(slots);
    let instance = lock(&slot.current).clone();
    instance.expect("an instance")
}

/// Killed instances leave nothing behind: their state, tasks, channels and requests are
/// freed once the next instance replaces them, and the live one holds no finished request.
#[tokio::test]
async fn ended_instances_are_freed() {
    let w = Worker::new("persist-free", &[("p", MANIFEST)]);
    let mut ended = Vec::new();
    for i in 0..5 {
        w.pid("p").await;
        ended.push(Arc::downgrade(&current(&w, "p").shared));
        let mut hanging = w.start(i, "p", "hang", 0);
        hanging.started().await;
        hanging.stop.take().unwrap().send(Stop::Cancel).unwrap();
        assert_eq!(failure(&hanging.all().await).0, ErrorKind::Cancelled);
        // One that crashes, too.
        w.pid("p").await;
        ended.push(Arc::downgrade(&current(&w, "p").shared));
        assert_eq!(
            failure(&w.run(100 + i, "p", "crash").await).0,
            ErrorKind::PluginCrashed
        );
    }
    for i in 0..20 {
        w.run(200 + i, "p", "echo x").await;
    }
    let live = current(&w, "p");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ended.iter().any(|e| e.strong_count() > 0) {
        assert!(Instant::now() < deadline, "an ended instance is still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let state = lock(&live.shared.state);
    assert!(state.requests.is_empty() && state.ended.is_none());
}

#[tokio::test]
async fn output_past_the_limit_cancels_the_request_and_the_instance_serves_on() {
    let w = Worker::with_max_output("persist-output", &[("p", MANIFEST)], 100_000);
    let pid = w.pid("p").await;
    let frames = w.run(1, "p", "flood").await;
    let (kind, message) = failure(&frames);
    assert_eq!(kind, ErrorKind::OutputLimit, "{message}");
    let relayed: usize = lines(&frames).iter().map(String::len).sum();
    assert!(relayed <= 100_000, "{relayed} bytes relayed");
    // Cancelled, answered: the same instance serves the next request.
    let frames = w.run(2, "p", "echo after").await;
    assert_eq!(lines(&frames), ["after"]);
    assert_eq!(w.pid("p").await, pid);
}

use super::*;
use proto::Arg;
use std::os::unix::fs::symlink;
use std::time::Instant as StdInstant;

/// A directory under the system temp dir, removed on drop (`tempfile` is not in the offline
/// registry cache).
/// A temporary directory removed on drop (`tempfile`), with the name tests use.
pub(crate) struct TempDir(tempfile::TempDir);

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("triggerfs-{label}-"))
                .tempdir()
                .expect("temp dir"),
        )
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Writes an executable `#!/bin/sh` plugin at `<root>/<rel>`.
pub(crate) fn write_plugin(root: &Path, rel: &str, body: &str) -> PathBuf {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub(crate) fn dispatch(id: u64, plugin: &str, timeout_ms: u64) -> Dispatch {
    Dispatch {
        id,
        service: "svc".into(),
        plugin: plugin.into(),
        command: vec!["hello".into(), "world".into()],
        args: vec![],
        payload: vec![],
        timeout_ms,
        key: None,
    }
}

/// Is `pid` a live process (a zombie counts as dead)?
pub(crate) fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// Polls until `pid` is gone, up to `within`.
pub(crate) async fn wait_gone(pid: i32, within: Duration) -> bool {
    let deadline = StdInstant::now() + within;
    while StdInstant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    !process_alive(pid)
}

/// A running dispatch under test: its frames, its stop sender and its flow control.
struct Run {
    frames: mpsc::Receiver<Frame>,
    stop: Option<oneshot::Sender<Stop>>,
    pause: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(root: &Path, d: Dispatch, slots: Arc<Semaphore>) -> Run {
    let runner = Arc::new(RunnerConfig {
        pluginspath: root.to_path_buf(),
        identity: "w1".into(),
        instance: "t/w1@test".into(),
        shell: crate::DEFAULT_SHELL.into(),
        core: Default::default(),
        persistent: Arc::new(crate::persistent::Manager::new()),
        max_output: 1024 * 1024,
        contain: Default::default(),
    });
    let (out, frames) = mpsc::channel(256);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (pause, paused) = watch::channel(false);
    let lookup = runner.core.lookup(&runner.pluginspath, &d.plugin);
    let signals = Signals {
        stop: stop_rx,
        paused,
    };
    let task = tokio::spawn(serve_dispatch(runner, d, lookup, slots, signals, out));
    Run {
        frames,
        stop: Some(stop_tx),
        pause,
        task,
    }
}

impl Run {
    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), self.frames.recv())
            .await
            .expect("no frame within 10 s")
            .expect("dispatch ended without a final frame")
    }

    /// Every frame up to and including `Done`/`Failed`.
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
}

fn text_lines(frames: &[Frame]) -> Vec<(Stream, String)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Output { stream, data, .. } => {
                Some((*stream, String::from_utf8_lossy(data).into_owned()))
            }
            _ => None,
        })
        .collect()
}

fn one_slot() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(4))
}

#[test]
fn resolution_refuses_escapes() {
    let tmp = TempDir::new("resolve");
    let root = tmp.path().join("plugins");
    write_plugin(&root, "ok/ok", "true");
    write_plugin(&root, "ok/other", "true");
    std::fs::create_dir_all(root.join("dir/dir")).unwrap();
    std::fs::create_dir_all(root.join("noexec")).unwrap();
    std::fs::write(root.join("noexec/noexec"), "#!/bin/sh\n").unwrap();
    std::fs::create_dir_all(root.join("evil")).unwrap();
    symlink("/bin/sh", root.join("evil/evil")).unwrap();
    // A symlink that stays inside the plugins path is fine.
    std::fs::create_dir_all(root.join("alias")).unwrap();
    symlink("../ok/ok", root.join("alias/alias")).unwrap();
    // A symlinked directory leading out is refused too.
    let outside = tmp.path().join("outside");
    write_plugin(&outside, "x", "true");
    symlink(&outside, root.join("outdir")).unwrap();

    let ok = resolve_plugin(&root, "ok").unwrap();
    assert_eq!(ok.path, root.join("ok/ok").canonicalize().unwrap());
    assert_eq!(ok.dir, root.join("ok").canonicalize().unwrap());
    assert_eq!(ok.argv0, root.join("ok/ok"));
    assert!(resolve_plugin(&root, "ok/other").is_ok());
    let alias = resolve_plugin(&root, "alias").unwrap();
    assert_eq!(alias.path, ok.path);
    assert_eq!(alias.argv0, root.join("alias/alias"));
    // The seed's layout: an executable directly in the plugins path, with no manifest.
    write_plugin(&root, "flat", "true");
    symlink("/bin/sh", root.join("flatevil")).unwrap();
    let flat = resolve_plugin(&root, "flat").unwrap();
    assert_eq!(flat.path, root.join("flat").canonicalize().unwrap());
    assert_eq!(flat.dir, root.canonicalize().unwrap());
    assert!(!flat.has_manifest && ok.has_manifest);
    assert!(resolve_plugin(&root, "flatevil").is_err());

    for name in [
        "../../bin/sh",
        "/bin/sh",
        "ok/../../x",
        "evil",
        "outdir/x",
        "dir",
        "noexec",
        "missing",
        "",
        "a b",
    ] {
        let err = resolve_plugin(&root, name).unwrap_err();
        assert!(
            matches!(err, WorkerError::PluginNotFound { .. }),
            "{name}: {err}"
        );
    }
    let missing_root = resolve_plugin(&tmp.path().join("nope"), "ok").unwrap_err();
    assert!(matches!(missing_root, WorkerError::PluginNotFound { .. }));
}

#[test]
fn arg_env_names() {
    let cases = [
        ("path", "TRIGGERFS_ARG_PATH"),
        ("file-path", "TRIGGERFS_ARG_FILE_PATH"),
        ("a=b", "TRIGGERFS_ARG_A_B"),
        ("Mixed9", "TRIGGERFS_ARG_MIXED9"),
    ];
    for (key, want) in cases {
        assert_eq!(arg_env_name(key), want);
    }
}

#[tokio::test]
async fn refused_plugins_fail_without_accepted() {
    let tmp = TempDir::new("refused");
    let root = tmp.path().to_path_buf();
    std::fs::create_dir_all(root.join("evil")).unwrap();
    symlink("/bin/sh", root.join("evil/evil")).unwrap();
    for name in ["../../bin/sh", "/bin/sh", "evil", "missing"] {
        let mut run = start(&root, dispatch(1, name, 0), one_slot());
        match run.next().await {
            Frame::Failed { id: 1, kind, .. } => assert_eq!(kind, ErrorKind::PluginNotFound),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn streams_lines_live_then_done() {
    let tmp = TempDir::new("live");
    write_plugin(
        tmp.path(),
        "live/live",
        "echo first\nsleep 0.3\necho oops >&2\necho second",
    );
    let mut run = start(tmp.path(), dispatch(7, "live", 0), one_slot());
    assert_eq!(run.next().await, Frame::Accepted { id: 7 });
    let first = run.next().await;
    let first_at = StdInstant::now();
    assert_eq!(
        first,
        Frame::Output {
            id: 7,
            seq: 0,
            stream: Stream::Stdout,
            data: b"first".to_vec()
        }
    );
    let rest = run.all().await;
    let done_at = StdInstant::now();
    assert!(
        done_at - first_at >= Duration::from_millis(200),
        "first line arrived only {:?} before Done: not live",
        done_at - first_at
    );
    assert_eq!(
        rest,
        vec![
            Frame::Output {
                id: 7,
                seq: 1,
                stream: Stream::Stderr,
                data: b"oops".to_vec()
            },
            Frame::Output {
                id: 7,
                seq: 2,
                stream: Stream::Stdout,
                data: b"second".to_vec()
            },
            Frame::Done {
                id: 7,
                exit_code: 0
            },
        ]
    );
}

#[tokio::test]
async fn exit_codes() {
    let tmp = TempDir::new("exit");
    write_plugin(tmp.path(), "three/three", "exit 3");
    write_plugin(tmp.path(), "killed/killed", "kill -9 $$");
    write_plugin(tmp.path(), "ok/ok", "true");
    for (name, want) in [("three", 3), ("killed", 137), ("ok", 0)] {
        let mut run = start(tmp.path(), dispatch(2, name, 0), one_slot());
        let frames = run.all().await;
        assert_eq!(frames.first(), Some(&Frame::Accepted { id: 2 }), "{name}");
        assert_eq!(
            frames.last(),
            Some(&Frame::Done {
                id: 2,
                exit_code: want
            }),
            "{name}"
        );
    }
}

#[tokio::test]
async fn request_on_stdin_env_and_cwd() {
    let tmp = TempDir::new("stdin");
    write_plugin(
        tmp.path(),
        "show/show",
        "cat\necho \"id=$TRIGGERFS_REQUEST_ID svc=$TRIGGERFS_SERVICE plugin=$TRIGGERFS_PLUGIN \
         worker=$TRIGGERFS_WORKER timeout=$TRIGGERFS_TIMEOUT_MS path=$TRIGGERFS_ARG_PATH\"\npwd",
    );
    let mut d = dispatch(9, "show/show", 60_000);
    d.args = vec![Arg {
        key: "path".into(),
        value: "/tmp/x".into(),
    }];
    d.payload = vec![0xff, 0x01];
    let mut run = start(tmp.path(), d, one_slot());
    let frames = run.all().await;
    let lines = text_lines(&frames);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let request: plugins::PluginRequest = serde_json::from_str(&lines[0].1).unwrap();
    assert_eq!(request.request_id, 9);
    assert_eq!(request.worker, "w1");
    assert_eq!(request.plugin, "show/show");
    assert_eq!(request.command_line(), "hello world");
    assert_eq!(request.args.get("path").map(String::as_str), Some("/tmp/x"));
    assert_eq!(request.payload_bytes().unwrap(), vec![0xff, 0x01]);
    assert_eq!(
        lines[1].1,
        "id=9 svc=svc plugin=show/show worker=w1 timeout=60000 path=/tmp/x"
    );
    let cwd = PathBuf::from(&lines[2].1);
    assert_eq!(cwd, tmp.path().join("show").canonicalize().unwrap());
    assert_eq!(
        frames.last(),
        Some(&Frame::Done {
            id: 9,
            exit_code: 0
        })
    );
}

/// The pid printed as the first line of output.
async fn first_line_pid(run: &mut Run) -> i32 {
    assert!(matches!(run.next().await, Frame::Accepted { .. }));
    match run.next().await {
        Frame::Output { data, .. } => String::from_utf8(data).unwrap().trim().parse().unwrap(),
        other => panic!("expected the pid, got {other:?}"),
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let tmp = TempDir::new("timeout");
    write_plugin(tmp.path(), "slow/slow", "sleep 300 &\necho $!\nsleep 300");
    let started = StdInstant::now();
    let mut run = start(tmp.path(), dispatch(3, "slow", 300), one_slot());
    let child_pid = first_line_pid(&mut run).await;
    assert!(process_alive(child_pid));
    let rest = run.all().await;
    match rest.last() {
        Some(Frame::Failed { id: 3, kind, .. }) => assert_eq!(*kind, ErrorKind::Timeout),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        wait_gone(child_pid, Duration::from_secs(3)).await,
        "background sleep {child_pid} survived the timeout"
    );
}

#[tokio::test]
async fn output_past_the_limit_stops_the_whole_group() {
    let tmp = TempDir::new("output-limit");
    // A background child holding the pipe, and endless output (the test runner's limit is
    // 1 MiB).
    write_plugin(
        tmp.path(),
        "chatty/chatty",
        "sleep 300 &\necho $!\nwhile true; do echo 0123456789012345678901234567890123456789; done",
    );
    let started = StdInstant::now();
    let mut run = start(tmp.path(), dispatch(4, "chatty", 60_000), one_slot());
    let child_pid = first_line_pid(&mut run).await;
    let rest = run.all().await;
    let relayed: usize = rest
        .iter()
        .map(|f| match f {
            Frame::Output { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert!(relayed <= 1024 * 1024, "{relayed} bytes relayed");
    match rest.last() {
        Some(Frame::Failed {
            id: 4,
            kind,
            message,
        }) => {
            assert_eq!(*kind, ErrorKind::OutputLimit, "{message}");
            assert!(message.contains("1048576 bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        wait_gone(child_pid, Duration::from_secs(3)).await,
        "background sleep {child_pid} survived the output limit"
    );
}

#[tokio::test]
async fn cancel_stops_a_plugin_that_ignores_sigterm() {
    let tmp = TempDir::new("cancel");
    // The trap makes SIGTERM useless: only the SIGKILL after the grace period works.
    write_plugin(
        tmp.path(),
        "stubborn/stubborn",
        "trap '' TERM\nsleep 300 &\necho $!\nwhile true; do sleep 0.05; done",
    );
    let mut run = start(tmp.path(), dispatch(4, "stubborn", 0), one_slot());
    let child_pid = first_line_pid(&mut run).await;
    let cancelled_at = StdInstant::now();
    run.stop.take().unwrap().send(Stop::Cancel).unwrap();
    let rest = run.all().await;
    let took = cancelled_at.elapsed();
    match rest.last() {
        Some(Frame::Failed { id: 4, kind, .. }) => assert_eq!(*kind, ErrorKind::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(
        took >= TERM_GRACE - Duration::from_millis(100) && took < TERM_GRACE * 2,
        "stop took {took:?}"
    );
    assert!(wait_gone(child_pid, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn connection_lost_stops_the_plugin_silently() {
    let tmp = TempDir::new("lost");
    write_plugin(tmp.path(), "slow/slow", "sleep 300 &\necho $!\nsleep 300");
    let mut run = start(tmp.path(), dispatch(5, "slow", 0), one_slot());
    let child_pid = first_line_pid(&mut run).await;
    drop(run.stop.take());
    tokio::time::timeout(Duration::from_secs(5), &mut run.task)
        .await
        .expect("dispatch did not end after the connection was lost")
        .unwrap();
    assert!(
        run.frames.recv().await.is_none(),
        "frames after connection loss"
    );
    assert!(wait_gone(child_pid, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn background_child_holding_pipes_is_killed_after_exit() {
    let tmp = TempDir::new("background");
    write_plugin(tmp.path(), "bg/bg", "sleep 300 &\necho $!\nexit 4");
    let started = StdInstant::now();
    let mut run = start(tmp.path(), dispatch(6, "bg", 0), one_slot());
    let child_pid = first_line_pid(&mut run).await;
    let rest = run.all().await;
    assert_eq!(
        rest.last(),
        Some(&Frame::Done {
            id: 6,
            exit_code: 4
        })
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        wait_gone(child_pid, Duration::from_secs(3)).await,
        "background child {child_pid} orphaned"
    );
}

#[tokio::test]
async fn long_lines_are_chunked() {
    let tmp = TempDir::new("long");
    write_plugin(
        tmp.path(),
        "long/long",
        "head -c 150000 /dev/zero | tr '\\0' x\necho\necho end",
    );
    let mut run = start(tmp.path(), dispatch(8, "long", 0), one_slot());
    let frames = run.all().await;
    let sizes: Vec<usize> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Output { data, .. } => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, vec![MAX_LINE, MAX_LINE, 150_000 - 2 * MAX_LINE, 3]);
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Output { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn dispatches_wait_for_a_slot_before_accepted() {
    let tmp = TempDir::new("slots");
    write_plugin(tmp.path(), "nap/nap", "sleep 0.4\necho done");
    let slots = Arc::new(Semaphore::new(1));
    let mut first = start(tmp.path(), dispatch(10, "nap", 0), slots.clone());
    assert_eq!(first.next().await, Frame::Accepted { id: 10 });
    let mut second = start(tmp.path(), dispatch(11, "nap", 0), slots.clone());
    // While the first runs, the second is not accepted.
    let early = tokio::time::timeout(Duration::from_millis(200), second.frames.recv()).await;
    assert!(early.is_err(), "second dispatch accepted early: {early:?}");
    assert_eq!(
        first.all().await.last(),
        Some(&Frame::Done {
            id: 10,
            exit_code: 0
        })
    );
    assert_eq!(second.next().await, Frame::Accepted { id: 11 });
    assert_eq!(
        second.all().await.last(),
        Some(&Frame::Done {
            id: 11,
            exit_code: 0
        })
    );

    // A dispatch cancelled while waiting for its slot never starts.
    let mut holder = start(tmp.path(), dispatch(12, "nap", 0), slots.clone());
    assert_eq!(holder.next().await, Frame::Accepted { id: 12 });
    let mut waiting = start(tmp.path(), dispatch(13, "nap", 0), slots.clone());
    waiting.stop.take().unwrap().send(Stop::Cancel).unwrap();
    match waiting.next().await {
        Frame::Failed { id: 13, kind, .. } => assert_eq!(kind, ErrorKind::Cancelled),
        other => panic!("{other:?}"),
    }
    holder.all().await;
}

/// Flow control: while its dispatch is paused, a plugin's output is not read, so the plugin
/// blocks once its pipe is full (the copy `tee` keeps of what it wrote stops growing);
/// resumed, every line arrives, and a slow consumer does not lose the end of the output to
/// the drain after the plugin exited (the drain used to end 500 ms after the exit, however
/// long sending what was left took).
#[tokio::test]
async fn a_paused_dispatch_blocks_its_plugin_and_resumes_without_loss() {
    const LINES: u64 = 10_000;
    const LINE: u64 = 100;
    let tmp = TempDir::new("pause");
    let copy = tmp.path().join("copy");
    let body = format!(
        "yes $(printf '%0{}d' 0) | head -n {LINES} | tee {}",
        LINE - 1,
        copy.display()
    );
    write_plugin(tmp.path(), "p/p", &body);
    let mut run = start(tmp.path(), dispatch(8, "p", 0), one_slot());
    run.pause.send_replace(true);
    assert_eq!(run.next().await, Frame::Accepted { id: 8 });
    let written = || std::fs::metadata(&copy).map_or(0, |m| m.len());
    // Paused: what the plugin wrote stops growing well short of its output (the pipe, the
    // line reader's buffer and the line queue hold about 200 KB).
    let mut last = u64::MAX;
    let deadline = StdInstant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written();
        if now == last && now > 0 {
            break;
        }
        assert!(StdInstant::now() < deadline, "the plugin never blocked");
        last = now;
    }
    assert!(
        last < LINES * LINE * 6 / 10,
        "the paused plugin wrote {last} bytes of {}",
        LINES * LINE
    );
    run.pause.send_replace(false);
    // Read as it comes until the plugin wrote everything, then slowly: what is left in the
    // pipe alone (about 650 lines) takes more than a second.
    let mut lines = 0;
    let mut slow = false;
    let last_frame = loop {
        let frame = run.next().await;
        match frame {
            Frame::Output { ref data, .. } => {
                assert_eq!(data.len() as u64, LINE - 1);
                lines += 1;
                slow = slow || written() == LINES * LINE;
                if slow {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            other => break other,
        }
    };
    assert!(slow, "the plugin ended before its output was read");
    assert_eq!(
        last_frame,
        Frame::Done {
            id: 8,
            exit_code: 0
        }
    );
    assert_eq!(lines, LINES, "every line arrives");
}

//! The shard without sockets: connections are bare outboxes the tests read, and several
//! shards run on executors of their own, joined by a real channel mesh.

use super::*;
use crate::config::{FileConfig, Principal, ServiceConfig};
use crate::conn::Outbox;
use crate::request::WorkerEvent;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use proto::{Algorithm, Event, Frame, Request, Role, Stream, Summary};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;

mod idem;
mod limits;
mod mesh;
mod nodes;
mod routing;

/// How long a test waits for something before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// What the shards' threads share.
pub(super) struct Ctl {
    /// Whether shard i takes mesh messages in yet.
    open: Vec<AtomicBool>,
    /// Mesh messages shard i has handled.
    received: Vec<AtomicUsize>,
    /// A step counter the scripts use to take turns.
    step: AtomicUsize,
}

impl Ctl {
    fn new(n: usize) -> Ctl {
        Ctl {
            open: (0..n).map(|_| AtomicBool::new(true)).collect(),
            received: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            step: AtomicUsize::new(0),
        }
    }

    /// Shard `idx` takes no mesh message in until [`Ctl::open`].
    fn closed(self, idx: usize) -> Ctl {
        self.open[idx].store(false, Ordering::SeqCst);
        self
    }

    fn open(&self, idx: usize) {
        self.open[idx].store(true, Ordering::SeqCst);
    }

    /// Shard `idx` takes in at most the message it may be waiting for already, then no more
    /// until [`Ctl::open`].
    fn close(&self, idx: usize) {
        self.open[idx].store(false, Ordering::SeqCst);
    }

    fn received(&self, idx: usize) -> usize {
        self.received[idx].load(Ordering::SeqCst)
    }

    fn step(&self) -> usize {
        self.step.load(Ordering::SeqCst)
    }

    fn set_step(&self, step: usize) {
        self.step.store(step, Ordering::SeqCst);
    }
}

fn settings(n: usize, mesh_depth: usize) -> BrokerSettings {
    BrokerSettings {
        shards: n,
        mesh_depth,
        queue_depth: 64,
        spin: Duration::ZERO,
        max_client_backlog_total: usize::MAX,
        ..BrokerSettings::default()
    }
}

/// Runs `script` on `n` shards, each on an executor of its own, joined by a mesh of
/// `mesh_depth`; returns when every script has.
fn run_shards<F, Fut>(n: usize, mesh_depth: usize, source: FileConfig, ctl: Ctl, script: F)
where
    F: Fn(Rc<Shard>, Arc<Ctl>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let ctl = Arc::new(ctl);
    let shared = Shared::new(settings(n, mesh_depth), Arc::new(source));
    let mesh = (n > 1).then(|| MeshBuilder::<ShardMsg, _>::full(n, mesh_depth));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (mesh, shared, ctl, script) =
                (mesh.clone(), shared.clone(), ctl.clone(), script.clone());
            LocalExecutorBuilder::new(Placement::Unbound)
                .io_memory(512 * 1024)
                .spawn(move || async move {
                    let (idx, senders, receivers) = match mesh {
                        Some(mesh) => {
                            let (senders, receivers) = mesh.join().await.expect("mesh");
                            (senders.peer_id(), Some(senders), Some(receivers))
                        }
                        None => (0, None, None),
                    };
                    let shard = Rc::new(Shard::new(idx, &shared, senders));
                    if let Some(mut receivers) = receivers {
                        for (_, stream) in receivers.streams() {
                            let (shard, ctl) = (shard.clone(), ctl.clone());
                            glommio::spawn_local(async move {
                                loop {
                                    let open = || ctl.open[idx].load(Ordering::SeqCst);
                                    until(open, "the mesh to open").await;
                                    let Some(msg) = stream.recv().await else {
                                        break;
                                    };
                                    shard.on_shard_msg(msg);
                                    ctl.received[idx].fetch_add(1, Ordering::SeqCst);
                                    shard.settle_mesh_receiver().await;
                                }
                            })
                            .detach();
                        }
                    }
                    script(shard, ctl).await;
                })
                .expect("executor")
        })
        .collect();
    for handle in handles {
        handle.join().expect("shard script");
    }
}

/// Runs `script` on one shard serving `services`.
fn one_shard<F, Fut>(services: Vec<ServiceConfig>, script: F)
where
    F: Fn(Rc<Shard>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let source = FileConfig::from_services(services);
    run_shards(1, 1, source, Ctl::new(1), move |shard, _| script(shard));
}

/// Waits, letting the shard's other tasks run, until `cond` holds; fails after [`WAIT`].
async fn until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// As [`until`], but blocks the thread: the shard's tasks do not run meanwhile.
fn block_until(cond: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn principal(identity: &str) -> Principal {
    Principal::trusted(crate::config::DEFAULT_TEAM, identity)
}

fn request(id: u64, service: &str, wait: bool) -> Frame {
    Frame::Request(
        Request {
            id,
            service: service.into(),
            plugin: "echo".into(),
            command: Vec::new(),
            args: Vec::new(),
            payload: b"hi".to_vec(),
            timeout_ms: 0,
            wait,
            key: None,
            fleet: Default::default(),
            tag: None,
            trigger: None,
        }
        .into(),
    )
}

/// Opens a connection without a socket, as `serve` does after the handshake; returns its
/// id and its outbox, where what is sent to it stays. The `Welcome` is taken off. It speaks
/// the oldest protocol served ([`proto::MIN_PROTOCOL_VERSION`]): a request's answer comes as
/// `Routed`, replies and `Summary` (see [`connect_speaking`]).
fn connect(shard: &Shard, identity: &str, role: Role) -> (u64, Rc<Outbox>) {
    connect_speaking(shard, identity, role, proto::MIN_PROTOCOL_VERSION)
}

/// [`connect`] with a `Hello` of protocol `version`.
fn connect_speaking(shard: &Shard, identity: &str, role: Role, version: u16) -> (u64, Rc<Outbox>) {
    let out = Rc::new(Outbox::new(
        shard.env.settings.queue_depth,
        shard.env.settings.max_frame,
    ));
    let conn_id = shard.open_conn(out.clone(), principal(identity), role, version);
    let welcome = out.take_frames();
    assert!(
        matches!(welcome.as_slice(), [Frame::Welcome { .. }]),
        "{welcome:?}"
    );
    (conn_id, out)
}

/// Takes frames from `out` as they come, as its writer would, until there are `n`.
async fn frames(out: &Outbox, n: usize, what: &str) -> Vec<Frame> {
    let mut got = Vec::new();
    until(
        || {
            got.extend(out.take_frames());
            got.len() >= n
        },
        what,
    )
    .await;
    got
}

/// The id of the one `Dispatch` in `frames`.
fn dispatched(frames: &[Frame]) -> u64 {
    match frames {
        [Frame::Dispatch(d)] => d.id,
        other => panic!("expected one Dispatch, got {other:?}"),
    }
}

/// A frame from worker connection `conn_id`, handled as `serve` does.
async fn from_worker(shard: &Shard, conn_id: u64, frame: Frame) {
    assert!(shard.on_frame(conn_id, Role::Worker, frame));
    shard.settle().await;
}

/// A frame from client connection `conn_id`, handled as `serve` does.
async fn from_client(shard: &Shard, conn_id: u64, frame: Frame) {
    assert!(shard.on_frame(conn_id, Role::Client, frame));
    shard.settle().await;
}

/// What a waiting client got for request `id`: `Routed` first, then `Reply` events, then the
/// `Summary` (checked, and returned with the events).
fn answer(frames: &[Frame], id: u64) -> (Vec<(String, Event)>, Summary) {
    let [Frame::Routed { id: routed, .. }, replies @ .., Frame::Summary {
        id: summed,
        summary,
    }] = frames
    else {
        panic!("expected Routed, replies, Summary; got {frames:?}");
    };
    assert_eq!((*routed, *summed), (id, id), "{frames:?}");
    let events = replies
        .iter()
        .map(|f| match f {
            Frame::Reply {
                id: r,
                worker,
                event,
            } if *r == id => (worker.clone(), event.clone()),
            other => panic!("expected a Reply to {id}, got {other:?}"),
        })
        .collect();
    (events, *summary)
}

/// Accepted, one line of output, exit 0: a worker's whole answer to `dispatch_id`.
fn worker_answer(dispatch_id: u64) -> [Frame; 3] {
    [
        Frame::Accepted { id: dispatch_id },
        Frame::Output {
            id: dispatch_id,
            seq: 0,
            stream: Stream::Stdout,
            data: b"hi".to_vec(),
        },
        Frame::Done {
            id: dispatch_id,
            exit_code: 0,
        },
    ]
}

/// What the client sees of [`worker_answer`] from `worker`.
fn relayed_answer(worker: &str) -> Vec<(String, Event)> {
    vec![
        (worker.into(), Event::Accepted),
        (
            worker.into(),
            Event::Output {
                seq: 0,
                stream: Stream::Stdout,
                data: b"hi".to_vec(),
            },
        ),
        (worker.into(), Event::Done { exit_code: 0 }),
    ]
}

fn service(name: &str, algorithm: Algorithm, workers: &[&str]) -> ServiceConfig {
    ServiceConfig {
        algorithm,
        workers: workers.iter().map(|w| w.to_string()).collect(),
        ..ServiceConfig::implicit(crate::config::DEFAULT_TEAM, name)
    }
}

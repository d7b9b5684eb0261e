//! A shard's executor: it binds the listening address, joins the channel mesh, and runs the
//! shard's tasks (the accept loop, a receiver per other shard, the ticks) until the
//! shutdown asks it to stop, or to drain first.

use super::{Shard, ShardMsg, Shared};
use crate::limits::PendingHandshakes;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpListener;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Where a shard listens (or why it could not bind), told to `start` once it knows.
pub(crate) type Ready = Sender<Result<SocketAddr, String>>;

/// Runs shard `thread_idx` on the current executor: binds `addr` (and says where on
/// `ready`), joins `mesh`, and serves until the shutdown; a drain lets the connections open
/// finish first.
pub(crate) async fn run(
    thread_idx: usize,
    shared: Shared,
    addr: SocketAddr,
    mesh: Option<MeshBuilder<ShardMsg, Full>>,
    ready: Ready,
) {
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let _ = ready.send(Ok(local));
    let (idx, senders, mut receivers) = match mesh {
        None => (0, None, None),
        Some(mesh) => match mesh.join().await {
            Ok((senders, receivers)) => (senders.peer_id(), Some(senders), Some(receivers)),
            Err(e) => {
                error!(error = ?e, thread_idx, "could not join the shard mesh");
                return;
            }
        },
    };
    let shard = Rc::new(Shard::new(idx, &shared, senders));
    for (_peer, stream) in receivers.iter_mut().flat_map(|r| r.streams()) {
        glommio::spawn_local(receive(shard.clone(), stream)).detach();
    }
    glommio::spawn_local(ticks(shard.clone())).detach();
    info!(shard = idx, addr = %local, "shard listening");
    // The accept loop is a task of its own, which only its listener wakes (see
    // `crate::shutdown`); this task awaits the shutdown and cancels it.
    let listener = Rc::new(listener);
    let pending = shared.pending.clone();
    let accepting = accept_loop(idx, listener.clone(), pending, shard.clone());
    let acceptor = glommio::spawn_local(accepting);
    shared.shutdown.asked().await;
    acceptor.cancel().await;
    // New connections are refused from here on; a drain lets those open finish.
    drop(listener);
    if !shared.shutdown.is_stopped() {
        shard.drain_out(&shared.shutdown).await;
    }
}

/// Handles the messages from one other shard, in the order it sent them.
async fn receive(shard: Rc<Shard>, stream: ConnectedReceiver<ShardMsg>) {
    while let Some(msg) = stream.recv().await {
        shard.on_shard_msg(msg);
        shard.settle_mesh_receiver().await;
        if glommio::executor().need_preempt() {
            glommio::yield_if_needed().await;
        }
    }
}

/// The shard's periodic work, every [`crate::TICK`] for as long as the shard runs.
async fn ticks(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(crate::TICK).await;
        shard.tick().await;
    }
}

/// Accepts connections on `listener` for `shard` until the task is cancelled. Each `accept`
/// is polled only when its own socket wakes the task.
async fn accept_loop(
    idx: usize,
    listener: Rc<TcpListener>,
    pending: Arc<PendingHandshakes>,
    shard: Rc<Shard>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let admitted = stream.peer_addr().ok().and_then(|peer| {
                    let admitted = pending.admit(peer.ip());
                    if admitted.is_none() {
                        crate::metrics::CLOSED
                            .with_label_values(&["pending_per_address"])
                            .inc();
                        warn!(shard = idx, %peer, "too many pending handshakes from this address; connection closed");
                    }
                    admitted
                });
                // Not admitted: dropping the stream closes it.
                if let Some(guard) = admitted {
                    glommio::spawn_local(shard.clone().serve(stream, guard)).detach();
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                error!(shard = idx, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

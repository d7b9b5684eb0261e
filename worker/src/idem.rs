//! The worker's idempotency window: the keyed dispatches (`Dispatch.key`, scoped by the
//! broker to the caller) it runs or ran, so that a replay runs nothing twice, also after the
//! broker restarted (its own window died with it; this one lives as long as the worker, across
//! its reconnections).
//!
//! Per scoped source at most [`proto::IDEM_WINDOW`] keys (oldest forgotten first), at most
//! [`proto::IDEM_SOURCES`] sources (least recently used first). A key is `Running` (with the
//! dispatches that arrived meanwhile, which were answered `Accepted` and wait for the first
//! run's end) or `Done` (its end, answered at once to a replay: `Accepted`, then the `Done`).
//! A keyed run is not stopped when its connection drops (the session hands its stop sender
//! to a task that holds it until the run ends), so a replay through the next broker waits
//! for it and runs nothing twice. A run that ends without an answer that means the plugin
//! ran (cancelled by the broker, refused, or stopped by the worker's shutdown) is
//! forgotten, and its waiters are answered `Failed { Cancelled }`: a replay runs it again, so
//! a run stopped part-way is at-least-once.
//!
//! [`Keys`] is the pure structure; [`serve_keyed`] puts it around a dispatch: the run's
//! frames pass through a forwarder task that sees its end even when the session that
//! started it is gone (an `append` whose line was written still ends `Done`).

use crate::lock;
use proto::idem::Window;
use proto::{ErrorKind, Frame, IdemKey};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How a keyed run ended, answered again to its replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The plugin exited.
    Done {
        /// Its exit code.
        exit_code: i32,
    },
    /// The plugin ran but ended without an exit code (timeout, crashed persistent plugin).
    Failed {
        /// Why.
        kind: ErrorKind,
        /// Detail.
        message: String,
    },
}

impl End {
    /// For a final frame (`Done`/`Failed`) of dispatch `id`: `Some(end)` when it is to be
    /// remembered, `Some(None)` when the run is to be forgotten. `None` for other frames.
    fn of(frame: &Frame, id: u64) -> Option<Option<End>> {
        match frame {
            Frame::Done { id: d, exit_code } if *d == id => Some(Some(End::Done {
                exit_code: *exit_code,
            })),
            Frame::Failed {
                id: d,
                kind,
                message,
            } if *d == id => Some(
                matches!(
                    kind,
                    ErrorKind::Timeout | ErrorKind::PluginCrashed | ErrorKind::PluginProtocol
                )
                .then(|| End::Failed {
                    kind: *kind,
                    message: message.clone(),
                }),
            ),
            _ => None,
        }
    }

    /// This end as dispatch `id`'s last frame.
    pub fn frame(&self, id: u64) -> Frame {
        match self {
            End::Done { exit_code } => Frame::Done {
                id,
                exit_code: *exit_code,
            },
            End::Failed { kind, message } => Frame::Failed {
                id,
                kind: *kind,
                message: message.clone(),
            },
        }
    }
}

enum Slot<W> {
    Running(Vec<W>),
    Done(End),
}

/// What to do with a keyed dispatch.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// First of its key (or the key was forgotten): run it.
    Run,
    /// Its key is running: answer `Accepted`; it was added to the waiters.
    Wait,
    /// Its key ran: answer `Accepted` and this end.
    Answer(End),
    /// Its key is running and [`MAX_WAITERS`] dispatches wait for it already: refused.
    Busy,
}

/// Dispatches that may wait for one running key: replays of one key are a handful (one per
/// lost answer), and the bound keeps a peer that repeats a key from growing the list.
pub const MAX_WAITERS: usize = 16;

/// Keys of recent keyed dispatches; `W` is a waiting dispatch.
pub struct Keys<W> {
    window: Window<[u8; 16], Slot<W>>,
}

impl<W> Default for Keys<W> {
    fn default() -> Self {
        Keys {
            window: Window::standard(),
        }
    }
}

impl<W> Keys<W> {
    #[cfg(test)]
    fn with_bounds(max_sources: usize, max_keys: usize) -> Self {
        Keys {
            window: Window::new(max_sources, max_keys),
        }
    }

    /// A dispatch with `key` arrived; `waiter` is it, should it have to wait.
    pub fn begin(&mut self, key: &IdemKey, waiter: impl FnOnce() -> W) -> Begin {
        match self.window.get_mut(&key.source, key.seq) {
            Some(Slot::Done(end)) => Begin::Answer(end.clone()),
            Some(Slot::Running(waiters)) if waiters.len() >= MAX_WAITERS => Begin::Busy,
            Some(Slot::Running(waiters)) => {
                waiters.push(waiter());
                Begin::Wait
            }
            None => {
                self.window
                    .insert(key.source, key.seq, Slot::Running(Vec::new()));
                Begin::Run
            }
        }
    }

    /// The run of `key` ended: remembered with `Some(end)`, forgotten with `None`. Gives
    /// back the dispatches that waited for it.
    pub fn end(&mut self, key: &IdemKey, end: Option<End>) -> Vec<W> {
        let waiters = match self.window.remove(&key.source, key.seq) {
            Some(Slot::Running(waiters)) => waiters,
            _ => Vec::new(),
        };
        if let Some(end) = end {
            self.window.insert(key.source, key.seq, Slot::Done(end));
        }
        waiters
    }
}

/// A dispatch waiting for the first run of its key: its id and its session's queue.
pub(crate) type Waiter = (u64, mpsc::Sender<Frame>);

/// The worker's window, shared by its sessions.
pub(crate) type SharedKeys = Arc<Mutex<Keys<Waiter>>>;

/// Frames a keyed run may queue before its forwarder passes them on.
const FORWARD_QUEUE: usize = 64;

/// What the session does with keyed dispatch `id`: `Some(queue)` to run it with its frames
/// sent to `queue` (a forwarder passes them on to `out` and records the end), `None` when it
/// was answered (or will be, by the first run of its key).
pub(crate) async fn serve_keyed(
    keys: &SharedKeys,
    key: IdemKey,
    id: u64,
    out: &mpsc::Sender<Frame>,
) -> Result<Option<mpsc::Sender<Frame>>, ()> {
    let begin = lock(keys).begin(&key, || (id, out.clone()));
    match begin {
        Begin::Run => {
            let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
            tokio::spawn(forward(keys.clone(), key, id, rx, out.clone()));
            Ok(Some(tx))
        }
        Begin::Wait => {
            crate::core::send_frame(out, Frame::Accepted { id }).await?;
            Ok(None)
        }
        Begin::Answer(end) => {
            crate::core::send_frame(out, Frame::Accepted { id }).await?;
            crate::core::send_frame(out, end.frame(id)).await?;
            Ok(None)
        }
        Begin::Busy => {
            let message = "too many replays of this request are waiting for its first run";
            crate::core::send_frame(
                out,
                crate::runner::failed(id, ErrorKind::BadRequest, message),
            )
            .await?;
            Ok(None)
        }
    }
}

/// Passes the run's frames on to its session (while it lasts) and, at the run's end, records
/// it and answers the dispatches that waited for it.
async fn forward(
    keys: SharedKeys,
    key: IdemKey,
    id: u64,
    mut frames: mpsc::Receiver<Frame>,
    out: mpsc::Sender<Frame>,
) {
    let mut ended = None;
    while let Some(frame) = frames.recv().await {
        if ended.is_none() {
            ended = End::of(&frame, id);
        }
        // A session that is gone takes nothing more; the end is still recorded.
        if !out.is_closed() {
            let _ = crate::core::send_frame(&out, frame).await;
        }
    }
    // Every sender is gone: the run is over. No final frame means it was stopped.
    let end = ended.flatten();
    let waiters = lock(&keys).end(&key, end.clone());
    for (waiter, out) in waiters {
        let frame = match &end {
            Some(end) => end.frame(waiter),
            None => Frame::Failed {
                id: waiter,
                kind: ErrorKind::Cancelled,
                message: "the first run of this request was stopped before it ended; send it again"
                    .into(),
            },
        };
        let _ = crate::core::send_frame(&out, frame).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(source: u8, seq: u64) -> IdemKey {
        IdemKey {
            source: [source; 16],
            seq,
        }
    }

    #[test]
    fn a_key_runs_once_and_its_replays_get_its_end() {
        let mut keys: Keys<u64> = Keys::default();
        assert_eq!(keys.begin(&key(1, 1), || 10), Begin::Run);
        assert_eq!(keys.begin(&key(1, 1), || 11), Begin::Wait);
        assert_eq!(keys.begin(&key(1, 1), || 12), Begin::Wait);
        // Another source, or another key of the same source, runs.
        assert_eq!(keys.begin(&key(2, 1), || 20), Begin::Run);
        assert_eq!(keys.begin(&key(1, 2), || 30), Begin::Run);
        let done = End::Done { exit_code: 5 };
        assert_eq!(keys.end(&key(1, 1), Some(done.clone())), vec![11, 12]);
        assert_eq!(keys.begin(&key(1, 1), || 13), Begin::Answer(done));
    }

    #[test]
    fn waiters_of_one_key_are_bounded() {
        let mut keys: Keys<usize> = Keys::default();
        assert_eq!(keys.begin(&key(1, 1), || 0), Begin::Run);
        for n in 0..MAX_WAITERS {
            assert_eq!(keys.begin(&key(1, 1), || n), Begin::Wait);
        }
        assert_eq!(keys.begin(&key(1, 1), || 99), Begin::Busy);
        let waiters = keys.end(&key(1, 1), Some(End::Done { exit_code: 0 }));
        assert_eq!(waiters, (0..MAX_WAITERS).collect::<Vec<_>>());
    }

    #[test]
    fn a_stopped_run_is_forgotten_and_runs_again() {
        let mut keys: Keys<u64> = Keys::default();
        assert_eq!(keys.begin(&key(1, 1), || 10), Begin::Run);
        assert_eq!(keys.begin(&key(1, 1), || 11), Begin::Wait);
        assert_eq!(keys.end(&key(1, 1), None), vec![11]);
        assert_eq!(keys.begin(&key(1, 1), || 12), Begin::Run);
    }

    #[test]
    fn keys_and_sources_are_bounded() {
        let mut keys: Keys<u64> = Keys::with_bounds(2, 3);
        for seq in 0..4 {
            assert_eq!(keys.begin(&key(1, seq), || 0), Begin::Run);
            keys.end(&key(1, seq), Some(End::Done { exit_code: 0 }));
        }
        assert_eq!(
            keys.begin(&key(1, 0), || 0),
            Begin::Run,
            "oldest key forgotten"
        );
        assert!(matches!(keys.begin(&key(1, 3), || 0), Begin::Answer(_)));
        // Source 1 was just used; 2 then 3 arrive, and 2 (least recently used) goes.
        assert_eq!(keys.begin(&key(2, 0), || 0), Begin::Run);
        assert!(matches!(keys.begin(&key(1, 3), || 0), Begin::Answer(_)));
        assert_eq!(keys.begin(&key(3, 0), || 0), Begin::Run);
        assert_eq!(
            keys.begin(&key(2, 0), || 0),
            Begin::Run,
            "source 2 forgotten"
        );
        // The end of a forgotten running key is still remembered, and has no waiters.
        assert!(keys
            .end(&key(1, 0), Some(End::Done { exit_code: 1 }))
            .is_empty());
    }

    #[test]
    fn only_ends_that_mean_the_plugin_ran_are_kept() {
        let done = Frame::Done {
            id: 4,
            exit_code: 2,
        };
        assert_eq!(End::of(&done, 4), Some(Some(End::Done { exit_code: 2 })));
        assert_eq!(End::of(&done, 5), None);
        assert_eq!(End::of(&Frame::Accepted { id: 4 }, 4), None);
        let failed = |kind| Frame::Failed {
            id: 4,
            kind,
            message: "m".into(),
        };
        assert!(matches!(
            End::of(&failed(ErrorKind::Timeout), 4),
            Some(Some(_))
        ));
        for kind in [
            ErrorKind::Cancelled,
            ErrorKind::PluginNotFound,
            ErrorKind::PluginFailed,
        ] {
            assert_eq!(End::of(&failed(kind), 4), Some(None), "{kind}");
        }
    }
}

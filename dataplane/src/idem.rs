//! The broker's idempotency window: how the keyed requests (`Request.key`, the fs module's
//! spool) that ran to the end ended, so that a replay is answered without dispatching.
//!
//! A source is scoped by its caller: (team, identity, source), so one member cannot
//! suppress another's requests by guessing keys. Per team at most [`proto::IDEM_SOURCES`]
//! sources (least recently used forgotten first), per source at most [`proto::IDEM_WINDOW`]
//! keys (oldest first): memory does not grow with what peers send. One window serves every
//! shard (a client that reconnects may land on another shard), behind a mutex that only
//! keyed requests touch: at their start (a look-up) and their end (a record).
//!
//! Only runs whose plugin ran to an answer are recorded ([`Recording`]); a key whose run is
//! still in flight, or ended cancelled, lost or unanswered, is routed again, and the
//! worker's own window (which outlives a broker restart) decides whether it runs.

use proto::idem::Window;
use proto::{Algorithm, ErrorKind, Event, Frame, IdemKey, Summary};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a keyed request ended on one worker: its `Done`, or a `Failed` after `Accepted` that
/// means the plugin did run (a timeout, a crashed or broken persistent plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// The worker's identity.
    pub worker: Arc<str>,
    /// `Event::Done` or `Event::Failed`.
    pub end: Event,
}

/// The recorded end of a keyed request, replayed as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The service's algorithm, for `Routed`.
    pub algorithm: Algorithm,
    /// How many workers it ran on, for `Routed`/`Queued`.
    pub n_workers: u32,
    /// Each worker's end, in the order they ended.
    pub runs: Vec<Ran>,
    /// The first run's counts.
    pub summary: Summary,
}

impl Recorded {
    /// What a client gets for a replay of request `id`: for a waiting one `Routed`, per
    /// worker `Reply(Accepted)` and its end, and the `Summary` (last) with `replayed` set;
    /// for a fire-and-forget one `Queued`.
    pub fn replay(&self, id: u64, wait: bool) -> Vec<Frame> {
        if !wait {
            return vec![Frame::Queued {
                id,
                n_workers: self.n_workers,
            }];
        }
        let mut frames = Vec::with_capacity(2 + 2 * self.runs.len());
        frames.push(Frame::Routed {
            id,
            algorithm: self.algorithm,
            n_workers: self.n_workers,
        });
        for ran in &self.runs {
            for event in [Event::Accepted, ran.end.clone()] {
                frames.push(Frame::Reply {
                    id,
                    worker: ran.worker.to_string(),
                    event,
                });
            }
        }
        frames.push(Frame::Summary {
            id,
            summary: Summary {
                replayed: true,
                ..self.summary
            },
        });
        frames
    }
}

/// A keyed request's ends as they are relayed, kept on its entry until it finishes.
#[derive(Debug, Default)]
pub struct Recording {
    accepted: Vec<Arc<str>>,
    runs: Vec<Ran>,
    /// Some worker's run ended without a recordable answer (cancelled, lost, refused).
    spoiled: bool,
}

impl Recording {
    /// The workers that accepted so far.
    pub fn accepted(&self) -> &[Arc<str>] {
        &self.accepted
    }

    /// The recordable ends so far, in the order they came.
    pub fn runs(&self) -> &[Ran] {
        &self.runs
    }

    /// `event` was relayed from `worker`.
    pub fn on_relay(&mut self, worker: &Arc<str>, event: &Event) {
        match event {
            Event::Accepted => self.accepted.push(worker.clone()),
            // A worker lost and the request run again elsewhere: the other's end is the run.
            Event::Output { .. }
            | Event::Failed {
                kind: ErrorKind::Retried,
                ..
            } => {}
            Event::Done { .. } => self.runs.push(Ran {
                worker: worker.clone(),
                end: event.clone(),
            }),
            Event::Failed { kind, .. } => {
                let ran = matches!(
                    kind,
                    ErrorKind::Timeout | ErrorKind::PluginCrashed | ErrorKind::PluginProtocol
                ) && self.accepted.contains(worker);
                if ran {
                    self.runs.push(Ran {
                        worker: worker.clone(),
                        end: event.clone(),
                    });
                } else {
                    self.spoiled = true;
                }
            }
        }
    }

    /// What to record once the request finished with `summary`: nothing unless every worker
    /// it went to answered with a recordable end.
    pub fn finish(
        self,
        algorithm: Algorithm,
        n_workers: u32,
        summary: Summary,
    ) -> Option<Recorded> {
        let complete = !self.spoiled
            && !self.runs.is_empty()
            && summary.lost == 0
            && self.runs.len() as u32 == summary.workers;
        complete.then_some(Recorded {
            algorithm,
            n_workers,
            runs: self.runs,
            summary,
        })
    }
}

/// (caller identity, source) within a team.
type SourceId = (String, [u8; 16]);

/// The window every shard shares.
#[derive(Debug, Default)]
pub struct IdemWindows {
    teams: Mutex<HashMap<String, Window<SourceId, Arc<Recorded>>>>,
}

impl IdemWindows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window<SourceId, Arc<Recorded>>>> {
        self.teams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The recorded end of `key` sent by `identity` of `team`, if there is one.
    pub fn lookup(&self, team: &str, identity: &str, key: &IdemKey) -> Option<Arc<Recorded>> {
        let mut teams = self.lock();
        let window = teams.get_mut(team)?;
        window
            .get_mut(&(identity.to_string(), key.source), key.seq)
            .cloned()
    }

    /// Records how `key` sent by `identity` of `team` ended.
    pub fn record(&self, team: &str, identity: &str, key: &IdemKey, recorded: Recorded) {
        let mut teams = self.lock();
        if !teams.contains_key(team) {
            teams.insert(team.to_string(), Window::standard());
        }
        if let Some(window) = teams.get_mut(team) {
            window.insert(
                (identity.to_string(), key.source),
                key.seq,
                Arc::new(recorded),
            );
        }
    }

    /// Sources remembered for `team`.
    #[cfg(test)]
    fn n_sources(&self, team: &str) -> usize {
        self.lock().get(team).map_or(0, |w| w.n_sources())
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

    fn ok_summary() -> Summary {
        Summary {
            workers: 1,
            ok: 1,
            ..Summary::default()
        }
    }

    fn done(worker: &str, exit_code: i32) -> Recorded {
        Recorded {
            algorithm: Algorithm::Roundrobin,
            n_workers: 1,
            runs: vec![Ran {
                worker: worker.into(),
                end: Event::Done { exit_code },
            }],
            summary: ok_summary(),
        }
    }

    #[test]
    fn a_key_is_scoped_by_team_identity_and_source() {
        let w = IdemWindows::default();
        w.record("t", "alice", &key(1, 5), done("w1", 0));
        assert_eq!(
            w.lookup("t", "alice", &key(1, 5)).as_deref(),
            Some(&done("w1", 0))
        );
        assert!(w.lookup("t", "bob", &key(1, 5)).is_none());
        assert!(w.lookup("u", "alice", &key(1, 5)).is_none());
        assert!(w.lookup("t", "alice", &key(2, 5)).is_none());
        assert!(w.lookup("t", "alice", &key(1, 6)).is_none());
    }

    #[test]
    fn sources_are_bounded_per_team_and_keys_per_source() {
        let w = IdemWindows::default();
        w.record("other", "carol", &key(0, 0), done("w1", 0));
        for source in 0..(proto::IDEM_SOURCES as u8 + 3) {
            w.record("t", "alice", &key(source, 0), done("w1", 0));
        }
        assert_eq!(w.n_sources("t"), proto::IDEM_SOURCES);
        assert!(
            w.lookup("t", "alice", &key(0, 0)).is_none(),
            "oldest source forgotten"
        );
        assert!(
            w.lookup("other", "carol", &key(0, 0)).is_some(),
            "other teams keep theirs"
        );
        for seq in 0..(proto::IDEM_WINDOW as u64 + 1) {
            w.record("t", "bob", &key(9, seq), done("w1", 0));
        }
        assert!(
            w.lookup("t", "bob", &key(9, 0)).is_none(),
            "oldest key forgotten"
        );
        assert!(w.lookup("t", "bob", &key(9, 1)).is_some());
    }

    fn worker(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn done_and_failures_after_the_plugin_ran_are_recorded() {
        let w1 = worker("w1");
        let mut r = Recording::default();
        r.on_relay(&w1, &Event::Accepted);
        r.on_relay(&w1, &Event::Done { exit_code: 3 });
        let summary = Summary {
            workers: 1,
            failed: 1,
            ..Summary::default()
        };
        let recorded = r
            .finish(Algorithm::Roundrobin, 1, summary)
            .expect("recorded");
        assert_eq!(recorded.runs[0].end, Event::Done { exit_code: 3 });

        let timed_out = Event::Failed {
            kind: ErrorKind::Timeout,
            message: "request timed out".into(),
        };
        let summary = Summary {
            workers: 1,
            timed_out: 1,
            ..Summary::default()
        };
        let mut r = Recording::default();
        r.on_relay(&w1, &Event::Accepted);
        r.on_relay(&w1, &timed_out);
        assert!(r.finish(Algorithm::Roundrobin, 1, summary).is_some());
        // A timeout before the plugin started ran nothing.
        let mut r = Recording::default();
        r.on_relay(&w1, &timed_out);
        assert!(r.finish(Algorithm::Roundrobin, 1, summary).is_none());
    }

    #[test]
    fn cancelled_lost_and_partial_runs_are_not_recorded() {
        let (w1, w2) = (worker("w1"), worker("w2"));
        for kind in [
            ErrorKind::Cancelled,
            ErrorKind::WorkerLost,
            ErrorKind::PluginNotFound,
        ] {
            let mut r = Recording::default();
            r.on_relay(&w1, &Event::Accepted);
            r.on_relay(
                &w1,
                &Event::Failed {
                    kind,
                    message: String::new(),
                },
            );
            let summary = Summary {
                workers: 1,
                failed: 1,
                ..Summary::default()
            };
            assert!(
                r.finish(Algorithm::Roundrobin, 1, summary).is_none(),
                "{kind}"
            );
        }
        // Mirror: one worker answered, the other was lost.
        let mut r = Recording::default();
        r.on_relay(&w1, &Event::Done { exit_code: 0 });
        let summary = Summary {
            workers: 2,
            ok: 1,
            lost: 1,
            ..Summary::default()
        };
        assert!(r.finish(Algorithm::Mirror, 2, summary).is_none());
        // Both answered.
        let mut r = Recording::default();
        r.on_relay(&w1, &Event::Done { exit_code: 0 });
        r.on_relay(&w2, &Event::Done { exit_code: 1 });
        let summary = Summary {
            workers: 2,
            ok: 1,
            failed: 1,
            ..Summary::default()
        };
        let recorded = r.finish(Algorithm::Mirror, 2, summary).expect("recorded");
        assert_eq!(recorded.runs.len(), 2);
    }

    #[test]
    fn a_replay_has_the_shape_of_a_run_without_output() {
        let frames = done("w1", 4).replay(7, true);
        let reply = |event| Frame::Reply {
            id: 7,
            worker: "w1".into(),
            event,
        };
        assert_eq!(
            frames,
            vec![
                Frame::Routed {
                    id: 7,
                    algorithm: Algorithm::Roundrobin,
                    n_workers: 1
                },
                reply(Event::Accepted),
                reply(Event::Done { exit_code: 4 }),
                Frame::Summary {
                    id: 7,
                    summary: Summary {
                        replayed: true,
                        ..ok_summary()
                    }
                },
            ]
        );
        assert_eq!(
            done("w1", 4).replay(8, false),
            vec![Frame::Queued {
                id: 8,
                n_workers: 1
            }]
        );
    }
}

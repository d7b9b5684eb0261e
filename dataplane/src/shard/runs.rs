//! Running the requests this shard owns: each step of a request's state machine, what it
//! decides carried out (dispatches, cancels, relays to the client, its end), its timeouts,
//! and the `Routed` frames held back.

use super::requests::{ClientSide, DispatchIds};
use super::{ShardMsg, State};
use crate::registry::WorkerRef;
use crate::request::{Action, RequestRun, WorkerEvent};
use proto::Frame;
use std::sync::Arc;
use std::time::Instant;

/// Action lists the pool keeps: more than the deepest nesting of `with_request`.
const ACTION_LISTS_KEPT: usize = 8;

impl State {
    /// Runs `f` on request `key`'s state machine and carries out the actions it returns.
    pub(super) fn with_request(
        &mut self,
        key: u64,
        f: impl FnOnce(&mut RequestRun, &mut DispatchIds, &mut Vec<Action>),
    ) {
        // A list from the pool: with_request runs several times per request (start, every
        // worker event), and carrying out actions may nest another call.
        let mut actions = self.action_lists.pop().unwrap_or_default();
        let Some(entry) = self
            .requests
            .step(key, |run, ids| f(run, ids, &mut actions))
        else {
            return;
        };
        let client = entry.client;
        self.carry_out(key, client, actions);
    }

    fn carry_out(&mut self, key: u64, client: ClientSide, mut actions: Vec<Action>) {
        // Consecutive relays of one worker's events leave as one frame (`Replies` when
        // there are several): gathered here, sent before the effect of any other action
        // but `Forget` (which only drops a map entry; the others may send to the client,
        // some through a nested call) and, for a client that takes `Answer`, `Finish`
        // (which sends them, with the held `Routed` and the summary, in one frame).
        let mut relays: Option<(Arc<str>, Vec<proto::Event>)> = None;
        for action in actions.drain(..) {
            let gathers = match &action {
                Action::Relay { worker, .. } => relays.as_ref().is_none_or(|(w, _)| w == worker),
                Action::Forget { .. } => true,
                Action::Finish { .. } => client.answers,
                _ => false,
            };
            if !gathers {
                self.send_relays(key, client, relays.take());
            }
            match action {
                Action::Dispatch {
                    dispatch_id,
                    worker,
                } => self.dispatch(key, dispatch_id, worker),
                Action::Cancel { dispatch_id, at } => {
                    self.send_to_worker(at, |conn_id| ShardMsg::Cancel {
                        conn_id,
                        dispatch_id,
                    })
                }
                Action::Forget { dispatch_id } => self.requests.forget_dispatch(dispatch_id),
                Action::Relay { worker, event } => {
                    if let Some(entry) = self.requests.get_mut(key) {
                        entry.on_relay(&worker, &event);
                    }
                    if client.wait {
                        relays
                            .get_or_insert_with(|| (worker, Vec::new()))
                            .1
                            .push(event);
                    }
                }
                Action::Finish { summary } => self.finish(key, client, summary, relays.take()),
            }
        }
        self.send_relays(key, client, relays);
        if self.action_lists.len() < ACTION_LISTS_KEPT {
            self.action_lists.push(actions);
        }
    }

    /// Sends one worker's relayed events to the client: after the held `Routed` if it is
    /// still held, as a `Reply` (one event) or a `Replies` frame (several).
    fn send_relays(
        &mut self,
        key: u64,
        client: ClientSide,
        relays: Option<(Arc<str>, Vec<proto::Event>)>,
    ) {
        let Some((worker, events)) = relays else {
            return;
        };
        if let Some(routed) = self.requests.get_mut(key).and_then(|e| e.routed.take()) {
            self.send_to_conn(client.conn_id, &routed);
        }
        self.send_events(client, worker, events);
    }

    /// One worker's events to the client: a `Reply` (one event) or a `Replies` frame
    /// (several).
    fn send_events(&mut self, client: ClientSide, worker: Arc<str>, events: Vec<proto::Event>) {
        let id = client.request_id;
        // Merged only within `MERGE_BYTES` (a worker's `Events` frame may be as large as
        // the largest frame, and the client's limit must hold for the relay too).
        let bytes: usize = events.iter().map(proto::Event::payload_len).sum();
        if events.len() > 1 && bytes <= proto::MERGE_BYTES {
            let worker = worker.to_string();
            let frame = Frame::Replies { id, worker, events };
            return self.send_to_conn(client.conn_id, &frame);
        }
        for event in events {
            let worker = worker.to_string();
            self.send_to_conn(client.conn_id, &Frame::Reply { id, worker, event });
        }
    }

    /// Drops a request that is over and tells its client: the `relays` gathered before its
    /// end, then the summary; all in one `Answer` for a client that takes it when `Routed`
    /// is still held (the whole answer came at once from one worker).
    fn finish(
        &mut self,
        key: u64,
        client: ClientSide,
        summary: proto::Summary,
        relays: Option<(Arc<str>, Vec<proto::Event>)>,
    ) {
        let entry = self.requests.remove(key);
        if let Some(requests) = self.conns.client_requests(client.conn_id) {
            requests.remove(&client.request_id);
        }
        let Some(mut entry) = entry else {
            if let Some((worker, events)) = relays {
                self.send_events(client, worker, events);
            }
            return;
        };
        self.stats
            .request_finished(&entry.service, entry.started, &summary);
        self.trace_finish(entry.job.take());
        if let Some(mut keyed) = entry.keyed.take() {
            if let Some(run) = keyed.trigger.take() {
                self.trigger_finish(&keyed, &entry.service, run);
            }
            let algorithm = entry.service.algorithm;
            let ended = keyed
                .recording
                .finish(algorithm, entry.run.n_workers(), summary);
            if let Some(recorded) = ended {
                let idem = &self.env.idem;
                idem.record(&keyed.team, &keyed.identity, &keyed.key, recorded);
            }
        }
        let routed = entry.routed.take();
        if let (Some(routed), Some((worker, events))) = (&routed, &relays) {
            let bytes: usize = events.iter().map(proto::Event::payload_len).sum();
            if let (
                Frame::Routed {
                    algorithm,
                    n_workers,
                    ..
                },
                true,
            ) = (routed, bytes <= proto::MERGE_BYTES)
            {
                let answer = proto::Answer {
                    id: client.request_id,
                    algorithm: *algorithm,
                    n_workers: *n_workers,
                    worker: worker.to_string(),
                    events: relays.map(|(_, events)| events).unwrap_or_default(),
                    summary,
                };
                return self.send_to_conn(client.conn_id, &Frame::Answer(Box::new(answer)));
            }
        }
        if let Some(routed) = routed {
            self.send_to_conn(client.conn_id, &routed);
        }
        if let Some((worker, events)) = relays {
            self.send_events(client, worker, events);
        }
        if client.wait {
            let id = client.request_id;
            self.send_to_conn(client.conn_id, &Frame::Summary { id, summary });
        }
    }

    fn dispatch(&mut self, key: u64, dispatch_id: u64, worker: WorkerRef) {
        let Some(entry) = self.requests.get(key) else {
            return;
        };
        let dispatch = proto::Dispatch {
            id: dispatch_id,
            ..entry.template.clone()
        };
        let client = self.conns.get(entry.client.conn_id);
        let paused = entry.client.wait && client.is_some_and(|c| c.out.is_paused());
        let due = entry.staged_timeout.map(|timeout| Instant::now() + timeout);
        self.requests.dispatched(dispatch_id, key, due);
        let at = worker.at;
        self.send_to_worker(at, |conn_id| ShardMsg::Dispatch { conn_id, dispatch });
        // Its client is behind: the new run starts paused (the same path as the dispatch,
        // so the pause never overtakes it).
        if paused {
            self.flow_dispatch(dispatch_id, at, true);
        }
    }

    /// A worker's event for a request owned here.
    pub(super) fn on_event(&mut self, dispatch_id: u64, event: WorkerEvent) {
        self.on_events(dispatch_id, [event]);
    }

    /// [`State::on_event`] for several events of one dispatch, in order: the request runs
    /// them in one go, so that what it relays of them leaves as one `Replies` frame.
    pub(super) fn on_events(
        &mut self,
        dispatch_id: u64,
        events: impl IntoIterator<Item = WorkerEvent>,
    ) {
        if let Some(key) = self.requests.owner_of(dispatch_id) {
            self.with_request(key, |run, ids, out| {
                for event in events {
                    run.on_event(dispatch_id, event, &mut || ids.next(), out);
                }
            });
        }
    }

    /// Sends the `Routed` frames held back longer than they may be.
    pub(super) fn release_routed(&mut self) {
        let now = Instant::now();
        while let Some((conn_id, frame)) = self.requests.routed_due(now) {
            self.send_to_conn(conn_id, &frame);
        }
    }

    /// Fires the timeouts that are due.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some(key) = self.requests.due_request(now) {
            self.with_request(key, |run, _, out| run.on_timeout(out));
        }
        // Workers of staged runs past their own timeout.
        while let Some((dispatch_id, owner)) = self.requests.due_dispatch(now) {
            if let Some(key) = owner {
                self.with_request(key, |run, ids, out| {
                    run.on_dispatch_timeout(dispatch_id, &mut || ids.next(), out)
                });
            }
        }
    }
}

//! The sender: records leave the spool for the broker in order, and each is acknowledged
//! (removed from the spool) only once its request came to an end the fs can trust.
//!
//! Each request carries its idempotency key (the spool's id and the record's sequence
//! number), so a record sent again after a lost answer is answered from the broker's (or the
//! worker's) window instead of running twice. Up to [`MAX_IN_FLIGHT`] requests are in
//! flight on one connection; one connection to one broker shard to one worker keeps them in
//! order. After a reconnect, or after a request that must be sent again, one request at a time
//! goes out until one is delivered ("probe"), so that a worker coming back in the middle of a
//! burst cannot see the burst's tail before its head.
//!
//! What ends a record:
//! - delivered: a worker ran it (any exit code, a timeout, a plugin that failed to start);
//! - rejected: the request can never run as written (no such service, not allowed, no such
//!   plugin, bad request): logged, shown in the trigger file, counted, acknowledged;
//! - otherwise (connection lost, no workers online, worker lost mid-run, token refused) it is
//!   sent again, after everything in flight has ended, with a capped backoff.

use crate::record::SpooledRequest;
use crate::responses::{Ending, Response};
use crate::spool::SpoolReader;
use crate::Shared;
use client::{BrokerList, Client, Outcome, RequestSpec, WorkerStatus};
use proto::{Credential, ErrorKind, IdemKey};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Requests in flight at once (well under `proto::IDEM_WINDOW`, so a replay of everything
/// in flight is still inside the windows that remember them).
pub const MAX_IN_FLIGHT: usize = 1024;
/// Output kept per response (the tail).
const OUTPUT_KEPT: usize = crate::responses::OUTPUT_KEPT;
/// Backoff between attempts after a failure: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// How one request ended, for the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// It ran (or was answered from a window because it had run).
    Delivered { replayed: bool },
    /// It can never run as written.
    Rejected(ErrorKind),
    /// Send it again.
    Retry(Again),
}

/// Why records are sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Again {
    /// For the log.
    why: String,
    /// The broker refused the connection's token (`Unauthorized`, `Revoked`): log in again.
    token_refused: bool,
}

impl Again {
    fn because(why: impl Into<String>) -> Again {
        Again {
            why: why.into(),
            token_refused: false,
        }
    }

    /// A refusal by the broker, typed.
    fn refused(kind: ErrorKind, reason: &str) -> Again {
        Again {
            why: format!("{kind}: {reason}"),
            token_refused: matches!(kind, ErrorKind::Unauthorized | ErrorKind::Revoked),
        }
    }
}

/// Whether a request-level error may pass (so the request is worth sending again).
fn transient(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NoWorkersOnline
            | ErrorKind::Unauthorized
            | ErrorKind::Revoked
            | ErrorKind::SlowConsumer
            | ErrorKind::Cancelled
            | ErrorKind::Superseded
            | ErrorKind::QuotaExceeded
            | ErrorKind::TooManyRequests
            | ErrorKind::RateLimited
            | ErrorKind::ShuttingDown
            | ErrorKind::Stale
            | ErrorKind::BrokerLost
    )
}

fn verdict(outcome: &Outcome) -> Verdict {
    if outcome.disconnected {
        return Verdict::Retry(Again::because("the connection to the broker was lost"));
    }
    if let Some(e) = &outcome.error {
        return if transient(e.kind) {
            Verdict::Retry(Again::refused(e.kind, &e.message))
        } else {
            Verdict::Rejected(e.kind)
        };
    }
    // A mirror or serial service whose bound workers were all offline ran nowhere: the
    // broker reports them instead of refusing with `NoWorkersOnline`, and the record waits
    // for them just the same.
    if !outcome.workers.is_empty()
        && outcome
            .workers
            .iter()
            .all(|w| w.status == WorkerStatus::Offline)
    {
        return Verdict::Retry(Again::because(format!(
            "every worker of the service is offline ({})",
            outcome
                .workers
                .iter()
                .map(|w| w.worker.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    for w in &outcome.workers {
        if matches!(
            w.status,
            WorkerStatus::Lost | WorkerStatus::Unfinished | WorkerStatus::Cancelled
        ) {
            return Verdict::Retry(Again::because(format!(
                "worker {} did not finish ({})",
                w.worker, w.status
            )));
        }
    }
    Verdict::Delivered {
        replayed: outcome.summary.as_ref().is_some_and(|s| s.replayed),
    }
}

/// The time a response shows, `%Y-%m-%dT%H:%M:%S%:z`: it has no part finer than a second,
/// so it is formatted (with the time zone looked up) once a second, not once a request.
fn now_text() -> String {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *text = jiff::Zoned::now()
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string();
            *at = second;
        }
        text.clone()
    })
}

/// The responses a request's outcome shows.
fn responses(outcome: &Outcome, verdict: &Verdict) -> Vec<Response> {
    let time = now_text();
    if let Verdict::Rejected(kind) = verdict {
        let message = outcome
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        return vec![Response {
            time,
            worker: String::new(),
            ending: Ending::Error(kind.to_string()),
            note: Some(message),
            output: Vec::new(),
            dropped: 0,
        }];
    }
    let replayed = matches!(verdict, Verdict::Delivered { replayed: true });
    outcome
        .workers
        .iter()
        .map(|w| {
            let mut output = Vec::new();
            for line in &w.output {
                output.extend_from_slice(line.line.as_bytes());
                output.push(b'\n');
            }
            Response {
                time: time.clone(),
                worker: w.worker.clone(),
                ending: match (w.exit_code, &w.error) {
                    (Some(code), _) => Ending::Exit(code),
                    (None, Some(e)) => Ending::Error(e.kind.to_string()),
                    (None, None) => Ending::Error(w.status.to_string()),
                },
                note: replayed.then(|| "answered from the idempotency window: it had run".into()),
                output,
                dropped: w.output_dropped as usize,
            }
        })
        .collect()
}

/// What one request task hands back.
struct Ended {
    seq: u64,
    request: SpooledRequest,
    outcome: Outcome,
}

/// Why a connection's pump stopped.
enum Stopped {
    /// Shutting down.
    Shutdown,
    /// Something must be sent again (after a backoff); the connection may be gone.
    Retry {
        /// Why.
        again: Again,
        /// Something was delivered before it (the backoff starts afresh).
        delivered: bool,
    },
}

/// Sends the spool's records through one of `brokers` until `stop` turns true.
///
/// One [`Client`] for the whole run: when its node is lost, every request in flight ends
/// (`BrokerLost`, or the node's own `ShuttingDown`/`Stale`), the records not acknowledged are
/// read again from the spool's acknowledged position and sent, with the same keys, through
/// the node the client connects to next (another one first: see [`Client::reconnect`]),
/// with a fresh JWT.
pub async fn run(
    shared: Arc<Shared>,
    mut reader: SpoolReader,
    brokers: BrokerList,
    mut stop: watch::Receiver<bool>,
) {
    let source = shared.spool.source();
    // Records after the acknowledged prefix that were already delivered (a later one ended
    // while an earlier one must be sent again): not sent twice.
    let mut ahead = BTreeSet::new();
    let mut backoff = BACKOFF.0;
    let mut client: Option<Client> = None;
    let mut failures = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let c = match &client {
            Some(c) if !c.is_closed() => c.clone(),
            _ => match connect(&shared, &brokers, client.as_ref()).await {
                Ok(c) => {
                    shared
                        .log
                        .line(&format!("Connected to broker at {}.", c.addr()));
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        shared.log.line(&format!(
                            "Cannot reach broker at {brokers} ({e}); writes are spooled."
                        ));
                    }
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            },
        };
        reader.rewind();
        match pump(&shared, &c, &mut reader, source, &mut ahead, &mut stop).await {
            Stopped::Shutdown => return,
            Stopped::Retry { again, delivered } => {
                // A failure after deliveries starts the backoff afresh.
                if delivered {
                    failures = 0;
                    backoff = BACKOFF.0;
                }
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    shared
                        .log
                        .line(&format!("Sending again from the spool: {}", again.why));
                }
                if again.token_refused {
                    // The next connection logs in again (`connect` sets the new JWT).
                    shared.api.forget_token();
                }
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// A connection with a fresh JWT: the first one to one of `brokers`; after that, the same
/// client connecting again (it keeps the nodes it learned, and tries another node than the
/// one it lost first).
async fn connect(
    shared: &Shared,
    brokers: &BrokerList,
    client: Option<&Client>,
) -> Result<Client, String> {
    let token = shared.api.jwt().await.map_err(|e| e.to_string())?;
    let credential = Credential::Jwt { token };
    match client {
        Some(client) => {
            client.set_credential(credential);
            client.reconnect().await.map_err(|e| e.to_string())?;
            Ok(client.clone())
        }
        None => Client::connect(brokers, credential)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Sleeps `d`; true when told to stop meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Sends records on one connection until something must be sent again or the fs stops.
async fn pump(
    shared: &Arc<Shared>,
    client: &Client,
    reader: &mut SpoolReader,
    source: [u8; 16],
    ahead: &mut BTreeSet<u64>,
    stop: &mut watch::Receiver<bool>,
) -> Stopped {
    let mut tasks: JoinSet<Ended> = JoinSet::new();
    // Every record read since the acknowledged prefix: done or not.
    let mut order: BTreeMap<u64, bool> = BTreeMap::new();
    let mut limit = 1usize;
    let mut failed: Option<Again> = None;
    let mut delivered = false;
    loop {
        if tasks.is_empty() {
            if let Some(again) = failed.take() {
                ahead.extend(order.iter().filter(|(_, done)| **done).map(|(seq, _)| *seq));
                return Stopped::Retry { again, delivered };
            }
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return Stopped::Shutdown,
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok(ended) = ended else { continue };
                match verdict(&ended.outcome) {
                    Verdict::Retry(again) => {
                        failed.get_or_insert(again);
                    }
                    v => {
                        if matches!(v, Verdict::Delivered { .. }) {
                            limit = MAX_IN_FLIGHT;
                            delivered = true;
                        }
                        finish(shared, &ended, &v);
                        order.insert(ended.seq, true);
                        acknowledge(shared, reader, &mut order);
                    }
                }
            }
            next = reader.next(), if failed.is_none() && tasks.len() < limit => {
                let (seq, bytes) = match next {
                    Ok(r) => r,
                    Err(e) => {
                        shared.log.line(&format!("The spool cannot be read: {e}"));
                        failed.get_or_insert(Again::because(format!("spool: {e}")));
                        continue;
                    }
                };
                if ahead.remove(&seq) {
                    order.insert(seq, true);
                    acknowledge(shared, reader, &mut order);
                    continue;
                }
                let request = match SpooledRequest::decode(&bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        // The CRC held, so the bytes are what was written: by another version.
                        shared.log.line(&format!("Spooled request {seq} skipped: {e}"));
                        order.insert(seq, true);
                        acknowledge(shared, reader, &mut order);
                        continue;
                    }
                };
                let spec = RequestSpec {
                    service: request.service.clone(),
                    plugin: request.plugin.clone(),
                    command: Vec::new(),
                    args: request.args.clone(),
                    payload: request.payload.clone(),
                    timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
                    wait: true,
                    key: Some(IdemKey { source, seq }),
                    fleet: Default::default(),
                    tag: None,
                    trigger: Some(request.path.clone()),
                };
                let handle = match client.request_on_current(spec).await {
                    Ok(h) => h,
                    Err(e) => {
                        failed.get_or_insert(Again::because(format!(
                            "the request could not be sent: {e}"
                        )));
                        continue;
                    }
                };
                order.insert(seq, false);
                tasks.spawn(async move {
                    let mut handle = handle;
                    let mut outcome = Outcome::new(&request.service, &request.plugin).keep_output(OUTPUT_KEPT);
                    while let Some(event) = handle.next().await {
                        outcome.record(&event);
                    }
                    Ended { seq, request, outcome }
                });
            }
        }
    }
}

/// Shows, logs and counts a request that ended.
fn finish(shared: &Shared, ended: &Ended, verdict: &Verdict) {
    let path = &ended.request.path;
    // Rendered for the log only when the log keeps it (`--quiet` without a log file does not:
    // a line per request in a busy log shipper).
    let log = shared.log.keeps_responses();
    for response in responses(&ended.outcome, verdict) {
        if log {
            let mut body = String::new();
            response.body(path, &mut body);
            shared.log.response(&body);
        }
        shared
            .responses
            .record(ended.request.trigger_id, path, response);
    }
    match verdict {
        Verdict::Delivered { replayed: false } => shared.hit(ended.request.trigger_id),
        Verdict::Rejected(_) => {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    shared.delivered.fetch_add(1, Ordering::Relaxed);
}

/// Acknowledges the done prefix of `order`.
fn acknowledge(shared: &Shared, reader: &mut SpoolReader, order: &mut BTreeMap<u64, bool>) {
    let mut last = None;
    while let Some(entry) = order.first_entry() {
        if !*entry.get() {
            break;
        }
        last = Some(*entry.key());
        entry.remove();
    }
    if let Some(seq) = last {
        if let Err(e) = reader.ack(seq) {
            shared.log.line(&format!(
                "The spool could not record delivery up to {seq}: {e}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::ClientEvent;

    fn outcome(events: &[ClientEvent]) -> Outcome {
        let mut o = Outcome::new("s", "p");
        for e in events {
            o.record(e);
        }
        o
    }

    #[test]
    fn verdicts() {
        let done = |code| ClientEvent::Done {
            worker: "w".into(),
            exit_code: code,
        };
        let accepted = ClientEvent::Accepted { worker: "w".into() };
        let broker_lost = ClientEvent::Error {
            kind: ErrorKind::BrokerLost,
            message: "the connection to the broker at a:1 was lost".into(),
        };
        let summary = ClientEvent::Summary(proto::Summary {
            workers: 1,
            ok: 1,
            failed: 0,
            timed_out: 0,
            lost: 0,
            replayed: false,
            ..Default::default()
        });
        let replayed = ClientEvent::Summary(proto::Summary {
            workers: 1,
            ok: 1,
            failed: 0,
            timed_out: 0,
            lost: 0,
            replayed: true,
            ..Default::default()
        });
        assert_eq!(
            verdict(&outcome(&[accepted.clone(), done(0), replayed])),
            Verdict::Delivered { replayed: true }
        );
        assert_eq!(
            verdict(&outcome(&[accepted.clone(), done(0), summary.clone()])),
            Verdict::Delivered { replayed: false }
        );
        assert_eq!(
            verdict(&outcome(&[accepted.clone(), done(3), summary.clone()])),
            Verdict::Delivered { replayed: false }
        );
        let error = |kind| ClientEvent::Error {
            kind,
            message: String::new(),
        };
        assert!(matches!(
            verdict(&outcome(&[error(ErrorKind::NoWorkersOnline)])),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            verdict(&outcome(&[error(ErrorKind::Revoked)])),
            Verdict::Retry(_)
        ));
        assert_eq!(
            verdict(&outcome(&[error(ErrorKind::NoSuchService)])),
            Verdict::Rejected(ErrorKind::NoSuchService)
        );
        assert!(matches!(
            verdict(&outcome(&[accepted.clone(), broker_lost])),
            Verdict::Retry(_)
        ));
        let lost = ClientEvent::Failed {
            worker: "w".into(),
            kind: ErrorKind::WorkerLost,
            message: String::new(),
        };
        assert!(matches!(
            verdict(&outcome(&[accepted.clone(), lost, summary.clone()])),
            Verdict::Retry(_)
        ));
        // Lost, and run again on another worker that finished: delivered, not sent again.
        let retried = ClientEvent::Failed {
            worker: "v".into(),
            kind: ErrorKind::Retried,
            message: String::new(),
        };
        let rerun = [retried, accepted.clone(), done(0), summary.clone()];
        assert_eq!(
            verdict(&outcome(&rerun)),
            Verdict::Delivered { replayed: false }
        );
        let timeout = ClientEvent::Failed {
            worker: "w".into(),
            kind: ErrorKind::Timeout,
            message: String::new(),
        };
        assert_eq!(
            verdict(&outcome(&[accepted.clone(), timeout, summary])),
            Verdict::Delivered { replayed: false }
        );
        // Every bound worker offline: nobody has the record, it waits for them.
        let offline = |worker: &str| ClientEvent::Failed {
            worker: worker.into(),
            kind: ErrorKind::Offline,
            message: String::new(),
        };
        let two = ClientEvent::Summary(proto::Summary {
            workers: 2,
            offline: 2,
            ..Default::default()
        });
        assert!(matches!(
            verdict(&outcome(&[offline("a"), offline("b"), two.clone()])),
            Verdict::Retry(_)
        ));
        // One of two offline: the other has it.
        assert_eq!(
            verdict(&outcome(&[offline("a"), accepted, done(0), two])),
            Verdict::Delivered { replayed: false }
        );
    }
}

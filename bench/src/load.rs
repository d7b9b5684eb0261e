//! The load generator, shared by every system so that they see the same load shape.
//!
//! - **Closed loop** (`--in-flight K`): K tasks each send a request, wait for its answer and
//!   send the next; latency is answer time minus send time.
//! - **Open loop** (`--rate R`): request i is *scheduled* at `start + i/R` and latency is
//!   answer time minus that scheduled time, so a stall of the system (or of the sender)
//!   shows up as latency of every request that should have gone out during it, instead of
//!   silently lowering the rate (coordinated omission).
//!
//! A warm-up with the same shape runs first; its requests are not counted.
//!
//! Every system is started first and they measure in turns (`--rounds`, default 3): one
//! slice of the duration or count per system per round, merged at the end. The machine this
//! runs on is shared and its speed drifts over tens of seconds; measured one after the
//! other, the systems would each see a different machine and the ratios would move with it.

use crate::report::{latency_histogram, Report, SystemResult};
use crate::{LoadArgs, Notes, System};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{json, Map};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A request that takes longer than this counts as an error: far beyond any latency this
/// benchmark is about, and short enough that a lost answer does not hang the run.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Open-loop cap on requests outstanding when `--in-flight` is not given: a system that falls
/// this far behind is already showing seconds of latency; the cap only bounds memory.
const DEFAULT_MAX_OUTSTANDING: usize = 10_000;

/// Sends one request and checks its answer; `Err` when it failed or came back wrong.
pub(crate) trait Caller: Clone + Send + Sync + 'static {
    /// One request/reply round trip with this payload.
    fn call(&self, payload: Bytes) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// When to stop measuring.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// After this long.
    After(Duration),
    /// After this many requests were sent.
    Count(u64),
}

/// The load applied to every system.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub rate: Option<f64>,
    pub in_flight: usize,
    pub warmup: Duration,
    pub stop: Stop,
    pub payload: usize,
}

impl Shape {
    /// Round `round` of `rounds`: its share of the duration or count, and its warm-up (the
    /// whole warm-up in the first round; a quarter of it later, to settle again after the
    /// other systems had their turn).
    fn slice(&self, round: u64, rounds: u64) -> Shape {
        let rounds = rounds.max(1);
        let stop = match self.stop {
            Stop::After(d) => Stop::After(d / rounds as u32),
            Stop::Count(n) => Stop::Count(n / rounds + u64::from(round < n % rounds)),
        };
        Shape {
            warmup: if round == 0 {
                self.warmup
            } else {
                self.warmup / 4
            },
            stop,
            ..self.clone()
        }
    }
}

/// A system under test, started once and measured in turns.
enum Target {
    Triggerfs(crate::triggerfs::Running),
    Relay(crate::relay::Relay),
    Nats(crate::nats::Nats),
}

impl Target {
    /// One measuring slice under `shape`.
    async fn drive(&self, shape: &Shape, notes: &Notes) -> SystemResult {
        match self {
            Target::Triggerfs(running) => drive("triggerfs", running.caller(), shape, notes).await,
            Target::Relay(relay) => drive("relay", relay.caller(), shape, notes).await,
            Target::Nats(nats) => drive("nats", nats.caller(), shape, notes).await,
        }
    }

    async fn stop(self) {
        match self {
            Target::Triggerfs(running) => running.stop().await,
            Target::Relay(relay) => relay.stop(),
            Target::Nats(nats) => nats.stop(),
        }
    }
}

/// Counters and histogram of one measuring window.
struct Tally {
    hist: Histogram<u64>,
    sent: u64,
    received: u64,
    errors: u64,
    last_answer: Option<Instant>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: latency_histogram(),
            sent: 0,
            received: 0,
            errors: 0,
            last_answer: None,
        }
    }

    fn record(&mut self, outcome: &anyhow::Result<()>, latency: Duration, answered: Instant) {
        self.sent += 1;
        match outcome {
            Ok(()) => {
                self.received += 1;
                let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
                self.hist.saturating_record(nanos);
            }
            Err(error) => {
                if self.errors == 0 {
                    tracing::warn!(%error, "request failed");
                }
                self.errors += 1;
            }
        }
        self.last_answer = Some(self.last_answer.map_or(answered, |t| t.max(answered)));
    }

    fn merge(&mut self, other: Tally) {
        self.hist
            .add(other.hist)
            .expect("histograms share their bounds");
        self.sent += other.sent;
        self.received += other.received;
        self.errors += other.errors;
        self.last_answer = match (self.last_answer, other.last_answer) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

async fn call_with_timeout<C: Caller>(caller: &C, payload: Bytes) -> anyhow::Result<()> {
    match tokio::time::timeout(REQUEST_TIMEOUT, caller.call(payload)).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Applies `shape` to `caller` and returns what the measuring window saw.
pub(crate) async fn drive<C: Caller>(
    name: &'static str,
    caller: C,
    shape: &Shape,
    notes: &Notes,
) -> SystemResult {
    let payload = Bytes::from(vec![b'x'; shape.payload]);
    let progress = Progress::start(name, shape, notes.progress());
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let tally = match shape.rate {
        Some(rate) => open_loop(caller, shape, rate, payload, measure_from, &progress).await,
        None => closed_loop(caller, shape, payload, measure_from, &progress).await,
    };
    progress.finish();
    let elapsed = tally.last_answer.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(measure_from)
    });
    SystemResult {
        name,
        hist: tally.hist,
        sent: tally.sent,
        received: tally.received,
        errors: tally.errors,
        elapsed,
        fanout: None,
    }
}

async fn closed_loop<C: Caller>(
    caller: C,
    shape: &Shape,
    payload: Bytes,
    measure_from: Instant,
    progress: &Progress,
) -> Tally {
    // Count mode: each measured request first takes a ticket, so exactly `count` are sent.
    let tickets = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(shape.in_flight);
    for _ in 0..shape.in_flight.max(1) {
        let caller = caller.clone();
        let payload = payload.clone();
        let tickets = tickets.clone();
        let stop = shape.stop;
        let done = progress.done.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let sent_at = Instant::now();
                let measuring = sent_at >= measure_from;
                if measuring {
                    let over = match stop {
                        Stop::After(d) => sent_at >= measure_from + d,
                        Stop::Count(n) => tickets.fetch_add(1, Ordering::Relaxed) >= n,
                    };
                    if over {
                        break;
                    }
                }
                let outcome = call_with_timeout(&caller, payload.clone()).await;
                let answered = Instant::now();
                if measuring {
                    tally.record(&outcome, answered - sent_at, answered);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(tally),
            Err(e) => tracing::error!(error = %e, "load task failed"),
        }
    }
    total
}

async fn open_loop<C: Caller>(
    caller: C,
    shape: &Shape,
    rate: f64,
    payload: Bytes,
    measure_from: Instant,
    progress: &Progress,
) -> Tally {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let cap = if shape.in_flight > 1 {
        shape.in_flight
    } else {
        DEFAULT_MAX_OUTSTANDING
    };
    let outstanding = Arc::new(Semaphore::new(cap));
    let tally = Arc::new(Mutex::new(Tally::new()));
    let start = measure_from - shape.warmup;
    let mut measured = 0u64;
    for i in 0u64.. {
        let scheduled = start + interval.mul_f64(i as f64);
        let measuring = scheduled >= measure_from;
        if measuring {
            let over = match shape.stop {
                Stop::After(d) => scheduled >= measure_from + d,
                Stop::Count(n) => measured >= n,
            };
            if over {
                break;
            }
            measured += 1;
        }
        tokio::time::sleep_until(scheduled).await;
        // Waiting here when the cap is reached is fine: latency still counts from
        // `scheduled`, so the wait shows up in the figures.
        let Ok(permit) = outstanding.clone().acquire_owned().await else {
            break;
        };
        let caller = caller.clone();
        let payload = payload.clone();
        let tally = tally.clone();
        let done = progress.done.clone();
        tokio::spawn(async move {
            let outcome = call_with_timeout(&caller, payload).await;
            let answered = Instant::now();
            if measuring {
                lock(&tally).record(
                    &outcome,
                    answered.saturating_duration_since(scheduled),
                    answered,
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // Every permit back means every request was answered (or timed out).
    let _all = outstanding.acquire_many(cap as u32).await;
    let mut tally = lock(&tally);
    std::mem::replace(&mut *tally, Tally::new())
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// A progress bar on stderr, only when it is a terminal.
struct Progress {
    done: Arc<AtomicU64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(name: &'static str, shape: &Shape, show: bool) -> Progress {
        let done = Arc::new(AtomicU64::new(0));
        let ticker = show.then(|| {
            let bar = match shape.stop {
                Stop::Count(n) => indicatif::ProgressBar::new(n),
                Stop::After(_) => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>10} {spinner} {pos} requests {elapsed} {wide_bar}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(name);
            let done = done.clone();
            tokio::spawn(async move {
                loop {
                    bar.set_position(done.load(Ordering::Relaxed));
                    bar.tick();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Progress { done, ticker }
    }

    fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

/// Resolved parameters of `latency` / `throughput`.
fn shape_of(mode: &str, args: &LoadArgs) -> (Shape, usize, usize, usize) {
    let throughput = mode == "throughput";
    let in_flight = args.in_flight.unwrap_or(if throughput { 256 } else { 1 });
    let connections = args
        .connections
        .unwrap_or(if throughput { 4 } else { 1 })
        .max(1);
    let shards = args
        .common
        .shards
        .unwrap_or(if throughput { 2 } else { 1 })
        .max(1);
    let workers = args
        .workers
        .unwrap_or(if throughput { 2 } else { 1 })
        .max(1);
    let shape = Shape {
        rate: args.rate,
        in_flight,
        warmup: args.warmup,
        stop: args.count.map_or(Stop::After(args.duration), Stop::Count),
        payload: args.common.payload,
    };
    (shape, connections, shards, workers)
}

/// `bench latency` and `bench throughput`: every chosen system under the same load.
pub(crate) async fn measure_mode(
    mode: &'static str,
    args: &LoadArgs,
    notes: &mut Notes,
) -> anyhow::Result<Report> {
    let (shape, connections, shards, workers) = shape_of(mode, args);
    let common = &args.common;
    let mut params = Map::new();
    params.insert("payload".into(), json!(shape.payload));
    params.insert(
        "load".into(),
        json!(if shape.rate.is_some() {
            "open"
        } else {
            "closed"
        }),
    );
    params.insert("rate".into(), json!(shape.rate));
    params.insert("in_flight".into(), json!(shape.in_flight));
    params.insert("connections".into(), json!(connections));
    common.insert_broker_params(&mut params, shards);
    params.insert("workers".into(), json!(workers));
    params.insert("warmup_s".into(), json!(shape.warmup.as_secs_f64()));
    match shape.stop {
        Stop::After(d) => {
            params.insert("duration_s".into(), json!(d.as_secs_f64()));
            params.insert("count".into(), json!(null));
        }
        Stop::Count(n) => {
            params.insert("duration_s".into(), json!(null));
            params.insert("count".into(), json!(n));
        }
    }
    params.insert("broker".into(), json!(common.broker));
    params.insert("systems".into(), json!(common.systems));
    let rounds = match shape.stop {
        Stop::Count(n) => u64::from(args.rounds).min(n.max(1)),
        Stop::After(_) => u64::from(args.rounds),
    };
    params.insert("rounds".into(), json!(rounds));
    let mut report = Report::new(mode, params, common.out.clone());
    let mut order = common.systems.clone();
    order.dedup();
    // triggerfs first so that ratios read naturally in the table.
    order.sort_by_key(|s| *s as u8);

    // Everything is started first and stays up, so that the systems can take turns.
    let mut targets = Vec::new();
    for system in order {
        let started = match system {
            System::Triggerfs => {
                let setup = crate::triggerfs::Setup {
                    broker: common.broker.clone(),
                    shards,
                    spin: common.spin,
                    workers,
                    connections,
                    service: args.service.clone(),
                };
                crate::triggerfs::start(&setup).await.map(Target::Triggerfs)
            }
            System::Relay => crate::relay::start(connections, shards)
                .await
                .map(Target::Relay),
            System::Nats => match crate::nats::start(&common.nats, workers, connections).await {
                Ok(Some(nats)) => Ok(Target::Nats(nats)),
                Ok(None) => {
                    let line = format!("nats: skipped (no server on {})", common.nats);
                    report.skipped.push(line);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match started {
            Ok(target) => targets.push(target),
            Err(e) => {
                for target in targets {
                    target.stop().await;
                }
                return Err(e);
            }
        }
    }

    let mut results: Vec<Option<SystemResult>> = targets.iter().map(|_| None).collect();
    for round in 0..rounds {
        let slice = shape.slice(round, rounds);
        for (target, result) in targets.iter().zip(results.iter_mut()) {
            let measured = target.drive(&slice, notes).await;
            *result = Some(match result.take() {
                Some(so_far) => so_far.merge(measured),
                None => measured,
            });
        }
    }
    for target in targets {
        target.stop().await;
    }
    report.systems.extend(results.into_iter().flatten());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(stop: Stop) -> Shape {
        Shape {
            rate: None,
            in_flight: 1,
            warmup: Duration::from_secs(2),
            stop,
            payload: 64,
        }
    }

    /// The slices of a count add up to it exactly; a duration is shared evenly; only the
    /// first round warms up fully.
    #[test]
    fn rounds_share_the_measurement() {
        let whole = shape(Stop::Count(400));
        let counts: Vec<u64> = (0..3)
            .map(|round| match whole.slice(round, 3).stop {
                Stop::Count(n) => n,
                Stop::After(_) => panic!("a count stays a count"),
            })
            .collect();
        assert_eq!(counts, [134, 133, 133]);
        let timed = shape(Stop::After(Duration::from_secs(9)));
        for round in 0..3 {
            let slice = timed.slice(round, 3);
            assert!(matches!(slice.stop, Stop::After(d) if d == Duration::from_secs(3)));
            let warmup = if round == 0 { 2000 } else { 500 };
            assert_eq!(slice.warmup, Duration::from_millis(warmup));
        }
    }
}

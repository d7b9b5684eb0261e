//! The load generator: one process per system (`bench-child load`), all of the same shape —
//! a current-thread tokio runtime, the system's client on `--connections` connections, one
//! HDR histogram — so that they see the same load and none is slowed by another.
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
//! The load processes stay up between turns (connections stay warm): the bench sends each
//! one a [`Run`] line on its stdin and reads one [`Measured`] line back from its stdout.

use crate::proc::{command, Spawned, StdoutLines};
use crate::report::{latency_histogram, SystemResult};
use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A request that takes longer than this counts as an error: far beyond any latency this
/// benchmark is about, and short enough that a lost answer does not hang the run.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Open-loop cap on requests outstanding when `--in-flight` is not given: a system that falls
/// this far behind is already showing seconds of latency; the cap only bounds memory.
const DEFAULT_MAX_OUTSTANDING: usize = 10_000;

/// Sends one request and checks its answer; `Err` when it failed or came back wrong.
pub(crate) trait Caller: Clone + 'static {
    /// One request/reply round trip with this payload.
    fn call(&self, payload: Bytes) -> impl Future<Output = anyhow::Result<()>>;
}

/// When to stop measuring.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Stop {
    /// After this long.
    After(Duration),
    /// After this many requests were sent.
    Count(u64),
}

/// The load applied to every system.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    pub(crate) fn slice(&self, round: u64, rounds: u64) -> Shape {
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

/// The bench → load process line: measure one slice.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Run {
    pub shape: Shape,
    /// Draw a progress bar on stderr (the bench's stderr is a terminal).
    pub progress: bool,
}

/// The load process → bench line: what one slice measured.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Measured {
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// The latency histogram (ns): hdrhistogram's V2 serialization, base64.
    pub hist: String,
}

impl Measured {
    fn new(tally: Tally, elapsed: Duration) -> anyhow::Result<Measured> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&tally.hist, &mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot serialize the histogram: {e:?}"))?;
        Ok(Measured {
            sent: tally.sent,
            received: tally.received,
            errors: tally.errors,
            elapsed,
            hist: base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }

    fn into_result(self, name: &'static str) -> anyhow::Result<SystemResult> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.hist)
            .context("the histogram is not base64")?;
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| anyhow::anyhow!("cannot read the histogram: {e:?}"))?;
        // Back into the bounds every result shares, so that rounds and systems merge.
        let mut hist = latency_histogram();
        hist.add(&decoded)
            .map_err(|e| anyhow::anyhow!("histogram out of bounds: {e:?}"))?;
        Ok(SystemResult {
            name,
            hist,
            sent: self.sent,
            received: self.received,
            errors: self.errors,
            elapsed: self.elapsed,
            fanout: None,
            cpu: None,
        })
    }
}

/// A load process, seen from the bench: started once, then driven a slice at a time.
pub(crate) struct LoadProc {
    name: &'static str,
    proc: Spawned,
    stdin: ChildStdin,
    lines: StdoutLines,
}

impl LoadProc {
    /// Starts `exe bench-child load --name NAME args…` and waits until it is connected and
    /// the system answers.
    pub(crate) async fn start(
        exe: &Path,
        name: &'static str,
        args: Vec<String>,
    ) -> anyhow::Result<LoadProc> {
        let mut words = vec!["bench-child".to_string(), "load".into(), "--name".into()];
        words.push(name.into());
        words.extend(args);
        let (mut proc, _, lines) =
            Spawned::start_until(&format!("{name} load"), command(exe, words), "ready").await?;
        let stdin = proc.stdin()?;
        Ok(LoadProc {
            name,
            proc,
            stdin,
            lines,
        })
    }

    /// The load process's id (its CPU time is read from /proc).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Starts measuring one slice: the warm-up begins now.
    pub(crate) async fn start_run(&mut self, shape: &Shape, progress: bool) -> anyhow::Result<()> {
        let run = Run {
            shape: shape.clone(),
            progress,
        };
        let mut line = serde_json::to_string(&run)?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("the {} process is gone", self.proc.name))
    }

    /// Waits for the slice [`LoadProc::start_run`] started and returns what it measured.
    pub(crate) async fn finish_run(&mut self) -> anyhow::Result<SystemResult> {
        // No deadline: a slice lasts as long as the user asked.
        let Some(answer) = self.lines.next_line().await? else {
            bail!("the {} process ended during a run", self.proc.name);
        };
        let measured: Measured = serde_json::from_str(&answer)
            .with_context(|| format!("bad answer from the {} process", self.proc.name))?;
        measured.into_result(self.name)
    }
}

/// The load process's life: answer every [`Run`] line on stdin with a [`Measured`] line on
/// stdout, until stdin closes. The caller is connected and the system answers.
pub(crate) async fn serve_runs<C: Caller>(name: &str, caller: C) -> anyhow::Result<()> {
    println!("ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let run: Run = serde_json::from_str(&line).context("bad run line")?;
        let (tally, elapsed) = drive(name, caller.clone(), &run.shape, run.progress).await;
        println!(
            "{}",
            serde_json::to_string(&Measured::new(tally, elapsed)?)?
        );
    }
    Ok(())
}

/// Counters and the histogram of one measuring window.
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
}

/// The one tally of a measuring window, shared by the tasks of this (single) thread.
type Shared = Rc<RefCell<Tally>>;

async fn call_with_timeout<C: Caller>(caller: &C, payload: Bytes) -> anyhow::Result<()> {
    match tokio::time::timeout(REQUEST_TIMEOUT, caller.call(payload)).await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Applies `shape` to `caller` and returns what the measuring window saw, and its length.
/// Runs inside a `LocalSet` (the tasks share the tally without locks).
async fn drive<C: Caller>(
    name: &str,
    caller: C,
    shape: &Shape,
    progress: bool,
) -> (Tally, Duration) {
    let payload = Bytes::from(vec![b'x'; shape.payload]);
    let tally: Shared = Rc::new(RefCell::new(Tally::new()));
    let progress = Progress::start(name, shape, progress, tally.clone());
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    match shape.rate {
        Some(rate) => open_loop(caller, shape, rate, payload, measure_from, &tally).await,
        None => closed_loop(caller, shape, payload, measure_from, &tally).await,
    }
    progress.finish();
    let tally = std::mem::replace(&mut *tally.borrow_mut(), Tally::new());
    let elapsed = tally.last_answer.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(measure_from)
    });
    (tally, elapsed)
}

async fn closed_loop<C: Caller>(
    caller: C,
    shape: &Shape,
    payload: Bytes,
    measure_from: Instant,
    tally: &Shared,
) {
    // Count mode: each measured request first takes a ticket, so exactly `count` are sent.
    let tickets = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::with_capacity(shape.in_flight);
    for _ in 0..shape.in_flight.max(1) {
        let caller = caller.clone();
        let payload = payload.clone();
        let tickets = tickets.clone();
        let tally = tally.clone();
        let stop = shape.stop;
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                let sent_at = Instant::now();
                let measuring = sent_at >= measure_from;
                if measuring {
                    let over = match stop {
                        Stop::After(d) => sent_at >= measure_from + d,
                        Stop::Count(n) => {
                            let ticket = tickets.get();
                            tickets.set(ticket + 1);
                            ticket >= n
                        }
                    };
                    if over {
                        break;
                    }
                }
                let outcome = call_with_timeout(&caller, payload.clone()).await;
                let answered = Instant::now();
                if measuring {
                    tally
                        .borrow_mut()
                        .record(&outcome, answered - sent_at, answered);
                }
            }
        }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "load task failed");
        }
    }
}

async fn open_loop<C: Caller>(
    caller: C,
    shape: &Shape,
    rate: f64,
    payload: Bytes,
    measure_from: Instant,
    tally: &Shared,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let cap = if shape.in_flight > 1 {
        shape.in_flight
    } else {
        DEFAULT_MAX_OUTSTANDING
    };
    let outstanding = Arc::new(Semaphore::new(cap));
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
        tokio::task::spawn_local(async move {
            let outcome = call_with_timeout(&caller, payload).await;
            let answered = Instant::now();
            if measuring {
                tally.borrow_mut().record(
                    &outcome,
                    answered.saturating_duration_since(scheduled),
                    answered,
                );
            }
            drop(permit);
        });
    }
    // Every permit back means every request was answered (or timed out).
    let _all = outstanding.acquire_many(cap as u32).await;
}

/// A progress bar on stderr, only when the bench's stderr is a terminal.
struct Progress {
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(name: &str, shape: &Shape, show: bool, tally: Shared) -> Progress {
        let ticker = show.then(|| {
            let bar = match shape.stop {
                Stop::Count(n) => indicatif::ProgressBar::new(n),
                Stop::After(_) => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>18} {spinner} {pos} requests {elapsed} {wide_bar}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(name.to_string());
            tokio::task::spawn_local(async move {
                loop {
                    bar.set_position(tally.borrow().sent);
                    bar.tick();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Progress { ticker }
    }

    fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
            eprint!("\r\x1b[2K");
        }
    }
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

    /// Echoes after a short sleep; fails every `fail_every`-th call.
    #[derive(Clone)]
    struct Fake {
        calls: Rc<Cell<u64>>,
        fail_every: u64,
    }

    impl Caller for Fake {
        async fn call(&self, _payload: Bytes) -> anyhow::Result<()> {
            let n = self.calls.get() + 1;
            self.calls.set(n);
            tokio::time::sleep(Duration::from_micros(50)).await;
            if n.is_multiple_of(self.fail_every) {
                bail!("failed on purpose");
            }
            Ok(())
        }
    }

    fn run_local<F: Future>(f: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, f)
    }

    /// A count is sent exactly, by however many tasks; failures are counted, not recorded.
    #[test]
    fn closed_loop_sends_the_count_exactly() {
        let fake = Fake {
            calls: Rc::default(),
            fail_every: 10,
        };
        let mut shape = shape(Stop::Count(200));
        shape.in_flight = 8;
        shape.warmup = Duration::ZERO;
        let (tally, elapsed) = run_local(drive("fake", fake.clone(), &shape, false));
        assert_eq!(tally.sent, 200);
        assert_eq!(tally.errors, 20);
        assert_eq!(tally.received, 180);
        assert_eq!(tally.hist.len(), 180);
        assert_eq!(fake.calls.get(), 200);
        assert!(elapsed > Duration::ZERO);
    }

    /// What a load process reports arrives whole: counts, window and histogram.
    #[test]
    fn measured_crosses_the_pipe_whole() {
        let mut tally = Tally::new();
        let now = Instant::now();
        for micros in [10, 20, 30, 40_000] {
            tally.record(&Ok(()), Duration::from_micros(micros), now);
        }
        tally.record(&Err(anyhow::anyhow!("lost")), Duration::ZERO, now);
        let p99 = tally.hist.value_at_quantile(0.99);
        let line =
            serde_json::to_string(&Measured::new(tally, Duration::from_secs(2)).unwrap()).unwrap();
        assert!(!line.contains('\n'));
        let result = serde_json::from_str::<Measured>(&line)
            .unwrap()
            .into_result("relay")
            .unwrap();
        assert_eq!((result.sent, result.received, result.errors), (5, 4, 1));
        assert_eq!(result.elapsed, Duration::from_secs(2));
        assert_eq!(result.hist.len(), 4);
        assert_eq!(result.hist.value_at_quantile(0.99), p99);
    }
}

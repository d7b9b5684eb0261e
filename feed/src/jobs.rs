//! Job history, off the request path: shards hand finished requests' traces to
//! [`JobQueue::push`], which never waits and wakes no one; the `job-history` thread
//! ([`spawn_delivery`], scheduled `SCHED_IDLE`) drains the queue every [`DRAIN_EVERY`], turns
//! the traces into records and posts them in batches to `POST /api/v1/broker/jobs`. None of
//! that runs on a shard, nor takes a core a shard wants: a fan-out to a thousand workers
//! followed by the next one would otherwise share its cores with the record of the last
//! (measured: +23 % to the next fan-out's time when each push woke the feed thread and the
//! shard made the record). Under a load that leaves no core idle for long, records wait in
//! the queue, and past its bounds are dropped and counted: requests come first.
//!
//! - The queue is bounded by [`QUEUE_RECORDS`] records and [`QUEUE_BYTES`] bytes; a record that
//!   does not fit is dropped and counted (`triggerfs_broker_jobs_lost_total{reason="queue_full"}`),
//!   and the `job-history` thread logs how many at its next drain (not the shard).
//! - A batch is at most [`BATCH_RECORDS`] records and about [`POST_BYTES`] of JSON (the
//!   control plane takes up to 16 MiB on this route, JSON escaping included); a record larger
//!   than that (many workers with long output) goes in parts, each with some of its workers
//!   and the same key, which the control plane merges.
//! - A failed delivery is tried [`ATTEMPTS`] times in all, with a doubling pause from
//!   [`FIRST_RETRY`]; then its records are counted lost
//!   (`triggerfs_broker_jobs_lost_total{reason="undelivered"}`) and logged. A refusal (4xx
//!   other than 408/429) is not retried. The next batch starts afresh, so records flow again
//!   as soon as the control plane is back.

use dataplane::jobs::JobTrace;
use dataplane::metrics::{JOBS_DELIVERED, JOBS_LOST};
use proto::job::{JobBatch, JobRecord, TriggerMinute, MAX_JOB_WORKERS};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Records queued at most.
pub const QUEUE_RECORDS: usize = 4096;
/// Bytes of records queued at most.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Records per delivery at most.
pub const BATCH_RECORDS: usize = 256;
/// Bytes of records per delivery, about (JSON escaping may add some).
pub const POST_BYTES: usize = 2 * 1024 * 1024;
/// Attempts per delivery.
pub const ATTEMPTS: u32 = 4;
/// Pause before the first retry; doubled for each next one.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How often the queue is drained: a record reaches the control plane this long after its
/// request ended, plus the post.
pub const DRAIN_EVERY: Duration = Duration::from_millis(200);

/// What shards queue: a finished request's trace, or a shard's trigger counts
/// (`dataplane::triggers`).
#[derive(Debug)]
enum Queued {
    Trace(Box<JobTrace>),
    Minutes(usize, Vec<TriggerMinute>),
}

/// Where shards put records; see the module docs.
#[derive(Debug)]
pub struct JobQueue {
    tx: mpsc::Sender<(Queued, usize)>,
    bytes: Arc<AtomicUsize>,
    /// Records dropped because the queue was full, for the drain to log.
    dropped: Arc<AtomicU64>,
}

/// The receiving end, for [`deliver_loop`]; it gives each record its key (this boot and a
/// sequence number).
pub struct JobDrain {
    rx: mpsc::Receiver<(Queued, usize)>,
    bytes: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    /// `dropped` as last logged.
    logged: u64,
    boot: u64,
    seq: u64,
}

impl JobDrain {
    /// Moves what is queued (up to [`BATCH_RECORDS`] records) into `records` and `minutes`,
    /// each with its key or source; `true` when the queue is closed.
    fn take(&mut self, records: &mut Vec<JobRecord>, minutes: &mut Vec<TriggerMinute>) -> bool {
        let mut weight = 0;
        let mut closed = false;
        while records.len() < BATCH_RECORDS {
            match self.rx.try_recv() {
                Ok((Queued::Trace(trace), w)) => {
                    weight += w;
                    let mut record = trace.finish();
                    record.key = format!("{:016x}-{}", self.boot, self.seq);
                    self.seq += 1;
                    records.push(record);
                }
                Ok((Queued::Minutes(shard, counted), w)) => {
                    weight += w;
                    let source = format!("{:016x}-{shard}", self.boot);
                    minutes.extend(counted.into_iter().map(|m| TriggerMinute {
                        source: source.clone(),
                        ..m
                    }));
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        self.bytes.fetch_sub(weight, Ordering::Relaxed);
        closed
    }

    /// Records dropped at a full queue since the last call, if any.
    fn newly_dropped(&mut self) -> Option<u64> {
        let now = self.dropped.load(Ordering::Relaxed);
        let new = now - self.logged;
        self.logged = now;
        (new > 0).then_some(new)
    }
}

/// A queue and its drain.
pub fn queue() -> (JobQueue, JobDrain) {
    let (tx, rx) = mpsc::channel(QUEUE_RECORDS);
    let bytes = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    (
        JobQueue {
            tx,
            bytes: bytes.clone(),
            dropped: dropped.clone(),
        },
        JobDrain {
            rx,
            bytes,
            dropped,
            logged: 0,
            boot,
            seq: 0,
        },
    )
}

impl JobQueue {
    /// Queues `trace`, or drops and counts it when the queue is full. Wakes no one: the
    /// drain looks every [`DRAIN_EVERY`] (it never waits on the queue, so no waker is set).
    pub fn push(&self, trace: Box<JobTrace>) {
        let weight = trace.weight();
        self.queue(Queued::Trace(trace), weight);
    }

    /// Queues shard `shard`'s trigger counts, as [`JobQueue::push`] does a trace.
    pub fn push_minutes(&self, shard: usize, minutes: Vec<TriggerMinute>) {
        let weight = minutes
            .iter()
            .map(|m| 128 + m.team.len() + m.identity.len() + m.service.len() + m.trigger.len())
            .sum();
        self.queue(Queued::Minutes(shard, minutes), weight);
    }

    fn queue(&self, item: Queued, weight: usize) {
        if self.bytes.fetch_add(weight, Ordering::Relaxed) + weight > QUEUE_BYTES {
            self.bytes.fetch_sub(weight, Ordering::Relaxed);
            return self.drop_one();
        }
        if self.tx.try_send((item, weight)).is_err() {
            self.bytes.fetch_sub(weight, Ordering::Relaxed);
            self.drop_one();
        }
    }

    fn drop_one(&self) {
        JOBS_LOST.with_label_values(&["queue_full"]).inc();
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a delivery went.
pub enum Delivery {
    /// Stored.
    Done,
    /// Worth another try (no answer, 5xx, 408, 429).
    Retry(String),
    /// Refused for good.
    Refused(String),
}

/// `batch` as JSON, zstd-compressed (level 1, with its size in the frame, which the control
/// plane checks against its limit before decompressing).
pub fn compressed_json(batch: &JobBatch) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(batch).map_err(|e| format!("job batch as JSON: {e}"))?;
    zstd::bulk::compress(&json, 1).map_err(|e| format!("job batch compression: {e}"))
}

/// Splits `records` into posts of at most [`BATCH_RECORDS`] records and about
/// [`POST_BYTES`] bytes; a record over the byte bound is split by its workers (each part has
/// the record's key, so the control plane merges them). Trigger counts go with the first
/// post, or in posts of their own when there are more than [`BATCH_RECORDS`].
pub fn posts(records: Vec<JobRecord>, minutes: Vec<TriggerMinute>) -> Vec<JobBatch> {
    let mut out: Vec<JobBatch> = Vec::new();
    let mut current = JobBatch::default();
    let mut size = 0;
    let flush = |current: &mut JobBatch, size: &mut usize, out: &mut Vec<JobBatch>| {
        if !current.jobs.is_empty() {
            out.push(std::mem::take(current));
        }
        *size = 0;
    };
    for record in records {
        for part in split(record) {
            let w = part.weight();
            if !current.jobs.is_empty()
                && (size + w > POST_BYTES || current.jobs.len() >= BATCH_RECORDS)
            {
                flush(&mut current, &mut size, &mut out);
            }
            size += w;
            current.jobs.push(part);
        }
    }
    flush(&mut current, &mut size, &mut out);
    match out.first_mut() {
        Some(first) if minutes.len() <= BATCH_RECORDS => first.triggers = minutes,
        _ => out.extend(minutes.chunks(BATCH_RECORDS).map(|chunk| JobBatch {
            jobs: Vec::new(),
            triggers: chunk.to_vec(),
        })),
    }
    out
}

/// `record`, or parts of it of at most about [`POST_BYTES`] each.
fn split(mut record: JobRecord) -> Vec<JobRecord> {
    if (record.weight() <= POST_BYTES && record.workers.len() <= MAX_JOB_WORKERS)
        || record.workers.len() <= 1
    {
        return vec![record];
    }
    let workers = std::mem::take(&mut record.workers);
    let base = record.weight();
    let mut parts = Vec::new();
    let mut part = record.clone();
    let mut size = base;
    for w in workers {
        let ww = w.worker.len() + w.output.len() + 64;
        if !part.workers.is_empty()
            && (size + ww > POST_BYTES || part.workers.len() >= MAX_JOB_WORKERS)
        {
            parts.push(std::mem::replace(&mut part, record.clone()));
            size = base;
        }
        size += ww;
        part.workers.push(w);
    }
    parts.push(part);
    parts
}

/// Runs [`deliver_loop`] on a thread of its own (`job-history`), scheduled `SCHED_IDLE`:
/// turning a thousand-worker trace into JSON and posting it is a millisecond of CPU that
/// must not take a core from a shard in the middle of the next request.
pub fn spawn_delivery<F, Fut>(drain: JobDrain, post: F) -> std::io::Result<()>
where
    F: Fn(JobBatch) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Delivery>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("job-history".into())
        .spawn(move || {
            if let Err(e) = idle_priority() {
                warn!(error = %e, "job history: cannot lower the thread's priority");
            }
            runtime.block_on(deliver_loop(drain, post));
        })?;
    Ok(())
}

/// Schedules the calling thread `SCHED_IDLE` (Linux: per thread): it runs only on a core no
/// other thread wants.
fn idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a syscall on the calling thread (0) with a parameter that outlives it.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drains the queue into `post` until the queue is closed; see the module docs.
pub async fn deliver_loop<F, Fut>(mut drain: JobDrain, post: F)
where
    F: Fn(JobBatch) -> Fut,
    Fut: std::future::Future<Output = Delivery>,
{
    let (mut records, mut minutes) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    loop {
        if records.is_empty() && minutes.is_empty() {
            if closed {
                return;
            }
            tick.tick().await;
        }
        closed |= drain.take(&mut records, &mut minutes);
        if let Some(n) = drain.newly_dropped() {
            warn!(
                records = n,
                "job history records lost: the queue was full (requests come first)"
            );
        }
        if records.is_empty() && minutes.is_empty() {
            continue;
        }
        for batch in posts(std::mem::take(&mut records), std::mem::take(&mut minutes)) {
            let n = (batch.jobs.len() + batch.triggers.len()) as u64;
            let mut pause = FIRST_RETRY;
            let mut attempt = 1;
            loop {
                match post(batch.clone()).await {
                    Delivery::Done => {
                        JOBS_DELIVERED.inc_by(n);
                        break;
                    }
                    Delivery::Retry(e) if attempt < ATTEMPTS => {
                        tracing::debug!(error = %e, attempt, "job history delivery failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                        attempt += 1;
                    }
                    Delivery::Retry(e) | Delivery::Refused(e) => {
                        JOBS_LOST.with_label_values(&["undelivered"]).inc_by(n);
                        warn!(error = %e, records = n, attempts = attempt, "job history records lost");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::job::{JobOutcome, JobWorker};
    use std::sync::Mutex;

    fn record(workers: usize, output: usize) -> JobRecord {
        JobRecord {
            key: String::new(),
            team: "t".into(),
            identity: "u".into(),
            service: "s".into(),
            algorithm: proto::Algorithm::Mirror,
            plugin: "p".into(),
            command: vec![],
            args: vec![],
            started_unix_ms: 1,
            readers: Default::default(),
            tag: None,
            trigger: None,
            duration_ms: 1,
            workers: (0..workers)
                .map(|i| JobWorker {
                    worker: format!("w{i}"),
                    outcome: JobOutcome::Ok,
                    exit_code: Some(0),
                    duration_ms: 1,
                    output: "x".repeat(output),
                    truncated: false,
                })
                .collect(),
        }
    }

    fn trace(workers: usize, output: usize) -> Box<JobTrace> {
        let mut t = JobTrace::new(
            "t",
            "u",
            "s",
            proto::Algorithm::Mirror,
            "p",
            &[],
            &[],
            std::time::Instant::now(),
        );
        for i in 0..workers {
            let w: std::sync::Arc<str> = format!("w{i}").into();
            t.on_relay(
                &w,
                &proto::Event::Output {
                    seq: 0,
                    stream: proto::Stream::Stdout,
                    data: vec![b'x'; output],
                },
            );
            t.on_relay(&w, &proto::Event::Done { exit_code: 0 });
        }
        t.end(std::time::Instant::now());
        Box::new(t)
    }

    #[test]
    fn large_records_go_in_parts_with_one_key() {
        let mut r = record(100, 64 * 1024);
        r.key = "k".into();
        let batches = posts(vec![r, record(1, 10)], Vec::new());
        let parts: Vec<&JobRecord> = batches.iter().flat_map(|b| &b.jobs).collect();
        let workers: usize = parts
            .iter()
            .filter(|p| p.key == "k")
            .map(|p| p.workers.len())
            .sum();
        assert_eq!(workers, 100);
        assert!(batches.len() >= 3);
        for b in &batches {
            let w: usize = b.jobs.iter().map(JobRecord::weight).sum();
            assert!(w <= POST_BYTES + 1024, "{w}");
        }
    }

    /// A batch goes out as one zstd frame that states its size (the control plane refuses
    /// one that does not), and comes back whole.
    #[test]
    fn batches_are_sent_as_sized_zstd_frames() {
        let batch = JobBatch {
            jobs: vec![record(1000, 60)],
            triggers: Vec::new(),
        };
        let packed = compressed_json(&batch).unwrap();
        let json = serde_json::to_vec(&batch).unwrap();
        assert!(
            packed.len() * 20 < json.len(),
            "{} of {}",
            packed.len(),
            json.len()
        );
        let size = zstd::zstd_safe::get_frame_content_size(&packed).unwrap();
        assert_eq!(size, Some(json.len() as u64));
        let back: JobBatch =
            serde_json::from_slice(&zstd::bulk::decompress(&packed, json.len()).unwrap()).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (q, mut drain) = queue();
        let before = JOBS_LOST.with_label_values(&["queue_full"]).get();
        for _ in 0..QUEUE_RECORDS + 10 {
            q.push(trace(1, 1));
        }
        let after = JOBS_LOST.with_label_values(&["queue_full"]).get();
        assert!(after - before >= 10);
        // The drain logs them once.
        assert_eq!(drain.newly_dropped(), Some(10));
        assert_eq!(drain.newly_dropped(), None);
    }

    #[tokio::test]
    async fn failed_deliveries_are_retried_then_counted_lost() {
        let (q, drain) = queue();
        let calls = Arc::new(Mutex::new(0));
        let lost = JOBS_LOST.with_label_values(&["undelivered"]).get();
        q.push(trace(1, 1));
        drop(q);
        let c = calls.clone();
        deliver_loop(drain, move |_| {
            *c.lock().unwrap() += 1;
            async { Delivery::Retry("down".into()) }
        })
        .await;
        assert_eq!(*calls.lock().unwrap(), ATTEMPTS);
        assert!(JOBS_LOST.with_label_values(&["undelivered"]).get() > lost);
    }

    #[test]
    fn delivery_runs_on_an_idle_priority_thread() {
        let (q, drain) = queue();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_delivery(drain, move |_| {
            // SAFETY: a query of the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let name = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            let _ = tx.send((name.trim().to_string(), policy));
            async { Delivery::Done }
        })
        .unwrap();
        q.push(trace(1, 1));
        let (name, policy) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((name.as_str(), policy), ("job-history", libc::SCHED_IDLE));
    }

    #[tokio::test]
    async fn traces_become_keyed_records_at_the_next_drain() {
        let (q, drain) = queue();
        let posted = Arc::new(Mutex::new(Vec::<JobRecord>::new()));
        let p = posted.clone();
        let task = tokio::spawn(deliver_loop(drain, move |batch| {
            p.lock().unwrap().extend(batch.jobs);
            async { Delivery::Done }
        }));
        tokio::time::sleep(DRAIN_EVERY / 2).await;
        q.push(trace(3, 5));
        q.push(trace(1, 5));
        let waited = std::time::Instant::now();
        while posted.lock().unwrap().len() < 2 && waited.elapsed() < 10 * DRAIN_EVERY {
            tokio::time::sleep(DRAIN_EVERY / 10).await;
        }
        {
            let posted = posted.lock().unwrap();
            assert_eq!(posted.len(), 2);
            assert_eq!(posted[0].workers.len(), 3);
            assert_eq!(posted[0].workers[0].output, "xxxxx\n");
            assert_ne!(posted[0].key, posted[1].key);
        }
        drop(q);
        tokio::time::timeout(DRAIN_EVERY * 2, task)
            .await
            .expect("the loop ends once the queue is closed and drained")
            .unwrap();
    }
}

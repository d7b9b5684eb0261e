//! The job history's preparer: a thread of its own (`job-store`), scheduled `SCHED_IDLE`. The
//! broker's route ([`crate::routes::jobs::ingest`]) hands it each batch as the broker sent it
//! and waits: the parse, the checks and each job's workers (the broker's JSON of them,
//! zstd-compressed) are made here, and the route then runs the short transaction itself, at its own priority (an idle-priority thread
//! must never hold the database's write lock).
//!
//! Why: preparing a fan-out to 1,000 workers is about a millisecond of CPU, and a control
//! plane often shares its machine with a broker (`triggerfs up`): at the same priority, that
//! millisecond is taken from the shards in the middle of the next request. Scheduled idle, it
//! runs when a core would otherwise idle. The broker's side of the same work (`feed::jobs`)
//! runs the same way. Under a load that leaves no core idle, batches wait here; the broker's
//! post times out and is tried again, and past its bounds its records are counted lost.

use crate::error::ApiError;
use axum::body::Bytes;
use proto::job::{redact_arg, JobBatch, JobOutcome, JobRecord, JobStatus, TriggerMinute};
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// Batches waiting for the thread at most; a broker's feed posts one at a time.
const QUEUE: usize = 64;

struct Work {
    body: Bytes,
    /// The body is zstd-compressed (`Content-Encoding: zstd`).
    zstd: bool,
    limit: usize,
    done: oneshot::Sender<Result<PreparedBatch, ApiError>>,
}

/// The handle request handlers use.
pub(crate) struct JobStore {
    tx: mpsc::Sender<Work>,
}

impl JobStore {
    /// Starts the thread; it ends when the handle is dropped.
    pub(crate) fn start() -> std::io::Result<JobStore> {
        let (tx, mut rx) = mpsc::channel::<Work>(QUEUE);
        std::thread::Builder::new()
            .name("job-store".into())
            .spawn(move || {
                if let Err(e) = idle_priority() {
                    tracing::warn!(error = %e, "job store: cannot lower the thread's priority");
                }
                while let Some(work) = rx.blocking_recv() {
                    let prepared = match work.zstd {
                        false => prepare(&work.body, work.limit),
                        true => decompress(&work.body, work.limit)
                            .and_then(|body| prepare(&body, work.limit)),
                    };
                    let _ = work.done.send(prepared);
                }
            })?;
        Ok(JobStore { tx })
    }

    /// Parses, checks and prepares one batch, decompressing it first when `zstd` (`limit`:
    /// the route's body limit, which the batch is held to either way).
    pub(crate) async fn prepare(
        &self,
        body: Bytes,
        zstd: bool,
        limit: usize,
    ) -> Result<PreparedBatch, ApiError> {
        let (done, answer) = oneshot::channel();
        let gone = || ApiError::Internal("the job-store thread has stopped".into());
        self.tx
            .send(Work {
                body,
                zstd,
                limit,
                done,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// A zstd-compressed body, decompressed: one frame that states its size, at most `limit`
/// bytes (checked before anything is allocated for it).
fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let malformed = |why: String| ApiError::BadRequest(format!("the zstd body {why}"));
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(malformed("does not state its size".into())),
        Err(_) => return Err(malformed("is not a zstd frame".into())),
    };
    if size > limit as u64 {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let text = zstd::bulk::decompress(body, size as usize)
        .map_err(|e| malformed(format!("cannot be decompressed: {e}")))?;
    if text.len() as u64 != size {
        return Err(malformed("is shorter than it states".into()));
    }
    Ok(text)
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

/// A batch made ready to store: its records, and its triggers' counts (checked).
pub(crate) struct PreparedBatch {
    pub jobs: Vec<Prepared>,
    pub minutes: Vec<TriggerMinute>,
}

/// A record made ready to store: everything but the transaction.
pub(crate) struct Prepared {
    /// The record; its workers are in `workers`.
    pub record: JobRecord<()>,
    /// The command words, as a JSON array.
    pub command: String,
    /// The arguments (secret-looking values redacted), as a JSON array of pairs.
    pub args: String,
    /// The workers, each named once, as a JSON array of [`proto::job::JobWorker`] (the
    /// broker's own text of each, checked but not rewritten), [`pack`]ed.
    pub workers: Vec<u8>,
    pub tally: Tally,
}

/// zstd level for the workers' JSON: the fastest; the JSON of a fan-out is repetitive
/// enough that it still shrinks it by an order of magnitude or more.
const ZSTD_LEVEL: i32 = 1;

/// A job's workers' JSON as stored (`jobs.workers_zstd`, migration 0008).
pub(crate) fn pack(json: &str) -> Vec<u8> {
    // Compressing a byte slice into memory fails only when memory does.
    zstd::bulk::compress(json.as_bytes(), ZSTD_LEVEL).unwrap_or_default()
}

/// A job's workers' JSON from its row: `workers_zstd` unpacked, or for a row stored before
/// migration 0008 (NULL there), its `workers` text. `None`: a blob that does not unpack
/// (nothing the control plane wrote).
pub(crate) fn unpack(text: String, packed: Option<Vec<u8>>) -> Option<String> {
    let Some(packed) = packed else {
        return Some(text);
    };
    String::from_utf8(zstd::stream::decode_all(&packed[..]).ok()?).ok()
}

/// What a job's row says of its workers.
pub(crate) struct Tally {
    pub status: JobStatus,
    pub workers: i64,
    pub ok: i64,
}

impl Tally {
    fn of(outcomes: &[JobOutcome]) -> Tally {
        Tally {
            status: JobStatus::of(outcomes.iter().copied()),
            workers: outcomes.len() as i64,
            ok: outcomes.iter().filter(|o| **o == JobOutcome::Ok).count() as i64,
        }
    }
}

/// A batch (`proto::job::JobBatch`) as the broker sent it, each worker left as its JSON
/// text: parsed once for the checks below, then stored as it came. Turning a thousand
/// workers into owned strings, checking them and writing them out again cost most of the
/// control plane's share of recording a fan-out (measured: 1.2 ms of 2.5 ms per
/// 1,000-worker job).
#[derive(Deserialize)]
struct BatchIn<'a> {
    #[serde(borrow)]
    jobs: Vec<JobRecord<&'a RawValue>>,
    #[serde(default)]
    triggers: Vec<TriggerMinute>,
}

/// What the checks need of one worker; every field of [`proto::job::JobWorker`] is typed
/// here as there, so that what is stored always reads back as one.
#[derive(Deserialize)]
struct WorkerIn<'a> {
    #[serde(borrow)]
    worker: Cow<'a, str>,
    outcome: JobOutcome,
    #[serde(default, rename = "exit_code")]
    _exit_code: Option<i32>,
    #[serde(rename = "duration_ms")]
    _duration_ms: u64,
    /// Its length in characters (the text itself is not copied).
    #[serde(default, rename = "output", deserialize_with = "text_chars")]
    output_chars: usize,
    #[serde(default, rename = "truncated")]
    _truncated: bool,
}

/// A JSON string's length against [`proto::job::JOB_OUTPUT_TAIL`] ([`chars_within`]),
/// without keeping it.
fn text_chars<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    struct Chars;
    impl Visitor<'_> for Chars {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<usize, E> {
            Ok(chars_within(v, proto::job::JOB_OUTPUT_TAIL))
        }
    }
    d.deserialize_str(Chars)
}

/// `text`'s length to hold against a bound of `max` characters: its characters, counted
/// only when its bytes are more than `max` (else its bytes, which are never fewer and so
/// decide alike).
fn chars_within(text: &str, max: usize) -> usize {
    match text.len() > max {
        true => text.chars().count(),
        false => text.len(),
    }
}

/// Parses and checks a batch (`POST /api/v1/broker/jobs`'s body) and makes its records ready
/// to store; `limit` is what a `PayloadTooLarge` says. A malformed body is refused with the
/// path of what is wrong in it (`jobs[0].workers[3].outcome: ...`), a batch over a stated
/// bound with 422.
pub(crate) fn prepare(body: &[u8], limit: usize) -> Result<PreparedBatch, ApiError> {
    crate::json::check_text(body)?;
    // The fast parse says only what went wrong; the typed one (with its path) is run only to
    // word the refusal.
    let refused = |e: serde_json::Error| match crate::json::parse_json::<JobBatch>(body, limit) {
        Err(precise) => precise,
        Ok(_) => ApiError::BadRequest(format!("the job batch is malformed: {e}")),
    };
    let batch: BatchIn = serde_json::from_slice(body).map_err(refused)?;
    let mut workers = Vec::with_capacity(batch.jobs.len());
    for record in &batch.jobs {
        let parsed = record
            .workers
            .iter()
            .map(|w| serde_json::from_str::<WorkerIn>(w.get()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(refused)?;
        workers.push(parsed);
    }
    check(&batch, &workers)?;
    let jobs = batch
        .jobs
        .into_iter()
        .zip(workers)
        .map(|(record, parsed)| {
            let (record, sent) = record.with_workers(Vec::new());
            let (workers, tally) = distinct_json([], sent.into_iter().zip(parsed));
            let args: Vec<(String, String)> = record
                .args
                .iter()
                .map(|(k, v)| (k.clone(), redact_arg(k, v, &mut Vec::new())))
                .collect();
            Prepared {
                workers: pack(&workers),
                command: serde_json::to_string(&record.command).unwrap_or_else(|_| "[]".into()),
                args: serde_json::to_string(&args).unwrap_or_else(|_| "[]".into()),
                tally,
                record,
            }
        })
        .collect();
    Ok(PreparedBatch {
        jobs,
        minutes: batch.triggers,
    })
}

/// The JSON array of `known` then `added` workers (each a JSON array of
/// [`proto::job::JobWorker`]), a worker named in both kept the first time, and its tally;
/// `None` when `added` names no one new. For a record that came in parts; an error when
/// either is not such an array.
pub(crate) fn merge(
    known: &str,
    added: &str,
) -> Result<Option<(String, Tally)>, serde_json::Error> {
    fn items(text: &str) -> Result<Vec<(&RawValue, WorkerIn<'_>)>, serde_json::Error> {
        serde_json::from_str::<Vec<&RawValue>>(text)?
            .into_iter()
            .map(|raw| Ok((raw, serde_json::from_str::<WorkerIn>(raw.get())?)))
            .collect()
    }
    let (known, added) = (items(known)?, items(added)?);
    let before = known.len();
    let (json, tally) = distinct_json(known, added);
    Ok((tally.workers as usize > before).then_some((json, tally)))
}

/// The JSON array of `first` then `then`, each worker once (the first time it is named),
/// and the tally of those.
fn distinct_json<'a>(
    first: impl IntoIterator<Item = (&'a RawValue, WorkerIn<'a>)>,
    then: impl IntoIterator<Item = (&'a RawValue, WorkerIn<'a>)>,
) -> (String, Tally) {
    let mut seen: HashSet<Cow<'a, str>> = HashSet::new();
    let mut outcomes = Vec::new();
    let mut json = String::from("[");
    for (raw, w) in first.into_iter().chain(then) {
        if seen.insert(w.worker) {
            if !outcomes.is_empty() {
                json.push(',');
            }
            json.push_str(raw.get());
            outcomes.push(w.outcome);
        }
    }
    json.push(']');
    (json, Tally::of(&outcomes))
}

/// Refuses a batch over the bounds the document states.
fn check(batch: &BatchIn, workers: &[Vec<WorkerIn>]) -> Result<(), ApiError> {
    use proto::job::{JOB_OUTPUT_TAIL, MAX_JOB_BATCH, MAX_JOB_ITEMS, MAX_JOB_NAME, MAX_JOB_TEXT};
    let over = |what: &str, n: usize, max: usize| match n > max {
        true => Err(ApiError::Unprocessable(format!(
            "{what}: {n}, at most {max}"
        ))),
        false => Ok(()),
    };
    over("records", batch.jobs.len(), MAX_JOB_BATCH)?;
    over("trigger counts", batch.triggers.len(), MAX_JOB_BATCH)?;
    for m in &batch.triggers {
        for (what, t) in [
            ("source", &m.source),
            ("team", &m.team),
            ("identity", &m.identity),
            ("service", &m.service),
            ("trigger", &m.trigger),
        ] {
            over(what, chars_within(t, MAX_JOB_NAME), MAX_JOB_NAME)?;
        }
    }
    for (j, parsed) in batch.jobs.iter().zip(workers) {
        for (what, t) in [
            ("key", j.key.as_str()),
            ("team", &j.team),
            ("identity", &j.identity),
            ("service", &j.service),
            ("plugin", &j.plugin),
            ("trigger", j.trigger.as_deref().unwrap_or("")),
        ] {
            over(what, chars_within(t, MAX_JOB_NAME), MAX_JOB_NAME)?;
        }
        if let Some(tag) = &j.tag {
            over("tag", chars_within(tag, MAX_JOB_NAME), MAX_JOB_NAME)?;
        }
        over("command words", j.command.len(), MAX_JOB_ITEMS)?;
        over("arguments", j.args.len(), MAX_JOB_ITEMS)?;
        over("workers", parsed.len(), proto::job::MAX_JOB_WORKERS)?;
        for c in &j.command {
            over(
                "a command word",
                chars_within(c, MAX_JOB_TEXT),
                MAX_JOB_TEXT,
            )?;
        }
        for (k, v) in &j.args {
            let n = chars_within(k, MAX_JOB_TEXT).max(chars_within(v, MAX_JOB_TEXT));
            over("an argument", n, MAX_JOB_TEXT)?;
        }
        for w in parsed {
            over(
                "worker",
                chars_within(&w.worker, MAX_JOB_NAME),
                MAX_JOB_NAME,
            )?;
            over("output", w.output_chars, JOB_OUTPUT_TAIL)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(workers: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"jobs": [{
            "key": "k", "team": "t", "identity": "u", "service": "s", "algorithm": "mirror",
            "plugin": "p", "started_unix_ms": 1, "duration_ms": 2, "workers": workers}]}))
        .unwrap()
    }

    fn worker(name: &str, outcome: &str) -> serde_json::Value {
        json!({"worker": name, "outcome": outcome, "exit_code": 0, "duration_ms": 3,
               "output": "line\n\"quoted\" é\n", "truncated": false})
    }

    fn message(e: ApiError) -> String {
        match e {
            ApiError::BadRequest(m) => format!("400 {m}"),
            ApiError::Unprocessable(m) => format!("422 {m}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn workers_are_stored_as_sent_each_once() {
        let sent = json!([
            worker("a", "ok"),
            worker("b", "failed"),
            worker("a", "failed")
        ]);
        let p = prepare(&body(sent.clone()), 1).unwrap().jobs.remove(0);
        let json = unpack(String::new(), Some(p.workers)).unwrap();
        let stored: Vec<proto::job::JobWorker> = serde_json::from_str(&json).unwrap();
        let want: Vec<proto::job::JobWorker> =
            serde_json::from_value(json!([sent[0], sent[1]])).unwrap();
        assert_eq!(stored, want);
        assert_eq!((p.tally.workers, p.tally.ok), (2, 1));
        assert_eq!(p.tally.status, JobStatus::Failed);
        // A second part: only the new names are added.
        let more = serde_json::to_string(&json!([worker("b", "ok"), worker("c", "ok")])).unwrap();
        let (all, tally) = merge(&json, &more).unwrap().unwrap();
        let names: Vec<String> = serde_json::from_str::<Vec<proto::job::JobWorker>>(&all)
            .unwrap()
            .into_iter()
            .map(|w| w.worker)
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!((tally.workers, tally.ok), (3, 2));
        assert!(merge(&all, &more).unwrap().is_none());
        assert!(merge("[{", &more).is_err());
        // Rows stored before migration 0008 have the text only; a blob that is not zstd
        // does not read.
        assert_eq!(unpack(all.clone(), None), Some(all.clone()));
        assert_eq!(unpack(all, Some(b"not zstd".to_vec())), None);
    }

    #[test]
    fn a_fan_outs_workers_pack_small() {
        let sent: Vec<_> = (0..1000)
            .map(|i| {
                let mut w = worker(&format!("web{i:04}"), "ok");
                w["output"] = json!(format!("{}\n", "x".repeat(64)));
                w
            })
            .collect();
        let p = prepare(&body(json!(sent)), 1).unwrap().jobs.remove(0);
        let json = unpack(String::new(), Some(p.workers.clone())).unwrap();
        assert!(json.len() > 100_000, "{}", json.len());
        assert!(
            p.workers.len() * 10 < json.len(),
            "{} of {}",
            p.workers.len(),
            json.len()
        );
    }

    #[test]
    fn malformed_or_oversized_workers_are_refused_with_where() {
        let bad = |w: serde_json::Value| message(prepare(&body(w), 1).err().unwrap());
        let e = bad(json!([worker("a", "ok"), worker("b", "exploded")]));
        assert!(
            e.starts_with("400") && e.contains("jobs[0].workers[1].outcome"),
            "{e}"
        );
        let mut no_output = worker("a", "ok");
        no_output["output"] = serde_json::Value::Null;
        let e = bad(json!([no_output]));
        assert!(e.starts_with("400") && e.contains("output"), "{e}");
        let e = bad(json!([{"worker": "a", "outcome": "ok"}]));
        assert!(e.starts_with("400") && e.contains("duration_ms"), "{e}");
        let mut long = worker("a", "ok");
        long["output"] = json!("é".repeat(proto::job::JOB_OUTPUT_TAIL + 1));
        let e = bad(json!([long]));
        assert!(e.starts_with("422 output: 65537"), "{e}");
        let e = bad(json!([worker(&"w".repeat(513), "ok")]));
        assert!(e.starts_with("422 worker: 513"), "{e}");
        let e = bad(json!([worker("a\u{0}", "ok")]));
        assert!(e.starts_with("400") && e.contains("NUL"), "{e}");
        // Fine within the bounds (the output counted in characters, not bytes).
        let mut full = worker("a", "ok");
        full["output"] = json!("é".repeat(proto::job::JOB_OUTPUT_TAIL));
        assert_eq!(prepare(&body(json!([full])), 1).unwrap().jobs.len(), 1);
        // The algorithm is one of the three.
        let mut record: serde_json::Value = serde_json::from_slice(&body(json!([]))).unwrap();
        record["jobs"][0]["algorithm"] = json!("random");
        let e = message(
            prepare(&serde_json::to_vec(&record).unwrap(), 1)
                .err()
                .unwrap(),
        );
        assert!(
            e.starts_with("400") && e.contains("jobs[0].algorithm"),
            "{e}"
        );
    }
}

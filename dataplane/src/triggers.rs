//! Trigger activity in the job history. The fs module's requests (keyed, each naming its
//! trigger in `Request::trigger`) are many and small, often one log line each: they are not
//! a job each. A shard counts them per trigger, minute and status ([`TriggerTally`], reported
//! every second through [`crate::ConfigSource::trigger_minutes`]), and a request that did not
//! end `ok` is recorded in full, as a job naming its trigger.
//!
//! What that costs a request that ends `ok` and prints nothing (a shipped log line): no trace
//! ([`TriggerRun`] starts one only when a worker prints, fails or exits non-zero, from what
//! the key's recording saw until then) and one count in a map the shard owns.

use crate::idem::Recording;
use crate::jobs::JobTrace;
use proto::job::MAX_JOB_NAME;
use proto::job::{clip, JobReaders, JobStatus, StatusCounts, TriggerMinute};
use proto::Event;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Distinct (trigger, caller, service) rows a shard counts per minute at most; a request of a
/// row past it is not counted (`triggerfs_broker_jobs_lost_total{reason="tally_full"}`).
pub const MAX_TALLY_ROWS: usize = 4096;
/// A minute, in milliseconds.
const MINUTE_MS: u64 = 60_000;

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A keyed request's trigger, and its job trace once it has something worth recording.
#[derive(Debug)]
pub struct TriggerRun {
    path: String,
    readers: JobReaders,
    trace: Option<Box<JobTrace>>,
}

/// What a trace started part-way needs of its request.
pub struct RunHead<'a> {
    /// The caller's team and identity.
    pub team: &'a str,
    pub identity: &'a str,
    /// The service, as the job history names it.
    pub service: &'a str,
    pub algorithm: proto::Algorithm,
    pub dispatch: &'a proto::Dispatch,
    pub started: std::time::Instant,
    /// How the workers that ended so far ended.
    pub recording: &'a Recording,
}

impl TriggerRun {
    /// The run of a request to trigger `path` (cut to `MAX_JOB_NAME` characters).
    pub fn new(path: String, readers: JobReaders) -> TriggerRun {
        let path = match path.len() > MAX_JOB_NAME {
            true => clip(&path, MAX_JOB_NAME),
            false => path,
        };
        TriggerRun {
            path,
            readers,
            trace: None,
        }
    }

    /// The trace is not started yet and `event` is worth one: output, a failure, an exit
    /// code other than 0.
    pub fn wants_trace(&self, event: &Event) -> bool {
        self.trace.is_none() && !matches!(event, Event::Accepted | Event::Done { exit_code: 0 })
    }

    /// Starts the trace from `head`, with the workers' ends recorded so far.
    pub fn start_trace(&mut self, head: RunHead<'_>) {
        let d = head.dispatch;
        let mut trace = Box::new(JobTrace::new(
            head.team,
            head.identity,
            head.service,
            head.algorithm,
            &d.plugin,
            &d.command,
            &d.args,
            head.started,
        ));
        trace.set_readers(self.readers);
        trace.set_trigger(&self.path);
        for worker in head.recording.accepted() {
            trace.on_relay(worker, &Event::Accepted);
        }
        for ran in head.recording.runs() {
            trace.on_relay(&ran.worker, &ran.end);
        }
        self.trace = Some(trace);
    }

    /// `event` was relayed from `worker`.
    pub fn on_relay(&mut self, worker: &Arc<str>, event: &Event) {
        if let Some(trace) = &mut self.trace {
            trace.on_relay(worker, event);
        }
    }

    /// The request ended: its status, and its trace when that is not `ok` (a failure is
    /// recorded in full).
    pub fn finish(self) -> (String, JobReaders, JobStatus, Option<Box<JobTrace>>) {
        let status = self.trace.as_ref().map_or(JobStatus::Ok, |t| t.status());
        let trace = self.trace.filter(|_| status != JobStatus::Ok);
        (self.path, self.readers, status, trace)
    }
}

/// Who a count is of: the trigger, the caller, the service (its team and name), who reads it.
pub struct TallyKey<'a> {
    pub trigger: &'a str,
    pub team: &'a str,
    pub identity: &'a str,
    pub service_team: &'a str,
    pub service: &'a str,
    pub readers: JobReaders,
}

#[derive(Debug)]
struct TallyRow {
    team: Box<str>,
    identity: Box<str>,
    service_team: Box<str>,
    service: Box<str>,
    readers: JobReaders,
    counts: StatusCounts,
    /// Counted since the last report.
    news: bool,
}

impl TallyRow {
    fn is(&self, k: &TallyKey<'_>) -> bool {
        *self.service == *k.service
            && *self.identity == *k.identity
            && *self.team == *k.team
            && *self.service_team == *k.service_team
            && self.readers == k.readers
    }
}

/// A shard's counts of the minute now, per trigger; see the module docs.
#[derive(Debug, Default)]
pub struct TriggerTally {
    /// The minute counted (its start, milliseconds since the Unix epoch).
    minute: u64,
    by_trigger: foldhash::HashMap<Box<str>, Vec<TallyRow>>,
    rows: usize,
    /// Requests not counted since the last report (past [`MAX_TALLY_ROWS`]).
    uncounted: u64,
}

impl TriggerTally {
    /// A tally of the minute of `now_unix_ms`.
    pub fn new(now_unix_ms: u64) -> TriggerTally {
        TriggerTally {
            minute: now_unix_ms - now_unix_ms % MINUTE_MS,
            ..TriggerTally::default()
        }
    }

    /// One more request of `key` that ended `status`, in the minute now.
    pub fn count(&mut self, key: TallyKey<'_>, status: JobStatus) {
        if let Some(rows) = self.by_trigger.get_mut(key.trigger) {
            if let Some(row) = rows.iter_mut().find(|r| r.is(&key)) {
                row.counts.add(status);
                row.news = true;
                return;
            }
        }
        if self.rows >= MAX_TALLY_ROWS {
            self.uncounted += 1;
            return;
        }
        let mut counts = StatusCounts::default();
        counts.add(status);
        self.rows += 1;
        self.by_trigger
            .entry(Box::from(key.trigger))
            .or_default()
            .push(TallyRow {
                team: Box::from(key.team),
                identity: Box::from(key.identity),
                service_team: Box::from(key.service_team),
                service: Box::from(key.service),
                readers: key.readers,
                counts,
                news: true,
            });
    }

    /// Requests not counted since the last call (the tally was full).
    pub fn take_uncounted(&mut self) -> u64 {
        std::mem::take(&mut self.uncounted)
    }

    /// What to report at `now_unix_ms`: when the minute turned, every row of the minute
    /// before with news (and the tally starts the new minute empty); else, when `due`, the
    /// rows with news. Each as its count so far in its minute; `source` is left for the
    /// config source to fill in.
    pub fn reports(&mut self, now_unix_ms: u64, due: bool) -> Vec<TriggerMinute> {
        let minute = now_unix_ms - now_unix_ms % MINUTE_MS;
        let turned = minute != self.minute;
        if !turned && !due {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (trigger, rows) in &mut self.by_trigger {
            for row in rows.iter_mut().filter(|r| r.news) {
                row.news = false;
                out.push(minute_of(self.minute, trigger, row));
            }
        }
        if turned {
            self.by_trigger.clear();
            self.rows = 0;
            self.minute = minute;
        }
        out
    }
}

/// `row`'s report of `minute`.
fn minute_of(minute: u64, trigger: &str, row: &TallyRow) -> TriggerMinute {
    let service = match row.team == row.service_team {
        true => row.service.to_string(),
        false => format!("{}/{}", row.service_team, row.service),
    };
    TriggerMinute {
        source: String::new(),
        team: clip(&row.team, MAX_JOB_NAME),
        identity: clip(&row.identity, MAX_JOB_NAME),
        service: clip(&service, MAX_JOB_NAME),
        trigger: trigger.to_string(),
        minute_unix_ms: minute,
        readers: row.readers,
        counts: row.counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(trigger: &'a str, identity: &'a str) -> TallyKey<'a> {
        TallyKey {
            trigger,
            team: "t",
            identity,
            service_team: "t",
            service: "ship",
            readers: JobReaders::SenderAndAdmins,
        }
    }

    #[test]
    fn counts_per_trigger_and_caller_reported_so_far_then_per_minute() {
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS;
        let mut tally = TriggerTally::new(t0 + 5);
        tally.count(key("/logs/a", "alice"), JobStatus::Ok);
        tally.count(key("/logs/a", "alice"), JobStatus::Ok);
        tally.count(key("/logs/a", "alice"), JobStatus::Failed);
        tally.count(key("/logs/a", "bob"), JobStatus::TimedOut);
        assert!(tally.reports(t0 + 10, false).is_empty(), "not due");
        let mut r = tally.reports(t0 + 10, true);
        r.sort_by(|a, b| a.identity.cmp(&b.identity));
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].identity.as_str(), r[0].minute_unix_ms), ("alice", t0));
        assert_eq!((r[0].counts.ok, r[0].counts.failed), (2, 1));
        assert_eq!(r[1].counts.timed_out, 1);
        // Nothing new: nothing to report; then the count so far, not the increment.
        assert!(tally.reports(t0 + 20, true).is_empty());
        tally.count(key("/logs/a", "alice"), JobStatus::Ok);
        let r = tally.reports(t0 + 30, true);
        assert_eq!((r.len(), r[0].counts.ok), (1, 3));
        // The minute turns: the last news of the old one, then a fresh count.
        tally.count(key("/logs/a", "alice"), JobStatus::Lost);
        let r = tally.reports(t0 + MINUTE_MS + 1, false);
        assert_eq!((r.len(), r[0].counts.lost, r[0].minute_unix_ms), (1, 1, t0));
        tally.count(key("/logs/a", "alice"), JobStatus::Ok);
        let r = tally.reports(t0 + MINUTE_MS + 2, true);
        assert_eq!((r[0].counts.ok, r[0].minute_unix_ms), (1, t0 + MINUTE_MS));
    }

    #[test]
    fn another_teams_service_is_named_with_its_team_and_the_tally_is_bounded() {
        let mut tally = TriggerTally::new(0);
        let mut k = key("/x", "alice");
        k.service_team = "other";
        tally.count(k, JobStatus::Ok);
        assert_eq!(tally.reports(1, true)[0].service, "other/ship");
        for i in 0..MAX_TALLY_ROWS + 5 {
            tally.count(key(&format!("/t{i}"), "alice"), JobStatus::Ok);
        }
        assert_eq!(tally.take_uncounted(), 6);
        // "/x" was reported already: the rest have news.
        assert_eq!(tally.reports(MINUTE_MS, false).len(), MAX_TALLY_ROWS - 1);
        tally.count(key("/new", "alice"), JobStatus::Ok);
        assert_eq!(tally.take_uncounted(), 0, "a new minute has room again");
    }

    #[test]
    fn a_run_traces_only_what_is_worth_recording() {
        let run = TriggerRun::new("/logs/a".into(), JobReaders::Team);
        assert!(!run.wants_trace(&Event::Accepted));
        assert!(!run.wants_trace(&Event::Done { exit_code: 0 }));
        assert!(run.wants_trace(&Event::Done { exit_code: 1 }));
        let (path, readers, status, trace) = run.finish();
        assert_eq!(
            (path.as_str(), readers, status),
            ("/logs/a", JobReaders::Team, JobStatus::Ok)
        );
        assert!(trace.is_none());

        let mut run = TriggerRun::new("/logs/a".into(), JobReaders::Team);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut recording = Recording::default();
        for (w, e) in [
            (&a, Event::Accepted),
            (&a, Event::Done { exit_code: 0 }),
            (&b, Event::Accepted),
        ] {
            recording.on_relay(w, &e);
        }
        let dispatch = proto::Dispatch {
            id: 1,
            service: "ship".into(),
            plugin: "command".into(),
            command: vec![],
            args: vec![],
            payload: vec![],
            timeout_ms: 0,
            key: None,
        };
        let failed = Event::Done { exit_code: 3 };
        assert!(run.wants_trace(&failed));
        run.start_trace(RunHead {
            team: "t",
            identity: "alice",
            service: "ship",
            algorithm: proto::Algorithm::Mirror,
            dispatch: &dispatch,
            started: std::time::Instant::now(),
            recording: &recording,
        });
        run.on_relay(&b, &failed);
        let (_, _, status, trace) = run.finish();
        assert_eq!(status, JobStatus::Failed);
        let record = trace.expect("a failure is recorded").finish();
        assert_eq!(record.trigger.as_deref(), Some("/logs/a"));
        assert_eq!(record.readers, JobReaders::Team);
        let ends: Vec<_> = record
            .workers
            .iter()
            .map(|w| (w.worker.as_str(), w.exit_code))
            .collect();
        assert_eq!(ends, [("a", Some(0)), ("b", Some(3))]);
    }
}

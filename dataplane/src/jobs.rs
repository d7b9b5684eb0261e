//! Job history on the broker's side: [`JobTrace`] follows one request's relayed frames
//! (per worker: its end, its exit code, a bounded tail of its output) and becomes a
//! [`proto::job::JobRecord`] when the request finishes, which the shard hands to
//! [`crate::ConfigSource::job`]. Delivering it (a bounded queue, batches, retries) is the
//! source's business and never the request's: see the `feed` crate.
//!
//! Memory per request: at most twice [`JOB_OUTPUT_TAIL`] of output per worker it went to (the
//! tail is trimmed back to the bound whenever it reaches twice that).

use proto::job::{clip, clip_owned, is_secret_key, JobOutcome, JobReaders, JobRecord, JobWorker};
use proto::job::{redact_output, redact_text, JOB_OUTPUT_TAIL, REDACTED};
use proto::job::{MAX_JOB_ITEMS, MAX_JOB_NAME, MAX_JOB_TEXT};
use proto::{Event, Stream};
use std::sync::Arc;
use std::time::Instant;

/// One worker's part so far.
#[derive(Debug)]
struct WorkerTrace {
    /// Copied, not shared: the trace is dropped on another thread (the feed's), and the
    /// shard's own `Arc` of the name should not have its count changed from there.
    worker: Box<str>,
    first_seen: Instant,
    /// Output lines, newline-terminated; may start mid-line only after trimming.
    tail: Vec<u8>,
    truncated: bool,
    end: Option<(JobOutcome, Option<i32>, Instant)>,
}

impl WorkerTrace {
    fn push_line(&mut self, stream: Stream, data: &[u8]) {
        if stream == Stream::Stderr {
            self.tail.extend_from_slice(b"[stderr] ");
        }
        self.tail.extend_from_slice(data);
        self.tail.push(b'\n');
        if self.tail.len() >= 2 * JOB_OUTPUT_TAIL {
            self.trim();
        }
    }

    /// Keeps the last [`JOB_OUTPUT_TAIL`] bytes, from a line start when there is one.
    fn trim(&mut self) {
        if self.tail.len() <= JOB_OUTPUT_TAIL {
            return;
        }
        let mut cut = self.tail.len() - JOB_OUTPUT_TAIL;
        if let Some(nl) = self.tail[cut..].iter().position(|&b| b == b'\n') {
            if cut + nl + 1 < self.tail.len() {
                cut += nl + 1;
            }
        }
        self.tail.drain(..cut);
        self.truncated = true;
    }
}

/// One request's record in the making; see the module docs.
#[derive(Debug)]
pub struct JobTrace {
    /// What the record says of the request (its key, duration and workers are set later).
    head: JobRecord<()>,
    started: Instant,
    workers: Vec<WorkerTrace>,
    /// Where each worker is in `workers` (a mirror request may reach thousands).
    index: foldhash::HashMap<Box<str>, usize>,
    /// When the request ended ([`JobTrace::end`]); until then, [`JobTrace::finish`] takes now.
    ended: Option<Instant>,
    /// Bytes of output held (for [`JobTrace::weight`]).
    tail_bytes: usize,
    /// The values of the secret-looking arguments, taken out of `head` when the trace is
    /// made: [`JobTrace::finish`] redacts them in the output too (a program that echoes
    /// its password), then drops them. They never go into the record.
    secrets: Vec<String>,
}

impl JobTrace {
    /// A request as it arrived (arguments with secret-looking names are redacted here; their
    /// values stay in the trace only to be redacted from the output too).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        team: &str,
        identity: &str,
        service: &str,
        algorithm: proto::Algorithm,
        plugin: &str,
        command: &[String],
        args: &[proto::Arg],
        started: Instant,
    ) -> JobTrace {
        let mut secrets = Vec::new();
        let head = JobRecord {
            key: String::new(),
            team: clip(team, MAX_JOB_NAME),
            identity: clip(identity, MAX_JOB_NAME),
            service: clip(service, MAX_JOB_NAME),
            algorithm,
            plugin: clip(plugin, MAX_JOB_NAME),
            command: command
                .iter()
                .take(MAX_JOB_ITEMS)
                .map(|c| clip(c, MAX_JOB_TEXT))
                .collect(),
            args: args
                .iter()
                .take(MAX_JOB_ITEMS)
                .map(|a| {
                    let value = match is_secret_key(&a.key) {
                        true => {
                            secrets.push(a.value.clone());
                            REDACTED.to_string()
                        }
                        false => clip(&a.value, MAX_JOB_TEXT),
                    };
                    (clip(&a.key, MAX_JOB_TEXT), value)
                })
                .collect(),
            started_unix_ms: crate::triggers::unix_ms_now(),
            duration_ms: 0,
            workers: Vec::new(),
            readers: JobReaders::default(),
            tag: None,
            trigger: None,
        };
        JobTrace {
            head,
            started,
            workers: Vec::new(),
            index: Default::default(),
            ended: None,
            tail_bytes: 0,
            secrets,
        }
    }

    /// Who reads the job (by default its sender and the team's admins).
    pub fn set_readers(&mut self, readers: JobReaders) {
        self.head.readers = readers;
    }

    /// The request's tag, for its record (clipped as every name is).
    pub fn set_tag(&mut self, tag: Option<&str>) {
        self.head.tag = tag.map(|t| clip(t, MAX_JOB_NAME));
    }

    /// The trigger file whose write the request was.
    pub fn set_trigger(&mut self, path: &str) {
        self.head.trigger = Some(clip(path, MAX_JOB_NAME));
    }

    /// The request's status so far: the worst of its workers' outcomes (one not ended yet
    /// counts as `no_response`).
    pub fn status(&self) -> proto::job::JobStatus {
        let outcome = |w: &WorkerTrace| w.end.map_or(JobOutcome::NoResponse, |(o, ..)| o);
        proto::job::JobStatus::of(self.workers.iter().map(outcome))
    }

    /// The request ended now: the shard marks it so, and hands the trace on; turning it into
    /// a record ([`JobTrace::finish`], a few hundred microseconds for a thousand workers) is
    /// done later, off the shard, by whoever delivers it.
    pub fn end(&mut self, at: Instant) {
        self.ended = Some(at);
    }

    /// Bytes this trace holds, roughly (for bounding queues; as [`JobRecord::weight`]).
    pub fn weight(&self) -> usize {
        let text = proto::job::text_weight(&self.head.command, &self.head.args)
            + self.head.trigger.as_ref().map_or(0, String::len);
        let workers: usize = self.workers.iter().map(|w| w.worker.len() + 64).sum();
        256 + text + workers + self.tail_bytes
    }

    fn worker(&mut self, worker: &Arc<str>) -> &mut WorkerTrace {
        let idx = match self.index.get(&**worker) {
            Some(&i) => i,
            None => {
                self.index.insert(Box::from(&**worker), self.workers.len());
                self.workers.push(WorkerTrace {
                    worker: Box::from(&**worker),
                    first_seen: Instant::now(),
                    tail: Vec::new(),
                    truncated: false,
                    end: None,
                });
                self.workers.len() - 1
            }
        };
        &mut self.workers[idx]
    }

    /// `event` was relayed from `worker`.
    pub fn on_relay(&mut self, worker: &Arc<str>, event: &Event) {
        let w = self.worker(worker);
        let before = w.tail.len();
        match event {
            Event::Accepted => {}
            Event::Output { stream, data, .. } => w.push_line(*stream, data),
            Event::Done { exit_code } => {
                let outcome = if *exit_code == 0 {
                    JobOutcome::Ok
                } else {
                    JobOutcome::Failed
                };
                w.end = Some((outcome, Some(*exit_code), Instant::now()));
            }
            Event::Failed { kind, message } => {
                let outcome = JobOutcome::of_failure(*kind);
                w.push_line(Stream::Stderr, format!("{kind}: {message}").as_bytes());
                w.end = Some((outcome, None, Instant::now()));
            }
        }
        let after = w.tail.len();
        self.tail_bytes = (self.tail_bytes + after).saturating_sub(before);
    }

    /// The record of the finished request; its `key` is left empty for the source to set.
    pub fn finish(mut self) -> JobRecord {
        let now = self.ended.unwrap_or_else(Instant::now);
        // Secrets written into the command text (a URL's password, `--token=…`) or into an
        // argument's value are redacted here, on the job-history thread, not on the shard;
        // then every secret found, and every secret-looking argument's value, wherever else
        // it appears, in the command, the arguments and the output.
        let mut secrets = std::mem::take(&mut self.secrets);
        let values = self.head.args.iter_mut().map(|(_, v)| v);
        for text in self.head.command.iter_mut().chain(values) {
            redact(text, |t| redact_text(t, &mut secrets));
        }
        // A secret found in one place may be written elsewhere in a form of its own
        // (`connect X` with argument `token=X`).
        let texts = self.head.command.iter_mut();
        for text in texts.chain(self.head.args.iter_mut().map(|(_, v)| v)) {
            redact(text, |t| redact_output(t, &secrets));
        }
        let workers = self
            .workers
            .into_iter()
            .map(|mut w| {
                w.trim();
                let (outcome, exit_code, ended) =
                    w.end.unwrap_or((JobOutcome::NoResponse, None, now));
                let mut output = match String::from_utf8(w.tail) {
                    Ok(text) => text,
                    Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
                };
                redact(&mut output, |t| redact_output(t, &secrets));
                JobWorker {
                    worker: clip_owned(w.worker.into(), MAX_JOB_NAME),
                    outcome,
                    exit_code,
                    duration_ms: ended.duration_since(w.first_seen).as_millis() as u64,
                    // Each byte is at most one character, so this cuts only what a
                    // trim that found no line start left over; a NUL becomes U+FFFD, as
                    // invalid UTF-8 does ([`clip`]).
                    output: clip_owned(output, JOB_OUTPUT_TAIL),
                    truncated: w.truncated,
                }
            })
            .collect();
        let (mut record, _) = self.head.with_workers(workers);
        record.duration_ms = now.duration_since(self.started).as_millis() as u64;
        record
    }
}

/// Puts what `redacted` makes of `text` in its place, when that is not `text` as it was.
fn redact(text: &mut String, redacted: impl FnOnce(&str) -> std::borrow::Cow<'_, str>) {
    if let std::borrow::Cow::Owned(redacted) = redacted(text) {
        *text = redacted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::job::{JobStatus, REDACTED};

    fn trace() -> JobTrace {
        JobTrace::new(
            "t",
            "alice",
            "dc1",
            proto::Algorithm::Mirror,
            "command/command",
            &["uptime".to_string()],
            &[
                proto::Arg {
                    key: "host".into(),
                    value: "web01".into(),
                },
                proto::Arg {
                    key: "api_token".into(),
                    value: "hunter2".into(),
                },
            ],
            Instant::now(),
        )
    }

    #[test]
    fn follows_each_workers_end_and_redacts() {
        let mut t = trace();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        t.on_relay(&a, &Event::Accepted);
        t.on_relay(&b, &Event::Accepted);
        t.on_relay(&c, &Event::Accepted);
        t.on_relay(
            &a,
            &Event::Output {
                seq: 0,
                stream: Stream::Stdout,
                data: b"up 3 days".to_vec(),
            },
        );
        t.on_relay(&a, &Event::Done { exit_code: 0 });
        t.on_relay(&b, &Event::Done { exit_code: 2 });
        let r = t.finish();
        assert_eq!(r.args[0], ("host".to_string(), "web01".to_string()));
        assert_eq!(r.args[1], ("api_token".to_string(), REDACTED.to_string()));
        let outcomes: Vec<_> = r
            .workers
            .iter()
            .map(|w| (w.worker.as_str(), w.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("a", JobOutcome::Ok),
                ("b", JobOutcome::Failed),
                ("c", JobOutcome::NoResponse)
            ]
        );
        assert_eq!(r.workers[0].output, "up 3 days\n");
        assert_eq!(r.workers[1].exit_code, Some(2));
        assert_eq!(r.status(), JobStatus::Failed);
    }

    #[test]
    fn nul_and_invalid_utf8_become_replacement_characters() {
        let mut t = trace();
        let a: Arc<str> = "a".into();
        t.on_relay(
            &a,
            &Event::Output {
                seq: 0,
                stream: Stream::Stdout,
                data: b"nul\0here \xff".to_vec(),
            },
        );
        t.on_relay(&a, &Event::Done { exit_code: 0 });
        assert_eq!(t.finish().workers[0].output, "nul\u{FFFD}here \u{FFFD}\n");
        let t = JobTrace::new(
            "t",
            "alice",
            "dc1",
            proto::Algorithm::Mirror,
            "command/command",
            &["echo\0x".to_string()],
            &[proto::Arg {
                key: "host\0".into(),
                value: "web\0x1".into(),
            }],
            Instant::now(),
        );
        let r = t.finish();
        assert_eq!(r.command, ["echo\u{FFFD}x"]);
        assert_eq!(r.args, [("host\u{FFFD}".into(), "web\u{FFFD}x1".into())]);
    }

    #[test]
    fn output_is_a_bounded_tail_from_a_line_start() {
        let mut t = trace();
        let a: Arc<str> = "a".into();
        let line = vec![b'x'; 999];
        for _ in 0..1000 {
            t.on_relay(
                &a,
                &Event::Output {
                    seq: 0,
                    stream: Stream::Stdout,
                    data: line.clone(),
                },
            );
            assert!(t.workers[0].tail.len() < 2 * JOB_OUTPUT_TAIL);
        }
        t.on_relay(
            &a,
            &Event::Output {
                seq: 0,
                stream: Stream::Stdout,
                data: b"last".to_vec(),
            },
        );
        let r = t.finish();
        let w = &r.workers[0];
        assert!(w.truncated);
        assert!(w.output.len() <= JOB_OUTPUT_TAIL);
        assert!(w.output.starts_with('x') && w.output.ends_with("last\n"));
        assert!(w.output.split('\n').next().unwrap().len() == 999);
    }
}

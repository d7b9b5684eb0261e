//! Job history: what the broker reports about every request it ran through a service
//! (`POST /api/v1/broker/jobs` ← [`JobBatch`]), and the rules both sides share (what a job's
//! status is, which arguments are secret).

use crate::text_enum;
use serde::{Deserialize, Serialize};

/// How much output the history keeps per worker: the last 64 KiB.
pub const JOB_OUTPUT_TAIL: usize = 64 * 1024;

/// Characters of one command word or argument a record keeps (longer ones are cut).
pub const MAX_JOB_TEXT: usize = 4096;
/// Characters of a name in a record (team, identity, service, plugin, worker, key, ...).
pub const MAX_JOB_NAME: usize = 512;
/// Command words, and arguments, a record keeps at most.
pub const MAX_JOB_ITEMS: usize = 256;
/// Workers of one record (or one part of it) at most.
pub const MAX_JOB_WORKERS: usize = 10_000;
/// Records of one batch at most.
pub const MAX_JOB_BATCH: usize = 1024;

/// `text` cut to at most `max` characters, each NUL replaced by U+FFFD: the control plane
/// takes no NUL in any text (PostgreSQL's TEXT cannot hold one), and one NUL in one
/// request's argument must not get a whole batch of records refused.
pub fn clip(text: &str, max: usize) -> String {
    let cut = match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    };
    if cut.contains('\0') {
        cut.replace('\0', "\u{FFFD}")
    } else {
        cut.to_string()
    }
}

/// [`clip`] for a string the caller owns: returned as it is (no copy) when it is short
/// enough and holds no NUL, as most are.
pub fn clip_owned(text: String, max: usize) -> String {
    if text.len() <= max && !text.contains('\0') {
        text
    } else {
        clip(&text, max)
    }
}

/// What stands in for a secret-looking argument's value.
pub const REDACTED: &str = "***";

text_enum! {
    ("job outcome", "snake_case")
    /// How one worker's part of a request ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
    #[serde(rename_all = "snake_case")]
    pub enum JobOutcome {
        /// Exited 0.
        Ok,
        /// Exited non-zero, or failed without running to an end (plugin missing, crashed).
        Failed,
        /// Ran past the timeout.
        TimedOut,
        /// Its connection went away mid-run.
        Lost,
        /// Cancelled (by the client, or because the client went away) before it ended.
        Cancelled,
        /// Never answered before the request ended.
        NoResponse,
        /// Bound to the service but not connected when the request was dispatched.
        Offline,
        /// Never started: the request stopped first (`--max-failures`, a serial run's
        /// failure, the quorum, the deadline).
        Skipped,
        /// Still running when the quorum was reached; its end was not followed.
        Detached,
    }
}

text_enum! {
    ("job status", "snake_case")
    /// A whole request's result: the worst of its workers' outcomes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JobStatus {
        /// Every worker exited 0.
        Ok,
        /// Some worker failed.
        Failed,
        /// None failed, some timed out, never answered or were offline (as the client's
        /// exit status 3).
        TimedOut,
        /// None failed or timed out, some were lost.
        Lost,
        /// None of the above, some were cancelled.
        Cancelled,
    }
}

impl JobStatus {
    /// The status of a request whose workers ended with `outcomes`.
    pub fn of(outcomes: impl IntoIterator<Item = JobOutcome>) -> JobStatus {
        let mut status = JobStatus::Ok;
        let rank = |s: JobStatus| match s {
            JobStatus::Ok => 0,
            JobStatus::Cancelled => 1,
            JobStatus::Lost => 2,
            JobStatus::TimedOut => 3,
            JobStatus::Failed => 4,
        };
        for o in outcomes {
            let s = match o {
                JobOutcome::Ok => JobStatus::Ok,
                JobOutcome::Failed => JobStatus::Failed,
                JobOutcome::TimedOut | JobOutcome::NoResponse | JobOutcome::Offline => {
                    JobStatus::TimedOut
                }
                JobOutcome::Lost => JobStatus::Lost,
                JobOutcome::Cancelled | JobOutcome::Skipped => JobStatus::Cancelled,
                JobOutcome::Detached => JobStatus::Ok,
            };
            if rank(s) > rank(status) {
                status = s;
            }
        }
        status
    }
}

/// One worker's part of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobWorker {
    /// Worker identity.
    pub worker: String,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The plugin's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// From its first answer (`Accepted`, or its end when it had none) to its end
    /// (milliseconds).
    pub duration_ms: u64,
    /// The last [`JOB_OUTPUT_TAIL`] bytes of its output (stdout and stderr, one line each),
    /// cut at a line start; invalid UTF-8 replaced.
    #[serde(default)]
    pub output: String,
    /// Earlier output was left out.
    #[serde(default)]
    pub truncated: bool,
}

/// One request through a service, as the broker saw it end. (`W`: how its workers are
/// held; the control plane reads them as JSON text it checks and stores as it came.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord<W = JobWorker> {
    /// Unique per broker run and record: a batch delivered twice is stored once.
    pub key: String,
    /// The caller's team.
    pub team: String,
    /// The caller (user or worker identity).
    pub identity: String,
    /// The service: `name` for one of the caller's team (however the request named it),
    /// `team/name` for another team's.
    pub service: String,
    /// `roundrobin`, `serial` or `mirror`.
    pub algorithm: String,
    /// The plugin.
    pub plugin: String,
    /// The command words.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments, secret-looking values already replaced by [`REDACTED`].
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// When it arrived (milliseconds since the Unix epoch).
    pub started_unix_ms: u64,
    /// Arrival to summary (milliseconds).
    pub duration_ms: u64,
    /// Every worker it went to, in dispatch order.
    #[serde(default = "Vec::new")]
    pub workers: Vec<W>,
    /// Through a `local` service or worker: the job is its caller's alone to see, not the
    /// whole team's (the service was its caller's alone to use).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

impl<W> JobRecord<W> {
    /// The record with `workers` in place of its own, and its own.
    pub fn with_workers<V>(self, workers: Vec<V>) -> (JobRecord<V>, Vec<W>) {
        let record = JobRecord {
            key: self.key,
            team: self.team,
            identity: self.identity,
            service: self.service,
            algorithm: self.algorithm,
            plugin: self.plugin,
            command: self.command,
            args: self.args,
            started_unix_ms: self.started_unix_ms,
            duration_ms: self.duration_ms,
            workers,
            private: self.private,
        };
        (record, self.workers)
    }
}

impl JobRecord {
    /// The request's status: the worst of its workers' outcomes.
    pub fn status(&self) -> JobStatus {
        JobStatus::of(self.workers.iter().map(|w| w.outcome))
    }

    /// Bytes this record holds, roughly (for bounding queues).
    pub fn weight(&self) -> usize {
        let text = text_weight(&self.command, &self.args);
        let workers: usize = self
            .workers
            .iter()
            .map(|w| w.worker.len() + w.output.len() + 64)
            .sum();
        256 + text + workers
    }
}

/// Bytes of a record's command words and arguments (for [`JobRecord::weight`] and the
/// broker's trace of one in the making).
pub fn text_weight(command: &[String], args: &[(String, String)]) -> usize {
    command.iter().map(String::len).sum::<usize>()
        + args.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// A batch of records (`POST /api/v1/broker/jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobBatch {
    /// Records, oldest first.
    pub jobs: Vec<JobRecord>,
}

/// Whether an argument named `key` looks like it holds a secret: its name contains
/// `secret`, `token`, `passw`, `passwd`, `pwd`, `key` (`apikey`, `api_key`, `ssh-key`),
/// `credential`, `auth` or `private` (any case).
pub fn is_secret_key(key: &str) -> bool {
    const WORDS: &[&str] = &[
        "secret",
        "token",
        "passw",
        "passwd",
        "pwd",
        "key",
        "credential",
        "auth",
        "private",
        "cookie",
        "session",
    ];
    let lower = key.to_ascii_lowercase();
    WORDS.iter().any(|w| lower.contains(w))
}

/// `value`, or [`REDACTED`] when `key` looks secret.
pub fn redact(key: &str, value: &str) -> String {
    if is_secret_key(key) {
        REDACTED.to_string()
    } else {
        value.to_string()
    }
}

/// A command text as the job history keeps it: what looks like a secret replaced by
/// [`REDACTED`], everything else as written (spacing included):
/// - the password of a URL (`https://user:pw@host/` → `https://user:***@host/`);
/// - the value of a word `name=value` or `--name=value` whose name looks secret
///   ([`is_secret_key`]: `PGPASSWORD=…`, `--token=…`);
/// - the word after a flag whose name looks secret (`--password …`, `-auth-token …`).
///
/// A secret the text gives in a form of its own (`mysql -pXYZ`) is kept: pass secrets as
/// arguments (`key=value`), whose values are redacted by name, or in the worker's files.
pub fn redact_command(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut done = 0;
    let mut redact_next = false;
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        let len = rest[start..]
            .find(char::is_whitespace)
            .unwrap_or(rest.len() - start);
        let (from, word) = (offset + start, &rest[start..start + len]);
        offset += start + len;
        rest = &rest[start + len..];
        // The span of `word` to replace, if any, relative to the word.
        let span = if std::mem::take(&mut redact_next) {
            Some((0, word.len()))
        } else {
            let name = word.trim_start_matches('-');
            match name.split_once('=') {
                Some((key, value)) if is_secret_key(key) => {
                    (!value.is_empty()).then(|| (word.len() - value.len(), word.len()))
                }
                None if word.starts_with('-') && is_secret_key(name) => {
                    redact_next = true;
                    None
                }
                // `--url=https://u:pw@host`, or a URL alone.
                _ => url_password(word),
            }
        };
        if let Some((a, b)) = span {
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[done..from + a]);
            out.push_str(REDACTED);
            done = from + b;
        }
    }
    match out {
        Some(mut out) => {
            out.push_str(&text[done..]);
            std::borrow::Cow::Owned(out)
        }
        None => std::borrow::Cow::Borrowed(text),
    }
}

/// Where the password of a URL in `word` is (`scheme://user:password@host`).
fn url_password(word: &str) -> Option<(usize, usize)> {
    let authority = word.find("://")? + 3;
    let end = word[authority..]
        .find(['/', '?', '#'])
        .map_or(word.len(), |e| authority + e);
    let at = word[authority..end].rfind('@')? + authority;
    let colon = word[authority..at].find(':')? + authority;
    (colon + 1 < at).then_some((colon + 1, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_command_text_are_redacted() {
        for (text, want) in [
            ("uptime", "uptime"),
            ("  df -h  /  ", "  df -h  /  "),
            (
                "curl https://deploy:s3cr3t@repo.example/x.tar",
                "curl https://deploy:***@repo.example/x.tar",
            ),
            ("git clone https://host/a@b", "git clone https://host/a@b"),
            ("psql postgres://u@db/app", "psql postgres://u@db/app"),
            ("PGPASSWORD=hunter2 psql -h db", "PGPASSWORD=*** psql -h db"),
            (
                "deploy --token=abc --verbose",
                "deploy --token=*** --verbose",
            ),
            ("deploy --api-key abc  now", "deploy --api-key ***  now"),
            ("mysql --password", "mysql --password"),
            ("run --empty-token=", "run --empty-token="),
            ("é --secret x é", "é --secret *** é"),
            ("a=1 b=2", "a=1 b=2"),
            (
                "deploy --url=https://u:pw@h/x",
                "deploy --url=https://u:***@h/x",
            ),
            (
                "curl https://h/hook?token=abc",
                "curl https://h/hook?token=***",
            ),
        ] {
            assert_eq!(redact_command(text), want, "{text}");
        }
        assert!(matches!(
            redact_command("ls -la"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn secret_looking_keys() {
        for k in [
            "secret",
            "API_KEY",
            "apikey",
            "token",
            "db_password",
            "Passwd",
            "aws-secret-access-key",
            "Authorization",
        ] {
            assert!(is_secret_key(k), "{k}");
            assert_eq!(redact(k, "hunter2"), REDACTED);
        }
        for k in ["host", "package", "count", "mode"] {
            assert!(!is_secret_key(k), "{k}");
            assert_eq!(redact(k, "v"), "v");
        }
    }

    #[test]
    fn clipping_cuts_characters_and_replaces_nul() {
        for text in ["", "short", "é\0x", "ééééé", "abcdef"] {
            assert_eq!(clip_owned(text.to_string(), 4), clip(text, 4), "{text}");
        }
        assert_eq!(clip("ééééé", 4), "éééé");
        assert_eq!(clip("a\0b", 10), "a\u{FFFD}b");
    }

    #[test]
    fn status_is_the_worst_outcome() {
        use JobOutcome::*;
        assert_eq!(JobStatus::of([]), JobStatus::Ok);
        assert_eq!(JobStatus::of([Ok, Ok]), JobStatus::Ok);
        assert_eq!(JobStatus::of([Ok, Cancelled]), JobStatus::Cancelled);
        assert_eq!(JobStatus::of([Lost, NoResponse]), JobStatus::TimedOut);
        assert_eq!(JobStatus::of([TimedOut, Failed, Ok]), JobStatus::Failed);
        assert_eq!("timed_out".parse::<JobOutcome>().unwrap(), TimedOut);
        assert_eq!(NoResponse.to_string(), "no_response");
    }
}

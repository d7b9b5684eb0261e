//! Job history: what the broker reports about every request it ran through a service
//! (`POST /api/v1/broker/jobs` ← [`JobBatch`]), and the rules both sides share (what a job's
//! status is, which arguments are secret).

use crate::text_enum;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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
    ("job history", "lowercase")
    /// Who reads the service's jobs in the team's history (its command, arguments and
    /// output, which may hold secrets that no pattern finds): `sender` (default: the member
    /// who sent it and the team's admins) or `team` (every member of the team; redacted as
    /// ever). A job of another team's request is its sender's and that team's admins', and a
    /// `local` service's its sender's alone, whatever this says.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum JobHistory {
        /// The sender and the team's admins.
        #[default]
        Sender,
        /// Every member of the team (jobs of the team's own members: a request from another
        /// team is recorded in that team as its sender's, whatever this says).
        Team,
    }
}

text_enum! {
    ("job readers", "snake_case")
    /// Who reads one job of the history, in the team it is recorded in: `team` (every
    /// member), `sender_and_admins` (default) or `sender` (a `local` service or worker).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "snake_case")]
    pub enum JobReaders {
        /// Every member (a service whose `history` is `team`).
        Team,
        /// Its sender and the team's admins (the default).
        #[default]
        SenderAndAdmins,
        /// Its sender alone: a request through a `local` service or to a `local` worker,
        /// which was theirs alone to use.
        Sender,
    }
}

text_enum! {
    ("job outcome", "snake_case")
    /// How one worker's part of a request ended: `ok`, `failed` (non-zero exit or no run),
    /// `timed_out`, `lost` (its connection went away), `cancelled`, `no_response`, `offline`,
    /// `skipped`, `detached`, `retried` (lost, and the request answered by another worker).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
        /// Its connection went away after it accepted, and the broker ran the request again
        /// on another worker (roundrobin with `retry`): not a failure of the request.
        Retried,
    }
}

text_enum! {
    ("job status", "snake_case")
    /// A whole request's result, the worst of its workers' outcomes: `ok` (every worker
    /// exited 0), `failed` (some failed), `timed_out` (none failed, some timed out or never
    /// answered), `lost` (some went away mid-run), `cancelled`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

impl JobOutcome {
    /// How a worker's part ended when it failed with `kind` (a `Failed` event).
    pub fn of_failure(kind: crate::ErrorKind) -> JobOutcome {
        use crate::ErrorKind;
        match kind {
            ErrorKind::Timeout => JobOutcome::TimedOut,
            ErrorKind::WorkerLost => JobOutcome::Lost,
            ErrorKind::Cancelled => JobOutcome::Cancelled,
            ErrorKind::Offline => JobOutcome::Offline,
            ErrorKind::Skipped => JobOutcome::Skipped,
            ErrorKind::NoResponse => JobOutcome::NoResponse,
            ErrorKind::Detached => JobOutcome::Detached,
            ErrorKind::Retried => JobOutcome::Retried,
            _ => JobOutcome::Failed,
        }
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
                JobOutcome::Detached | JobOutcome::Retried => JobStatus::Ok,
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobWorker {
    /// Worker identity.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub worker: String,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The plugin's exit code, when it exited.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = -2147483648, maximum = 2147483647))]
    pub exit_code: Option<i32>,
    /// From its first answer (`Accepted`, or its end when it had none) to its end
    /// (milliseconds).
    pub duration_ms: u64,
    /// The last 64 KiB (`JOB_OUTPUT_TAIL`) of its output (stdout and stderr, one line each),
    /// cut at a line start; invalid UTF-8 replaced.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobOutput))]
    pub output: String,
    /// Earlier output was left out.
    #[serde(default)]
    pub truncated: bool,
}

/// One request through a service, as the broker saw it end. (`W`: how its workers are
/// held; the control plane reads them as JSON text it checks and stores as it came.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRecord<W = JobWorker> {
    /// Unique per broker run and record: a batch delivered twice is stored once (the parts
    /// of one record share it, and a record whose key is stored already only adds the
    /// workers not stored yet).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub key: String,
    /// The caller's team; a record of a team that does not exist is skipped.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub team: String,
    /// The caller (user or worker identity).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub identity: String,
    /// The service: `name` for one of the caller's team (however the request named it),
    /// `team/name` for another team's.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub service: String,
    /// The service's algorithm.
    pub algorithm: crate::Algorithm,
    /// The plugin.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub plugin: String,
    /// The command words.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobCommand))]
    pub command: Vec<String>,
    /// Arguments, secret-looking values already replaced by `***` (`REDACTED`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobArgs))]
    pub args: Vec<(String, String)>,
    /// When it arrived (milliseconds since the Unix epoch).
    pub started_unix_ms: u64,
    /// Arrival to summary (milliseconds).
    pub duration_ms: u64,
    /// Every worker it went to, in dispatch order (of this part), at most 10,000
    /// (`MAX_JOB_WORKERS`).
    #[serde(default = "Vec::new")]
    #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
    pub workers: Vec<W>,
    /// Who reads the job in its team's history. A record that does not say is read by its
    /// sender and the team's admins.
    #[serde(default)]
    pub readers: JobReaders,
    /// The request's `tag`, when its sender gave one (a schedule's run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::JobName>))]
    pub tag: Option<String>,
    /// The trigger file whose write the request was (`Request::trigger`), if one was.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::JobName>))]
    pub trigger: Option<String>,
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
            readers: self.readers,
            tag: self.tag,
            trigger: self.trigger,
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
        let text =
            text_weight(&self.command, &self.args) + self.trigger.as_ref().map_or(0, String::len);
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobBatch {
    /// Records, oldest first (at most 1024, `MAX_JOB_BATCH`).
    #[cfg_attr(feature = "openapi", schema(max_items = 1024))]
    pub jobs: Vec<JobRecord>,
    /// Triggers' requests counted per minute (at most 1024, `MAX_JOB_BATCH`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 1024))]
    pub triggers: Vec<TriggerMinute>,
}

/// Requests by status: how many ended `ok`, `failed`, `timed_out`, `lost`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusCounts {
    /// Every worker exited 0.
    pub ok: u64,
    /// Some worker failed.
    pub failed: u64,
    /// Timed out (or some worker never answered, or was offline).
    pub timed_out: u64,
    /// Some worker went away mid-run.
    pub lost: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl StatusCounts {
    /// One more request that ended `status`.
    pub fn add(&mut self, status: JobStatus) {
        let n = match status {
            JobStatus::Ok => &mut self.ok,
            JobStatus::Failed => &mut self.failed,
            JobStatus::TimedOut => &mut self.timed_out,
            JobStatus::Lost => &mut self.lost,
            JobStatus::Cancelled => &mut self.cancelled,
        };
        *n += 1;
    }
}

/// A trigger's requests of one minute by one caller through one service, as one broker shard
/// counted them. Each report of a minute is its count so far, not an increment: the control
/// plane keeps the latest of each `source` (a report delivered twice, or one lost before a
/// later one, changes nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerMinute {
    /// Who counted: the broker run and its shard.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub source: String,
    /// The caller's team; a report of a team that does not exist is skipped.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub team: String,
    /// The caller.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub identity: String,
    /// The service, as a [`JobRecord`] names it.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub service: String,
    /// The trigger's path.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::JobName))]
    pub trigger: String,
    /// The minute's start (milliseconds since the Unix epoch).
    pub minute_unix_ms: u64,
    /// Who reads the counts, as for a job of the same request.
    #[serde(default)]
    pub readers: JobReaders,
    /// The requests of the minute so far, by status (none when left out).
    #[serde(default)]
    pub counts: StatusCounts,
}

/// Whether an argument named `key` looks like it holds a secret: its name contains
/// `secret`, `token`, `passw`, `passphrase`, `pwd`, `key` (`apikey`, `api_key`, `ssh-key`),
/// `credential`, `auth`, `private`, `cookie` or `session` (any case), or one of its words
/// (split at anything but letters and digits) is `pw`, `pass`, `dsn`, `pin`, `otp`, `jwt`,
/// `bearer`, `sig`, `signature`, `cred`, `creds`, `hmac`, `totp` or `mfa` (`db_pw`,
/// `smtp-pass`, `DATABASE_DSN`).
pub fn is_secret_key(key: &str) -> bool {
    /// Secret in a name with [`STRONG`], though not as a word of their own.
    const WEAK: &[&str] = &["key", "auth", "private", "cookie", "session"];
    const WHOLE: &[&str] = &[
        "pw",
        "pass",
        "dsn",
        "pin",
        "otp",
        "jwt",
        "bearer",
        "sig",
        "signature",
        "cred",
        "creds",
        "hmac",
        "totp",
        "mfa",
    ];
    let lower = key.to_ascii_lowercase();
    STRONG.iter().chain(WEAK).any(|w| lower.contains(w))
        || lower
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|part| WHOLE.contains(&part))
}

/// An argument's value as the job history keeps it: [`REDACTED`] when its name looks secret
/// ([`is_secret_key`]), else the value with what looks like a secret in it redacted as in a
/// command ([`redact_command`]: `dsn` or `repo` = `https://u:pw@host`). Each secret taken
/// out is added to `found` (see [`redact_output`]).
pub fn redact_arg(key: &str, value: &str, found: &mut Vec<String>) -> String {
    if is_secret_key(key) {
        if !value.is_empty() {
            found.push(value.to_string());
        }
        REDACTED.to_string()
    } else {
        redact_text(value, found).into_owned()
    }
}

/// A command text as the job history keeps it: what looks like a secret replaced by
/// [`REDACTED`], everything else as written (spacing included). See [`redact_text`] for
/// the forms found.
pub fn redact_command(text: &str) -> Cow<'_, str> {
    redact_text(text, &mut Vec::new())
}

/// Output as the job history keeps it: the forms [`redact_text`] finds, and every secret in
/// `known` (what was taken out of the request's command and arguments, when at least
/// [`MIN_KNOWN_SECRET`] characters long) wherever it appears: a program that echoes its
/// password, or names it in an error (`mysql --password X`: "Unknown database 'X'").
pub fn redact_output<'a>(text: &'a str, known: &[String]) -> Cow<'a, str> {
    let mut out = redact_text(text, &mut Vec::new());
    for secret in known {
        if secret.chars().count() >= MIN_KNOWN_SECRET && out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
        }
    }
    out
}

/// Secrets of the request shorter than this are not searched for in its output (too many
/// ordinary words would go).
pub const MIN_KNOWN_SECRET: usize = 4;

/// Programs whose `-pPASSWORD` (glued) is a password.
const GLUED_P_PASSWORD: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mysqlimport",
    "mysqlshow",
    "mysqlcheck",
    "mysqlpump",
    "mariadb",
    "mariadb-dump",
    "mariadb-admin",
    "sshpass",
];
/// Words that run the next word as the program (`sudo mysql -p...`).
const WRAPPERS: &[&str] = &[
    "sudo", "env", "exec", "nohup", "time", "command", "xargs", "doas",
];
/// Authentication schemes written before the credential (`Authorization: Bearer X`).
const AUTH_SCHEMES: &[&str] = &["bearer", "basic", "token", "digest", "negotiate", "apikey"];
/// Words that look secret as such (a name with nothing before it, `aws_secret_access_key X`):
/// stronger than [`is_secret_key`], which also takes `key` or `auth` in any name.
const STRONG: &[&str] = &[
    "secret",
    "token",
    "passw",
    "passphrase",
    "pwd",
    "credential",
];

/// What to do with the next word.
#[derive(Clone, Copy, PartialEq, Default)]
enum Next {
    #[default]
    Keep,
    /// It is a secret (`--password X`, `sshpass -p X`).
    Redact,
    /// It is a secret unless it is a flag (`aws_secret_access_key X`).
    RedactValue,
    /// A credential after a header name, perhaps after its scheme (`Authorization: Bearer X`).
    Credential,
    /// `user:password`: the part after the first colon (`curl -u u:X`).
    UserPassword,
}

/// Text (a command, an argument's value, output) with what looks like a secret replaced by
/// [`REDACTED`], everything else as written; each secret taken out is added to `found`.
/// Found, word by word (whitespace-separated, quotes around a word ignored):
/// - the password of a URL (`https://user:pw@host/` → `https://user:***@host/`), and the
///   user part of an `http(s)` URL without one (`https://TOKEN@host`);
/// - the value of `name=value` whose name looks secret ([`is_secret_key`]: `PGPASSWORD=…`,
///   `--token=…`, `--from-literal=password=…`, `?user=u&password=…` up to the next `&`);
/// - the word after a flag whose name looks secret (`--password …`, `-auth-token …`), or
///   after a word that looks secret as such (`aws_secret_access_key …`, `password: …`);
/// - a header's credential (`Authorization: Bearer …`, `X-Api-Key: …`, `Bearer …`);
/// - `user:password` after `-u`, `--user` or `--proxy-user` (`curl -u u:…`, `-uu:…`);
/// - `-p…` glued to a MySQL client's flag (`mysql -p…`), and `sshpass -p …`/`-p…`.
///
/// A secret in a form of its own is kept (and some harmless words go): patterns only help.
/// Who reads a job is what keeps it safe ([`JobHistory`]).
pub fn redact_text<'a>(text: &'a str, found: &mut Vec<String>) -> Cow<'a, str> {
    let mut redactor = Redactor::default();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        let len = rest[start..]
            .find(char::is_whitespace)
            .unwrap_or(rest.len() - start);
        let (from, raw) = (offset + start, &rest[start..start + len]);
        offset += start + len;
        rest = &rest[start + len..];
        // The word without the quotes around it (and a `;`/`,` after it).
        let lead = raw.len() - raw.trim_start_matches(['\'', '"', '`']).len();
        let word = raw[lead..].trim_end_matches(['\'', '"', '`', ';', ',']);
        let ends_command =
            raw.ends_with([';', '|', '&']) || matches!(word, "|" | "||" | "&&" | ";");
        redactor.word(from + lead, word, ends_command);
    }
    let mut spans = redactor.spans;
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (a, b) in spans {
        if a < done {
            continue;
        }
        found.push(text[a..b].to_string());
        out.push_str(&text[done..a]);
        out.push_str(REDACTED);
        done = b;
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// What [`redact_text`] keeps while it reads a text word by word.
#[derive(Default)]
struct Redactor<'a> {
    /// Where the secrets found so far are in the text.
    spans: Vec<(usize, usize)>,
    next: Next,
    /// The program of the current simple command (`None` until its first word).
    program: Option<&'a str>,
}

impl<'a> Redactor<'a> {
    /// Reads one word: notes where it holds a secret, and what the next word is.
    fn word(&mut self, at: usize, word: &'a str, ends_command: bool) {
        let lower = word.to_ascii_lowercase();
        if self.after_previous(at, word, &lower) {
            return;
        }
        if ends_command {
            self.program = None;
        }
        let name = word.trim_start_matches('-');
        let flag = word.starts_with('-') && !name.is_empty();
        // The program, and what its flags mean.
        let program = self.program.unwrap_or("");
        if self.program.is_none() && !flag && !word.contains('=') && !ends_command {
            let base = word.rsplit('/').next().unwrap_or(word);
            if !WRAPPERS.contains(&base) {
                self.program = Some(base);
            }
        }
        if flag && self.program_flag(at, word, name, program) {
            return;
        }
        if self.secret_name(at, word, name, flag, &lower) {
            return;
        }
        if let Some((a, b)) = url_secret(word) {
            self.add(at, a, b);
        }
    }

    /// Reads the word as what the previous one announced; `true` when that was all of it.
    fn after_previous(&mut self, at: usize, word: &str, lower: &str) -> bool {
        let len = word.len();
        match std::mem::replace(&mut self.next, Next::Keep) {
            Next::Redact => self.add(at, 0, len),
            Next::RedactValue if !word.starts_with('-') => self.add(at, 0, len),
            Next::Credential if AUTH_SCHEMES.contains(&lower) => self.next = Next::Redact,
            Next::Credential => self.add(at, 0, len),
            Next::UserPassword => match word.find(':') {
                Some(colon) => self.add(at, colon + 1, len),
                None => return false,
            },
            Next::RedactValue | Next::Keep => return false,
        }
        true
    }

    /// A flag of the program that carries a password: `mysql -p…`, `sshpass -p …`, `-u
    /// user:…`, `--user …`; `true` when the word was read as one.
    fn program_flag(&mut self, at: usize, word: &str, name: &str, program: &str) -> bool {
        if GLUED_P_PASSWORD.contains(&program) && word.starts_with("-p") && !word.starts_with("--")
        {
            match word.len() {
                2 if program == "sshpass" => self.next = Next::Redact,
                2 => {}
                _ => self.add(at, 2, word.len()),
            }
            return true;
        }
        if let Some(user) = ["-u", "-U", "--user=", "--proxy-user="]
            .iter()
            .find(|f| word.starts_with(**f))
        {
            let value = &word[user.len()..];
            if value.is_empty() && !user.ends_with('=') {
                self.next = Next::UserPassword;
                return true;
            }
            if !word.starts_with("--") || user.ends_with('=') {
                if let Some(colon) = value.find(':') {
                    self.add(at, user.len() + colon + 1, word.len());
                    return true;
                }
            }
        }
        if matches!(name, "user" | "proxy-user") {
            self.next = Next::UserPassword;
            return true;
        }
        false
    }

    /// A word that names a secret: a header (`Authorization:`, `password:`), a scheme
    /// (`Bearer`), `name=value`, a flag (`--password`) or a word that looks secret as such
    /// (`aws_secret_access_key`); `true` when the word was read as one.
    fn secret_name(&mut self, at: usize, word: &str, name: &str, flag: bool, lower: &str) -> bool {
        if word.strip_suffix(':').is_some_and(is_secret_key) {
            self.next = Next::Credential;
            return true;
        }
        if matches!(lower, "bearer" | "basic") {
            self.next = Next::Redact;
            return true;
        }
        let before = self.spans.len();
        assignments(word, &mut |a, b| self.add(at, a, b));
        if self.spans.len() > before {
            return true;
        }
        if word.contains('=') {
            return false;
        }
        if flag && is_secret_key(name) {
            self.next = Next::Redact;
            return true;
        }
        let plain = word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !flag && plain && STRONG.iter().any(|s| lower.contains(s)) {
            self.next = Next::RedactValue;
            return true;
        }
        false
    }

    /// Notes the span `a..b` of the word at `at` as a secret.
    fn add(&mut self, at: usize, a: usize, b: usize) {
        if a < b {
            self.spans.push((at + a, at + b));
        }
    }
}

/// Calls `span` with where each secret value of a `name=value` in `word` is: a name that
/// looks secret, wherever it starts (after the start, `-`s, `?`, `&`, `=`, `;`, `,` or `:`);
/// a value after `?name=` or `&name=` ends at the next `&` or `#`, any other at the end.
fn assignments(word: &str, span: &mut dyn FnMut(usize, usize)) {
    let bytes = word.as_bytes();
    let mut key_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let key = word[key_start..i].trim_start_matches('-');
                let query = key_start > 0 && matches!(bytes[key_start - 1], b'?' | b'&');
                if !key.is_empty() && is_secret_key(key) {
                    let end = match query {
                        true => word[i + 1..]
                            .find(['&', '#'])
                            .map_or(word.len(), |e| i + 1 + e),
                        false => word.len(),
                    };
                    span(i + 1, end);
                    if !query {
                        return;
                    }
                    i = end;
                    continue;
                }
                key_start = i + 1;
            }
            b'?' | b'&' | b';' | b',' | b':' | b'/' => key_start = i + 1,
            _ => {}
        }
        i += 1;
    }
}

/// Where the secret of a URL in `word` is: the password (`scheme://user:password@host`), or
/// for `http(s)` a user part without one (`https://TOKEN@host`, a token as the user).
fn url_secret(word: &str) -> Option<(usize, usize)> {
    let scheme_end = word.find("://")?;
    let authority = scheme_end + 3;
    let end = word[authority..]
        .find(['/', '?', '#'])
        .map_or(word.len(), |e| authority + e);
    let at = word[authority..end].rfind('@')? + authority;
    match word[authority..at].find(':') {
        Some(colon) => {
            let colon = colon + authority;
            (colon + 1 < at).then_some((colon + 1, at))
        }
        None => {
            let scheme = word[..scheme_end].rsplit(['=', '\'', '"']).next()?;
            let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
            (http && authority < at).then_some((authority, at))
        }
    }
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
        assert!(matches!(redact_command("ls -la"), Cow::Borrowed(_)));
    }

    /// Issue 25's forms: none of the secret `S3CR3T` is left, and the words around it are.
    #[test]
    fn secrets_in_their_usual_forms_are_redacted() {
        for (text, want) in [
            ("sshpass -p S3CR3T ssh root@h", "sshpass -p *** ssh root@h"),
            ("sshpass -pS3CR3T ssh h", "sshpass -p*** ssh h"),
            ("mysql -uroot -pS3CR3T app", "mysql -uroot -p*** app"),
            ("sudo mysqldump -pS3CR3T app", "sudo mysqldump -p*** app"),
            ("mysql -p app", "mysql -p app"),
            ("ssh -p 22 h", "ssh -p 22 h"),
            (
                "curl -u deploy:S3CR3T https://h",
                "curl -u deploy:*** https://h",
            ),
            (
                "curl -udeploy:S3CR3T https://h",
                "curl -udeploy:*** https://h",
            ),
            (
                "curl --user deploy:S3CR3T https://h",
                "curl --user deploy:*** https://h",
            ),
            (
                "curl --user=deploy:S3CR3T https://h",
                "curl --user=deploy:*** https://h",
            ),
            (
                "curl -H 'Authorization: Bearer S3CR3T' https://h",
                "curl -H 'Authorization: Bearer ***' https://h",
            ),
            (
                "curl -H \"Authorization: Basic S3CR3T\" https://h",
                "curl -H \"Authorization: Basic ***\" https://h",
            ),
            (
                "curl -H 'X-Api-Key: S3CR3T' h",
                "curl -H 'X-Api-Key: ***' h",
            ),
            ("Bearer S3CR3T", "Bearer ***"),
            (
                "git clone https://deploy:S3CR3T@git.example/r.git",
                "git clone https://deploy:***@git.example/r.git",
            ),
            (
                "git clone https://S3CR3T@git.example/r.git",
                "git clone https://***@git.example/r.git",
            ),
            ("ssh git@h", "ssh git@h"),
            (
                "aws configure set aws_secret_access_key S3CR3T",
                "aws configure set aws_secret_access_key ***",
            ),
            ("export API_TOKEN=S3CR3T", "export API_TOKEN=***"),
            (
                "kubectl create secret generic x --from-literal=password=S3CR3T",
                "kubectl create secret *** x --from-literal=password=***",
            ),
            (
                "jdbc:mysql://h/db?user=u&password=S3CR3T&ssl=1",
                "jdbc:mysql://h/db?user=u&password=***&ssl=1",
            ),
            ("password: S3CR3T", "password: ***"),
            ("mysql --password S3CR3T", "mysql --password ***"),
        ] {
            let mut found = Vec::new();
            assert_eq!(redact_text(text, &mut found), want, "{text}");
            if text.contains("S3CR3T") {
                assert!(
                    found.iter().any(|f| f.contains("S3CR3T")),
                    "{text}: {found:?}"
                );
            }
        }
        let mut found = Vec::new();
        for (k, v, want) in [
            ("db_pw", "S3CR3T", "***"),
            ("pass", "S3CR3T", "***"),
            ("dsn", "postgres://u:S3CR3T@db/app", "***"),
            ("repo", "https://u:S3CR3T@h/r.git", "https://u:***@h/r.git"),
            (
                "header",
                "Authorization: Bearer S3CR3T",
                "Authorization: Bearer ***",
            ),
            ("host", "web01", "web01"),
            ("compass", "north", "north"),
        ] {
            assert_eq!(redact_arg(k, v, &mut found), want, "{k}");
        }
        assert_eq!(
            redact_output("ERROR 1049: Unknown database 'S3CR3T'\nok\n", &found),
            "ERROR 1049: Unknown database '***'\nok\n"
        );
        assert_eq!(redact_output("abc", &["ab".into()]), "abc");
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
            "db_pw",
            "smtp-pass",
            "DATABASE_DSN",
            "passphrase",
        ] {
            assert!(is_secret_key(k), "{k}");
            assert_eq!(redact_arg(k, "hunter2", &mut Vec::new()), REDACTED);
        }
        for k in [
            "host", "package", "count", "mode", "bypass", "compass", "pinned",
        ] {
            assert!(!is_secret_key(k), "{k}");
            assert_eq!(redact_arg(k, "v", &mut Vec::new()), "v");
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

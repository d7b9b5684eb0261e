//! `triggerfs jobs list|show` (the job history of the control plane, `GET /api/v1/jobs`) and
//! the `--rerun ID --only failed` glue of `triggerfs client`: which workers of a recorded job
//! to run again, and the request that does it.
//!
//! Logging in is `triggerfs client`'s ([`crate::client_cmd::credential_token`]): `--token`, or
//! team, identity and secret from the flags, the environment or `[main]` of triggerfs.toml.

use crate::client_cmd::ClientArgs;
use crate::console::table::Table;
use anyhow::{anyhow, bail, Result};
use api::client::ApiError;
use api::jobs::{JobPage, JobQuery, JobSummary, JobView, TriggerMinuteView};
use api::{Api, JobOutcome, JobStatus};
use launch::settings::LoginArgs;
use proto::job::REDACTED;
use std::time::Duration;

/// How `jobs`, `schedules` and `cluster` reach the API: `--token`, or team, identity and
/// secret from the flags, the environment or `[main]` of triggerfs.toml.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiLogin {
    /// JWT from the control plane, instead of logging in.
    #[arg(
        long,
        env = "TRIGGERFS_TOKEN",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    pub token: String,
    #[command(flatten)]
    pub login: LoginArgs,
}

impl ApiLogin {
    /// The API, signed in (see [`sign_in`]).
    pub(crate) async fn sign_in(&self) -> Result<Api> {
        sign_in(&self.login.url, &self.token, &self.login).await
    }
}

/// Flags of `triggerfs jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub auth: ApiLogin,
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// `triggerfs jobs ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum JobsCommand {
    /// The team's jobs, newest first.
    List {
        /// Only requests to this service.
        #[arg(long)]
        service: Option<String>,
        /// Only the runs of this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// Only jobs with this status: ok, failed, timed_out, lost, cancelled.
        #[arg(long)]
        status: Option<JobStatus>,
        /// Only jobs started within this long (e.g. `1h`, `2d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Only jobs started more than this long ago (e.g. `1d`; with `--since 2d`, the
        /// day before yesterday).
        #[arg(long, value_parser = humantime::parse_duration)]
        until: Option<Duration>,
        /// At most this many jobs (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The next page: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Only writes to this trigger (its path, e.g. `/logs/access`): its requests per
        /// minute by status, then its failures, each a job.
        #[arg(long, value_name = "PATH")]
        trigger: Option<String>,
        /// One JSON document (the API's page) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job: every worker's outcome, exit code, duration and output.
    Show {
        /// The job's id (from `jobs list`).
        id: i64,
        /// The API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// The control plane as one user: `token`, or (when it is empty) team, identity and secret.
pub(crate) async fn sign_in(url: &str, token: &str, login: &LoginArgs) -> Result<Api> {
    let token = match (token, &login.team, &login.identity, &login.secret) {
        ("", Some(t), Some(i), Some(s)) => client::login::login(url, t, i, s).await?,
        ("", ..) => bail!(
            "no credentials: give --token, or --team, --identity and --secret (or `[main]` \
             team, identity and secret in triggerfs.toml)"
        ),
        (token, ..) => token.to_string(),
    };
    Ok(Api::builder(url.split(','))
        .token(token)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// `GET path` as `T`; a refusal as `jobs` prints it, with the HTTP status.
async fn get<T: serde::de::DeserializeOwned>(api: &Api, path: &str) -> Result<T> {
    api.get(path).await.map_err(refused)
}

/// An API error as `jobs` and `schedules` print it: a refusal with its HTTP status.
pub(crate) fn refused(e: ApiError) -> anyhow::Error {
    match e {
        ApiError::Refused {
            status, message, ..
        } => match reqwest::StatusCode::from_u16(status) {
            Ok(status) => anyhow!("{message} ({status})"),
            Err(_) => anyhow!("{message} ({status})"),
        },
        e => e.into(),
    }
}

/// `triggerfs jobs ...`, on a runtime of its own.
pub fn main(args: JobsArgs) -> Result<i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// `triggerfs jobs ...`: prints to stdout, returns the exit status.
pub async fn run(args: JobsArgs) -> Result<i32> {
    let api = args.auth.sign_in().await?;
    match args.command {
        JobsCommand::List {
            service,
            schedule,
            status,
            since,
            until,
            limit,
            cursor,
            trigger,
            json,
        } => {
            let ago = |d: Duration| {
                let t = std::time::SystemTime::now()
                    .checked_sub(d)
                    .unwrap_or(std::time::UNIX_EPOCH);
                humantime::format_rfc3339_millis(t).to_string()
            };
            let query = JobQuery {
                service,
                schedule,
                status,
                since: since.map(ago),
                until: until.map(ago),
                limit: Some(limit),
                cursor,
                offset: None,
                trigger: trigger.clone(),
            };
            let page: JobPage = get(
                &api,
                &format!("/jobs?{}", serde_urlencoded::to_string(&query)?),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                if let Some(trigger) = &trigger {
                    println!("Trigger {trigger}: requests per minute, newest first");
                    for line in minutes_table(&page.minutes) {
                        println!("{line}");
                    }
                    println!("Its failures:");
                }
                for line in list_table(&page.jobs) {
                    println!("{line}");
                }
                if let Some(c) = &page.next_cursor {
                    println!("(more: the same command with --cursor {c})");
                }
            }
        }
        JobsCommand::Show { id, json } => {
            let job: JobView = get(&api, &format!("/jobs/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                for line in show_lines(&job) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(0)
}

fn command_text(job: &JobSummary) -> String {
    job.command.join(" ")
}

/// The lines of `jobs list`.
pub fn list_table(jobs: &[JobSummary]) -> Vec<String> {
    let mut t = Table::new(&[
        "id", "started", "service", "plugin", "command", "status", "ok", "workers", "who",
    ]);
    for j in jobs {
        t.row(vec![
            j.id.to_string(),
            j.started.clone(),
            j.service.clone(),
            j.plugin.clone(),
            clip(&command_text(j), 40),
            j.status.to_string(),
            j.ok.to_string(),
            j.workers.to_string(),
            j.identity.clone(),
        ]);
    }
    t.render()
}

/// The lines of `jobs list --trigger`'s counts: a minute a row.
pub fn minutes_table(minutes: &[TriggerMinuteView]) -> Vec<String> {
    let mut t = Table::new(&["minute", "ok", "failed", "timed_out", "lost", "cancelled"]);
    for m in minutes {
        let c = &m.counts;
        let counts = [c.ok, c.failed, c.timed_out, c.lost, c.cancelled];
        let mut row = vec![m.minute.clone()];
        row.extend(counts.iter().map(u64::to_string));
        t.row(row);
    }
    t.render()
}

/// The lines of `jobs show`: the job, a table of its workers, then each one's output.
pub fn show_lines(job: &JobView) -> Vec<String> {
    let j = &job.job;
    let mut lines = vec![
        format!(
            "Job {}: {} on service {} ({})",
            j.id, j.status, j.service, j.algorithm
        ),
        format!("Started:  {} by {}", j.started, j.identity),
    ];
    if let Some(trigger) = &j.trigger {
        lines.push(format!("Trigger:  {trigger}"));
    }
    lines.extend([
        format!("Plugin:   {}", j.plugin),
        format!("Command:  {}", command_text(j)),
    ]);
    if !j.args.is_empty() {
        let args: Vec<String> = j
            .args
            .iter()
            .map(|a| format!("{}={}", a.key, a.value))
            .collect();
        lines.push(format!("Args:     {}", args.join(" ")));
    }
    lines.push(format!(
        "Duration: {}",
        humantime::format_duration(Duration::from_millis(j.duration_ms.max(0) as u64))
    ));
    lines.push(String::new());
    let mut t = Table::new(&["worker", "outcome", "exit code", "duration", "last line"]);
    for w in &job.outcomes {
        t.row(vec![
            w.worker.clone(),
            w.outcome.to_string(),
            w.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            humantime::format_duration(Duration::from_millis(w.duration_ms.max(0) as u64))
                .to_string(),
            clip(w.output.lines().last().unwrap_or(""), 60),
        ]);
    }
    lines.extend(t.render());
    for w in &job.outcomes {
        if w.output.is_empty() {
            continue;
        }
        lines.push(String::new());
        let more = if w.truncated {
            " (earlier output left out)"
        } else {
            ""
        };
        lines.push(format!("--- {} ({}){more}", w.worker, w.outcome));
        lines.extend(w.output.lines().map(str::to_string));
    }
    lines
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max - 1).collect();
        s.push('…');
        s
    }
}

/// Which workers `--rerun ID --only WHICH` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Every worker whose outcome was not `ok` (failed, timed out, lost, cancelled, never
    /// answered), except one `retried` elsewhere.
    Failed,
    /// Every worker of the job.
    All,
}

/// The workers of `job` to run again, in the job's order.
pub fn rerun_workers(job: &JobView, only: Only) -> Vec<String> {
    job.outcomes
        .iter()
        .filter(|w| only == Only::All || !matches!(w.outcome, JobOutcome::Ok | JobOutcome::Retried))
        .map(|w| w.worker.clone())
        .collect()
}

/// The request that re-runs `job` on `workers`, from the caller's `base` flags (broker,
/// credentials, `--timeout`, `--json`, ...): the job's service restricted to `workers` with
/// the request option `only` (as `--only-workers`). Arguments given with `--args` replace
/// the job's of the same name; an argument the history redacted must be given again. The
/// command is the job's, word for word, unless `--command` gives another (which it must
/// when the history redacted a secret in it).
pub fn rerun_request(job: &JobView, workers: &[String], base: &ClientArgs) -> Result<ClientArgs> {
    let j = &job.job;
    let mut args = base.clone();
    args.service = j.service.clone();
    args.plugin = j.plugin.clone();
    if base.command.is_none() {
        if j.command.iter().any(|word| word.contains(REDACTED)) {
            bail!(
                "the command of job {} had a secret redacted in the history ({}); give it \
                 again with --command",
                j.id,
                command_text(j)
            );
        }
        args.command_words = Some(j.command.clone());
    }
    let mut merged: Vec<(String, String)> = Vec::new();
    for a in &j.args {
        if let Some((_, v)) = base.args.iter().find(|(k, _)| *k == a.key) {
            merged.push((a.key.clone(), v.clone()));
        } else if a.value == REDACTED {
            bail!(
                "argument `{}` of job {} was redacted in the history; give it again with \
                 --args {}=VALUE",
                a.key,
                j.id,
                a.key
            );
        } else {
            merged.push((a.key.clone(), a.value.clone()));
        }
    }
    for (k, v) in &base.args {
        if !merged.iter().any(|(mk, _)| mk == k) {
            merged.push((k.clone(), v.clone()));
        }
    }
    args.args = merged;
    args.only_workers = workers.to_vec();
    Ok(args)
}

/// `triggerfs client --rerun ID --only WHICH`: loads the job, picks its workers, and runs
/// the job's request once, on exactly those workers of its service (a worker no longer
/// bound to the service is refused by the broker, naming it).
pub async fn run_rerun(base: ClientArgs, id: i64, only: Only) -> Result<i32> {
    let token = crate::client_cmd::credential_token(&base)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let api = sign_in(&base.login.url, &token, &base.login).await?;
    let job: JobView = get(&api, &format!("/jobs/{id}")).await?;
    let workers = rerun_workers(&job, only);
    if workers.is_empty() {
        eprintln!(
            "Job {id}: no worker to run again ({} of {} ok)",
            job.job.ok, job.job.workers
        );
        return Ok(0);
    }
    let rerun = rerun_request(&job, &workers, &base)?;
    eprintln!(
        "Re-running job {id} ({}) on {} workers: {}",
        command_text(&job.job),
        workers.len(),
        workers.join(", ")
    );
    let mut args = rerun;
    args.token = token;
    Ok(crate::client_cmd::exit_status(
        crate::client_cmd::run(args).await,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::jobs::{JobArg, JobWorkerView};
    use api::Algorithm;
    use clap::Parser;

    fn job() -> JobView {
        let w = |worker: &str, outcome: JobOutcome, code: Option<i64>| JobWorkerView {
            worker: worker.into(),
            outcome,
            exit_code: code,
            duration_ms: 1500,
            output: format!("line 1\n{worker} says {outcome}\n"),
            truncated: false,
        };
        JobView {
            job: JobSummary {
                id: 42,
                started: "2026-11-29T08:00:00.000Z".into(),
                started_unix_ms: 1_795_939_200_000,
                identity: "admin".into(),
                service: "dc1".into(),
                algorithm: Algorithm::Mirror,
                plugin: "command/command".into(),
                command: vec!["apt-get -y upgrade".into()],
                args: vec![
                    JobArg {
                        key: "host".into(),
                        value: "x".into(),
                    },
                    JobArg {
                        key: "api_token".into(),
                        value: REDACTED.into(),
                    },
                ],
                status: JobStatus::Failed,
                workers: 4,
                ok: 2,
                duration_ms: 2000,
                schedule: None,
                scheduled_at: None,
                scheduled_unix_ms: None,
                trigger: None,
            },
            outcomes: vec![
                w("web01", JobOutcome::Ok, Some(0)),
                w("web02", JobOutcome::Failed, Some(100)),
                w("web03", JobOutcome::Ok, Some(0)),
                w("web04", JobOutcome::TimedOut, None),
            ],
        }
    }

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ClientArgs,
    }

    fn base(extra: &[&str]) -> ClientArgs {
        let mut argv = vec!["x", "--service", "s", "--plugin", "p"];
        argv.extend_from_slice(extra);
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn rerun_needs_no_service_or_plugin_and_only_needs_rerun() {
        let a = Wrap::try_parse_from(["x", "--rerun", "7", "--only", "all"])
            .unwrap()
            .args;
        assert_eq!((a.rerun, a.rerun_only), (Some(7), Only::All));
        let a = Wrap::try_parse_from(["x", "--rerun", "7"]).unwrap().args;
        assert_eq!(a.rerun_only, Only::Failed);
        assert!(Wrap::try_parse_from(["x", "--plugin", "p"]).is_err());
        assert!(
            Wrap::try_parse_from(["x", "--service", "s", "--plugin", "p", "--only", "all"])
                .is_err()
        );
    }

    #[test]
    fn only_failed_picks_the_workers_that_did_not_succeed() {
        let j = job();
        assert_eq!(rerun_workers(&j, Only::Failed), vec!["web02", "web04"]);
        assert_eq!(rerun_workers(&j, Only::All).len(), 4);
    }

    #[test]
    fn the_rerun_request_repeats_the_job_and_asks_for_redacted_args() {
        let j = job();
        let workers = rerun_workers(&j, Only::Failed);
        let err = rerun_request(&j, &workers, &base(&[])).unwrap_err();
        assert!(err.to_string().contains("api_token"), "{err}");
        let r = rerun_request(&j, &workers, &base(&["--args", "api_token=t0k"])).unwrap();
        assert_eq!(r.service, "dc1");
        assert_eq!(r.plugin, "command/command");
        assert_eq!(r.command, None);
        assert_eq!(
            r.command_words.as_deref(),
            Some(&["apt-get -y upgrade".to_string()][..])
        );
        assert_eq!(
            r.args,
            vec![
                ("host".to_string(), "x".to_string()),
                ("api_token".to_string(), "t0k".to_string())
            ]
        );
        assert_eq!(r.only_workers, vec!["web02", "web04"]);
    }

    /// A job sent as several words runs again as those words; one whose command had a
    /// secret redacted needs `--command`, which then replaces it.
    #[test]
    fn the_rerun_keeps_the_words_and_asks_for_a_redacted_command() {
        let mut j = job();
        j.job.args.clear();
        j.job.command = vec!["printf".into(), "%s\n".into(), "a b".into()];
        let r = rerun_request(&j, &[], &base(&[])).unwrap();
        assert_eq!(
            r.command_words,
            Some(vec!["printf".into(), "%s\n".into(), "a b".into()])
        );
        let spec = crate::client_cmd::request_spec(&r, std::io::empty()).unwrap();
        assert_eq!(spec.command, ["printf", "%s\n", "a b"]);
        j.job.command = vec!["curl https://u:***@repo/x".into()];
        let err = rerun_request(&j, &[], &base(&[])).unwrap_err();
        assert!(
            err.to_string().contains("give it again with --command"),
            "{err}"
        );
        let r = rerun_request(&j, &[], &base(&["--command", "curl https://u:pw@repo/x"])).unwrap();
        let spec = crate::client_cmd::request_spec(&r, std::io::empty()).unwrap();
        assert_eq!(spec.command, ["curl https://u:pw@repo/x"]);
    }

    #[test]
    fn tables_are_aligned() {
        let j = job();
        let lines = show_lines(&j);
        assert!(
            lines[0].starts_with("Job 42: failed on service dc1"),
            "{lines:?}"
        );
        let table: Vec<&String> = lines.iter().filter(|l| l.contains("web0")).collect();
        assert!(table
            .iter()
            .any(|l| l.contains("web04") && l.contains("timed_out")));
        let list = list_table(std::slice::from_ref(&j.job));
        assert!(list.last().unwrap().contains("(1 rows)"), "{list:?}");
        let widths: Vec<usize> = list[..list.len() - 1]
            .iter()
            .map(|l| l.find('|').unwrap_or(0))
            .collect();
        assert!(
            widths
                .windows(2)
                .all(|w| w[0] == w[1] || w[1] == 0 || w[0] == 0),
            "{list:?}"
        );
    }
}

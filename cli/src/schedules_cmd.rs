//! `triggerfs schedules list|show|create|run|pause|resume|delete`: the team's schedules
//! (`/api/v1/schedules`), requests the control plane runs on a timetable as their owner.
//! Logging in is `triggerfs jobs`'s.

use crate::console::table::Table;
use crate::jobs_cmd::{refused, ApiLogin};
use anyhow::Result;
use api::gateway::{CommandWords, GatewayRequest, ShareText};
use api::schedules::{
    Concurrency, CreateSchedule, Cron, Every, PauseSchedule, RunView, ScheduleView,
    ScheduleVisibility, Timetable,
};
use api::{Api, Timeout};
use std::collections::BTreeMap;

/// Flags of `triggerfs schedules`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulesArgs {
    #[command(flatten)]
    pub auth: ApiLogin,
    /// The API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: SchedulesCommand,
}

/// `triggerfs schedules ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SchedulesCommand {
    /// The team's schedules: timetable, state, next run, last run and its outcome.
    List,
    /// One schedule.
    Show {
        /// Its name.
        name: String,
    },
    /// A new schedule (you are its owner: its runs have your rights when they run).
    Create(Box<CreateArgs>),
    /// Run it once now, as its owner.
    Run {
        /// Its name.
        name: String,
    },
    /// Stop starting its runs.
    Pause {
        /// Its name.
        name: String,
        /// Why (shown with it).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start its runs again, from its next due time.
    Resume {
        /// Its name.
        name: String,
    },
    /// Delete it.
    Delete {
        /// Its name.
        name: String,
    },
}

/// `triggerfs schedules create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Its name.
    pub name: String,
    /// The service each run goes to.
    #[arg(long)]
    pub service: String,
    /// The plugin.
    #[arg(long)]
    pub plugin: String,
    /// The command text.
    #[arg(long)]
    pub command: Option<String>,
    /// A plugin argument `key=value` (repeatable).
    #[arg(long = "args", value_parser = crate::client_cmd::parse_key_value)]
    pub args: Vec<(String, String)>,
    /// Each worker's timeout (`30m`).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Run every so long (`10m`); or give --cron.
    #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
    pub every: Option<String>,
    /// With --every: start each run up to this much later, at random.
    #[arg(long, requires = "every")]
    pub jitter: Option<String>,
    /// A cron expression (`0 3 * * *`: 03:00 daily).
    #[arg(long)]
    pub cron: Option<String>,
    /// With --cron: its IANA time zone (`Europe/Berlin`; default UTC).
    #[arg(long, requires = "cron")]
    pub time_zone: Option<String>,
    /// Workers at once (`10` or `10%`).
    #[arg(long)]
    pub batch: Option<String>,
    /// Start no worker once more than this many failed (`5` or `5%`).
    #[arg(long)]
    pub max_failures: Option<String>,
    /// The run succeeds once this many workers exited 0.
    #[arg(long)]
    pub quorum: Option<u32>,
    /// The whole run ends this long after it started (`1h`).
    #[arg(long)]
    pub deadline: Option<String>,
    /// Only these workers of the service (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only_workers: Vec<String>,
    /// While the last run still runs: forbid (skip), allow, replace (cancel it).
    #[arg(long)]
    pub concurrency: Option<Concurrency>,
    /// Runs missed while no control plane ran: the latest runs once if at most this late
    /// (without it they are skipped).
    #[arg(long)]
    pub starting_deadline: Option<String>,
    /// local (you and the admins see it) or team.
    #[arg(long)]
    pub visibility: Option<ScheduleVisibility>,
}

impl CreateArgs {
    /// The API's body.
    pub fn body(self) -> CreateSchedule {
        let text = |t: Option<String>| t.map(|t| Timeout::from(t.as_str()));
        let args: BTreeMap<String, String> = self.args.into_iter().collect();
        CreateSchedule {
            name: self.name,
            service: self.service,
            request: GatewayRequest {
                plugin: self.plugin,
                command: self.command.map(CommandWords::One),
                args: (!args.is_empty()).then_some(args),
                timeout: text(self.timeout),
                batch: self.batch.map(ShareText::Text),
                max_failures: self.max_failures.map(ShareText::Text),
                quorum: self.quorum,
                deadline: text(self.deadline),
                only: (!self.only_workers.is_empty()).then_some(self.only_workers),
                ..GatewayRequest::default()
            },
            timetable: match (self.every, self.cron) {
                (Some(every), _) => Timetable::Every(Every {
                    every: Timeout::from(every.as_str()),
                    jitter: text(self.jitter),
                }),
                (None, cron) => Timetable::Cron(Cron {
                    cron: cron.unwrap_or_default(),
                    time_zone: self.time_zone,
                }),
            },
            concurrency: self.concurrency,
            starting_deadline: text(self.starting_deadline),
            visibility: self.visibility,
            description: None,
            paused: None,
        }
    }
}

/// `triggerfs schedules ...`, on a runtime of its own.
pub fn main(args: SchedulesArgs) -> Result<i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn path(name: &str) -> String {
    format!("/schedules/{}", crate::console::path_part(name))
}

/// `triggerfs schedules ...`: prints to stdout, returns the exit status.
pub async fn run(args: SchedulesArgs) -> Result<i32> {
    let api = args.auth.sign_in().await?;
    let json = args.json;
    match args.command {
        SchedulesCommand::List => {
            let all: Vec<ScheduleView> = api.get("/schedules").await.map_err(refused)?;
            print(json, &all, || list_table(&all))
        }
        SchedulesCommand::Show { name } => {
            let one: ScheduleView = api.get(&path(&name)).await.map_err(refused)?;
            print(json, &one, || show_lines(&one))
        }
        SchedulesCommand::Create(create) => {
            let made: ScheduleView = post(&api, "/schedules", &create.body()).await?;
            print(json, &made, || show_lines(&made))
        }
        SchedulesCommand::Run { name } => {
            let run: RunView = post(&api, &format!("{}/run", path(&name)), &()).await?;
            print(json, &run, || {
                vec![format!("{name}: run started at {}", run.started_at)]
            })
        }
        SchedulesCommand::Pause { name, reason } => {
            let body = PauseSchedule { reason };
            let one: ScheduleView = post(&api, &format!("{}/pause", path(&name)), &body).await?;
            print(json, &one, || show_lines(&one))
        }
        SchedulesCommand::Resume { name } => {
            let one: ScheduleView = post(&api, &format!("{}/resume", path(&name)), &()).await?;
            print(json, &one, || show_lines(&one))
        }
        SchedulesCommand::Delete { name } => {
            let _: serde::de::IgnoredAny = api.delete(&path(&name)).await.map_err(refused)?;
            Ok(0)
        }
    }
}

async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
    api: &Api,
    path: &str,
    body: &B,
) -> Result<T> {
    api.post(path, body).await.map_err(refused)
}

/// `answer` as JSON, or the lines `lines` makes of it.
fn print<T: serde::Serialize>(
    json: bool,
    answer: &T,
    lines: impl FnOnce() -> Vec<String>,
) -> Result<i32> {
    if json {
        println!("{}", serde_json::to_string_pretty(answer)?);
    } else {
        for line in lines() {
            println!("{line}");
        }
    }
    Ok(0)
}

/// `every 10m` or `cron 0 3 * * * Europe/Berlin`.
pub fn timetable(s: &ScheduleView) -> String {
    match &s.timetable {
        Timetable::Every(Every {
            every,
            jitter: Some(jitter),
        }) => format!("every {} (jitter {})", every.as_str(), jitter.as_str()),
        Timetable::Every(Every { every, .. }) => format!("every {}", every.as_str()),
        Timetable::Cron(Cron { cron, time_zone }) => {
            format!("cron {cron} {}", time_zone.as_deref().unwrap_or("UTC"))
        }
    }
}

/// The lines of `schedules list` (and the console's `show schedules`).
pub fn list_table(all: &[ScheduleView]) -> Vec<String> {
    let mut t = Table::new(&[
        "name",
        "timetable",
        "service",
        "state",
        "next run",
        "last run",
        "outcome",
        "runs",
        "skipped",
        "owner",
    ]);
    for s in all {
        let last = s.last_run.as_ref();
        t.row(vec![
            s.name.clone(),
            timetable(s),
            s.service.clone(),
            s.state.to_string(),
            s.next_run.clone().unwrap_or_else(|| "-".into()),
            last.map_or_else(|| "-".into(), |r| r.scheduled_at.clone()),
            last.map_or_else(|| "-".into(), |r| r.outcome.to_string()),
            s.runs.to_string(),
            s.skipped.to_string(),
            s.owner.clone(),
        ]);
    }
    t.render()
}

/// The lines of `schedules show`.
pub fn show_lines(s: &ScheduleView) -> Vec<String> {
    let mut lines = list_table(std::slice::from_ref(s));
    let r = &s.request;
    lines.push(format!(
        "request: plugin {} command {:?} concurrency {}",
        r.plugin,
        r.command
            .clone()
            .map(CommandWords::into_words)
            .unwrap_or_default()
            .join(" "),
        s.concurrency
    ));
    if let Some(reason) = &s.reason {
        lines.push(format!("paused: {reason}"));
    }
    lines
}

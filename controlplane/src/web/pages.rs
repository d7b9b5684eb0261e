//! The view's read-only pages. Each calls the `/api/v1` handler of what it shows, as the
//! logged-in user, and draws its answer: the same rows, the same 404s.

use super::html::{csrf_field, esc, message, seg, Section};
use super::{WebError, WebUser};
use crate::extract::{Json, Path};
use crate::routes::{jobs, schedules, services, workers};
use crate::state::AppState;
use api::jobs::{JobQuery, JobView, JobWorkerView};
use api::schedules::{ScheduleView, Timetable};
use api::services::ServiceView;
use api::workers::WorkerView;
use api::{JobOutcome, JobStatus};
use axum::extract::{Query, RawQuery, State};
use axum::response::Response;
use proto::control::WorkerState;
use proto::TextEnum;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use strum::VariantNames;

type PageResult = Result<Response, WebError>;

fn state_class(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Online => "online",
        WorkerState::Disconnected => "offline",
    }
}

/// The CSS class of an outcome's colour: green, red, amber, grey.
pub(crate) fn outcome_class(outcome: JobOutcome) -> &'static str {
    match outcome {
        JobOutcome::Ok | JobOutcome::Retried => "ok",
        JobOutcome::Failed | JobOutcome::Lost => "failed",
        JobOutcome::TimedOut | JobOutcome::NoResponse | JobOutcome::Offline => "warn",
        JobOutcome::Cancelled | JobOutcome::Skipped | JobOutcome::Detached => "grey",
    }
}

fn status_class(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Ok => "ok",
        JobStatus::Failed | JobStatus::Lost => "failed",
        JobStatus::TimedOut => "warn",
        JobStatus::Cancelled => "grey",
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct FleetQuery {
    /// Text the identity, description or a service name contains.
    q: Option<String>,
    /// `online` or `offline` (empty: both).
    state: Option<String>,
}

/// Fleet: every worker of the team with its state, when it was last seen and the services it
/// is bound to (those it serves now marked); filtered by state and text.
pub(crate) async fn fleet(
    State(state): State<AppState>,
    web: WebUser,
    Query(filter): Query<FleetQuery>,
) -> PageResult {
    let Json(all) = workers::list_workers(State(state.clone()), web.user.clone()).await?;
    let Json(services) = services::list_services(State(state), web.user.clone()).await?;
    let mut bound: HashMap<&str, Vec<(&str, bool)>> = HashMap::new();
    for s in &services {
        for w in &s.workers {
            let serving = s.serving.contains(w);
            bound.entry(w).or_default().push((&s.name, serving));
        }
    }
    let text = filter.q.as_deref().unwrap_or("").trim().to_lowercase();
    let want = filter.state.as_deref().unwrap_or("");
    let shown: Vec<&WorkerView> = all
        .iter()
        .filter(|w| want.is_empty() || state_class(w.state) == want)
        .filter(|w| {
            text.is_empty()
                || w.identity.to_lowercase().contains(&text)
                || w.description.to_lowercase().contains(&text)
                || bound
                    .get(w.identity.as_str())
                    .is_some_and(|s| s.iter().any(|(n, _)| n.to_lowercase().contains(&text)))
        })
        .collect();
    let n_online = all
        .iter()
        .filter(|w| w.state == WorkerState::Online)
        .count();
    let mut body = format!(
        "<h1>Fleet</h1><p class=counts><span class=\"pill online\">{n_online} online</span> \
         <span class=\"pill offline\">{} offline</span> {} workers</p>\
         <form class=filters method=get action=\"/fleet\">\
         <input type=search name=q placeholder=\"search identity, description, service\" \
         value=\"{}\" data-filter=\"#fleet tbody tr\">\
         <select name=state><option value=\"\">any state</option>{}{}</select>\
         <button>Filter</button></form>",
        all.len() - n_online,
        all.len(),
        esc(&text),
        option("online", "online", want),
        option("offline", "offline", want),
    );
    body.push_str(
        "<table id=fleet><thead><tr><th>Worker</th><th>State</th><th>Last seen</th>\
         <th>Nodes</th><th>Services</th><th>Description</th></tr></thead><tbody>",
    );
    for w in &shown {
        let services = bound.get(w.identity.as_str()).map_or(String::new(), |s| {
            s.iter()
                .map(|(name, serving)| {
                    let class = if *serving { "svc serving" } else { "svc" };
                    format!(
                        "<a class=\"{class}\" href=\"/services/{}\">{}</a>",
                        seg(name),
                        esc(name)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        let _ = write!(
            body,
            "<tr><td>{}</td><td><span class=\"pill {}\">{}</span></td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&w.identity),
            state_class(w.state),
            w.state.as_str(),
            esc(w.last_seen.as_deref().unwrap_or("never")),
            w.nodes,
            services,
            esc(&w.description),
        );
    }
    body.push_str("</tbody></table>");
    if shown.is_empty() {
        body.push_str(&message("note", "no worker matches"));
    }
    Ok(web.page("Fleet", Section::Fleet, &body))
}

fn option(value: &str, label: &str, selected: &str) -> String {
    let sel = if value == selected { " selected" } else { "" };
    format!(
        "<option value=\"{}\"{sel}>{}</option>",
        esc(value),
        esc(label)
    )
}

/// Services: each with its algorithm, visibility and workers (those serving marked).
pub(crate) async fn services(State(state): State<AppState>, web: WebUser) -> PageResult {
    let Json(all) = services::list_services(State(state), web.user.clone()).await?;
    let mut body = String::from(
        "<h1>Services</h1><table id=services><thead><tr><th>Service</th><th>Algorithm</th>\
         <th>Visibility</th><th>Serving</th><th>Workers</th><th>Description</th></tr></thead><tbody>",
    );
    for s in &all {
        let _ = write!(
            body,
            "<tr><td><a href=\"/services/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td>{} of {}</td><td>{}</td><td>{}</td></tr>",
            seg(&s.name),
            esc(&s.name),
            s.algorithm.as_str(),
            s.visibility.as_str(),
            s.serving.len(),
            s.workers.len(),
            worker_list(s),
            esc(&s.description),
        );
    }
    body.push_str("</tbody></table>");
    if all.is_empty() {
        body.push_str(&message("note", "no services yet"));
    }
    Ok(web.page("Services", Section::Services, &body))
}

fn worker_list(s: &ServiceView) -> String {
    const SHOWN: usize = 20;
    let mut out: Vec<String> = s
        .workers
        .iter()
        .take(SHOWN)
        .map(|w| {
            let class = if s.serving.contains(w) {
                "pill online"
            } else {
                "pill offline"
            };
            format!("<span class=\"{class}\">{}</span>", esc(w))
        })
        .collect();
    if s.workers.len() > SHOWN {
        out.push(format!("and {} more", s.workers.len() - SHOWN));
    }
    out.join(" ")
}

/// One service: its settings, its workers with their state, the form that runs a request on
/// it, and its latest jobs.
pub(crate) async fn service(
    State(state): State<AppState>,
    web: WebUser,
    Path(name): Path<String>,
) -> PageResult {
    let Json(s) =
        services::get_service(State(state.clone()), web.user.clone(), Path(name.clone())).await?;
    Ok(service_page(&state, &web, &s, None).await)
}

/// The service page, with `error` above the run form (a request the broker refused).
pub(crate) async fn service_page(
    state: &AppState,
    web: &WebUser,
    s: &ServiceView,
    error: Option<&str>,
) -> Response {
    let states: HashMap<String, WorkerView> =
        match workers::list_workers(State(state.clone()), web.user.clone()).await {
            Ok(Json(all)) => all.into_iter().map(|w| (w.identity.clone(), w)).collect(),
            Err(_) => HashMap::new(),
        };
    let mut body = format!(
        "<h1>Service {}</h1><p>{}</p><dl class=facts><dt>Algorithm</dt><dd>{}</dd>\
         <dt>Visibility</dt><dd>{}</dd><dt>Timeout</dt><dd>{}</dd><dt>History</dt><dd>{}</dd>\
         <dt>Owner</dt><dd>{}</dd><dt>Serving</dt><dd>{} of {} workers</dd></dl>",
        esc(&s.name),
        esc(&s.description),
        s.algorithm.as_str(),
        s.visibility.as_str(),
        s.timeout
            .as_ref()
            .map_or("default".to_string(), |t| esc(&t.to_string())),
        s.history.as_str(),
        esc(&s.owner),
        s.serving.len(),
        s.workers.len(),
    );
    let _ = write!(
        body,
        "<h2>Run a request</h2>{}<form class=run method=post action=\"/services/{}/run\">{}\
         <label>Plugin <input name=plugin value=command required></label>\
         <label class=wide>Command <input name=command placeholder=\"uptime\"></label>\
         <label class=wide>Arguments <textarea name=args rows=2 \
         placeholder=\"key=value, one a line\"></textarea></label>\
         <label class=wide>Payload <textarea name=payload rows=2></textarea></label>\
         <fieldset><legend>Fleet options</legend>\
         <label>Timeout <input name=timeout placeholder=\"30s\" size=6></label>\
         <label>Batch <input name=batch placeholder=\"10 or 20%\" size=8></label>\
         <label>Max failures <input name=max_failures placeholder=\"5 or 10%\" size=8></label>\
         <label>Quorum <input name=quorum type=number min=1 size=4></label>\
         <label>Deadline <input name=deadline placeholder=\"10m\" size=6></label>\
         <label class=wide>Only <input name=only placeholder=\"worker identities, comma-separated\">\
         </label></fieldset><button>Run</button></form>",
        error.map(|e| message("error", e)).unwrap_or_default(),
        seg(&s.name),
        csrf_field(&web.csrf),
    );
    body.push_str(
        "<h2>Workers</h2><table><thead><tr><th>Worker</th><th>State</th><th>Last seen</th>\
         </tr></thead><tbody>",
    );
    for w in &s.workers {
        let (class, text, seen) = match states.get(w) {
            Some(v) => (
                state_class(v.state),
                v.state.as_str(),
                v.last_seen.clone().unwrap_or_else(|| "never".into()),
            ),
            None => ("offline", "?", String::new()),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td><span class=\"pill {class}\">{text}</span></td><td>{}</td></tr>",
            esc(w),
            esc(&seen)
        );
    }
    let _ = write!(
        body,
        "</tbody></table><p><a href=\"/jobs?service={}\">Jobs of {}</a></p>",
        seg(&s.name),
        esc(&s.name)
    );
    web.page(&s.name, Section::Services, &body)
}

/// The job history as `GET /api/v1/jobs` answers it, with its filters (empty fields left
/// out), newest first, a page at a time; the user's requests still running above it.
pub(crate) async fn jobs(
    State(state): State<AppState>,
    web: WebUser,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect();
    // `since` and `until` as `jobs list` takes them too: a duration back from now (`1d`).
    let asked: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| match (k.as_str(), humantime::parse_duration(v)) {
            ("since" | "until", Ok(back)) => {
                let t = std::time::SystemTime::now()
                    .checked_sub(back)
                    .unwrap_or(std::time::UNIX_EPOCH);
                (k.clone(), humantime::format_rfc3339_millis(t).to_string())
            }
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let text = serde_urlencoded::to_string(&asked).unwrap_or_default();
    let query: JobQuery = serde_urlencoded::from_str(&text)
        .map_err(|e| WebError::Api(crate::error::ApiError::BadRequest(e.to_string())))?;
    let given: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let Json(page) =
        jobs::list_jobs(State(state.clone()), web.user.clone(), Ok(Query(query))).await?;
    let mut body = String::from("<h1>Jobs</h1>");
    body.push_str(&super::runs::running_list(&state, &web.user));
    let field = |name: &str, placeholder: &str| {
        format!(
            "<input name={name} placeholder=\"{placeholder}\" value=\"{}\">",
            esc(given.get(name).copied().unwrap_or(""))
        )
    };
    let status = given.get("status").copied().unwrap_or("");
    let statuses: String = std::iter::once(option("", "any status", status))
        .chain(JobStatus::VARIANTS.iter().map(|s| option(s, s, status)))
        .collect();
    let _ = write!(
        body,
        "<form class=filters method=get action=\"/jobs\">{}{}<select name=status>{statuses}\
         </select>{}{}{}<button>Filter</button></form>",
        field("service", "service"),
        field("schedule", "schedule"),
        field("trigger", "trigger path"),
        field("since", "since (1d, or RFC 3339)"),
        field("until", "until (2h, or RFC 3339)"),
    );
    body.push_str(
        "<table id=jobs><thead><tr><th>Job</th><th>Started</th><th>By</th><th>Service</th>\
         <th>Status</th><th>Workers ok</th><th>Duration</th><th>Command</th></tr></thead><tbody>",
    );
    for j in &page.jobs {
        let origin = match (&j.schedule, &j.trigger) {
            (Some(s), _) => format!(" <span class=tag>schedule {}</span>", esc(s)),
            (_, Some(t)) => format!(" <span class=tag>trigger {}</span>", esc(t)),
            _ => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td><a href=\"/jobs/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td><span class=\"pill {}\">{}</span></td><td>{} / {}</td><td>{} ms</td>\
             <td><code>{}</code>{origin}</td></tr>",
            esc(&j.started),
            esc(&j.identity),
            esc(&j.service),
            status_class(j.status),
            j.status.as_str(),
            j.ok,
            j.workers,
            j.duration_ms,
            esc(&j.command.join(" ")),
            id = j.id,
        );
    }
    body.push_str("</tbody></table>");
    if page.jobs.is_empty() {
        body.push_str(&message("note", "no jobs match"));
    }
    if let Some(cursor) = &page.next_cursor {
        let mut next: Vec<(&str, &str)> = given
            .iter()
            .filter(|(k, _)| !matches!(**k, "cursor" | "offset"))
            .map(|(k, v)| (*k, *v))
            .collect();
        next.push(("cursor", cursor));
        let _ = write!(
            body,
            "<p><a rel=next href=\"/jobs?{}\">Older jobs</a></p>",
            esc(&serde_urlencoded::to_string(&next).unwrap_or_default())
        );
    }
    Ok(web.page("Jobs", Section::Jobs, &body))
}

/// How many of `outcomes` ended each way, in a fixed order.
fn tally(outcomes: &[JobWorkerView]) -> Vec<(JobOutcome, usize)> {
    let mut counts: BTreeMap<JobOutcome, usize> = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.outcome).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// The bar of a finished job: one segment per outcome, as wide as its share.
fn bar(counts: &[(JobOutcome, usize)], total: usize) -> String {
    let mut out = String::from("<div class=bar>");
    for (outcome, n) in counts {
        let pct = (*n as f64) * 100.0 / (total.max(1) as f64);
        let _ = write!(
            out,
            "<span class=\"{}\" style=\"width:{pct:.2}%\"></span>",
            outcome_class(*outcome)
        );
    }
    out.push_str("</div><p class=counts>");
    for (outcome, n) in counts {
        let _ = write!(
            out,
            "<span class=\"pill {}\" data-outcome=\"{}\">{n} {}</span> ",
            outcome_class(*outcome),
            outcome.as_str(),
            outcome.as_str()
        );
    }
    out.push_str("</p>");
    out
}

/// One job: what ran, then a grid of its workers coloured by outcome, each opening that
/// worker's output.
pub(crate) async fn job(
    State(state): State<AppState>,
    web: WebUser,
    Path(id): Path<String>,
) -> PageResult {
    let Json(view) = jobs::get_job(State(state), web.user.clone(), Path(id)).await?;
    let j = &view.job;
    let counts = tally(&view.outcomes);
    let mut body = format!(
        "<h1>Job {}</h1><dl class=facts><dt>Service</dt><dd><a href=\"/services/{}\">{}</a></dd>\
         <dt>Sent by</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd><dt>Status</dt>\
         <dd><span class=\"pill {}\">{}</span></dd><dt>Algorithm</dt><dd>{}</dd>\
         <dt>Command</dt><dd><code>{} {}</code></dd><dt>Duration</dt><dd>{} ms</dd></dl>",
        j.id,
        seg(&j.service),
        esc(&j.service),
        esc(&j.identity),
        esc(&j.started),
        status_class(j.status),
        j.status.as_str(),
        j.algorithm.as_str(),
        esc(&j.plugin),
        esc(&j.command.join(" ")),
        j.duration_ms,
    );
    body.push_str(&bar(&counts, view.outcomes.len()));
    body.push_str(&grid(&view));
    Ok(web.page(&format!("Job {}", j.id), Section::Jobs, &body))
}

/// The grid of a finished job's workers: one link a worker, failures first in no way but
/// their colour (the order is the job's).
fn grid(view: &JobView) -> String {
    let id = view.job.id;
    let mut out = String::with_capacity(view.outcomes.len() * 120 + 64);
    out.push_str("<div class=grid id=grid>");
    for w in &view.outcomes {
        let exit = w
            .exit_code
            .map(|c| format!(", exit {c}"))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<a class=\"cell {}\" data-outcome=\"{}\" href=\"/jobs/{id}/workers/{}\" \
             title=\"{} · {}{exit}\">{}</a>",
            outcome_class(w.outcome),
            w.outcome.as_str(),
            seg(&w.worker),
            esc(&w.worker),
            w.outcome.as_str(),
            esc(&w.worker),
        );
    }
    out.push_str("</div>");
    out
}

/// One worker's part of a job: its outcome and the output the history kept.
pub(crate) async fn job_output(
    State(state): State<AppState>,
    web: WebUser,
    Path((id, worker)): Path<(String, String)>,
) -> PageResult {
    let Json(view) = jobs::get_job(State(state), web.user.clone(), Path(id)).await?;
    let Some(w) = view.outcomes.iter().find(|w| w.worker == worker) else {
        return Err(WebError::Api(crate::error::ApiError::NotFound(format!(
            "no worker {worker} in job {}",
            view.job.id
        ))));
    };
    let body = format!(
        "<p><a href=\"/jobs/{id}\">← Job {id}</a></p><h1>{} in job {id}</h1>\
         <p><span class=\"pill {}\" id=outcome>{}</span> exit code {}, {} ms</p>{}\
         <pre class=output id=output>{}</pre>",
        esc(&w.worker),
        outcome_class(w.outcome),
        w.outcome.as_str(),
        w.exit_code.map_or("none".to_string(), |c| c.to_string()),
        w.duration_ms,
        if w.truncated {
            message("note", "earlier output was left out")
        } else {
            String::new()
        },
        esc(&w.output),
        id = view.job.id,
    );
    Ok(web.page(&w.worker, Section::Jobs, &body))
}

fn timetable_text(t: &Timetable) -> String {
    match t {
        Timetable::Every(e) => match &e.jitter {
            Some(j) => format!("every {} (jitter {j})", e.every),
            None => format!("every {}", e.every),
        },
        Timetable::Cron(c) => match &c.time_zone {
            Some(tz) => format!("cron {} ({tz})", c.cron),
            None => format!("cron {}", c.cron),
        },
    }
}

/// Schedules: when each runs next and how its last run went.
pub(crate) async fn schedules(State(state): State<AppState>, web: WebUser) -> PageResult {
    let Json(all) = schedules::list_schedules(State(state), web.user.clone()).await?;
    let mut body = String::from(
        "<h1>Schedules</h1><table id=schedules><thead><tr><th>Schedule</th><th>Service</th>\
         <th>Timetable</th><th>State</th><th>Next run</th><th>Last run</th><th>Runs</th>\
         <th>Skipped</th></tr></thead><tbody>",
    );
    for s in &all {
        body.push_str(&schedule_row(s));
    }
    body.push_str("</tbody></table>");
    if all.is_empty() {
        body.push_str(&message("note", "no schedules"));
    }
    Ok(web.page("Schedules", Section::Schedules, &body))
}

fn schedule_row(s: &ScheduleView) -> String {
    let last = s.last_run.as_ref().map_or("never".to_string(), |r| {
        format!(
            "{} <span class=tag>{}</span>",
            esc(&r.started_at),
            r.outcome.as_str()
        )
    });
    let reason = s
        .reason
        .as_ref()
        .map(|r| format!(" ({})", esc(r)))
        .unwrap_or_default();
    format!(
        "<tr><td><a href=\"/jobs?schedule={}\">{}</a></td><td>{}</td><td>{}</td><td>{}{reason}</td>\
         <td>{}</td><td>{last}</td><td>{}</td><td>{}</td></tr>",
        seg(&s.name),
        esc(&s.name),
        esc(&s.service),
        esc(&timetable_text(&s.timetable)),
        s.state.as_str(),
        esc(s.next_run.as_deref().unwrap_or("—")),
        s.runs,
        s.skipped,
    )
}

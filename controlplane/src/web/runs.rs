//! Requests run from the browser: `POST /services/{name}/run` sends the request through the
//! broker as the logged-in user (the gateway's own path: `gateway::request_spec`,
//! `gateway::connect`), and a task follows its events into a [`Run`] held here. The run's
//! page draws its grid so far; `GET /runs/{id}/events` (SSE) sends what follows, batched, so
//! the grid and the counts of the progress bar move live. A run is its sender's alone (any
//! other user gets 404); when it ends, the broker's record of it is in the job history.
//!
//! Bounded: at most [`MAX_RUNS`] runs are held (the oldest finished one makes room), each
//! keeping the last [`WORKER_TAIL`] bytes of output per worker and at most [`LOG_OUTPUT`]
//! bytes of output lines in its event log.

use super::html::{esc, message, seg, Section};
use super::pages::outcome_class;
use super::{WebError, WebUser};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::Path;
use crate::routes::{gateway, services};
use crate::state::AppState;
use api::gateway::{GatewayEvent, GatewayRequest, RequestError};
use api::JobOutcome;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use client::ClientEvent;
use proto::TextEnum;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// Runs held at once (running or finished): each may hold a few MB.
pub(crate) const MAX_RUNS: usize = 32;
/// Runs of one user running at once (so that one user cannot take every place).
pub(crate) const MAX_RUNNING_PER_USER: usize = 8;
/// Output kept per worker of a run (its tail), for the cell's page.
pub(crate) const WORKER_TAIL: usize = 16 * 1024;
/// Output lines kept in a run's event log, for pages that join late (past it, lines are
/// counted, not kept; the workers' states always are).
pub(crate) const LOG_OUTPUT: usize = 2 * 1024 * 1024;
/// Events in one SSE message at most.
const BATCH: usize = 500;

/// The runs this control plane holds, oldest first.
#[derive(Default)]
pub(crate) struct LiveRuns {
    runs: Mutex<VecDeque<Arc<Run>>>,
}

/// One request run from the browser.
pub(crate) struct Run {
    id: String,
    user_id: i64,
    team_id: i64,
    service: String,
    command: String,
    state: Mutex<RunState>,
    /// The length of the event log, moved on every change.
    changed: tokio::sync::watch::Sender<usize>,
}

/// One entry of a run's event log: the gateway's event, and for a worker's end the
/// outcome and its colour (decided here, so the page's script holds no table of them).
#[derive(Serialize)]
struct LiveEvent {
    #[serde(flatten)]
    event: GatewayEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<JobOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<&'static str>,
}

#[derive(Default)]
struct RunState {
    log: Vec<LiveEvent>,
    log_output: usize,
    dropped_lines: u64,
    workers: Vec<WorkerLive>,
    index: HashMap<String, usize>,
    /// Workers the broker routed it to.
    expected: u32,
    ended: Option<String>,
}

struct WorkerLive {
    name: String,
    /// `None` while it runs.
    outcome: Option<JobOutcome>,
    exit_code: Option<i32>,
    tail: String,
    truncated: bool,
}

impl RunState {
    fn worker(&mut self, name: &str) -> &mut WorkerLive {
        let idx = match self.index.get(name) {
            Some(idx) => *idx,
            None => {
                self.index.insert(name.to_string(), self.workers.len());
                self.workers.push(WorkerLive {
                    name: name.to_string(),
                    outcome: None,
                    exit_code: None,
                    tail: String::new(),
                    truncated: false,
                });
                self.workers.len() - 1
            }
        };
        &mut self.workers[idx]
    }

    /// Takes in one event of the request.
    fn apply(&mut self, event: GatewayEvent) {
        let mut outcome = None;
        match &event {
            GatewayEvent::Routed { workers, .. } | GatewayEvent::Queued { workers } => {
                self.expected = *workers
            }
            GatewayEvent::Accepted { worker } => {
                self.worker(worker);
            }
            GatewayEvent::Output {
                worker,
                line,
                stream,
                ..
            } => {
                let w = self.worker(worker);
                if *stream == proto::Stream::Stderr {
                    w.tail.push_str("[stderr] ");
                }
                w.tail.push_str(line);
                if !line.ends_with('\n') {
                    w.tail.push('\n');
                }
                if w.tail.len() > WORKER_TAIL {
                    let mut cut = w.tail.len() - WORKER_TAIL;
                    while !w.tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    w.tail.drain(..cut);
                    w.truncated = true;
                }
                if self.log_output + line.len() > LOG_OUTPUT {
                    self.dropped_lines += 1;
                    return;
                }
                self.log_output += line.len();
            }
            GatewayEvent::Done { worker, exit_code } => {
                let w = self.worker(worker);
                let o = if *exit_code == 0 {
                    JobOutcome::Ok
                } else {
                    JobOutcome::Failed
                };
                (w.outcome, w.exit_code, outcome) = (Some(o), Some(*exit_code), Some(o));
            }
            GatewayEvent::Failed {
                worker,
                kind,
                message,
            } => {
                let w = self.worker(worker);
                let o = JobOutcome::of_failure(*kind);
                let _ = writeln!(w.tail, "[stderr] {kind}: {message}");
                (w.outcome, outcome) = (Some(o), Some(o));
            }
            GatewayEvent::Summary(s) => {
                self.ended = Some(format!(
                    "ended: {} of {} ok, {} failed, {} timed out, {} lost, {} offline, \
                     {} skipped, {} without response",
                    s.ok,
                    s.workers,
                    s.failed,
                    s.timed_out,
                    s.lost,
                    s.offline,
                    s.skipped,
                    s.no_response
                ))
            }
            GatewayEvent::Error { kind, message } => {
                let kind = match kind {
                    RequestError::Broker(k) => k.as_str(),
                    RequestError::Gateway(g) => g.as_str(),
                };
                self.ended = Some(format!("ended with an error: {kind}: {message}"))
            }
        }
        self.log.push(LiveEvent {
            event,
            class: outcome.map(outcome_class),
            outcome,
        });
    }
}

impl Run {
    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: ClientEvent) {
        let len = {
            let mut state = self.lock();
            state.apply(gateway::gateway_event(event));
            state.log.len()
        };
        self.changed.send_replace(len);
    }

    /// The log's JSON from `from` (at most [`BATCH`] events), where the next batch starts,
    /// and whether the run has ended.
    fn slice(&self, from: usize) -> (Option<String>, usize, bool) {
        let state = self.lock();
        let from = from.min(state.log.len());
        let to = (from + BATCH).min(state.log.len());
        let batch = &state.log[from..to];
        let json = (!batch.is_empty()).then(|| serde_json::to_string(batch).unwrap_or_default());
        (json, to, state.ended.is_some() && to == state.log.len())
    }

    fn is_running(&self) -> bool {
        self.lock().ended.is_none()
    }

    fn is_of(&self, user: &AuthUser) -> bool {
        self.user_id == user.user_id && self.team_id == user.team_id
    }
}

impl LiveRuns {
    fn list(&self) -> MutexGuard<'_, VecDeque<Arc<Run>>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `id` if `user` sent it.
    fn find(&self, id: &str, user: &AuthUser) -> Result<Arc<Run>, ApiError> {
        self.list()
            .iter()
            .find(|r| r.id == id && r.is_of(user))
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))
    }

    /// Lets go of run `id` (a request that was not sent after all).
    fn remove(&self, id: &str) {
        self.list().retain(|r| r.id != id);
    }

    /// Holds `run`, letting go of the oldest finished one when full (503 when every run
    /// held is still running).
    fn add(&self, run: Arc<Run>) -> Result<(), ApiError> {
        let mut runs = self.list();
        let mine = |r: &&Arc<Run>| r.user_id == run.user_id && r.team_id == run.team_id;
        if runs.iter().filter(mine).filter(|r| r.is_running()).count() >= MAX_RUNNING_PER_USER {
            return Err(ApiError::Busy {
                retry_after: 5,
                what: "too many of your requests from the web view running at once",
            });
        }
        if runs.len() >= MAX_RUNS {
            let Some(idx) = runs.iter().position(|r| !r.is_running()) else {
                return Err(ApiError::Busy {
                    retry_after: 5,
                    what: "too many requests from the web view running at once",
                });
            };
            runs.remove(idx);
        }
        runs.push_back(run);
        Ok(())
    }
}

/// The run form of a service page.
#[derive(Deserialize)]
pub(crate) struct RunForm {
    plugin: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    args: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    batch: String,
    #[serde(default)]
    max_failures: String,
    #[serde(default)]
    quorum: String,
    #[serde(default)]
    deadline: String,
    #[serde(default)]
    only: String,
}

impl RunForm {
    /// The gateway's request body this form describes (its fields read as the API reads
    /// them), or why it does not make one.
    fn request(&self) -> Result<GatewayRequest, String> {
        let mut body = serde_json::Map::new();
        body.insert("plugin".into(), self.plugin.trim().into());
        let text = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_string());
        if let Some(c) = text(&self.command) {
            body.insert("command".into(), c.into());
        }
        let mut args = serde_json::Map::new();
        for line in self.args.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("argument `{}` is not key=value", line.trim()))?;
            args.insert(k.trim().into(), v.trim().into());
        }
        if !args.is_empty() {
            body.insert("args".into(), args.into());
        }
        if !self.payload.is_empty() {
            body.insert("payload".into(), self.payload.clone().into());
        }
        for (name, value) in [
            ("timeout", &self.timeout),
            ("deadline", &self.deadline),
            ("batch", &self.batch),
            ("max_failures", &self.max_failures),
        ] {
            if let Some(v) = text(value) {
                // A count is a number in the API's JSON, a share (`10%`) text.
                let v = v
                    .parse::<u64>()
                    .map_or(serde_json::Value::from(v), Into::into);
                let v = match (name, v) {
                    ("timeout" | "deadline", serde_json::Value::Number(n)) => {
                        serde_json::Value::from(format!("{n}s"))
                    }
                    (_, v) => v,
                };
                body.insert(name.into(), v);
            }
        }
        if let Some(q) = text(&self.quorum) {
            let q: u32 = q
                .parse()
                .map_err(|_| format!("quorum `{q}` is not a number"))?;
            body.insert("quorum".into(), q.into());
        }
        let only: Vec<String> = self
            .only
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        if !only.is_empty() {
            body.insert("only".into(), only.into());
        }
        serde_json::from_value(body.into()).map_err(|e| e.to_string())
    }
}

/// Runs a request from the service page's form and opens its live page; a refusal (a bad
/// field, no worker online, no right to it) is shown above the form again.
pub(crate) async fn start(
    State(state): State<AppState>,
    web: WebUser,
    Path(name): Path<String>,
    Form(form): Form<RunForm>,
) -> Result<Response, WebError> {
    let user = web.user.clone();
    let service = services::get_service(State(state.clone()), user.clone(), Path(name.clone()))
        .await?
        .0;
    // The service page again, the refusal above its form, with the API's status.
    let refused = |e: ApiError| {
        let (state, web, service) = (state.clone(), &web, service.clone());
        async move {
            let text = e.to_string();
            let mut page = super::pages::service_page(&state, web, &service, Some(&text)).await;
            *page.status_mut() = e.status_code().0;
            Ok(page)
        }
    };
    let request = match form.request() {
        Ok(request) => request,
        Err(e) => return refused(ApiError::Unprocessable(e)).await,
    };
    let command = request
        .command
        .clone()
        .map(|c| c.into_words().join(" "))
        .unwrap_or_default();
    let spec = match gateway::request_spec(name.clone(), request) {
        Ok(spec) => spec,
        Err(e) => return refused(e).await,
    };
    // Its place first: a request is sent only when it can be followed.
    let (changed, _) = tokio::sync::watch::channel(0);
    let run = Arc::new(Run {
        id: crate::random_hex(8),
        user_id: user.user_id,
        team_id: user.team_id,
        service: name,
        command,
        state: Mutex::default(),
        changed,
    });
    state.live.add(run.clone())?;
    let events = match gateway::send(&state, user.token.clone(), spec).await {
        Ok(events) => events,
        Err(e) => {
            state.live.remove(&run.id);
            return refused(e).await;
        }
    };
    let id = run.id.clone();
    // Followed to its end whoever watches: the stream holds the connection.
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = futures::StreamExt::next(&mut events).await {
            run.push(event);
        }
    });
    Ok(Redirect::to(&format!("/runs/{id}")).into_response())
}

/// The user's runs held here, newest first (on the jobs page).
pub(crate) fn running_list(state: &AppState, user: &AuthUser) -> String {
    let runs: Vec<Arc<Run>> = state
        .live
        .list()
        .iter()
        .rev()
        .filter(|r| r.is_of(user))
        .cloned()
        .collect();
    if runs.is_empty() {
        return String::new();
    }
    let mut out = String::from("<h2>Your requests from this view</h2><ul class=runs>");
    for r in runs {
        let status = if r.is_running() { "running" } else { "ended" };
        let _ = write!(
            out,
            "<li><a href=\"/runs/{}\">{} <code>{}</code></a> <span class=tag>{status}</span></li>",
            r.id,
            esc(&r.service),
            esc(&r.command)
        );
    }
    out.push_str("</ul>");
    out
}

/// A run's page: its grid and counts so far, then live (the script follows
/// `/runs/{id}/events` from the event this page was drawn at).
pub(crate) async fn page(
    State(state): State<AppState>,
    web: WebUser,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let run = state.live.find(&id, &web.user)?;
    let s = run.lock();
    let mut body = format!(
        "<h1>{} <code>{}</code></h1><div id=run data-run=\"{}\" data-from=\"{}\" \
         data-expected=\"{}\">",
        esc(&run.service),
        esc(&run.command),
        run.id,
        s.log.len(),
        s.expected,
    );
    let count = |o: Option<JobOutcome>| s.workers.iter().filter(|w| w.outcome == o).count();
    let (n_ok, n_running) = (count(Some(JobOutcome::Ok)), count(None));
    let n_bad = s.workers.len() - n_ok - n_running;
    let total = (s.expected as usize).max(s.workers.len()).max(1);
    let pct = |n: usize| n as f64 * 100.0 / total as f64;
    let _ = write!(
        body,
        "<div class=bar><span class=ok id=bar-ok style=\"width:{:.2}%\"></span>\
         <span class=failed id=bar-bad style=\"width:{:.2}%\"></span>\
         <span class=running id=bar-running style=\"width:{:.2}%\"></span></div>\
         <p class=counts><span class=\"pill ok\"><b id=n-ok>{n_ok}</b> ok</span> \
         <span class=\"pill failed\"><b id=n-bad>{n_bad}</b> failed</span> \
         <span class=\"pill running\"><b id=n-running>{n_running}</b> running</span> \
         of <b id=n-total>{}</b> workers</p><p id=ended>{}</p><div class=grid id=grid>",
        pct(n_ok),
        pct(n_bad),
        pct(n_running),
        s.expected,
        s.ended.as_deref().map(esc).unwrap_or_default(),
    );
    for w in &s.workers {
        let (class, outcome) = match w.outcome {
            Some(o) => (outcome_class(o), o.as_str()),
            None => ("running", "running"),
        };
        let _ = write!(
            body,
            "<a class=\"cell {class}\" data-outcome=\"{outcome}\" data-worker=\"{}\" \
             href=\"/runs/{}/workers/{}\" title=\"{} · {outcome}\">{}</a>",
            esc(&w.name),
            run.id,
            seg(&w.name),
            esc(&w.name),
            esc(&w.name),
        );
    }
    body.push_str("</div><h2>Output</h2><pre class=output id=stream>");
    let lines = s.log.iter().filter_map(|e| match &e.event {
        GatewayEvent::Output { worker, line, .. } => Some((worker, line)),
        _ => None,
    });
    for (worker, line) in lines {
        let _ = writeln!(body, "{}: {}", esc(worker), esc(line.trim_end()));
    }
    body.push_str("</pre>");
    if s.dropped_lines > 0 {
        body.push_str(&message(
            "note",
            &format!("{} lines not shown here: see each worker", s.dropped_lines),
        ));
    }
    let _ = write!(
        body,
        "</div><p><a href=\"/jobs?service={}\">Jobs of {}</a> (this one is there once it \
         ends)</p>",
        seg(&run.service),
        esc(&run.service)
    );
    drop(s);
    Ok(web.page(&run.service, Section::Jobs, &body))
}

#[derive(Deserialize)]
pub(crate) struct From {
    from: Option<usize>,
}

/// The run's events from `from` (or the `Last-Event-ID` of a stream that reconnects), as
/// SSE: `batch` messages (a JSON array of events, the `id` the next one's start), then
/// `end`.
pub(crate) async fn events(
    State(state): State<AppState>,
    web: WebUser,
    Path(id): Path<String>,
    Query(q): Query<From>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let run = state.live.find(&id, &web.user)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let from = resume.or(q.from).unwrap_or(0);
    let rx = run.changed.subscribe();
    let stream = futures::stream::unfold(Some((run, from, rx)), |state| async move {
        let (run, from, mut rx) = state?;
        loop {
            rx.borrow_and_update();
            let (batch, next, ended) = run.slice(from);
            if let Some(json) = batch {
                let event = Event::default()
                    .event("batch")
                    .id(next.to_string())
                    .data(json);
                return Some((Ok::<_, Infallible>(event), Some((run, next, rx))));
            }
            if ended {
                let event = Event::default().event("end").data("{}");
                return Some((Ok(event), None));
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One worker's output in a run so far.
pub(crate) async fn output(
    State(state): State<AppState>,
    web: WebUser,
    Path((id, worker)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let run = state.live.find(&id, &web.user)?;
    let s = run.lock();
    let w = s
        .workers
        .iter()
        .find(|w| w.name == worker)
        .ok_or_else(|| ApiError::NotFound(format!("no worker {worker} in run {id}")))?;
    let (class, outcome) = match w.outcome {
        Some(o) => (outcome_class(o), o.as_str()),
        None => ("running", "running"),
    };
    let body = format!(
        "<p><a href=\"/runs/{id}\">← {}</a></p><h1>{}</h1>\
         <p><span class=\"pill {class}\" id=outcome>{outcome}</span> exit code {}</p>{}\
         <pre class=output id=output>{}</pre>",
        esc(&run.service),
        esc(&w.name),
        w.exit_code.map_or("none".to_string(), |c| c.to_string()),
        if w.truncated {
            message("note", "earlier output was left out")
        } else {
            String::new()
        },
        esc(&w.tail),
    );
    let title = w.name.clone();
    drop(s);
    Ok(web.page(&title, Section::Jobs, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> RunForm {
        let text = serde_urlencoded::to_string(pairs).unwrap();
        serde_urlencoded::from_str(&text).unwrap()
    }

    #[test]
    fn the_form_makes_the_gateways_body() {
        let req = form(&[
            ("plugin", "command"),
            ("command", "uptime"),
            ("args", "a=1\n\nb = two"),
            ("timeout", "30"),
            ("batch", "10%"),
            ("max_failures", "3"),
            ("quorum", "2"),
            ("only", "w1, w2"),
        ])
        .request()
        .unwrap();
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(json["plugin"], "command");
        assert_eq!(json["args"]["b"], "two");
        assert_eq!(json["timeout"], "30s");
        assert_eq!(json["batch"], "10%");
        assert_eq!(json["max_failures"], 3);
        assert_eq!(json["quorum"], 2);
        assert_eq!(json["only"], serde_json::json!(["w1", "w2"]));
        assert!(form(&[("plugin", "p"), ("args", "novalue")])
            .request()
            .is_err());
        assert!(form(&[("plugin", "p"), ("quorum", "x")]).request().is_err());
    }

    #[test]
    fn a_run_counts_and_bounds_what_it_keeps() {
        let mut s = RunState::default();
        s.apply(GatewayEvent::Routed {
            algorithm: proto::Algorithm::Mirror,
            workers: 2,
        });
        s.apply(GatewayEvent::Accepted { worker: "a".into() });
        let line = "x".repeat(1000);
        for seq in 0..100 {
            s.apply(GatewayEvent::Output {
                worker: "a".into(),
                seq,
                stream: proto::Stream::Stdout,
                line: line.clone(),
            });
        }
        s.apply(GatewayEvent::Done {
            worker: "a".into(),
            exit_code: 3,
        });
        s.apply(GatewayEvent::Failed {
            worker: "b".into(),
            kind: proto::ErrorKind::Timeout,
            message: "late".into(),
        });
        assert_eq!(s.expected, 2);
        assert_eq!(s.workers[0].outcome, Some(JobOutcome::Failed));
        assert_eq!(s.workers[1].outcome, Some(JobOutcome::TimedOut));
        assert!(s.workers[0].tail.len() <= WORKER_TAIL && s.workers[0].truncated);
        let last = serde_json::to_value(s.log.last().unwrap()).unwrap();
        assert_eq!(last["event"], "failed");
        assert_eq!(last["outcome"], "timed_out");
        assert_eq!(last["class"], "warn");
    }
}

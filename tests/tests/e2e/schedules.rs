//! Schedules end to end (issue 29): the control plane runs a request on a timetable as its
//! owner, once per due time (also across a restart and across two control planes on one
//! PostgreSQL), under its concurrency policy, and records each run in the job history with
//! the schedule's name and when it was due.

use anyhow::{ensure, Context, Result};
use api::jobs::{JobPage, JobSummary};
use api::schedules::{ScheduleState, ScheduleView};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

/// A control plane on `db`, a broker following it, and mirror service `dc1` over worker
/// `web01` (core plugins), answering.
struct Site {
    control: Control,
    broker_addr: String,
    api: Api,
    _broker: Proc,
    _worker: Proc,
    _plugins: Plugins,
}

async fn site(db: Db) -> Result<Site> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_on(&broker_addr, db)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("web01").await?;
    let body = json!({"name": "dc1", "algorithm": "mirror", "visibility": "team",
        "workers": ["web01"], "history": "team"});
    api.ok("POST", "/api/v1/services", body).await?;
    let (broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let worker = start_worker(
        broker_addr.parse()?,
        "web01",
        &plugins,
        &["--team", &team, "--token", &token, "--max-concurrency", "8"],
    )?;
    api.wait_worker_state("web01", "ONLINE", Duration::from_secs(20))
        .await?;
    Ok(Site {
        control,
        broker_addr,
        api,
        _broker: broker,
        _worker: worker,
        _plugins: plugins,
    })
}

/// Creates a schedule on `dc1` running `command` (more fields in `extra`).
async fn schedule(api: &Api, name: &str, command: &str, extra: Value) -> Result<ScheduleView> {
    let mut body = json!({"name": name, "service": "dc1", "visibility": "team",
        "request": {"plugin": "command", "command": command, "timeout": "30s"}});
    for (k, v) in extra.as_object().context("extra is an object")? {
        body[k] = v.clone();
    }
    let made = api.ok("POST", "/api/v1/schedules", body).await?;
    Ok(serde_json::from_value(made)?)
}

async fn view(api: &Api, name: &str) -> Result<ScheduleView> {
    let v = api
        .ok("GET", &format!("/api/v1/schedules/{name}"), Value::Null)
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// The recorded runs of schedule `name`, oldest first.
async fn runs(api: &Api, name: &str) -> Result<Vec<JobSummary>> {
    let path = format!("/api/v1/jobs?schedule={name}&limit=500");
    let page: JobPage = serde_json::from_value(api.ok("GET", &path, Value::Null).await?)?;
    let mut jobs = page.jobs;
    jobs.reverse();
    Ok(jobs)
}

/// Waits until `name` has at least `n` recorded runs due before `until_ms`; returns them.
async fn wait_runs(api: &Api, name: &str, n: usize, until_ms: i64) -> Result<Vec<JobSummary>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs: Vec<JobSummary> = runs(api, name)
            .await?
            .into_iter()
            .filter(|j| j.scheduled_unix_ms.is_some_and(|s| s < until_ms))
            .collect();
        if jobs.len() >= n {
            return Ok(jobs);
        }
        ensure!(
            Instant::now() < deadline,
            "{name}: {} runs recorded, wanted {n}: {jobs:?}",
            jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// No two runs of one schedule were due at the same time.
fn none_twice(jobs: &[JobSummary]) -> Result<()> {
    let mut due: Vec<i64> = jobs.iter().filter_map(|j| j.scheduled_unix_ms).collect();
    let n = due.len();
    due.sort_unstable();
    due.dedup();
    ensure!(due.len() == n, "a due time ran twice: {jobs:?}");
    Ok(())
}

async fn every_2s_runs_on_time(db: Db) -> Result<()> {
    let s = site(db).await?;
    let t0 = now_ms();
    schedule(&s.api, "tick", "echo tick", json!({"every": "2s"})).await?;
    let jobs = wait_runs(&s.api, "tick", 5, t0 + 11_000).await?;
    ensure!(jobs.len() == 5, "{jobs:?}");
    let mut lateness: Vec<i64> = Vec::new();
    for j in &jobs {
        ensure!(
            j.schedule.as_deref() == Some("tick") && j.service == "dc1",
            "{j:?}"
        );
        ensure!(j.status == api::JobStatus::Ok, "{j:?}");
        lateness.push(j.started_unix_ms - j.scheduled_unix_ms.context("scheduled")?);
    }
    lateness.sort_unstable();
    // p99 of five is the largest.
    let p99 = lateness[lateness.len() - 1];
    ensure!((0..1000).contains(&p99), "lateness {lateness:?}");
    none_twice(&jobs)?;

    // The commands show them too: the history by schedule, the schedule's last run.
    let (team, admin, secret) = s.control.admin.clone();
    let login = [
        "--url",
        &s.control.url,
        "--team",
        &team,
        "--identity",
        &admin,
        "--secret",
        &secret,
    ];
    let mut args = vec!["jobs", "list", "--schedule", "tick", "--json"];
    args.extend(login);
    let (code, out, err) = run_cli(&args, Duration::from_secs(20))?;
    ensure!(code == 0, "{out}{err}");
    let page: JobPage = serde_json::from_str(&out)?;
    ensure!(page.jobs.len() >= 5, "{out}");
    let mut args = vec!["schedules", "list", "--json"];
    args.extend(login);
    let (code, out, err) = run_cli(&args, Duration::from_secs(20))?;
    ensure!(code == 0, "{out}{err}");
    let all: Vec<ScheduleView> = serde_json::from_str(&out)?;
    let tick = all.iter().find(|v| v.name == "tick").context(out.clone())?;
    ensure!(
        tick.runs >= 5 && tick.last_run.is_some() && tick.next_run.is_some(),
        "{out}"
    );
    let metrics = reqwest::get(format!("{}/metrics", s.control.url))
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("triggerfs_control_schedule_runs_total{outcome=\"ok\"}")
            && metrics.contains("triggerfs_control_schedule_lateness_seconds_count"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_2s_runs_five_times_on_time_sqlite() -> Result<()> {
    every_2s_runs_on_time(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_2s_runs_five_times_on_time_postgres() -> Result<()> {
    every_2s_runs_on_time(Db::Postgres).await
}

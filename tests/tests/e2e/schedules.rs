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
    schedule(
        &s.api,
        "tick",
        "echo tick",
        json!({"timetable": {"every": "2s"}}),
    )
    .await?;
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
    schedules_cli_pauses_and_runs_now(&login, tick.runs).await
}

/// `schedules pause` stops the runs; `schedules run` runs one now all the same, as its owner.
async fn schedules_cli_pauses_and_runs_now(login: &[&str], runs_before: i64) -> Result<()> {
    let cli = |words: &[&str]| {
        let mut args = vec!["schedules"];
        args.extend_from_slice(words);
        args.extend_from_slice(login);
        args.push("--json");
        run_cli(&args, Duration::from_secs(20))
    };
    let (code, out, err) = cli(&["pause", "tick", "--reason", "maintenance"])?;
    ensure!(code == 0, "{out}{err}");
    let paused: ScheduleView = serde_json::from_str(&out)?;
    ensure!(
        paused.state == ScheduleState::Paused && paused.reason.as_deref() == Some("maintenance"),
        "{out}"
    );
    let (code, out, err) = cli(&["run", "tick"])?;
    ensure!(code == 0, "{out}{err}");
    let run: api::schedules::RunView = serde_json::from_str(&out)?;
    ensure!(run.outcome == api::schedules::RunOutcome::Running, "{out}");
    let (code, out, err) = cli(&["show", "tick"])?;
    ensure!(code == 0, "{out}{err}");
    let shown: ScheduleView = serde_json::from_str(&out)?;
    ensure!(
        shown.runs > runs_before && shown.state == ScheduleState::Paused,
        "{out}"
    );
    let (code, out, err) = cli(&["resume", "tick"])?;
    ensure!(code == 0 && out.contains("\"active\""), "{out}{err}");
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

/// `forbid` skips a due run while the last one still runs, and counts it; `replace`
/// cancels the running one.
async fn forbid_skips_and_replace_cancels(db: Db) -> Result<()> {
    let s = site(db).await?;
    let t0 = now_ms();
    schedule(
        &s.api,
        "slow",
        "sleep 3",
        json!({"timetable": {"every": "2s"}}),
    )
    .await?;
    let body = json!({"timetable": {"every": "2s"}, "concurrency": "replace"});
    schedule(&s.api, "restless", "sleep 5", body).await?;
    // slow: due at 2 s (runs to 5 s), 4 s skipped, 6 s runs (to 9 s), 8 s skipped.
    let slow = wait_runs(&s.api, "slow", 2, t0 + 9_000).await?;
    ensure!(
        slow.iter().all(|j| j.status == api::JobStatus::Ok),
        "{slow:?}"
    );
    let v = view(&s.api, "slow").await?;
    ensure!(v.skipped >= 1, "{v:?}");
    // Runs that overlapped none: each one due after the last one's end.
    for pair in slow.windows(2) {
        let end = pair[0].started_unix_ms + pair[0].duration_ms;
        ensure!(pair[1].started_unix_ms >= end, "{slow:?}");
    }
    // restless: each run is cancelled by the next one, 2 s later.
    let restless = wait_runs(&s.api, "restless", 2, t0 + 9_000).await?;
    ensure!(
        restless[0].status == api::JobStatus::Cancelled && restless[0].duration_ms < 4_000,
        "{restless:?}"
    );
    none_twice(&restless)?;
    let metrics = reqwest::get(format!("{}/metrics", s.control.url))
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("triggerfs_control_schedule_skipped_total{reason=\"forbid\"}")
            && metrics.contains("triggerfs_control_schedule_runs_total{outcome=\"cancelled\"}"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_and_replace_cancels_sqlite() -> Result<()> {
    forbid_skips_and_replace_cancels(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_and_replace_cancels_postgres() -> Result<()> {
    forbid_skips_and_replace_cancels(Db::Postgres).await
}

/// The control plane is away across two due times: with `skip` (no starting deadline)
/// none is made up, with a starting deadline the latest runs once; nothing runs twice.
async fn a_restart_makes_up_only_what_it_should(db: Db) -> Result<()> {
    let mut s = site(db).await?;
    schedule(
        &s.api,
        "skipper",
        "true",
        json!({"timetable": {"every": "3s"}}),
    )
    .await?;
    let body = json!({"timetable": {"every": "3s"}, "starting_deadline": "1m"});
    schedule(&s.api, "catcher", "true", body).await?;
    wait_runs(&s.api, "skipper", 1, i64::MAX).await?;
    wait_runs(&s.api, "catcher", 1, i64::MAX).await?;
    let away_from = now_ms();
    s.control.proc.kill();
    // 7 s away: at least two due times of each pass.
    tokio::time::sleep(Duration::from_secs(7)).await;
    s.control = s.control.restart(&s.broker_addr)?;
    // Due times before this passed while no control plane ran (the first round after the
    // start is a few milliseconds before it).
    let away_until = now_ms();
    let (team, admin, secret) = s.control.admin.clone();
    let api = Api::login(&s.control.url, &team, &admin, &secret).await?;
    // The next regular due time after the restart, recorded.
    let after = now_ms() + 3_500;
    let made_up = |jobs: &[JobSummary]| {
        jobs.iter()
            .filter(|j| {
                j.scheduled_unix_ms
                    .is_some_and(|d| d > away_from && d < away_until)
            })
            .count()
    };
    let catcher = wait_until_runs_after(&api, "catcher", after).await?;
    ensure!(
        made_up(&catcher) == 1,
        "{away_from}..{away_until}: {catcher:?}"
    );
    let skipper = wait_until_runs_after(&api, "skipper", after).await?;
    ensure!(
        made_up(&skipper) == 0,
        "{away_from}..{away_until}: {skipper:?}"
    );
    none_twice(&catcher)?;
    none_twice(&skipper)?;
    let v = view(&api, "skipper").await?;
    ensure!(v.skipped >= 2, "{v:?}");
    Ok(())
}

/// Waits until `name` has a recorded run due at or after `after_ms`; returns every run.
async fn wait_until_runs_after(api: &Api, name: &str, after_ms: i64) -> Result<Vec<JobSummary>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = runs(api, name).await?;
        if jobs
            .iter()
            .any(|j| j.scheduled_unix_ms.is_some_and(|d| d >= after_ms))
        {
            return Ok(jobs);
        }
        ensure!(
            Instant::now() < deadline,
            "{name}: no run due after {after_ms}: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_makes_up_only_what_it_should_sqlite() -> Result<()> {
    a_restart_makes_up_only_what_it_should(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_makes_up_only_what_it_should_postgres() -> Result<()> {
    a_restart_makes_up_only_what_it_should(Db::Postgres).await
}

/// Two control planes on one PostgreSQL database (and one data dir: one JWT key): every due
/// time runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_run_each_due_time_once_postgres() -> Result<()> {
    let s = site(Db::Postgres).await?;
    let pg = s
        .control
        .pg
        .as_ref()
        .context("a PostgreSQL database")?
        .url();
    let data = s
        .control
        .data
        .path()
        .to_str()
        .context("data dir")?
        .to_string();
    let args = [
        "control",
        "--data",
        &data,
        "--api-listen",
        "127.0.0.1:0",
        "--broker",
        &s.broker_addr,
        "--database-url",
        &pg,
    ];
    let (second, mut stdout) = Proc::spawn("control 2", &args)?;
    read_until_listening(&second, &mut stdout)?;
    let t0 = now_ms();
    schedule(
        &s.api,
        "both",
        "true",
        json!({"timetable": {"every": "1s"}}),
    )
    .await?;
    let jobs = wait_runs(&s.api, "both", 9, t0 + 10_000).await?;
    let mut due: Vec<i64> = jobs.iter().filter_map(|j| j.scheduled_unix_ms).collect();
    due.sort_unstable();
    // Exactly once each: no due time twice, none left out.
    ensure!(
        due.windows(2).all(|w| w[1] - w[0] == 1_000),
        "due times {due:?}"
    );
    drop(second);
    Ok(())
}

/// An owner who leaves the team pauses their schedule: its next due time runs nothing, and
/// the schedule says why.
async fn an_owner_who_left_pauses_the_schedule(db: Db) -> Result<()> {
    let s = site(db).await?;
    let (team, _, _) = s.control.admin.clone();
    let ops = s.api.new_member(&team, "ops", "ops-secret-29").await?;
    schedule(
        &ops,
        "theirs",
        "true",
        json!({"timetable": {"every": "2s"}}),
    )
    .await?;
    wait_runs(&s.api, "theirs", 1, i64::MAX).await?;
    s.api
        .ok(
            "DELETE",
            &format!("/api/v1/teams/{team}/members/ops"),
            Value::Null,
        )
        .await?;
    let removed = now_ms();
    wait_until(Duration::from_secs(10), "the schedule paused", || async {
        view(&s.api, "theirs")
            .await
            .is_ok_and(|v| v.state == ScheduleState::Paused)
    })
    .await?;
    let v = view(&s.api, "theirs").await?;
    let reason = v.reason.clone().unwrap_or_default();
    ensure!(
        reason.contains("ops") && reason.contains("no longer a member") && v.next_run.is_none(),
        "{v:?}"
    );
    // Two more due times pass: nothing ran after the removal.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let jobs = runs(&s.api, "theirs").await?;
    ensure!(
        jobs.iter()
            .all(|j| j.scheduled_unix_ms.is_some_and(|d| d < removed)),
        "{jobs:?}"
    );
    ensure!(view(&s.api, "theirs").await?.runs == v.runs, "{v:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_who_left_pauses_the_schedule_sqlite() -> Result<()> {
    an_owner_who_left_pauses_the_schedule(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_who_left_pauses_the_schedule_postgres() -> Result<()> {
    an_owner_who_left_pauses_the_schedule(Db::Postgres).await
}

/// A control plane killed mid-run on SQLite: its run is lost with it, and `forbid` does not
/// wait for it after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_with_its_control_plane_does_not_block_forbid_sqlite() -> Result<()> {
    let mut s = site(Db::Sqlite).await?;
    let body = json!({"timetable": {"every": "2s"}});
    schedule(&s.api, "long", "sleep 20", body).await?;
    wait_until(Duration::from_secs(10), "a first run", || async {
        view(&s.api, "long")
            .await
            .is_ok_and(|v| v.last_run.is_some())
    })
    .await?;
    let first = view(&s.api, "long").await?.last_run.context("a run")?;
    s.control.proc.kill();
    s.control = s.control.restart(&s.broker_addr)?;
    let (team, admin, secret) = s.control.admin.clone();
    let api = Api::login(&s.control.url, &team, &admin, &secret).await?;
    // Without the first run taken for lost, `forbid` would skip every due time until it
    // expires (its timeout and a minute).
    wait_until(
        Duration::from_secs(10),
        "a run after the restart",
        || async {
            view(&api, "long").await.is_ok_and(|v| {
                v.last_run
                    .is_some_and(|r| r.scheduled_unix_ms > first.scheduled_unix_ms)
            })
        },
    )
    .await
}

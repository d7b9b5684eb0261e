//! Trigger activity in the job history (issue 28, point 8): writes to a trigger file are
//! counted per minute by status, every failure is a job naming its trigger, and `triggerfs
//! jobs list --trigger PATH` shows both, to the members who read the service's jobs only.

use super::fs::Rig;
use anyhow::{Context, Result};
use api::jobs::{JobPage, JobView};
use api::{JobStatus, StatusCounts};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use tests::{run_cli, wait_until, Api, TestApi};

const TRIGGER: &str = "/logs/jobs";

/// `triggerfs jobs <args>` as `identity` (with `secret`) of the rig's team: exit code,
/// stdout, stderr.
fn jobs_cli(
    rig: &Rig,
    identity: &str,
    secret: &str,
    args: &[&str],
) -> Result<(i32, String, String)> {
    let team = rig.control.admin.0.clone();
    let mut argv = vec!["jobs"];
    argv.extend_from_slice(args);
    argv.extend([
        "--url",
        rig.control.url.as_str(),
        "--team",
        team.as_str(),
        "--identity",
        identity,
        "--secret",
        secret,
    ]);
    run_cli(&argv, Duration::from_secs(20))
}

/// `jobs list --trigger TRIGGER --json` as `identity`, decoded.
fn trigger_page(rig: &Rig, identity: &str, secret: &str) -> Result<JobPage> {
    let (code, out, err) = jobs_cli(
        rig,
        identity,
        secret,
        &["list", "--trigger", TRIGGER, "--json"],
    )?;
    anyhow::ensure!(code == 0, "jobs list --trigger: exit {code}: {out}{err}");
    serde_json::from_str(&out).with_context(|| format!("not a page of jobs: {out}"))
}

/// The counts of every minute of `page`, added up.
fn total(page: &JobPage) -> StatusCounts {
    page.minutes
        .iter()
        .fold(StatusCounts::default(), |t, m| StatusCounts {
            ok: t.ok + m.counts.ok,
            failed: t.failed + m.counts.failed,
            timed_out: t.timed_out + m.counts.timed_out,
            lost: t.lost + m.counts.lost,
            cancelled: t.cancelled + m.counts.cancelled,
        })
}

/// Five writes to a trigger running `command` (three exit 0, two fail): `jobs list --trigger`
/// shows three `ok` and two `failed` in its minutes and the two failures in full as jobs
/// (output, exit code, the trigger), and no job for the writes that succeeded; a member who
/// does not read the service's jobs sees neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_writes_are_counted_per_minute_and_failures_kept_in_full() -> Result<()> {
    let rig = Rig::start(&[]).await?;
    rig.api
        .ok(
            "POST",
            "/api/v1/triggers",
            json!({"path": TRIGGER, "plugin": "command", "service": "ship", "timeout": "10s"}),
        )
        .await?;
    let file = rig.mnt().join(TRIGGER.trim_start_matches('/'));
    wait_until(
        Duration::from_secs(5),
        "the trigger in the mount",
        || async { file.exists() },
    )
    .await?;
    let mut f = std::fs::OpenOptions::new().write(true).open(&file)?;
    for script in [
        "echo fine-1",
        "echo broken-1 >&2; exit 3",
        "echo fine-2",
        "exit 4",
        "true",
    ] {
        f.write_all(script.as_bytes())?;
    }
    drop(f);

    let (_, admin, secret) = rig.control.admin.clone();
    let mut page = trigger_page(&rig, &admin, &secret)?;
    let want = StatusCounts {
        ok: 3,
        failed: 2,
        ..StatusCounts::default()
    };
    let waited = std::time::Instant::now();
    while (total(&page) != want || page.jobs.len() < 2)
        && waited.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        page = trigger_page(&rig, &admin, &secret)?;
    }
    assert_eq!(total(&page), want, "{page:?}");
    assert_eq!(page.jobs.len(), 2, "one job per failure: {page:?}");
    for job in &page.jobs {
        assert_eq!(job.trigger.as_deref(), Some(TRIGGER));
        assert_eq!(
            (job.status, job.service.as_str()),
            (JobStatus::Failed, "ship")
        );
    }
    // The failures in full: their output and exit codes.
    let mut codes = Vec::new();
    for job in &page.jobs {
        let (code, out, err) = jobs_cli(
            &rig,
            &admin,
            &secret,
            &["show", &job.id.to_string(), "--json"],
        )?;
        assert_eq!(code, 0, "{out}{err}");
        let view: JobView = serde_json::from_str(&out)?;
        codes.extend(view.outcomes.iter().map(|w| w.exit_code));
        if view.outcomes[0].exit_code == Some(3) {
            assert_eq!(view.outcomes[0].output, "[stderr] broken-1\n");
        }
    }
    codes.sort();
    assert_eq!(codes, [Some(3), Some(4)]);
    // The writes that succeeded are counted, not each a job.
    let all = rig
        .api
        .ok("GET", "/api/v1/jobs?service=ship", Value::Null)
        .await?;
    let all: JobPage = serde_json::from_value(all)?;
    assert_eq!(all.jobs.len(), 2, "{all:?}");

    // The table: the minutes, then the failures.
    let (code, out, err) = jobs_cli(&rig, &admin, &secret, &["list", "--trigger", TRIGGER])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("Trigger {TRIGGER}: requests per minute")),
        "{out}"
    );
    let minute = &page.minutes[0].minute;
    assert!(
        out.lines()
            .any(|l| l.contains(minute.as_str()) && l.contains('|')),
        "{out}"
    );
    for job in &page.jobs {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{} |", job.id))),
            "{out}"
        );
    }

    // A member who does not read the admin's jobs through `ship` sees no counts and no
    // failures of the trigger.
    let team = rig.control.admin.0.clone();
    rig.api
        .ok(
            "POST",
            &format!("/api/v1/teams/{team}/members"),
            json!({"identity": "carol", "secret": "carol-secret-1", "role": "member"}),
        )
        .await?;
    let carol = trigger_page(&rig, "carol", "carol-secret-1")?;
    assert!(
        carol.minutes.is_empty() && carol.jobs.is_empty(),
        "{carol:?}"
    );
    let carol_api = Api::login(&rig.control.url, &team, "carol", "carol-secret-1").await?;
    let seen = carol_api
        .ok(
            "GET",
            &format!("/api/v1/jobs?trigger={TRIGGER}"),
            Value::Null,
        )
        .await?;
    let seen: JobPage = serde_json::from_value(seen)?;
    assert!(seen.minutes.is_empty() && seen.jobs.is_empty(), "{seen:?}");
    Ok(())
}

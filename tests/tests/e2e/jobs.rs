//! Job history end to end: a mirror request through the real broker is recorded by the
//! control plane (`GET /api/v1/jobs`, `triggerfs jobs list|show`), re-run on its failed
//! workers (`client --rerun ID --only failed`); with the control plane stopped requests still
//! run, the broker counts the records it could not deliver, and recording resumes when the
//! control plane is back.

use anyhow::{Context, Result};
use client::RequestSpec;
use serde_json::{json, Value};
use std::time::Duration;
use tests::*;

/// Fails on `j2` (stderr and exit 3), succeeds elsewhere.
const FLEET_COMMAND: &str = "echo start $TRIGGERFS_WORKER; \
    if [ \"$TRIGGERFS_WORKER\" = j2 ]; then echo broken >&2; exit 3; fi; echo fine";

fn spec(service: &str, command: &str) -> RequestSpec {
    RequestSpec {
        service: service.into(),
        plugin: "command".into(),
        command: vec![command.into()],
        timeout: Some(Duration::from_secs(10)),
        ..RequestSpec::default()
    }
}

/// A control plane on `db`, a broker following it (metrics on), and mirror service `fleet`
/// over workers `ids`, all of them answering.
struct Fleet {
    control: Control,
    broker_addr: String,
    metrics_url: String,
    api: Api,
    _broker: Proc,
    _workers: Vec<Proc>,
    _plugins: Plugins,
}

async fn fleet(db: Db, ids: &[&str]) -> Result<Fleet> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_on(&broker_addr, db)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let mut tokens = Vec::new();
    for id in ids {
        tokens.push(api.new_worker(id).await?);
    }
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "fleet", "algorithm": "mirror", "visibility": "team", "workers": ids,
               "history": "team"}),
    )
    .await?;
    let (broker, lines) =
        start_controlled_broker(&control, port, &["--metrics-listen", "127.0.0.1:0"])?;
    let metrics_url = line_value(&lines, "metrics on ").context("metrics line")?;
    let plugins = Plugins::core()?;
    let mut workers = Vec::new();
    for (id, token) in ids.iter().zip(&tokens) {
        workers.push(start_worker(
            broker_addr.parse()?,
            id,
            &plugins,
            &["--team", &team, "--token", token],
        )?);
    }
    let c = connect_jwt(&broker_addr, api.token().as_deref().unwrap()).await?;
    let n = ids.len() as u32;
    wait_until(Duration::from_secs(20), "every worker", || async {
        match c.request(spec("fleet", "true")).await {
            Ok(h) => h.collect().await.summary.is_some_and(|s| s.ok == n),
            Err(_) => false,
        }
    })
    .await?;
    Ok(Fleet {
        control,
        broker_addr,
        metrics_url,
        api,
        _broker: broker,
        _workers: workers,
        _plugins: plugins,
    })
}

/// The value of a counter (summed over its labels) in the broker's `/metrics`.
async fn counter(metrics_url: &str, name: &str) -> Result<u64> {
    let text = reqwest::get(metrics_url).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Waits for a job of `service` whose command contains `marker`; returns its id.
async fn wait_job(api: &Api, service: &str, marker: &str) -> Result<i64> {
    let path = format!("/api/v1/jobs?service={service}&limit=500");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(page) = api.ok("GET", &path, Value::Null).await {
            let found = page["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j["command"].to_string().contains(marker))
                .and_then(|j| j["id"].as_i64());
            if let Some(id) = found {
                return Ok(id);
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no job of {service} with {marker} in the history"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn mirror_job_is_recorded(db: Db) -> Result<()> {
    let f = fleet(db, &["j1", "j2", "j3"]).await?;
    let (team, admin, _) = f.control.admin.clone();
    let c = connect_jwt(&f.broker_addr, f.api.token().as_deref().unwrap()).await?;
    let mut request = spec("fleet", &format!("{FLEET_COMMAND} # marker-one"));
    request.args = vec![
        ("host".into(), "web".into()),
        ("password".into(), "hunter2".into()),
    ];
    let outcome = c.request(request).await?.collect().await;
    let summary = outcome.summary.context("a summary")?;
    assert_eq!((summary.ok, summary.failed), (2, 1));

    let id = the_recorded_job(&f, &admin).await?;

    jobs_cli_shows_and_reruns(&f, id)?;

    // A secret written into the command text is redacted in the history.
    let outcome = c
        .request(spec(
            "fleet",
            "echo marker-two --token=abc123 https://deploy:pw123@repo.example/x",
        ))
        .await?
        .collect()
        .await;
    assert_eq!(outcome.summary.map(|s| s.ok), Some(3));
    let id = wait_job(&f.api, "fleet", "marker-two").await?;
    let job = f
        .api
        .ok("GET", &format!("/api/v1/jobs/{id}"), Value::Null)
        .await?;
    assert_eq!(
        job["command"],
        json!(["echo marker-two --token=*** https://deploy:***@repo.example/x"]),
        "{job}"
    );

    // A request naming its own team's service as `team/fleet` is a job of `fleet`.
    let own = format!("{team}/fleet");
    c.request(spec(&own, "echo marker-three"))
        .await?
        .collect()
        .await;
    wait_job(&f.api, "fleet", "marker-three").await?;

    local_jobs_are_their_callers(&f, &c, &team).await?;
    Ok(())
}

/// The job of the request marked `marker-one`, as recorded; returns its id.
async fn the_recorded_job(f: &Fleet, admin: &str) -> Result<i64> {
    let id = wait_job(&f.api, "fleet", "marker-one").await?;
    let job = f
        .api
        .ok("GET", &format!("/api/v1/jobs/{id}"), Value::Null)
        .await?;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["algorithm"], "mirror");
    assert_eq!(job["identity"], admin);
    assert_eq!(
        job["args"],
        json!([{"key": "host", "value": "web"}, {"key": "password", "value": "***"}])
    );
    let mut outcomes: Vec<(String, String, String)> = job["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["worker"].as_str().unwrap().to_string(),
                w["outcome"].as_str().unwrap().to_string(),
                w["exit_code"].to_string(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![
            ("j1".into(), "ok".into(), "0".into()),
            ("j2".into(), "failed".into(), "3".into()),
            ("j3".into(), "ok".into(), "0".into()),
        ]
    );
    let j2 = job["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == "j2")
        .unwrap();
    // stdout and stderr are read from two pipes: their lines keep their order within a
    // stream, not across the two.
    let mut lines: Vec<&str> = j2["output"].as_str().unwrap_or_default().lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["[stderr] broken", "start j2"], "{j2}");
    // A failed job is found by its status.
    let failed = f
        .api
        .ok("GET", "/api/v1/jobs?status=failed", Value::Null)
        .await?;
    assert!(failed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id));
    Ok(id)
}

/// `triggerfs jobs show|list` (logging in with team, identity and secret) and the re-run of
/// job `id` on its failed workers.
fn jobs_cli_shows_and_reruns(f: &Fleet, id: i64) -> Result<()> {
    let (team, admin, secret) = f.control.admin.clone();
    // The CLI, logging in with team, identity and secret.
    let login = [
        "--url",
        f.control.url.as_str(),
        "--team",
        team.as_str(),
        "--identity",
        admin.as_str(),
        "--secret",
        secret.as_str(),
    ];
    let id_text = id.to_string();
    let mut show = vec!["jobs", "show", id_text.as_str()];
    show.extend_from_slice(&login);
    let (code, out, err) = run_cli(&show, Duration::from_secs(20))?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("Job {id}: failed on service fleet")),
        "{out}"
    );
    let j2_row = out
        .lines()
        .find(|l| l.contains("j2") && l.contains('|'))
        .with_context(|| format!("no j2 row: {out}"))?;
    assert!(
        j2_row.contains("failed") && j2_row.contains(" 3 "),
        "{j2_row}"
    );
    assert!(out.contains("[stderr] broken"), "{out}");
    let mut list = vec!["jobs", "list", "--status", "failed", "--service", "fleet"];
    list.extend_from_slice(&login);
    let (code, out, err) = run_cli(&list, Duration::from_secs(20))?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines().any(|l| l.trim_start().starts_with(&id_text)),
        "{out}"
    );
    let mut json_show = show.clone();
    json_show.push("--json");
    let (code, out, _) = run_cli(&json_show, Duration::from_secs(20))?;
    assert_eq!(code, 0);
    let shown: Value = serde_json::from_str(&out)?;
    assert_eq!(shown["outcomes"].as_array().map(Vec::len), Some(3));

    // Re-run on the failed workers only: the password was redacted, so it is given again.
    let mut rerun = vec![
        "client",
        "--broker",
        f.broker_addr.as_str(),
        "--rerun",
        id_text.as_str(),
        "--only",
        "failed",
    ];
    rerun.extend_from_slice(&login);
    let (code, out, err) = run_cli(&rerun, Duration::from_secs(30))?;
    assert_eq!(
        code, 2,
        "a redacted argument must be given again: {out}{err}"
    );
    assert!(err.contains("password"), "{err}");
    rerun.extend(["--args", "password=hunter2"]);
    let (code, out, err) = run_cli(&rerun, Duration::from_secs(30))?;
    assert_eq!(code, 1, "j2 fails again: {out}{err}");
    assert!(out.contains("start j2"), "{out}{err}");
    assert!(
        !out.contains("start j1") && !out.contains("start j3"),
        "{out}"
    );
    Ok(())
}

/// A job through a `local` service is its caller's alone: another member of the team does not
/// see it, though they see the team's other jobs.
async fn local_jobs_are_their_callers(f: &Fleet, c: &client::Client, team: &str) -> Result<()> {
    // A job through a `local` service is its caller's alone: another member of the team
    // does not see it, though they see the team's other jobs.
    f.api
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "mine", "algorithm": "mirror", "visibility": "local", "workers": ["j1"]}),
        )
        .await?;
    wait_until(Duration::from_secs(20), "mine routes", || async {
        match c.request(spec("mine", "echo marker-warmup")).await {
            Ok(h) => h.collect().await.summary.is_some_and(|s| s.ok == 1),
            Err(_) => false,
        }
    })
    .await?;
    c.request(spec("mine", "echo marker-mine"))
        .await?
        .collect()
        .await;
    let mine = wait_job(&f.api, "mine", "marker-mine").await?;
    f.api
        .ok(
            "POST",
            &format!("/api/v1/teams/{team}/members"),
            json!({"identity": "carol", "secret": "carol-secret-1", "role": "member"}),
        )
        .await?;
    let carol = Api::login(&f.control.url, team, "carol", "carol-secret-1").await?;
    let seen = carol
        .ok("GET", "/api/v1/jobs?limit=500", Value::Null)
        .await?;
    let services: Vec<&str> = seen["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["service"].as_str())
        .collect();
    assert!(
        services.contains(&"fleet") && !services.contains(&"mine"),
        "{seen}"
    );
    let (status, _) = carol
        .call("GET", &format!("/api/v1/jobs/{mine}"), Value::Null)
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_job_is_recorded_on_sqlite() -> Result<()> {
    mirror_job_is_recorded(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_job_is_recorded_on_postgres() -> Result<()> {
    mirror_job_is_recorded(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_lost_while_the_control_plane_is_away_and_resume() -> Result<()> {
    let f = fleet(Db::Sqlite, &["k1", "k2"]).await?;
    let (team, admin, secret) = f.control.admin.clone();
    let token = f.api.token().unwrap();
    let c = connect_jwt(&f.broker_addr, &token).await?;
    let broker_addr = f.broker_addr.clone();
    let metrics_url = f.metrics_url.clone();
    let mut control = f.control;
    control.proc.kill();
    // Records of requests made before (the fleet's setup) may still be on their way: let
    // their delivery end (all its attempts and pauses, 1.75 s, then a drain), so that what
    // is counted lost below is only what was made while the control plane was away (seen
    // once: an earlier record counted lost, the last "away" one still being retried when the
    // control plane came back, and then stored).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lost_before = counter(&metrics_url, "triggerfs_broker_jobs_lost_total").await?;
    // Requests run as before.
    for i in 0..3 {
        let o = c
            .request(spec("fleet", &format!("echo away-{i}")))
            .await?
            .collect()
            .await;
        assert_eq!(o.summary.map(|s| s.ok), Some(2), "{:?}", o.error);
    }
    // Their records cannot be delivered: after the retries they are counted lost, and
    // the broker's log says so.
    wait_until(Duration::from_secs(20), "lost records counted", || async {
        counter(&metrics_url, "triggerfs_broker_jobs_lost_total")
            .await
            .is_ok_and(|n| n >= lost_before + 3)
    })
    .await?;
    wait_until(Duration::from_secs(10), "the loss logged", || async {
        f._broker.stderr().contains("job history records lost")
    })
    .await?;
    // The control plane is back: records are delivered again.
    let control = control.restart(&broker_addr)?;
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let o = c
        .request(spec("fleet", "echo back-again"))
        .await?
        .collect()
        .await;
    assert_eq!(o.summary.map(|s| s.ok), Some(2));
    let id = wait_job(&api, "fleet", "back-again").await?;
    let job = api
        .ok("GET", &format!("/api/v1/jobs/{id}"), Value::Null)
        .await?;
    assert_eq!(job["status"], "ok");
    assert_eq!(job["workers"], 2);
    // The ones from while it was away are not there.
    let page = api.ok("GET", "/api/v1/jobs?limit=500", Value::Null).await?;
    assert!(!page.to_string().contains("away-"), "{page}");
    // The broker counts the delivery when the control plane's answer reaches it, which may
    // be just after the job shows.
    wait_until(Duration::from_secs(10), "a delivery counted", || async {
        counter(&metrics_url, "triggerfs_broker_jobs_delivered_total")
            .await
            .is_ok_and(|n| n >= 1)
    })
    .await?;
    Ok(())
}

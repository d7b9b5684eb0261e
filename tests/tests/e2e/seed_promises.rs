//! What the original's users meet at home (issue 28): a fail-over reported as one, the
//! seed's plugin layout, `./triggerfs` running the fs module, the documented exit codes, and
//! the first hour's rough edges.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::*;

/// Roundrobin service `ha` with `retry`: the worker that started a request is killed with
/// SIGKILL mid-run; the request runs again on the other and succeeds. The client reports the
/// first as `retried`, the second's exit code 0, exits 0; the job is `ok`, the first worker
/// `retried` (before: `Exit code [w]: unfinished`, exit 1, and a `timed_out` job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_over_is_reported_as_one() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let ids = ["demo02", "demo03"];
    let mut tokens = Vec::new();
    for id in ids {
        tokens.push(api.new_worker(id).await?);
    }
    let service = json!({"name": "ha", "algorithm": "roundrobin", "visibility": "team",
        "workers": ids, "retry": true});
    api.ok("POST", "/api/v1/services", service).await?;
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let mut workers = Vec::new();
    for (id, token) in ids.iter().zip(&tokens) {
        let extra = ["--team", team.as_str(), "--token", token.as_str()];
        workers.push(start_worker(broker_addr.parse()?, id, &plugins, &extra)?);
    }
    for id in ids {
        api.wait_worker_state(id, "ONLINE", Duration::from_secs(20))
            .await?;
    }

    let mut client = Command::new(bin());
    client
        .args(["client", "-service", "ha", "-plugin", "command", "-timeout", "10s"])
        .args(["-command", "echo started on $TRIGGERFS_WORKER; sleep 3; echo finished"])
        .args(["--broker", &broker_addr, "--url", &control.url, "--team", &team])
        .args(["--identity", &admin, "--secret", &secret])
        .env_remove("TRIGGERFS_CONFIG");
    let (mut client, stdout) = Proc::start("client", client)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20))?;
    let started = first
        .split("started on ")
        .nth(1)
        .with_context(|| format!("first line: {first}"))?
        .to_string();
    let (lost, other) = match started.as_str() {
        "demo02" => (0, "demo03"),
        _ => (1, "demo02"),
    };
    workers[lost].signal(libc::SIGKILL);

    let status = client.wait_exit(Duration::from_secs(20))?.context("client exit")?;
    let out: Vec<String> = rx.try_iter().collect();
    let out = format!("{first}\n{}", out.join("\n"));
    assert_eq!(status.code(), Some(0), "{out}\n{}", client.stderr());
    assert!(out.contains(&format!("[command@{other}] finished")), "{out}");
    let retried = format!(
        "Exit code [{started}]: retried (Retried: worker {started} went away after it \
         accepted the request; run again on {other})"
    );
    assert!(out.contains(&retried), "{out}");
    assert!(out.contains(&format!("Exit code [{other}]: 0")), "{out}");
    assert!(out.contains(", 1 retried elsewhere"), "{out}");

    // The job record says the same: ok, answered by the other after the first was lost.
    let job = wait_for_job(&api, "ha").await?;
    assert_eq!(job.job.status, api::JobStatus::Ok, "{job:?}");
    let outcomes: Vec<(&str, api::JobOutcome)> = job
        .outcomes
        .iter()
        .map(|o| (o.worker.as_str(), o.outcome))
        .collect();
    use api::JobOutcome::{Ok as Answered, Retried};
    assert_eq!(outcomes, [(started.as_str(), Retried), (other, Answered)]);
    assert!(job.outcomes[0].output.contains("run again on"), "{job:?}");
    Ok(())
}

/// The first job of `service` in the history, once it is recorded.
async fn wait_for_job(api: &Api, service: &str) -> Result<api::jobs::JobView> {
    let path = format!("/api/v1/jobs?service={service}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page: api::jobs::JobPage = serde_json::from_value(api.ok("GET", &path, Value::Null).await?)?;
        if let Some(job) = page.jobs.first() {
            let path = format!("/api/v1/jobs/{}", job.id);
            return Ok(serde_json::from_value(api.ok("GET", &path, Value::Null).await?)?);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no job of {service}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A shell-free run of `triggerfs args` in `dir`; (exit status, stdout, stderr).
#[allow(dead_code)]
fn run_in(dir: &std::path::Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("TRIGGERFS_CONFIG")
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

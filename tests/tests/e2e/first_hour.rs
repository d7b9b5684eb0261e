//! What a newcomer meets in the first hour: errors that say what to do, an HTTP gateway whose
//! refusals are HTTP statuses, logs without colour codes in files, a worker set up from the
//! config `up` wrote, and a test script that says it is building.

use anyhow::{Context, Result};
use serde_json::json;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::*;

/// A control plane, a broker that follows it, and the admin logged in.
async fn controlled() -> Result<(Control, Proc, String, Api)> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    api.new_worker("idle").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "lonely", "algorithm": "roundrobin", "visibility": "team", "workers": ["idle"]}),
    )
    .await?;
    let (broker, _lines) = start_controlled_broker(&control, port, &[])?;
    Ok((control, broker, broker_addr, api))
}

/// `triggerfs <args>` in an empty home (no `~/triggerfs.toml`), without `NO_COLOR` and the
/// `TRIGGERFS_*` variables; stdout and stderr piped.
fn command(home: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env("HOME", home)
        .current_dir(home)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TRIGGERFS_") {
            c.env_remove(k);
        }
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refusals_before_any_output_are_http_statuses() -> Result<()> {
    let (control, _broker, _addr, api) = controlled().await?;
    let (team, _, _) = control.admin.clone();
    let body = json!({"plugin": "echo", "command": "hi"});
    // Wait until the broker has the configuration: `lonely` is known, with no worker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let answer = api
            .call("POST", "/api/v1/services/lonely/requests", body.clone())
            .await?;
        if answer.0 == reqwest::StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last.0, 503, "{last:?}");
    assert_eq!(last.1["code"], "ServiceUnavailable", "{last:?}");
    assert!(
        last.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("NoWorkersOnline")),
        "{last:?}"
    );

    let (status, answer) = api
        .call("POST", "/api/v1/services/nosuch/requests", body.clone())
        .await?;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["code"], "NotFound", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("NoSuchService")),
        "{answer}"
    );

    // Another team's service that is not public: the broker says it does not exist.
    let (status, answer) = api
        .call(
            "POST",
            &format!("/api/v1/services/{}%2Flonely/requests", "otherteam"),
            body.clone(),
        )
        .await?;
    assert!(
        status == 404 || status == 403,
        "{status} {answer} (team {team})"
    );

    // `curl -f` sees the refusal in its exit status (22: HTTP error).
    let out = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
        ])
        .arg("-H")
        .arg(format!(
            "authorization: Bearer {}",
            api.token().as_deref().unwrap()
        ))
        .arg("--data")
        .arg(body.to_string())
        .arg(format!("{}/api/v1/services/nosuch/requests", control.url))
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(22),
        "curl -f: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() -> Result<()> {
    let home = tempfile::tempdir()?;
    let plugins = tempfile::tempdir()?;
    // A port nothing listens on: the worker logs that it cannot reach the broker, and retries.
    let closed = format!("127.0.0.1:{}", free_port());
    let mut child = command(
        home.path(),
        &[
            "worker",
            "--identity",
            "w1",
            "--broker",
            &closed,
            "--pluginspath",
            plugins.path().to_str().unwrap(),
        ],
    )
    .spawn()?;
    std::thread::sleep(Duration::from_secs(2));
    // A connection failure is not a reason to stop.
    assert!(
        child.try_wait()?.is_none(),
        "the worker stopped on a broker that is not there"
    );
    child.kill()?;
    child.wait()?;
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err)?;
    assert!(err.contains("cannot reach broker"), "{err}");
    assert!(!err.contains("\x1b["), "colour codes in a pipe: {err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_a_wrong_token_stops_and_says_what_to_check() -> Result<()> {
    let (control, _broker, addr, api) = controlled().await?;
    let (team, _, _) = control.admin.clone();
    let _good = api.new_worker("w1").await?;
    let home = tempfile::tempdir()?;
    let plugins = tempfile::tempdir()?;
    for (identity, token) in [("w1", "not-the-token"), ("nobody", "not-a-token")] {
        let started = Instant::now();
        let out = command(
            home.path(),
            &[
                "worker",
                "--identity",
                identity,
                "--team",
                &team,
                "--token",
                token,
                "--broker",
                &addr,
                "--pluginspath",
                plugins.path().to_str().unwrap(),
            ],
        )
        .spawn()?;
        let pid = out.id();
        let waiter = std::thread::spawn(move || out.wait_with_output());
        while !waiter.is_finished() && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !waiter.is_finished() {
            // SAFETY: kill(2) on the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let out = waiter.join().unwrap()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{identity}: still running after {:?}: {err}",
            started.elapsed()
        );
        assert!(!out.status.success(), "{identity}: {err}");
        assert!(
            err.contains("Check the team") && err.contains("POST /api/v1/workers"),
            "{identity}: {err}"
        );
        assert!(err.contains("regenerate"), "{identity}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_the_config_up_wrote_needs_only_identity_and_token() -> Result<()> {
    let data = tempfile::tempdir()?;
    let up = Up::start(data.path())?;
    let config = data.path().join("triggerfs.toml");
    let text = std::fs::read_to_string(&config)?;
    let plugins = data.path().join("plugins");
    assert!(
        text.contains("[workers]") && text.contains(&format!("pluginspath = {:?}", plugins)),
        "{text}"
    );

    let api = Api::login(&up.url, &up.team, &up.identity, &up.secret).await?;
    let token = api.new_worker("w2").await?;
    let home = tempfile::tempdir()?;
    let mut worker = command(
        home.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "worker",
            "--identity",
            "w2",
            "--token",
            &token,
        ],
    )
    .spawn()?;
    let online = api
        .wait_worker_state("w2", "ONLINE", Duration::from_secs(15))
        .await;
    let exited = worker.try_wait()?;
    let _ = worker.kill();
    let out = worker.wait_with_output()?;
    online.with_context(|| {
        format!(
            "worker exited: {exited:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_credentials_says_how_to_give_them() -> Result<()> {
    let (_control, _broker, addr, _api) = controlled().await?;
    let home = tempfile::tempdir()?;
    let out = command(
        home.path(),
        &[
            "client",
            "--broker",
            &addr,
            "--service",
            "x",
            "--plugin",
            "echo",
            "--command",
            "hi",
        ],
    )
    .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no credentials were given"), "{err}");
    for how in ["--config", "[main]", "--token"] {
        assert!(err.contains(how), "{how} not mentioned: {err}");
    }
    Ok(())
}

#[test]
fn scripts_test_says_it_is_building_before_it_builds() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    // Stand-ins for cargo and the tools the script would otherwise install: each prints
    // its name and arguments and succeeds.
    let stubs = tempfile::tempdir()?;
    for tool in [
        "cargo",
        "fusermount3",
        "curl",
        "jq",
        "python3",
        "psql",
        "pg_isready",
        "sudo",
        "apt-get",
    ] {
        let path = stubs.path().join(tool);
        std::fs::write(&path, format!("#!/bin/sh\necho \"stub {tool} $*\"\n"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    let path = format!(
        "{}:{}",
        stubs.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(root.join("scripts/test"))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let said = lines
        .iter()
        .position(|l| l.starts_with("scripts/test: building the workspace"))
        .with_context(|| format!("no building line: {text}"))?;
    let built = lines
        .iter()
        .position(|l| l.starts_with("stub cargo build"))
        .with_context(|| format!("no build: {text}"))?;
    assert!(said < built, "{text}");
    Ok(())
}

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
        .args([
            "client", "-service", "ha", "-plugin", "command", "-timeout", "10s",
        ])
        .args([
            "-command",
            "echo started on $TRIGGERFS_WORKER; sleep 3; echo finished",
        ])
        .args([
            "--broker",
            &broker_addr,
            "--url",
            &control.url,
            "--team",
            &team,
        ])
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

    let status = client
        .wait_exit(Duration::from_secs(20))?
        .context("client exit")?;
    let out: Vec<String> = rx.try_iter().collect();
    let out = format!("{first}\n{}", out.join("\n"));
    assert_eq!(status.code(), Some(0), "{out}\n{}", client.stderr());
    assert!(
        out.contains(&format!("[command@{other}] finished")),
        "{out}"
    );
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
        let page: api::jobs::JobPage =
            serde_json::from_value(api.ok("GET", &path, Value::Null).await?)?;
        if let Some(job) = page.jobs.first() {
            let path = format!("/api/v1/jobs/{}", job.id);
            return Ok(serde_json::from_value(
                api.ok("GET", &path, Value::Null).await?,
            )?);
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no job of {service}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `triggerfs args` in `dir` (also HOME, so no `~/triggerfs.toml` is read); (exit status,
/// stdout, stderr).
fn run_in(dir: &std::path::Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("TRIGGERFS_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Writes an executable shell script at `path`.
fn script(path: &std::path::Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The seed's custom plugin: an executable directly in the plugins path (`myplugin`, no
/// directory) is served with the plain contract beside the `name/name` and core layouts;
/// `plugins list` shows each, and a symlink out of the path is refused (before: the client
/// got `PluginNotFound: ... Not a directory`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_directly_in_the_plugins_path_is_a_plugin() -> Result<()> {
    let home = tempfile::tempdir()?;
    let broker = Broker::start("", 1)?;
    let plugins = Plugins::core()?;
    let written = home.path().join("myfile.txt");
    script(
        &plugins.path().join("myplugin"),
        r#"data=$(sed -n 's/.*"command":\["\([^"]*\)".*/\1/p')
echo "Writing payload: $data to file $TRIGGERFS_ARG_FILEPATH now"
echo "$data" > "$TRIGGERFS_ARG_FILEPATH"
echo "file has been written.""#,
    )?;
    plugins.add_script("nested", "echo nested")?;
    std::os::unix::fs::symlink("/bin/sh", plugins.path().join("escape"))?;
    let _w = start_worker(broker.addr, "hp01", &plugins, &[])?;
    wait_for_workers(broker.addr, &["hp01"]).await?;

    let addr = broker.addr.to_string();
    let filepath = format!("filepath={}", written.display());
    let client = |plugin: &str| {
        let args = [
            "client", "--broker", &addr, "-service", "hp01", "-plugin", plugin,
        ];
        let mut args = args.to_vec();
        args.extend([
            "-timeout",
            "3s",
            "-command",
            "hello world",
            "-args",
            &filepath,
        ]);
        run_in(home.path(), &args)
    };
    let (code, out, err) = client("myplugin")?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("[myplugin@hp01] file has been written."),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&written)?, "hello world\n");
    let (code, out, err) = client("nested")?;
    assert_eq!(
        (code, out.contains("[nested@hp01] nested")),
        (0, true),
        "{out}{err}"
    );
    let (code, out, err) = client("escape")?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("PluginNotFound"), "{out}");

    let dir = plugins.path().to_str().context("utf-8")?;
    let (code, out, err) = run_in(home.path(), &["plugins", "list", dir])?;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        row("myplugin")[..3],
        ["myplugin", "plain", "myplugin"],
        "{out}"
    );
    assert_eq!(
        row("nested")[..3],
        ["nested", "plain", "nested/nested"],
        "{out}"
    );
    assert_eq!(row("command")[..3], ["command", "core", "command"], "{out}");
    assert_eq!(row("escape")[..2], ["escape", "refused"], "{out}");

    // The help texts say what is written.
    let (_, help, _) = run_in(home.path(), &["plugins", "install", "--help"])?;
    assert!(help.contains("DIR/<name>/plugin.toml"), "{help}");
    let (_, help, _) = run_in(home.path(), &["install-links", "--help"])?;
    for name in [
        "triggerfs-client",
        "triggerfs-worker",
        "triggerfs-fs",
        "triggerfs-cli",
    ] {
        assert!(help.contains(name), "{help}");
    }
    Ok(())
}

/// Every exit status the README's table documents holds through the binary: 0 ok, 1 a
/// worker failed, 2 a refused request (`NoSuchService`, `PluginNotFound`) or bad flags, 3 a
/// timeout or an unreachable broker, 4 `--max-failures` stopped the run, 130 Ctrl-C (before:
/// `PluginNotFound` exited 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_exit_codes_hold() -> Result<()> {
    let home = tempfile::tempdir()?;
    let config = "[broker.services.pair]\nalgorithm = \"serial\"\nworkers = [\"e1\", \"e2\"]\n";
    let broker = Broker::start(config, 1)?;
    let plugins = Plugins::core()?;
    let _w1 = start_worker(broker.addr, "e1", &plugins, &[])?;
    let _w2 = start_worker(broker.addr, "e2", &plugins, &[])?;
    wait_for_workers(broker.addr, &["e1", "e2"]).await?;
    let addr = broker.addr.to_string();
    let client = |extra: &[&str]| {
        let mut args = vec!["client", "--broker", addr.as_str(), "--timeout", "2s"];
        args.extend_from_slice(extra);
        run_in(home.path(), &args)
    };
    // (service, plugin, command, more flags, the exit status)
    let cases = [
        ("e1", "command", "true", None, 0),
        ("e1", "command", "exit 7", None, 1),
        ("nope", "command", "true", None, 2),
        ("e1", "missing", "true", None, 2),
        ("e1", "command", "true", Some("--no-such-flag"), 2),
        ("e1", "command", "sleep 5", None, 3),
        ("pair", "command", "exit 1", None, 1),
        ("pair", "command", "exit 1", Some("--max-failures=0"), 4),
    ];
    for (service, plugin, command, more, want) in cases {
        let mut args = vec![
            "--service",
            service,
            "--plugin",
            plugin,
            "--command",
            command,
        ];
        args.extend(more);
        let (code, out, err) = client(&args)?;
        assert_eq!(code, want, "{args:?}:\n{out}{err}");
    }
    let port = free_port().to_string();
    let unreachable = format!("127.0.0.1:{port}");
    let args = [
        "client",
        "--broker",
        &unreachable,
        "--service",
        "e1",
        "--plugin",
        "echo",
    ];
    let (code, out, err) = run_in(home.path(), &args)?;
    assert_eq!(code, 3, "{out}{err}");

    // Ctrl-C cancels the request and exits 130.
    let mut child = Command::new(bin());
    child
        .args([
            "client",
            "--broker",
            &addr,
            "--service",
            "e1",
            "--plugin",
            "command",
        ])
        .args(["--command", "echo running; sleep 20"])
        .current_dir(home.path())
        .env("HOME", home.path())
        .env_remove("TRIGGERFS_CONFIG");
    let (mut child, stdout) = Proc::start("client", child)?;
    let mut first = String::new();
    let mut stdout = stdout;
    std::io::BufRead::read_line(&mut stdout, &mut first)?;
    assert!(first.contains("running"), "{first}");
    child.signal(libc::SIGINT);
    let status = child.wait_exit(Duration::from_secs(10))?.context("exit")?;
    assert_eq!(status.code(), Some(130), "{}", child.stderr());
    Ok(())
}

/// `up --no-worker` writes a `[workers] pluginspath` that exists (with the core plugins),
/// so a worker started from that config serves them (before: "not a directory").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_without_a_worker_writes_a_plugins_path_that_exists() -> Result<()> {
    let data = tempfile::tempdir()?;
    let _up = Up::start_with(data.path(), &["--no-worker"])?;
    let config = data.path().join("triggerfs.toml");
    let text = std::fs::read_to_string(&config)?;
    let settings: toml::Table = toml::from_str(&text)?;
    let path = settings["workers"]["pluginspath"]
        .as_str()
        .context("pluginspath")?;
    assert!(std::path::Path::new(path).is_dir(), "{text}");
    let listed = run_in(
        data.path(),
        &["--config", config.to_str().unwrap(), "plugins", "list"],
    )?;
    assert!(
        listed.1.contains("command") && listed.1.contains("core"),
        "{listed:?}"
    );
    Ok(())
}

/// `triggerfs` alone: without a `[triggerfs]` section the usage says how to mount (exit 2);
/// with one it runs the fs module, which starts with the original's banner (before: clap's
/// "requires a subcommand" and no banner).
#[test]
fn bare_triggerfs_runs_the_fs_module_or_says_how_to_mount() -> Result<()> {
    let home = tempfile::tempdir()?;
    let (code, out, err) = run_in(home.path(), &[])?;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("Usage:") && err.contains("triggerfs fs --mount DIR"),
        "{err}"
    );
    assert!(err.contains("[triggerfs] section"), "{err}");

    // The login fails (nothing listens there): enough to see that the fs module started.
    let port = free_port();
    let toml = format!(
        "[main]\nurl = \"http://127.0.0.1:{port}\"\nteam = \"t\"\nidentity = \"hp\"\n\
         secret = \"s\"\n\n[triggerfs]\nmountpoint = \"./mountpoint\"\n"
    );
    std::fs::write(home.path().join("triggerfs.toml"), toml)?;
    let (_, out, err) = run_in(home.path(), &[])?;
    let stars = "*".repeat(82);
    let banner = format!(
        ")\n\n{stars}\n*** Welcome to triggerFS. A realtime messaging and distributed trigger \
         system. ***\n{stars}\n\n"
    );
    let version = out
        .strip_prefix("triggerfs (v")
        .and_then(|o| o.split_once(&banner));
    assert!(
        version.is_some_and(|(v, _)| !v.contains('\n')),
        "{out}{err}"
    );
    assert!(
        out.contains("=== triggerfs module started ==="),
        "{out}{err}"
    );
    Ok(())
}

/// The worker's `-debug` log has the original's lines: connecting to the broker, accepted,
/// `Found service X. Announcing it to broker.` for each service it serves, bound or announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_debug_log_has_the_seeds_lines() -> Result<()> {
    let config = "[broker.services.demoservice]\nworkers = [\"demo01\"]\n";
    let broker = Broker::start(config, 1)?;
    let plugins = Plugins::core()?;
    let worker = start_worker(broker.addr, "demo01", &plugins, &["-debug", "true"])?;
    wait_for_workers(broker.addr, &["demo01"]).await?;
    let want = [
        format!("connecting to broker at {}...", broker.addr),
        "received BROKER_ACCEPTED from broker for worker demo01 - Connected".to_string(),
        "Found service demo01. Announcing it to broker.".to_string(),
        "Found service demoservice. Announcing it to broker.".to_string(),
    ];
    wait_until(Duration::from_secs(10), "the seed's lines", || {
        let log = worker.stderr();
        let found = want.iter().all(|line| log.contains(line.as_str()));
        async move { found }
    })
    .await
    .with_context(|| worker.stderr())?;
    Ok(())
}

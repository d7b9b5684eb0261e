//! The original product's command lines work as its docs print them (issue 13):
//! `triggerfs install-links` lays out `triggerfs-worker` and `triggerfs-client`, which take
//! the seed's single-dash flags, and `command/command` reaches the worker's core `command`.

use anyhow::{ensure, Context, Result};
use regex::Regex;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::*;

/// Runs `program args` with `TRIGGERFS_CONFIG=config` (the seed's deployed toml) and HOME
/// in `home`; returns (exit status, stdout, stderr).
fn run_seed(
    program: &Path,
    args: &[&str],
    config: &Path,
    home: &Path,
) -> Result<(i32, String, String)> {
    let mut child = Command::new(program)
        .args(args)
        .env("TRIGGERFS_CONFIG", config)
        .env("HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        ensure!(
            std::time::Instant::now() < deadline,
            "{} did not finish",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_worker_and_client_command_lines_work_through_install_links() -> Result<()> {
    let home = tempfile::tempdir()?;
    let links = home.path().join("bin");

    install_links_lays_out_every_seed_name_once(&links)?;

    let broker = Broker::start("", 1)?;
    let plugins = Plugins::core()?;
    let config = home.path().join("triggerfs.toml");
    std::fs::write(
        &config,
        format!(
            "[main]\nbroker = \"{}\"\n\n[workers]\npluginspath = \"{}\"\n",
            broker.addr,
            plugins.path().display()
        ),
    )?;

    // The worker as the docs start it (its toml given with the seed's `-config`).
    let mut command = Command::new(links.join("triggerfs-worker"));
    command
        .args(["-identity", "demo01", "-debug", "true", "-config"])
        .arg(&config)
        .env("HOME", home.path())
        .env_remove("RUST_LOG")
        .env_remove("TRIGGERFS_CONFIG");
    let (worker, _stdout) = Proc::start("triggerfs-worker", command)?;
    wait_for_workers(broker.addr, &["demo01"]).await?;
    wait_until(Duration::from_secs(10), "the worker's debug lines", || {
        let err = worker.stderr();
        async move {
            err.contains("Found service demo01. Announcing it to broker.")
                && err.contains("received HEARTBEAT for worker demo01 from broker.")
                && err.contains("sent HEARTBEAT for worker demo01 to broker.")
        }
    })
    .await
    .with_context(|| worker.stderr())?;

    the_seed_client_prints_as_the_docs_do(&links, &config, home.path())?;

    // The seed's `x/y` with y != x is an executable lookup, not a core plugin.
    let (code, out, err) = run_seed(
        &links.join("triggerfs-client"),
        &[
            "-service",
            "demo01",
            "-plugin",
            "command/echo",
            "-timeout",
            "10s",
            "-command",
            "uptime",
        ],
        &config,
        home.path(),
    )?;
    // The worker refuses it: a refused request, status 2 (as the README's table says).
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("Exit code: error (PluginNotFound: "), "{out}");

    // An unknown single-dash word is refused by clap, as before.
    let (code, _, err) = run_seed(
        &links.join("triggerfs-client"),
        &["-nosuch", "x"],
        &config,
        home.path(),
    )?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unexpected argument"), "{err}");
    Ok(())
}

/// install-links: every seed name, once; again: nothing new.
fn install_links_lays_out_every_seed_name_once(links: &Path) -> Result<()> {
    // install-links: every seed name, once; again: nothing new.
    let (code, out, err) = run_cli(
        &["install-links", links.to_str().unwrap()],
        Duration::from_secs(30),
    )?;
    assert_eq!(code, 0, "{out}{err}");
    for name in ["triggerfs-client", "triggerfs-worker", "triggerfs-fs"] {
        let link = links.join(name);
        assert!(out.contains(&format!("linked {}", link.display())), "{out}");
        assert_eq!(std::fs::read_link(&link)?, bin().canonicalize()?);
    }
    let (code, out, _) = run_cli(
        &["install-links", links.to_str().unwrap()],
        Duration::from_secs(30),
    )?;
    assert_eq!((code, out.as_str()), (0, ""));
    Ok(())
}

/// The client as the docs run it, byte for byte.
fn the_seed_client_prints_as_the_docs_do(links: &Path, config: &Path, home: &Path) -> Result<()> {
    // The client as the docs run it, byte for byte.
    let (code, out, err) = run_seed(
        &links.join("triggerfs-client"),
        &[
            "-service",
            "demo01",
            "-plugin",
            "command/command",
            "-timeout",
            "10s",
            "-command",
            "uptime",
        ],
        config,
        home,
    )?;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let sending = Regex::new(
        r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} Sending message to service demo01 \(roundrobin\)\n$",
    )?;
    assert!(sending.is_match(&err), "{err:?}");
    let lines: Vec<&str> = out.split('\n').collect();
    // `[command/command@demo01]  21:14:07 up  8:26, ...`, then the report and an empty line.
    assert_eq!(lines.len(), 7, "{out:?}");
    assert!(lines[0].starts_with("[command/command@demo01] "), "{out:?}");
    assert!(lines[0].contains(" up "), "{out:?}");
    assert_eq!(
        lines[1..4],
        ["", "Exit code: 0", "Total messages: 1"],
        "{out:?}"
    );
    // Go's duration format: `907.914622ms`, `1.5s`, never Rust's `1.5s`-only forms like `60.2s`.
    let time_ran = Regex::new(r"^Time ran: (\d+h)?(\d+m)?\d+(\.\d*[1-9])?(ns|µs|ms|s)$")?;
    assert!(time_ran.is_match(lines[4]), "{out:?}");
    assert_eq!(lines[5..], ["", ""], "{out:?}");
    Ok(())
}

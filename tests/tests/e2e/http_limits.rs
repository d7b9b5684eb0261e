//! Issue 10, findings 4 and 7, against the real `triggerfs control`: idle API connections
//! (as many as its 1,024 soft open-file limit) neither lock out logins nor stay open forever, and
//! concurrent logins do not take the process's memory with them.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::bin;

/// `triggerfs control` under `prlimit --nofile=<soft>:` (hard limit unchanged), killed on
/// drop.
struct LimitedControl {
    child: Child,
    url: String,
    admin_secret: String,
    _data: tempfile::TempDir,
}

impl LimitedControl {
    fn start(soft_nofile: u32, env: &[(&str, &str)]) -> Result<LimitedControl> {
        let data = tempfile::tempdir()?;
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={soft_nofile}:"))
            .arg("--")
            .arg(bin())
            .args(["control", "--api-listen", "127.0.0.1:0"])
            .args(["--broker", "127.0.0.1:9", "--data"])
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .env_remove("TRIGGERFS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn prlimit triggerfs control")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut control = LimitedControl {
            child,
            url: String::new(),
            admin_secret: String::new(),
            _data: data,
        };
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(secret) = line.trim().strip_prefix("secret: ") {
                control.admin_secret = secret.to_string();
            }
            if let Some(addr) = line.strip_prefix("listening on ") {
                control.url = format!("http://{}", addr.trim());
                return Ok(control);
            }
        }
        bail!("triggerfs control exited before listening")
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .with_context(|| format!("no {field} in /proc status"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?;
        Ok(kib)
    }

    async fn login(&self, identity: &str, secret: &str) -> Result<reqwest::StatusCode> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let resp = http
            .post(format!("{}/api/v1/login", self.url))
            .json(&serde_json::json!({"team": "main", "identity": identity, "secret": secret}))
            .send()
            .await?;
        Ok(resp.status())
    }
}

impl Drop for LimitedControl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_out_logins() -> Result<()> {
    let control = LimitedControl::start(1024, &[])?;
    let idle: Vec<TcpStream> = (0..1024)
        .map(|_| TcpStream::connect(control.addr()))
        .collect::<std::io::Result<_>>()?;
    let started = Instant::now();
    let status = control.login("admin", &control.admin_secret).await?;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "login beside 1,024 idle sockets"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(idle);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() -> Result<()> {
    let control = LimitedControl::start(1024, &[("TRIGGERFS_HTTP_TIMEOUT", "1s")])?;
    // One that never sends a byte, one idle after a request.
    let mut silent = TcpStream::connect(control.addr())?;
    let mut kept = TcpStream::connect(control.addr())?;
    std::io::Write::write_all(
        &mut kept,
        b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n",
    )?;
    for stream in [&mut silent, &mut kept] {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let started = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => bail!("idle connection not closed by the server: {e}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_keep_memory_bounded() -> Result<()> {
    let control = LimitedControl::start(1024, &[])?;
    let before = control.status_kib("VmRSS:")?;
    let logins: Vec<_> = (0..50)
        .map(|i| {
            let url = control.url.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()?;
                let resp = http
                    .post(format!("{url}/api/v1/login"))
                    .json(
                        &serde_json::json!({"team": "main", "identity": format!("user{i}"),
                                              "secret": "wrong"}),
                    )
                    .send()
                    .await?;
                anyhow::Ok(resp.status())
            })
        })
        .collect();
    for login in logins {
        let status = login.await??;
        assert!(
            [401, 429, 503].contains(&status.as_u16()),
            "a wrong login answered {status}"
        );
    }
    let peak = control.status_kib("VmHWM:")?;
    assert!(
        peak < 300 * 1024,
        "50 concurrent logins took the process from {before} KiB to a peak of {peak} KiB"
    );
    // And the right login still works afterwards.
    let status = control.login("admin", &control.admin_secret).await?;
    assert_eq!(status, reqwest::StatusCode::OK);
    Ok(())
}

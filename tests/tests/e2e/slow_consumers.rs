//! Slow consumers (issue 25, finding 6): a client that reads as fast as it can is never cut,
//! and gets every byte; clients (and gateway readers) that do not read cost the broker a
//! bounded amount of memory, because the output of their requests is paused at the workers
//! (the plugin blocks in `write`) instead of being buffered, and resumed once they read.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;

const MIB: u64 = 1024 * 1024;

/// (a) `triggerfs client` printing 20 MiB of `yes` (10,485,760 lines of one byte) to a
/// reader that takes it as fast as it comes used to be cut as `SlowConsumer` (exit 2) on a
/// release build, and lost the end of its output when the worker was slower than the
/// plugin (the worker drained the pipes for 500 ms after the plugin exited, however long
/// sending took). Now it is never cut (here even with a backlog bound of 8 MiB) and every
/// line arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_as_fast_as_it_can_is_not_cut_and_gets_every_byte() -> Result<()> {
    const BYTES: u64 = 20 * MIB;
    const LINES: u64 = BYTES / 2;
    let broker = Broker::start_with("127.0.0.1:0", "", 2, &["--max-client-backlog", "8MiB"])?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(broker.addr, "wy", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wy"]).await?;
    let addr = broker.addr.to_string();
    let mut child = Command::new(bin())
        .args([
            "client",
            "--broker",
            &addr,
            "--service",
            "wy",
            "--plugin",
            "command",
            "--timeout",
            "20m",
            "--command",
            "yes | head -c 20M",
        ])
        .env_remove("TRIGGERFS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read as fast as it comes; count the output lines (`[command@wy] y`).
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut lines, mut pending) = (0u64, Vec::new());
        let mut tail = Vec::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                if &pending[start..start + end] == b"[command@wy] y" {
                    lines += 1;
                } else {
                    tail.extend_from_slice(&pending[start..=start + end]);
                }
                start += end + 1;
            }
            pending.drain(..start);
        }
        (lines, String::from_utf8_lossy(&tail).into_owned())
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the client did not finish within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (lines, rest) = reader.join().expect("reader");
    let err = err_reader.join().expect("stderr reader");
    let log = broker.proc.stderr();
    assert!(
        !log.contains("slow consumer") && !err.contains("SlowConsumer"),
        "the client was cut as a slow consumer: exit {:?}\n{rest}\n{err}",
        status.code()
    );
    assert_eq!(status.code(), Some(0), "{rest}\n{err}");
    assert_eq!(lines, LINES, "output lines received\n{rest}");
    assert!(rest.contains(&format!("Total messages: {LINES}")), "{rest}");
    Ok(())
}

/// Bytes a plugin wrote so far (the copy its `tee` keeps).
fn written(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// How many library clients (b) starts, that do not read.
const CLIENTS: usize = 6;
/// How many gateway readers (b) starts, that do not read.
const GATEWAY: usize = 2;
/// Each line is 63 characters and a newline.
const LINE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";
/// What each plugin of (b) writes.
const PLUGIN_BYTES: u64 = 40 * MIB;
/// Lines each plugin of (b) writes.
const PLUGIN_LINES: u64 = PLUGIN_BYTES / 64;

/// (b) Several clients that never read (library clients whose requests are not polled) and
/// slow readers of the HTTP gateway (responses not polled), each asking for 40 MiB of output
/// through `triggerfs up`: `up` used to buffer it all (up to 64 MiB per client; 8 such
/// clients took it from 80 to 764 MiB). Now every plugin is paused (what it wrote stops
/// growing, far short of 40 MiB), `up`'s RSS (broker, gateway and worker in one process)
/// grows by less than 96 MiB, and once the readers read, every line arrives and every run
/// ends `Done 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_pause_their_plugins_with_bounded_memory() -> Result<()> {
    let data = tempfile::tempdir()?;
    let copies = tempfile::tempdir()?;
    let up = Up::start(data.path())?;
    let api = Api::login(&up.url, &up.team, &up.identity, &up.secret).await?;
    let token = api.token().context("token")?;
    // Up and idle (the local worker online, `demo` answering) before the baseline.
    let c = connect_jwt(&up.broker, &token).await?;
    wait_until(Duration::from_secs(30), "demo to answer", || async {
        let spec = request_spec("demo", "echo", "ping", Duration::from_secs(5));
        match c.request(spec).await {
            Ok(h) => h.collect().await.exit_status() == 0,
            Err(_) => false,
        }
    })
    .await?;
    let pid = up.proc.pid();
    let before = proc_status_bytes(pid, "VmRSS").context("VmRSS")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(pid, stop.clone());

    let copy_of = |i: usize| copies.path().join(format!("copy-{i}"));
    let (held, responses) = send_unread_requests(&up, &token, copy_of).await?;

    // Every plugin is paused: what each wrote stops growing, well short of its output.
    let all = CLIENTS + GATEWAY;
    let mut last = vec![u64::MAX; all];
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while stable < 5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now: Vec<u64> = (0..all).map(|i| written(&copy_of(i))).collect();
        if now.iter().any(|&n| n >= PLUGIN_BYTES) {
            stop.store(true, Ordering::SeqCst);
            let peak = sampler.join().expect("sampler");
            bail!(
                "a plugin that nobody reads wrote all its output (bytes written per plugin: {now:?}); up's RSS grew from {} to {} MiB\n{}",
                before / MIB,
                peak / MIB,
                up.proc.stderr()
            );
        }
        stable = if now == last && now.iter().all(|&n| n > 0) {
            stable + 1
        } else {
            0
        };
        last = now;
        if Instant::now() > deadline {
            bail!("the plugins did not settle: {last:?}");
        }
    }
    let paused_rss = proc_status_bytes(pid, "VmRSS").context("VmRSS")?;
    // What the plugins wrote while nobody read: the pipes, the worker's and the broker's
    // buffers up to the pause mark, and the clients' sockets; far below their 40 MiB each.
    let buffered: u64 = last.iter().sum();
    assert!(
        buffered < all as u64 * 12 * MIB,
        "the plugins wrote {} MiB while nobody read: {last:?}",
        buffered / MIB
    );

    // Now everyone reads: every line arrives, every run ends with exit code 0.
    let mut readers: Vec<_> = held.into_iter().map(read_client).collect();
    readers.extend(responses.into_iter().map(read_gateway));
    for (i, reader) in readers.into_iter().enumerate() {
        let read = tokio::time::timeout(Duration::from_secs(900), reader)
            .await
            .context("a reader did not finish within 15 minutes")?;
        let (lines, end) = read.with_context(|| format!("reader {i}\n{}", up.proc.stderr()))?;
        assert_eq!(
            (lines, end),
            (PLUGIN_LINES, Some(0)),
            "reader {i}\n{}",
            up.proc.stderr()
        );
    }
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.join().expect("sampler");
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 96 * MIB,
        "up's RSS grew by {} MiB ({} -> {} MiB; {} MiB while paused) for {all} readers of 40 MiB each",
        grown / MIB,
        before / MIB,
        peak / MIB,
        paused_rss / MIB
    );
    eprintln!(
        "up's RSS: {} MiB before, {} MiB while paused, {} MiB at its peak; written while paused: {last:?}",
        before / MIB,
        paused_rss / MIB,
        peak / MIB
    );
    let log = up.proc.stderr();
    assert!(!log.contains("slow consumer"), "{log}");
    Ok(())
}

/// Sends a request for `PLUGIN_BYTES` of output (a copy kept at `copy_of(i)`) from each of
/// `CLIENTS` library clients that do not read its events, and `GATEWAY` gateway requests
/// whose headers are read, not their bodies.
async fn send_unread_requests(
    up: &Up,
    token: &str,
    copy_of: impl Fn(usize) -> PathBuf,
) -> Result<(
    Vec<(client::Client, client::RequestHandle)>,
    Vec<reqwest::Response>,
)> {
    let command = |copy: &PathBuf| {
        format!(
            "yes {LINE} | head -c {PLUGIN_BYTES} | tee {}",
            copy.to_str().expect("utf-8 path")
        )
    };
    // Library clients that send their request and do not read its events.
    let mut held = Vec::new();
    for i in 0..CLIENTS {
        let client = connect_jwt(&up.broker, token).await?;
        let spec = request_spec(
            "demo",
            "command",
            &command(&copy_of(i)),
            Duration::from_secs(900),
        );
        let handle = client.request(spec).await?;
        held.push((client, handle));
    }
    // Gateway readers: the response's headers are read, its body is not (yet).
    let http = reqwest::Client::new();
    let mut responses = Vec::new();
    for i in CLIENTS..CLIENTS + GATEWAY {
        let body = serde_json::json!({
            "plugin": "command",
            "command": command(&copy_of(i)),
            "timeout": "15m",
        });
        let response = http
            .post(format!("{}/api/v1/services/demo/requests", up.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        assert!(response.status().is_success(), "{}", response.status());
        responses.push(response);
    }
    Ok((held, responses))
}

/// Reads a library client's events: the lines of output and the exit code.
fn read_client(
    (client, mut handle): (client::Client, client::RequestHandle),
) -> tokio::task::JoinHandle<(u64, Option<i32>)> {
    tokio::spawn(async move {
        let _client = client;
        let (mut lines, mut end) = (0u64, None);
        while let Some(event) = handle.next().await {
            match event {
                client::ClientEvent::Output { data, .. } => {
                    assert_eq!(data, LINE.as_bytes());
                    lines += 1;
                }
                client::ClientEvent::Done { exit_code, .. } => end = Some(exit_code),
                client::ClientEvent::Failed { kind, message, .. } => {
                    panic!("the run failed: {kind}: {message}")
                }
                other if other.is_final() => {
                    assert!(
                        matches!(other, client::ClientEvent::Summary(_)),
                        "{other:?}"
                    );
                }
                _ => {}
            }
        }
        (lines, end)
    })
}

/// Reads a gateway response's JSON lines: the lines of output and the exit code.
fn read_gateway(response: reqwest::Response) -> tokio::task::JoinHandle<(u64, Option<i32>)> {
    tokio::spawn(async move {
        let (mut lines, mut end, mut pending) = (0u64, None, Vec::new());
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk.expect("body"));
            let mut start = 0;
            while let Some(n) = pending[start..].iter().position(|&b| b == b'\n') {
                let event: serde_json::Value =
                    serde_json::from_slice(&pending[start..start + n]).expect("a JSON line");
                match event["event"].as_str() {
                    Some("output") => {
                        assert_eq!(event["line"], LINE);
                        lines += 1;
                    }
                    Some("done") => end = event["exit_code"].as_i64().map(|c| c as i32),
                    Some("error") => panic!("{event}"),
                    _ => {}
                }
                start += n + 1;
            }
            pending.drain(..start);
        }
        (lines, end)
    })
}

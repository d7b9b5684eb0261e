//! Limits where input arrives, each a typed error: open requests and the request rate per
//! client connection, connections per address, a plugin's output per request; and the
//! broker's graceful shutdown on SIGTERM (`--drain`).

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use proto::{Credential, ErrorKind, Frame, Hello, Request, Role, PROTOCOL_VERSION};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;

fn rss(pid: u32) -> Option<u64> {
    proc_status_bytes(pid, "VmRSS")
}

/// Reads `h`'s events until a worker accepted it.
async fn accepted(h: &mut client::RequestHandle) -> Result<()> {
    loop {
        match h.next().await {
            Some(client::ClientEvent::Accepted { .. }) => return Ok(()),
            Some(_) => continue,
            None => bail!("the request ended before it was accepted"),
        }
    }
}

fn raw_request(id: u64, service: &str, command: &str, payload: Vec<u8>) -> Frame {
    Frame::Request(
        Request {
            id,
            service: service.into(),
            plugin: "command".into(),
            command: vec![command.into()],
            args: Vec::new(),
            payload,
            timeout_ms: 120_000,
            wait: true,
            key: None,
            fleet: Default::default(),
            tag: None,
            trigger: None,
        }
        .into(),
    )
}

/// Reads frames off a raw connection.
struct RawReader {
    stream: tokio::net::tcp::OwnedReadHalf,
    buf: BytesMut,
}

impl RawReader {
    async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = proto::decode(&mut self.buf, proto::DEFAULT_MAX_FRAME)? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A client connection speaking frames directly (no library between the test and the
/// socket): `Hello`, `Welcome`, then the halves.
async fn raw_client(
    addr: std::net::SocketAddr,
) -> Result<(RawReader, tokio::net::tcp::OwnedWriteHalf)> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(&proto::encode_to_vec(&Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            role: Role::Client,
            credential: Credential::Jwt {
                token: String::new(),
            },
        })))
        .await?;
    let mut reader = RawReader {
        stream: read,
        buf: BytesMut::new(),
    };
    match reader.next().await? {
        Some(Frame::Welcome { .. }) => Ok((reader, write)),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

/// The requests the flooding client sends.
const FLOOD: u64 = 50_000;
/// The flooding client's `--max-open-requests`.
const OPEN: u64 = 500;

/// A client flooding requests (1 KiB each) at a worker that does not answer them is
/// refused past `--max-open-requests` with `TooManyRequests` (its connection stays, and
/// serves it once requests end), the broker logs it, and its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_gets_too_many_requests_and_the_broker_stays_small() -> Result<()> {
    let broker = Broker::start_with(
        "127.0.0.1:0",
        "",
        2,
        &["--max-open-requests", &OPEN.to_string()],
    )?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(broker.addr, "wf", &plugins, &["--max-concurrency", "4"])?;
    wait_for_workers(broker.addr, &["wf"]).await?;
    let pid = broker.proc.pid();
    let before = rss(pid).context("broker RSS")?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(rss(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };

    let (reader, mut writer) = raw_client(broker.addr).await?;
    let refused = Arc::new(AtomicU64::new(0));
    // Requests after the flood that ran to their end.
    let served = Arc::new(AtomicU64::new(0));
    let counting = count_answers(reader, refused.clone(), served.clone());
    let started = Instant::now();
    send_the_flood(&mut writer).await?;
    wait_until(
        Duration::from_secs(60),
        "every request past the limit refused",
        || {
            let refused = refused.clone();
            async move { refused.load(Ordering::SeqCst) >= FLOOD - OPEN }
        },
    )
    .await
    .with_context(|| {
        format!(
            "{} refused\n{}",
            refused.load(Ordering::SeqCst),
            broker.proc.stderr()
        )
    })?;
    let flood_time = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let peak = sampler.join().expect("sampler");
    assert_eq!(refused.load(Ordering::SeqCst), FLOOD - OPEN);

    served_again_once_cancelled(&mut writer, &served, &broker).await?;
    drop(writer);
    let other = counting.await?;
    assert!(
        !other
            .iter()
            .any(|f| f.contains("id: None") && f.contains("Error")),
        "the connection was cut: {other:?}"
    );
    let log = broker.proc.stderr();
    assert!(
        log.contains("client over its limit") && log.contains("TooManyRequests"),
        "{log}"
    );
    // Refusals are logged at most once a second per connection.
    let lines = log.matches("client over its limit").count() as u64;
    assert!(
        lines <= flood_time.as_secs() + 2,
        "{lines} log lines in {flood_time:?}"
    );
    let grown = peak.saturating_sub(before);
    eprintln!(
        "flood of {FLOOD} requests: refused in {flood_time:?}, broker RSS {} -> {} MiB",
        before / MIB,
        peak / MIB
    );
    assert!(
        grown < 64 * MIB,
        "broker RSS grew by {} MiB ({} -> {} MiB) under a flood of {FLOOD} 1 KiB requests",
        grown / MIB,
        before / MIB,
        peak / MIB
    );
    Ok(())
}

/// Counts the answers: `TooManyRequests` refusals, and requests after the flood served to their
/// end; returns up to 20 other frames.
fn count_answers(
    mut reader: RawReader,
    refused: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut other = Vec::new();
        while let Ok(Some(frame)) = reader.next().await {
            match frame {
                Frame::Error {
                    id: Some(_),
                    kind: ErrorKind::TooManyRequests,
                    ..
                } => {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                Frame::Summary { id, .. } if id > FLOOD => {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                Frame::Answer(answer) if answer.id > FLOOD => {
                    served.fetch_add(1, Ordering::SeqCst);
                }
                Frame::Routed { .. }
                | Frame::Reply { .. }
                | Frame::Replies { .. }
                | Frame::Summary { .. }
                | Frame::Answer(_) => {}
                f => {
                    if other.len() < 20 {
                        other.push(format!("{f:?}"));
                    }
                }
            }
        }
        other
    })
}

/// Sends `FLOOD` requests that never end by themselves (1 KiB each), in batches.
async fn send_the_flood(writer: &mut tokio::net::tcp::OwnedWriteHalf) -> Result<()> {
    let mut batch = Vec::new();
    for id in 1..=FLOOD {
        // Requests that never end by themselves: they stay open until cancelled.
        batch.extend(proto::encode_to_vec(&raw_request(
            id,
            "wf",
            "sleep 600",
            vec![b'x'; 1024],
        )));
        if batch.len() > 256 * 1024 {
            writer.write_all(&batch).await?;
            batch.clear();
        }
    }
    writer.write_all(&batch).await?;
    Ok(())
}

/// The connection stays: once its requests end (cancelled), it is served again.
async fn served_again_once_cancelled(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    served: &AtomicU64,
    broker: &Broker,
) -> Result<()> {
    // The connection stays: once its requests end, it is served again.
    let mut cancels = Vec::new();
    for id in 1..=OPEN {
        cancels.extend(proto::encode_to_vec(&Frame::Cancel { id }));
    }
    writer.write_all(&cancels).await?;
    // Cancels take a moment to end the requests; until then a request may still be refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = FLOOD;
    while served.load(Ordering::SeqCst) == 0 {
        if Instant::now() > deadline {
            bail!("not served again\n{}", broker.proc.stderr());
        }
        id += 1;
        writer
            .write_all(&proto::encode_to_vec(&raw_request(
                id,
                "wf",
                "echo",
                Vec::new(),
            )))
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Past `--client-rate` (a token bucket per connection) requests are refused with
/// `RateLimited`; the connection stays and is served again once the bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_client_rate_get_rate_limited() -> Result<()> {
    let broker = Broker::start_with(
        "127.0.0.1:0",
        "",
        2,
        &["--client-rate", "10/s", "--client-burst", "20"],
    )?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(broker.addr, "wr", &plugins, &[])?;
    // Waiting for the worker spends tokens of another connection, not this one's.
    wait_for_workers(broker.addr, &["wr"]).await?;
    let c = connect(broker.addr).await?;
    let mut handles = Vec::new();
    for _ in 0..100 {
        handles.push(
            c.request(request_spec("wr", "echo", "hi", Duration::from_secs(10)))
                .await?,
        );
    }
    let (mut ok, mut limited) = (0, 0);
    for h in handles {
        let o = h.collect().await;
        match &o.error {
            None if o.exit_status() == 0 => ok += 1,
            Some(e) if e.kind == ErrorKind::RateLimited => {
                assert!(e.message.contains("--client-rate"), "{}", e.message);
                limited += 1;
            }
            _ => bail!("unexpected outcome {o:?}"),
        }
    }
    assert!((20..=25).contains(&ok), "{ok} served, {limited} limited");
    assert_eq!(ok + limited, 100);
    let log = broker.proc.stderr();
    assert!(log.contains("client over its limit") && log.contains("RateLimited"));
    // Refilled after a while: served again on the same connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = request(&c, "wr", "echo", "again", Duration::from_secs(10)).await?;
    assert_eq!(o.exit_status(), 0, "{o:?}");
    Ok(())
}

/// Past `--max-connections-per-address` a new connection is refused at its handshake with
/// `TooManyConnections` (the CLI says so); one closing makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited() -> Result<()> {
    let broker = Broker::start_with(
        "127.0.0.1:0",
        "",
        2,
        &["--max-connections-per-address", "3"],
    )?;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(broker.addr).await?);
    }
    match connect(broker.addr).await {
        Err(e) => {
            let text = format!("{e:#}");
            assert!(text.contains("TooManyConnections"), "{text}");
            assert!(text.contains("--max-connections-per-address 3"), "{text}");
        }
        Ok(_) => bail!("a fourth connection was admitted"),
    }
    let addr = broker.addr.to_string();
    let (code, _out, err) = run_cli(
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
        Duration::from_secs(20),
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("TooManyConnections"), "{err}");
    assert!(broker
        .proc
        .stderr()
        .contains("too many connections from this address"));
    drop(open.pop());
    wait_until(Duration::from_secs(10), "room for a connection", || async {
        connect(broker.addr).await.is_ok()
    })
    .await?;
    Ok(())
}

/// A plugin printing endlessly is stopped past `--max-output` (its process group killed, as
/// for a timeout) and its request ends with `OutputLimit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_printing_endlessly_is_cut_with_output_limit() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let worker = start_worker(broker.addr, "wo", &plugins, &["--max-output", "1MiB"])?;
    wait_for_workers(broker.addr, &["wo"]).await?;
    let marker = "endless-output-marker-8d1f";
    let c = connect(broker.addr).await?;
    let started = Instant::now();
    let o = request(
        &c,
        "wo",
        "command",
        &format!("yes {marker}"),
        Duration::from_secs(60),
    )
    .await?;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(o.workers.len(), 1, "{o:?}");
    let error = o.workers[0]
        .error
        .as_ref()
        .or(o.error.as_ref())
        .with_context(|| format!("no error: {:?}", o.workers[0].status))?;
    assert_eq!(error.kind, ErrorKind::OutputLimit, "{error:?}");
    assert!(error.message.contains("--max-output"), "{}", error.message);
    assert_ne!(o.exit_status(), 0);
    let bytes: usize = o.workers[0]
        .output
        .iter()
        .map(|l| l.line.len() + 1)
        .sum::<usize>()
        + o.workers[0].output_dropped as usize;
    assert!(bytes <= 1024 * 1024 + 64 * 1024, "{bytes} bytes relayed");
    wait_until(Duration::from_secs(10), "the plugin gone", || async {
        !process_running(marker)
    })
    .await?;
    assert!(worker.stderr().contains("plugin output past the limit"));
    // The worker serves on.
    let o = request(&c, "wo", "echo", "after", Duration::from_secs(10)).await?;
    assert_eq!(o.exit_status(), 0, "{o:?}");
    Ok(())
}

/// SIGTERM: the broker stops accepting, refuses new requests with `ShuttingDown`, lets the
/// request in flight finish, then tells the worker `ShuttingDown` and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() -> Result<()> {
    let mut broker = Broker::start_with("127.0.0.1:0", "", 2, &["--drain", "20s"])?;
    let plugins = Plugins::core()?;
    let worker = start_worker(broker.addr, "wd", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wd"]).await?;
    let c = connect(broker.addr).await?;
    let other = connect(broker.addr).await?;
    let mut h = c
        .request(request_spec(
            "wd",
            "command",
            "sleep 2; echo finished",
            Duration::from_secs(30),
        ))
        .await?;
    accepted(&mut h).await?;
    let signalled = Instant::now();
    broker.proc.signal(libc::SIGTERM);
    // New connections are refused meanwhile.
    wait_until(Duration::from_secs(2), "connections refused", || async {
        TcpStream::connect(broker.addr).await.is_err()
    })
    .await?;
    // New requests on open connections are refused, typed.
    let o = request(&other, "wd", "echo", "late", Duration::from_secs(5)).await?;
    assert_eq!(
        o.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::ShuttingDown),
        "{o:?}"
    );
    let o = h.collect().await;
    assert_eq!(o.exit_status(), 0, "{o:?}");
    assert!(o.error.is_none(), "{o:?}");
    assert_eq!(o.workers[0].last_line.as_deref(), Some("finished"), "{o:?}");
    let status = broker
        .proc
        .wait_exit(Duration::from_secs(10))?
        .with_context(|| format!("broker still running\n{}", broker.proc.stderr()))?;
    assert!(status.success(), "{status:?}\n{}", broker.proc.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{:?}",
        signalled.elapsed()
    );
    let log = broker.proc.stderr();
    assert!(log.contains("draining"), "{log}");
    // The worker was told, and goes on trying to reconnect.
    wait_until(Duration::from_secs(10), "the worker told", || async {
        worker.stderr().contains("ShuttingDown")
    })
    .await
    .with_context(|| worker.stderr())?;
    Ok(())
}

/// A request still running when the drain ends gets `ShuttingDown`, and the broker exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_drain_get_shutting_down() -> Result<()> {
    let mut broker = Broker::start_with("127.0.0.1:0", "", 2, &["--drain", "1s"])?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(broker.addr, "wx", &plugins, &[])?;
    wait_for_workers(broker.addr, &["wx"]).await?;
    let c = connect(broker.addr).await?;
    let mut h = c
        .request(request_spec(
            "wx",
            "command",
            "sleep 60",
            Duration::from_secs(90),
        ))
        .await?;
    accepted(&mut h).await?;
    broker.proc.signal(libc::SIGTERM);
    let o = tokio::time::timeout(Duration::from_secs(10), h.collect())
        .await
        .context("the request did not end")?;
    let e = o.error.as_ref().with_context(|| format!("{o:?}"))?;
    assert_eq!(e.kind, ErrorKind::ShuttingDown, "{o:?}");
    assert!(e.message.contains("drain"), "{}", e.message);
    let status = broker
        .proc
        .wait_exit(Duration::from_secs(10))?
        .context("broker still running")?;
    assert!(status.success(), "{status:?}");
    assert!(broker.proc.stderr().contains("drain deadline passed"));
    Ok(())
}

/// `triggerfs up` drains its broker on SIGTERM too, then stops its worker and control plane
/// and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_exits_0_on_sigterm() -> Result<()> {
    let data = tempfile::tempdir()?;
    let mut up = Up::start(data.path())?;
    up.proc.signal(libc::SIGTERM);
    let status = up
        .proc
        .wait_exit(Duration::from_secs(30))?
        .with_context(|| format!("up still running\n{}", up.proc.stderr()))?;
    assert!(status.success(), "{status:?}\n{}", up.proc.stderr());
    assert!(
        up.proc.stderr().contains("draining"),
        "{}",
        up.proc.stderr()
    );
    Ok(())
}

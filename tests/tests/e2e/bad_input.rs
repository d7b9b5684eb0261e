//! Bytes that are not frames, and requests that must be refused; the broker keeps serving.

use anyhow::Result;
use bytes::BufMut;
use client::connection::{split, ConnectionError};
use proto::{ErrorKind, Frame};
use std::time::Duration;
use tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends raw bytes (then half-closes when `close`), returns the first frame back.
async fn answer_to(addr: std::net::SocketAddr, bytes: &[u8], close: bool) -> Result<Frame> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    if close {
        stream.shutdown().await?;
    }
    let (mut reader, _writer) = split(stream, proto::DEFAULT_MAX_FRAME);
    let frame = tokio::time::timeout(Duration::from_secs(10), reader.read_frame()).await??;
    // Then the broker closes the connection.
    let next = tokio::time::timeout(Duration::from_secs(10), reader.read_frame()).await?;
    assert!(
        matches!(
            next,
            Err(ConnectionError::Closed) | Err(ConnectionError::Io(_))
        ),
        "{next:?}"
    );
    Ok(frame)
}

fn error_kind(frame: &Frame) -> Option<ErrorKind> {
    match frame {
        Frame::Error { kind, .. } | Frame::Refused { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_typed_errors_and_the_broker_keeps_serving() -> Result<()> {
    let broker = Broker::start("", 2)?;
    let plugins = Plugins::core()?;
    let _w = start_worker(broker.addr, "ok1", &plugins, &[])?;
    wait_for_workers(broker.addr, &["ok1"]).await?;
    // A client connected before the garbage must keep working after it.
    let steady = connect(broker.addr).await?;

    // Random bytes behind a plausible length prefix.
    let mut x: u32 = 0x2545_f491;
    let mut random = Vec::new();
    random.put_u32_le(64);
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.push(x as u8);
    }
    let f = answer_to(broker.addr, &random, false).await?;
    assert_eq!(error_kind(&f), Some(ErrorKind::Malformed), "{f:?}");

    // A truncated frame: half of a valid Hello, then end of stream.
    let hello = proto::encode_to_vec(&Frame::Hello(proto::Hello {
        protocol_version: proto::PROTOCOL_VERSION,
        role: proto::Role::Client,
        credential: proto::Credential::Jwt { token: "t".into() },
    }));
    let f = answer_to(broker.addr, &hello[..hello.len() / 2], true).await?;
    assert_eq!(error_kind(&f), Some(ErrorKind::Malformed), "{f:?}");
    assert!(format!("{f:?}").contains("truncated"), "{f:?}");

    // An oversized length prefix: refused before any body is read.
    let f = answer_to(broker.addr, &[0xff, 0xff, 0xff, 0x7f], false).await?;
    assert_eq!(error_kind(&f), Some(ErrorKind::TooLarge), "{f:?}");

    // A wrong protocol version.
    let old = proto::encode_to_vec(&Frame::Hello(proto::Hello {
        protocol_version: 99,
        role: proto::Role::Client,
        credential: proto::Credential::Jwt { token: "t".into() },
    }));
    let f = answer_to(broker.addr, &old, false).await?;
    assert_eq!(error_kind(&f), Some(ErrorKind::BadRequest), "{f:?}");
    assert!(format!("{f:?}").contains("version"), "{f:?}");

    garbage_after_a_good_handshake(broker.addr, &hello).await?;

    let addr = broker.addr.to_string();
    the_client_gets_typed_refusals(&addr)?;

    // Still serving, on the old connection and on a new one.
    let o = request(&steady, "ok1", "echo", "still here", Duration::from_secs(5)).await?;
    assert_eq!(o.exit_status(), 0, "{o:?}");
    let fresh = connect(broker.addr).await?;
    let o = request(
        &fresh,
        "ok1",
        "command",
        "echo fresh",
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(o.workers[0].output[0].line, "fresh");
    Ok(())
}

/// Garbage after a good handshake (`hello`) is answered `Malformed`.
async fn garbage_after_a_good_handshake(addr: std::net::SocketAddr, hello: &[u8]) -> Result<()> {
    // Garbage after a good handshake.
    let mut after = hello.to_vec();
    after.extend_from_slice(&[5, 0, 0, 0, 1, 2, 3, 4, 5]);
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&after).await?;
    let (mut reader, _w) = split(stream, proto::DEFAULT_MAX_FRAME);
    let mut got_error = None;
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(10), reader.read_frame()).await?? {
            Frame::Error { id: None, kind, .. } => {
                got_error = Some(kind);
                break;
            }
            _ => continue, // Welcome, Heartbeat
        }
    }
    assert_eq!(got_error, Some(ErrorKind::Malformed));
    Ok(())
}

/// Through the real client: a plugin name that escapes the plugins path, an unknown service.
fn the_client_gets_typed_refusals(addr: &str) -> Result<()> {
    // A plugin name that escapes the plugins path, through the real client.
    let (code, out, err) = run_cli(
        &[
            "client",
            "--broker",
            addr,
            "--service",
            "ok1",
            "--plugin",
            "../../bin/sh",
            "--command",
            "id",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(err.contains("PluginNotFound"), "{err}");

    // Unknown service: typed, immediate.
    let (code, _, err) = run_cli(
        &[
            "client",
            "--broker",
            addr,
            "--service",
            "nosuch",
            "--plugin",
            "echo",
            "--command",
            "x",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(code, 2);
    assert!(err.contains("NoSuchService"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_workers_online_is_answered_at_once() -> Result<()> {
    let broker = Broker::start("[broker.services.empty]\nworkers = [\"ghost\"]\n", 1)?;
    let c = connect(broker.addr).await?;
    let started = std::time::Instant::now();
    let o = request(&c, "empty", "echo", "x", Duration::from_secs(30)).await?;
    assert_eq!(
        o.error.as_ref().map(|e| e.kind),
        Some(ErrorKind::NoWorkersOnline)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    Ok(())
}

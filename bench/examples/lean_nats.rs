//! The NATS baseline's yardstick: what a lean async-nats client reaches on this machine, so
//! that `triggerfs bench`'s `nats` row can be compared with it (bench/README.md).
//!
//! `cargo run --release -p bench --example lean_nats -- [IN_FLIGHT] [SECONDS] [NATS]`
//! (defaults 256, 10, 127.0.0.1:4222) starts itself again as two echo responders in one
//! queue group (a process of their own), then keeps IN_FLIGHT requests outstanding on one
//! connection from one task (`FuturesUnordered`, multi-thread runtime) and prints answers/s.
//! Nothing here is shared with the bench's load process.

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use std::time::{Duration, Instant};

const PAYLOAD: [u8; 64] = [b'x'; 64];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("respond") {
        return respond(&args[1], &args[2]).await;
    }
    let in_flight: usize = args.first().map_or(Ok(256), |a| a.parse())?;
    let seconds: u64 = args.get(1).map_or(Ok(10), |a| a.parse())?;
    let server = args.get(2).cloned().unwrap_or("127.0.0.1:4222".into());
    let subject = format!("lean.{}", std::process::id());

    let mut responders = tokio::process::Command::new(std::env::current_exe()?)
        .args(["respond", &server, &subject])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut ready = tokio::io::BufReader::new(responders.stdout.take().expect("piped"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut ready, &mut line).await?;

    let client = async_nats::connect(&server).await?;
    let request = || {
        let client = client.clone();
        let subject = subject.clone();
        async move { client.request(subject, PAYLOAD[..].into()).await }
    };
    let mut pending: FuturesUnordered<_> = (0..in_flight).map(|_| request()).collect();
    // One second of warm-up, then count.
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(1);
    let end = measure_from + Duration::from_secs(seconds);
    let mut answered = 0u64;
    while let Some(answer) = pending.next().await {
        let now = Instant::now();
        anyhow::ensure!(answer?.payload.as_ref() == PAYLOAD, "wrong answer");
        if now >= measure_from {
            answered += 1;
        }
        if now < end {
            pending.push(request());
        }
    }
    let rate = answered as f64 / (Instant::now() - measure_from).as_secs_f64();
    println!("lean async-nats client: {in_flight} in flight on one connection: {rate:.0} req/s");
    Ok(())
}

/// Two responders, one connection each, in queue group `echo`; prints a line when subscribed.
async fn respond(server: &str, subject: &str) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let conn = async_nats::connect(server).await?;
        let mut sub = conn
            .queue_subscribe(subject.to_string(), "echo".into())
            .await?;
        conn.flush().await?;
        tasks.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                if let Some(reply) = message.reply {
                    let _ = conn.publish(reply, message.payload).await;
                }
            }
        }));
    }
    println!("ready");
    for task in tasks {
        task.await?;
    }
    Ok(())
}

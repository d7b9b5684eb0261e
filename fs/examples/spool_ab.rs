//! Appends through the spool and prints records/s and append latency (p50/p99), from 1 and
//! 4 threads, in groups of 1 and of 650 records. It was the A/B of the writer's file I/O
//! (plain `pwrite`/`fdatasync` against tokio-uring, commit 2a71856; figures in
//! `fs/src/spool/mod.rs`); now it measures the one backend kept.
//!
//! `cargo run --release -p fs --example spool_ab -- [records] [rounds] [dir] [groups]`
//! (defaults: 1,000,000 records of 100 bytes, 2 rounds, a temp dir under the system's,
//! groups of 1 and of 650 records, e.g. `650` for only the latter). `SPOOL_AB_SYNC_MS`
//! sets `sync_every` (default 100 ms) and `SPOOL_AB_SEGMENT_MB` `segment_bytes` (16): large
//! values of both leave out every fdatasync, to measure the write path alone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fs::spool::{Spool, SpoolConfig};

const RECORD: usize = 100;

fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    let groups: Vec<usize> = args.next().map_or(vec![1, 650], |g| {
        g.split(',').filter_map(|n| n.parse().ok()).collect()
    });
    println!(
        "{records} records of {RECORD} bytes per case, {rounds} rounds, in {}",
        base.display()
    );
    println!(
        "{:>7} {:>5} {:>12} {:>10} {:>10}",
        "threads", "group", "records/s", "p50 µs", "p99 µs"
    );
    for _ in 0..rounds {
        for &group in &groups {
            for threads in [1, 4] {
                run(&base, records, threads, group);
            }
        }
    }
}

fn run(base: &std::path::Path, records: usize, threads: usize, group: usize) {
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let mut cfg = SpoolConfig::new(dir.path().join("spool"));
    cfg.max_bytes = 1 << 40;
    if let Some(ms) = std::env::var("SPOOL_AB_SYNC_MS")
        .ok()
        .and_then(|m| m.parse().ok())
    {
        cfg.sync_every = Duration::from_millis(ms);
    }
    if let Some(mb) = std::env::var("SPOOL_AB_SEGMENT_MB")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
    {
        cfg.segment_bytes = mb << 20;
    }
    let (spool, reader) = Spool::open(cfg).expect("open");
    let payload = Bytes::from(vec![b'x'; RECORD]);
    let calls = records / group / threads;
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let spool = spool.clone();
            let payload = payload.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let batch = vec![payload.clone(); group];
                    let t = Instant::now();
                    spool.append(batch).expect("append");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("join"))
        .collect();
    let elapsed = started.elapsed();
    drop((spool, reader));
    lat.sort_unstable();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let done = calls * group * threads;
    println!(
        "{:>7} {:>5} {:>12.0} {:>10.1} {:>10.1}",
        threads,
        group,
        done as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}

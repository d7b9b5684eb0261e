//! Tests of the spool: order, acknowledgement, segments, recovery, bounds, threads, and a
//! process killed mid-append.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;

use super::record::HEADER;
use super::*;

/// The on-disk size of a test record of `len` payload bytes.
fn size(len: usize) -> u64 {
    (HEADER + len) as u64
}

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig::new(dir.join("spool"))
}

fn records(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}{i}")))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The next record, or a panic after 5 s (a test must fail, not hang).
fn next(rt: &tokio::runtime::Runtime, reader: &mut SpoolReader) -> (u64, Bytes) {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), reader.next()).await })
        .expect("a record within 5 s")
        .expect("next")
}

/// Whether `next()` has nothing for 50 ms.
fn nothing_next(rt: &tokio::runtime::Runtime, reader: &mut SpoolReader) -> bool {
    rt.block_on(async { tokio::time::timeout(Duration::from_millis(50), reader.next()).await })
        .is_err()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

fn ack_file(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("ack")).expect("ack file");
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

#[test]
fn append_next_ack_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (spool, mut reader) = Spool::open(config(tmp.path())).expect("open");
    assert_eq!(spool.append(records("a", 2)).expect("append"), 1);
    assert_eq!(spool.append(records("b", 3)).expect("append"), 3);
    assert_eq!(spool.append(Vec::new()).expect("empty group"), 6);
    let got: Vec<(u64, Bytes)> = (0..5).map(|_| next(&rt, &mut reader)).collect();
    let want: Vec<(u64, Bytes)> = (1..)
        .zip(records("a", 2).into_iter().chain(records("b", 3)))
        .collect();
    assert_eq!(got, want);
    assert!(nothing_next(&rt, &mut reader));

    let stats = spool.stats();
    assert_eq!(stats.pending_records, 5);
    assert_eq!(stats.pending_bytes, 2 * size(2) + 3 * size(2));
    assert_eq!(stats.appended_total, 5);

    assert!(matches!(
        reader.ack(6),
        Err(SpoolError::NotDelivered {
            seq: 6,
            delivered: 5
        })
    ));
    reader.ack(2).expect("ack");
    assert_eq!(reader.acked(), 2);
    reader.ack(1).expect("an older ack is a no-op");
    assert_eq!(reader.acked(), 2);
    let stats = spool.stats();
    assert_eq!((stats.pending_records, stats.acked_total), (3, 2));
    assert_eq!(stats.pending_bytes, 3 * size(2));

    // The reader wakes for a record appended while it waits.
    let appender = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            spool.append(vec![Bytes::from_static(b"late")])
        })
    };
    assert_eq!(next(&rt, &mut reader), (6, Bytes::from_static(b"late")));
    assert_eq!(appender.join().expect("join").expect("append"), 6);
}

#[test]
fn next_ends_with_closed_after_the_spool_is_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (spool, mut reader) = Spool::open(config(tmp.path())).expect("open");
    spool.append(records("x", 2)).expect("append");
    drop(spool);
    assert_eq!(next(&rt, &mut reader).0, 1);
    assert_eq!(next(&rt, &mut reader).0, 2);
    let end = rt.block_on(reader.next());
    assert!(matches!(end, Err(SpoolError::Closed)), "{end:?}");
}

#[test]
fn rewind_starts_again_at_the_first_unacknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (spool, mut reader) = Spool::open(config(tmp.path())).expect("open");
    spool.append(records("r", 5)).expect("append");
    for want in 1..=4 {
        assert_eq!(next(&rt, &mut reader).0, want);
    }
    reader.ack(2).expect("ack");
    reader.rewind();
    assert_eq!(next(&rt, &mut reader), (3, Bytes::from_static(b"r2")));
    assert_eq!(next(&rt, &mut reader).0, 4);
    // A late answer for a record read before the rewind may still be acknowledged.
    reader.ack(4).expect("ack");
    reader.rewind();
    assert_eq!(next(&rt, &mut reader), (5, Bytes::from_static(b"r4")));
    assert!(nothing_next(&rt, &mut reader));
}

#[test]
fn segments_roll_and_are_deleted_after_the_ack_is_persisted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 10 * size(3);
    let dir = cfg.dir.clone();
    let (spool, mut reader) = Spool::open(cfg).expect("open");
    // Groups of 5 records of 3 bytes: a segment is full after two groups.
    for g in 0..10 {
        spool.append(records(&format!("g{g}"), 5)).expect("append");
    }
    let files = segment_files(&dir);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [1, 11, 21, 31, 41].map(|s| format!("{s:020}.seg")),
        "a segment starts every 10 records"
    );
    assert_eq!(spool.stats().segments, 5);
    for want in 1..=50 {
        assert_eq!(next(&rt, &mut reader).0, want);
    }

    // Acking into the third segment deletes the first two, after writing the ack file.
    reader.ack(25).expect("ack");
    assert_eq!(ack_file(&dir), 25);
    assert_eq!(segment_files(&dir), files[2..]);
    assert_eq!(spool.stats().segments, 3);

    // If the ack cannot be persisted, no segment goes.
    std::fs::create_dir(dir.join("ack.tmp")).expect("block the temp file");
    assert!(matches!(reader.ack(45), Err(SpoolError::Io { .. })));
    assert_eq!(segment_files(&dir), files[2..]);
    assert_eq!(ack_file(&dir), 25);
    std::fs::remove_dir(dir.join("ack.tmp")).expect("unblock");
    reader.ack(45).expect("ack");
    assert_eq!(ack_file(&dir), 45);
    assert_eq!(segment_files(&dir), files[4..]);

    // The last segment is the writer's and stays, even when all of it is acknowledged.
    reader.ack(50).expect("ack");
    assert_eq!(segment_files(&dir), files[4..]);
    assert_eq!(spool.append(records("z", 1)).expect("append"), 51);
    assert_eq!(next(&rt, &mut reader), (51, Bytes::from_static(b"z0")));
}

#[test]
fn reopen_recovers_unacknowledged_records_with_their_seqs_and_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 4 * size(2);
    let (spool, mut reader) = Spool::open(cfg.clone()).expect("open");
    let source = spool.source();
    assert_ne!(source, [0; 16]);
    spool.append(records("a", 10)).expect("append");
    spool.append(records("b", 3)).expect("append");
    for _ in 0..6 {
        next(&rt, &mut reader);
    }
    reader.ack(5).expect("ack");
    assert!(matches!(
        Spool::open(cfg.clone()),
        Err(SpoolError::InUse { .. })
    ));
    drop((spool, reader));

    let (spool, mut reader) = Spool::open(cfg.clone()).expect("reopen");
    assert_eq!(spool.source(), source);
    assert_eq!(reader.acked(), 5);
    assert_eq!(spool.stats().pending_records, 8);
    assert_eq!(spool.stats().pending_bytes, 8 * size(2));
    let got: Vec<(u64, Bytes)> = (0..8).map(|_| next(&rt, &mut reader)).collect();
    let want: Vec<(u64, Bytes)> = (6..)
        .zip(records("a", 10).into_iter().skip(5).chain(records("b", 3)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(spool.append(records("c", 1)).expect("append"), 14);
    reader.ack(13).expect("ack");
    drop((spool, reader));

    // All acknowledged: the seqs go on from where they were.
    let (spool, mut reader) = Spool::open(cfg).expect("reopen");
    assert_eq!(spool.source(), source);
    assert_eq!(next(&rt, &mut reader), (14, Bytes::from_static(b"c0")));
    assert_eq!(spool.append(records("d", 1)).expect("append"), 15);
}

/// Writes five records of 3 bytes to a new spool and returns its config and the segment.
fn five_records(tmp: &Path) -> (SpoolConfig, PathBuf) {
    let cfg = config(tmp);
    let (spool, _reader) = Spool::open(cfg.clone()).expect("open");
    spool.append(records("r0", 5)).expect("append");
    drop((spool, _reader));
    let segment = segment_files(&cfg.dir).remove(0);
    (cfg, segment)
}

fn flip(file: &Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .expect("open");
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).expect("read");
    f.write_all_at(&[b[0] ^ 0x40], offset).expect("write");
}

/// Opens the spool, reads every record there is, and appends one.
fn reopen_read_append(cfg: &SpoolConfig) -> (Vec<u64>, u64) {
    let rt = runtime();
    let (spool, mut reader) = Spool::open(cfg.clone()).expect("reopen");
    let mut seqs = Vec::new();
    while !nothing_next_or(&rt, &mut reader, &mut seqs) {}
    let next_seq = spool.append(records("n", 1)).expect("append");
    (seqs, next_seq)
}

fn nothing_next_or(
    rt: &tokio::runtime::Runtime,
    reader: &mut SpoolReader,
    seqs: &mut Vec<u64>,
) -> bool {
    match rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(50), reader.next()).await })
    {
        Err(_) => true,
        Ok(r) => {
            seqs.push(r.expect("next").0);
            false
        }
    }
}

#[test]
fn a_torn_tail_is_truncated_and_the_seqs_go_on() {
    let record = size(3);
    for (what, damage) in [
        ("cut mid-payload", 5 * record - 2),
        ("cut mid-header", 4 * record + 7),
        ("cut right after the header", 4 * record + HEADER as u64),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cfg, segment) = five_records(tmp.path());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .and_then(|f| f.set_len(damage))
            .expect("truncate");
        let (seqs, next_seq) = reopen_read_append(&cfg);
        assert_eq!(seqs, [1, 2, 3, 4], "{what}");
        assert_eq!(next_seq, 5, "{what}");
        assert_eq!(
            std::fs::metadata(&segment).expect("stat").len(),
            4 * record + size(2),
            "{what}: the tail was cut at the record boundary, then one record appended"
        );
    }
    for (what, offset) in [
        ("a flipped payload byte", 4 * record + 17),
        ("a flipped seq byte", 4 * record + 8),
        ("a flipped length byte", 4 * record),
        ("a flipped CRC byte", 4 * record + 5),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cfg, segment) = five_records(tmp.path());
        flip(&segment, offset);
        let (seqs, next_seq) = reopen_read_append(&cfg);
        assert_eq!(seqs, [1, 2, 3, 4], "{what}");
        assert_eq!(next_seq, 5, "{what}");
    }
}

#[test]
fn corruption_in_the_middle_is_an_error() {
    let record = size(3);
    // In the last segment, with good records after it.
    for offset in [record + 17, record + 8, record] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cfg, segment) = five_records(tmp.path());
        flip(&segment, offset);
        match Spool::open(cfg) {
            Err(SpoolError::Corrupt { file, offset, .. }) => {
                assert_eq!((file, offset), (segment, record));
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a spool corrupt at offset {offset}"),
        }
    }

    // At the end of a segment that is not the last.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 2 * record;
    let (spool, reader) = Spool::open(cfg.clone()).expect("open");
    for _ in 0..3 {
        spool.append(records("r0", 2)).expect("append");
    }
    drop((spool, reader));
    let files = segment_files(&cfg.dir);
    assert_eq!(files.len(), 3);
    flip(&files[1], 2 * record - 1);
    match Spool::open(cfg.clone()) {
        Err(SpoolError::Corrupt { file, offset, .. }) => {
            assert_eq!((&file, offset), (&files[1], record))
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a spool with a corrupt segment"),
    }

    // A missing segment.
    flip(&files[1], 2 * record - 1);
    std::fs::remove_file(&files[1]).expect("remove");
    assert!(matches!(Spool::open(cfg), Err(SpoolError::Corrupt { .. })));
}

#[test]
fn full_refuses_whole_groups_until_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let mut cfg = config(tmp.path());
    cfg.max_bytes = 3 * size(2);
    let (spool, mut reader) = Spool::open(cfg).expect("open");
    spool.append(records("a", 2)).expect("append");
    assert!(matches!(
        spool.append(records("b", 2)),
        Err(SpoolError::Full { max_bytes }) if max_bytes == 3 * size(2)
    ));
    assert_eq!(spool.append(records("c", 1)).expect("the room left"), 3);
    assert!(matches!(
        spool.append(records("d", 1)),
        Err(SpoolError::Full { .. })
    ));
    let stats = spool.stats();
    assert_eq!((stats.refused_full_total, stats.pending_records), (2, 3));
    assert!(matches!(
        spool.append(vec![Bytes::from(vec![0; MAX_RECORD + 1])]),
        Err(SpoolError::TooLarge { .. })
    ));

    // Nothing of a refused group was written.
    let got: Vec<(u64, Bytes)> = (0..3).map(|_| next(&rt, &mut reader)).collect();
    assert_eq!(got[2], (3, Bytes::from_static(b"c0")));
    assert!(nothing_next(&rt, &mut reader));

    reader.ack(1).expect("ack");
    assert_eq!(spool.append(records("e", 1)).expect("room again"), 4);
    assert!(matches!(
        spool.append(records("f", 1)),
        Err(SpoolError::Full { .. })
    ));
}

#[test]
fn concurrent_appends_are_each_read_once_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let mut cfg = config(tmp.path());
    cfg.segment_bytes = 64 << 10;
    let (spool, mut reader) = Spool::open(cfg).expect("open");
    const THREADS: usize = 8;
    const CALLS: usize = 300;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let mut firsts = Vec::new();
                for i in 0..CALLS {
                    let group: Vec<Bytes> = (0..1 + i % 3)
                        .map(|j| Bytes::from(format!("{t}:{i}:{j}")))
                        .collect();
                    firsts.push((spool.append(group).expect("append"), i));
                }
                firsts
            })
        })
        .collect();
    let firsts: Vec<Vec<(u64, usize)>> = threads
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    let total: usize = (0..CALLS).map(|i| 1 + i % 3).sum::<usize>() * THREADS;

    let mut by_seq = HashMap::new();
    for seq in 1..=total as u64 {
        let (got, payload) = next(&rt, &mut reader);
        assert_eq!(got, seq, "seqs are consecutive");
        by_seq.insert(seq, payload);
    }
    assert!(nothing_next(&rt, &mut reader));
    let mut seen = 0;
    for (t, calls) in firsts.iter().enumerate() {
        let mut last = 0;
        for &(first, i) in calls {
            assert!(first > last, "thread {t}'s groups are in its order");
            for j in 0..1 + i % 3 {
                let seq = first + j as u64;
                assert_eq!(by_seq[&seq], format!("{t}:{i}:{j}").as_bytes(), "seq {seq}");
                seen += 1;
                last = seq;
            }
        }
    }
    assert_eq!(seen, total, "every record once");
}

#[test]
fn acknowledged_past_the_segments_the_seqs_still_go_on() {
    // After a power loss, records may be acknowledged (and the ack durable) while their
    // segment lost them; the next seq still follows the acknowledged one.
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let cfg = config(tmp.path());
    let (spool, mut reader) = Spool::open(cfg.clone()).expect("open");
    spool.append(records("a", 10)).expect("append");
    for _ in 0..10 {
        next(&rt, &mut reader);
    }
    reader.ack(10).expect("ack");
    drop((spool, reader));
    let segment = segment_files(&cfg.dir).remove(0);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(5 * size(2)))
        .expect("truncate");

    let (spool, mut reader) = Spool::open(cfg.clone()).expect("reopen");
    assert_eq!(reader.acked(), 10);
    assert!(nothing_next(&rt, &mut reader));
    assert_eq!(spool.append(records("b", 1)).expect("append"), 11);
    assert_eq!(next(&rt, &mut reader), (11, Bytes::from_static(b"b0")));
    drop((spool, reader));
    assert_eq!(segment_files(&cfg.dir).len(), 1);
    let (spool, mut reader) = Spool::open(cfg).expect("reopen");
    assert_eq!(next(&rt, &mut reader).0, 11);
    assert_eq!(spool.append(records("c", 1)).expect("append"), 12);
}

#[test]
fn sync_makes_appends_durable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(tmp.path());
    cfg.sync_every = Duration::from_secs(3600);
    let (spool, _reader) = Spool::open(cfg).expect("open");
    spool.append(records("a", 3)).expect("append");
    spool.sync().expect("sync");
    spool.sync().expect("a sync with nothing new");
}

/// The environment variable that turns [`crash_child`] into the appending child of
/// [`a_killed_process_keeps_every_append_it_returned`].
const CRASH_DIR: &str = "TRIGGERFS_SPOOL_CRASH_DIR";

/// Appends (and reads and acknowledges) until killed, printing each seq `append` returned.
/// Does nothing unless started by the crash test.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR) else {
        return;
    };
    let mut cfg = SpoolConfig::new(dir);
    cfg.segment_bytes = 8 << 10;
    let rt = runtime();
    let (spool, mut reader) = Spool::open(cfg).expect("open");
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let group = (0..1 + i % 4)
            .map(|j| Bytes::from(format!("{i}:{j}")))
            .collect();
        let first = spool.append(group).expect("append");
        use std::io::Write;
        writeln!(out, "appended {i} {first}").expect("stdout");
        out.flush().expect("flush");
        // Acknowledge some, so segments are deleted and the ack file rewritten meanwhile.
        if i % 7 == 0 {
            let (seq, _) = next(&rt, &mut reader);
            reader.ack(seq).expect("ack");
        }
    }
}

#[test]
fn a_killed_process_keeps_every_append_it_returned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("spool");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "spool::tests::crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut appended: Vec<(u64, u64)> = Vec::new();
    let parse = |line: &str| -> Option<(u64, u64)> {
        let mut words = line.strip_prefix("appended ")?.split(' ');
        Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
    };
    for line in lines.by_ref() {
        let line = line.expect("line");
        if let Some(a) = parse(&line) {
            appended.push(a);
            if appended.len() == 3000 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    // What the child printed before it died counts too.
    appended.extend(lines.map_while(Result::ok).filter_map(|l| parse(&l)));
    assert!(
        appended.len() >= 3000,
        "the child appended only {}",
        appended.len()
    );

    let rt = runtime();
    let (spool, mut reader) = Spool::open(SpoolConfig::new(&dir)).expect("reopen");
    let acked = reader.acked();
    let mut found = HashMap::new();
    while let Ok(Ok((seq, payload))) =
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(200), reader.next()).await })
    {
        assert!(seq > acked);
        found.insert(seq, payload);
    }
    let mut checked = 0;
    for &(i, first) in &appended {
        for j in 0..1 + i % 4 {
            let seq = first + j;
            if seq > acked {
                let payload = found
                    .get(&seq)
                    .unwrap_or_else(|| panic!("seq {seq} (append {i}) lost"));
                assert_eq!(payload, format!("{i}:{j}").as_bytes());
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "nothing left to check (acked {acked})");
    let (last_i, last_first) = appended[appended.len() - 1];
    let next_seq = spool.append(records("z", 1)).expect("append");
    assert!(
        next_seq > last_first + last_i % 4,
        "the seq went back to {next_seq}"
    );
}

/// The environment variable that turns [`ack_child`] into the acknowledging child of
/// [`a_killed_reader_resends_at_most_what_ack_fast_allows`].
const ACK_CRASH_DIR: &str = "TRIGGERFS_SPOOL_ACK_CRASH_DIR";

/// Appends, reads and acknowledges one record at a time until killed, printing each
/// acknowledged seq. Does nothing unless started by the test below.
#[test]
fn ack_child() {
    let Some(dir) = std::env::var_os(ACK_CRASH_DIR) else {
        return;
    };
    let rt = runtime();
    let (spool, mut reader) = Spool::open(SpoolConfig::new(dir)).expect("open");
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        spool.append(records(&i.to_string(), 1)).expect("append");
        let (seq, _) = next(&rt, &mut reader);
        reader.ack(seq).expect("ack");
        use std::io::Write;
        writeln!(out, "acked {seq}").expect("stdout");
        out.flush().expect("flush");
    }
}

/// A sender killed without a clean stop (no durable `ack` for up to a second) sends again
/// at most `ACK_FAST_EVERY` records it had acknowledged: `ack.fast` kept up.
#[test]
fn a_killed_reader_resends_at_most_what_ack_fast_allows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("spool");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "spool::tests::ack_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ACK_CRASH_DIR, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut last = 0u64;
    for line in lines.by_ref() {
        if let Some(seq) = line
            .expect("line")
            .strip_prefix("acked ")
            .and_then(|s| s.parse().ok())
        {
            last = seq;
            if last >= 5000 {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(last >= 5000, "the child acknowledged only {last}");
    let (_spool, reader) = Spool::open(SpoolConfig::new(&dir)).expect("reopen");
    let acked = reader.acked();
    assert!(
        acked + super::reader::ACK_FAST_EVERY >= last,
        "acknowledged {last} before the kill, recovered only {acked}"
    );
}

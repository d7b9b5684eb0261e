//! Opening a spool directory: the lock, the id, the acknowledged position, and a check of
//! every record in every segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

use super::record::{Header, HEADER, MAX_RECORD};
use super::{segment_path, Segment, SpoolConfig, SpoolError};

const SOURCE: &str = "source";
const ACK: &str = "ack";
/// The acknowledged seq written in place, often and without fsync (see `reader.rs`).
pub(super) const ACK_FAST: &str = "ack.fast";
const LOCK: &str = "lock";
const SEGMENT_SUFFIX: &str = ".seg";

/// Bytes recovery reads at a time.
const READ_CHUNK: usize = 1 << 20;

/// A read position: the next record to look at is `next_seq`, at `offset` in the segment
/// named `segment`. At the end of a segment, the position may name that segment (offset =
/// its length) or the next one (offset 0); readers look the segment up by `next_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub next_seq: u64,
    pub segment: u64,
    pub offset: u64,
}

/// What [`open`] found.
pub(super) struct Recovered {
    /// The directory's lock (taken by the caller into its shared state).
    pub lock: Option<File>,
    pub source: [u8; 16],
    /// The segments left after deleting wholly acknowledged ones, in order.
    pub segments: Vec<Segment>,
    /// The seq the next appended record gets.
    pub next_seq: u64,
    /// The acknowledged seq from the `ack` file.
    pub acked: u64,
    /// Where the first unacknowledged record is (or will be).
    pub first_unacked: Position,
    /// Bytes of the records after `acked`.
    pub pending_bytes: u64,
}

/// Creates or opens `cfg.dir`, takes its lock, and checks (and repairs a torn tail of) its
/// segments.
pub(super) fn open(cfg: &SpoolConfig) -> Result<Recovered, SpoolError> {
    let dir = &cfg.dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SpoolError::io("create directory", dir, e))?;
    let lock = lock(dir)?;
    let segments = list_segments(dir)?;
    let acked = read_ack(dir)?;
    let source = read_or_make_source(dir, !segments.is_empty() || acked.is_some())?;
    // `ack.fast` may be ahead of `ack` (it is written far more often); never behind what
    // was made durable.
    let acked = acked.unwrap_or(0).max(read_ack_fast(dir));
    let mut scanned = scan_segments(dir, &segments, acked)?;
    let next_seq = scanned.next_seq;
    if next_seq <= acked {
        // Only after a power loss: records were sent and acknowledged (and the ack made
        // durable) before their segment was. Seqs must not go back, so the next record
        // starts a segment of its own after the acknowledged one.
        tracing::warn!(
            dir = %dir.display(),
            acked,
            written = next_seq - 1,
            "spool: records acknowledged but lost from their segment (power loss?); continuing after the acknowledged seq"
        );
    }
    let next_seq = next_seq.max(acked + 1);
    scanned.delete_acknowledged(dir, acked, next_seq)?;
    // With no unacknowledged record on disk, the first one will be the next appended: at
    // the end of the last segment (which then runs up to `next_seq`), or in a new one.
    let first_unacked = scanned.first_unacked.unwrap_or(match scanned.kept.last() {
        Some(seg) => Position {
            next_seq,
            segment: seg.first,
            offset: seg.len,
        },
        None => Position {
            next_seq,
            segment: next_seq,
            offset: 0,
        },
    });
    Ok(Recovered {
        lock: Some(lock),
        source,
        segments: scanned.kept,
        next_seq,
        acked,
        first_unacked,
        pending_bytes: scanned.pending_bytes,
    })
}

/// The first seqs of the segments in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(first) if stem.len() == 20 && first > 0 => segments.push(first),
            _ => {
                let why = "a segment name that is not a 20-digit seq";
                return Err(SpoolError::corrupt(entry.path(), 0, why));
            }
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// What [`scan_segments`] found.
struct Scanned {
    /// Every segment, checked.
    kept: Vec<Segment>,
    /// The seq after each segment's last record.
    ends: Vec<u64>,
    /// The seq after the last record.
    next_seq: u64,
    /// Bytes of the records after the acknowledged seq.
    pending_bytes: u64,
    /// Where the first record after the acknowledged seq is, if one is on disk.
    first_unacked: Option<Position>,
}

/// Checks every record of `segments` (first seqs, in order), which must follow each other
/// from at most `acked + 1` on ([`scan_segment`]).
fn scan_segments(dir: &Path, segments: &[u64], acked: u64) -> Result<Scanned, SpoolError> {
    let mut scanned = Scanned {
        kept: Vec::with_capacity(segments.len()),
        ends: Vec::with_capacity(segments.len()),
        next_seq: segments.first().copied().unwrap_or(acked + 1),
        pending_bytes: 0,
        first_unacked: None,
    };
    if scanned.next_seq > acked + 1 {
        let (first, last) = (acked + 1, scanned.next_seq - 1);
        let why = format!("records {first} to {last} are missing (acknowledged up to {acked})");
        return Err(SpoolError::corrupt(segment_path(dir, last + 1), 0, why));
    }
    for (i, &first) in segments.iter().enumerate() {
        let path = segment_path(dir, first);
        if first != scanned.next_seq {
            let why = format!("the segment should start at seq {}", scanned.next_seq);
            return Err(SpoolError::corrupt(path, 0, why));
        }
        let scan = scan_segment(&path, first, acked, i + 1 == segments.len())?;
        scanned.pending_bytes += scan.pending_bytes;
        if scanned.first_unacked.is_none() {
            scanned.first_unacked = scan.first_unacked.map(|offset| Position {
                next_seq: acked + 1,
                segment: first,
                offset,
            });
        }
        scanned.next_seq = scan.next_seq;
        scanned.kept.push(Segment {
            first,
            len: scan.len,
        });
        scanned.ends.push(scan.next_seq);
    }
    Ok(scanned)
}

impl Scanned {
    /// Deletes the segments holding only acknowledged records: the `ack` file already says
    /// so (it is what `acked` was read from); but not one the writer will continue (the
    /// last, when its records run up to `next_seq`), which keeps the seqs' place.
    fn delete_acknowledged(
        &mut self,
        dir: &Path,
        acked: u64,
        next_seq: u64,
    ) -> Result<(), SpoolError> {
        let last = self.ends.len().saturating_sub(1);
        let deletable = self
            .ends
            .iter()
            .enumerate()
            .take_while(|&(i, &end)| end <= acked + 1 && (i < last || end < next_seq))
            .count();
        for seg in self.kept.drain(..deletable) {
            let path = segment_path(dir, seg.first);
            fs::remove_file(&path).map_err(|e| SpoolError::io("delete", &path, e))?;
        }
        if deletable > 0 {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Opens `path` for writing, made 0600 if new, its contents kept.
pub(super) fn open_private(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SpoolError::io("open", path, e))
}

/// Takes the directory's `flock`, so one spool is open on it at a time.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK);
    let file = open_private(&path)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Err(SpoolError::InUse { dir: dir.into() });
        }
        return Err(SpoolError::io("lock", &path, err));
    }
    Ok(file)
}

/// The `ack` file's seq, `None` if there is none yet.
fn read_ack(dir: &Path) -> Result<Option<u64>, SpoolError> {
    let path = dir.join(ACK);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io("read", &path, e)),
    };
    let why = "not an acknowledged seq and its CRC";
    decode_ack(&bytes)
        .map(Some)
        .ok_or_else(|| SpoolError::corrupt(path, 0, why))
}

/// The seq in `ack.fast`, 0 when there is none or it is torn (a power loss in the middle of
/// its write: then `ack` alone counts).
fn read_ack_fast(dir: &Path) -> u64 {
    let path = dir.join(ACK_FAST);
    let Ok(bytes) = fs::read(&path) else {
        return 0;
    };
    match decode_ack(&bytes) {
        Some(seq) => seq,
        None => {
            tracing::warn!(path = %path.display(), "spool: a torn ack.fast is ignored");
            0
        }
    }
}

/// An acknowledged seq and its CRC32C, as both ack files hold it.
pub(super) fn encode_ack(seq: u64) -> [u8; 12] {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[8..].copy_from_slice(&crc32c::crc32c(&seq.to_le_bytes()).to_le_bytes());
    bytes
}

fn decode_ack(bytes: &[u8]) -> Option<u64> {
    <[u8; 12]>::try_from(bytes).ok().and_then(|b| {
        let [s @ .., c0, c1, c2, c3] = b;
        (crc32c::crc32c(&s) == u32::from_le_bytes([c0, c1, c2, c3])).then(|| u64::from_le_bytes(s))
    })
}

/// Writes the `ack` file: temp file, fsync, rename, fsync of the directory.
pub(super) fn write_ack(dir: &Path, seq: u64) -> Result<(), SpoolError> {
    replace_file(dir, ACK, &encode_ack(seq))
}

/// The spool's id: read from `source`, or made now for a new spool. `in_use` says there
/// are records or an ack already: a missing id then would give the same records a new
/// idempotency key, so it is an error.
fn read_or_make_source(dir: &Path, in_use: bool) -> Result<[u8; 16], SpoolError> {
    let path = dir.join(SOURCE);
    match fs::read(&path) {
        Ok(bytes) => <[u8; 16]>::try_from(bytes.as_slice())
            .map_err(|_| SpoolError::corrupt(&path, 0, "the spool id is not 16 bytes")),
        Err(e) if e.kind() == io::ErrorKind::NotFound && in_use => Err(SpoolError::corrupt(
            &path,
            0,
            "the spool id is missing but records or an ack exist",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let source: [u8; 16] = rand::random();
            replace_file(dir, SOURCE, &source)?;
            Ok(source)
        }
        Err(e) => Err(SpoolError::io("read", &path, e)),
    }
}

/// Replaces `dir/name` with `bytes` atomically and durably.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| SpoolError::io("create", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| SpoolError::io("write", &tmp, e))?;
    file.sync_all()
        .map_err(|e| SpoolError::io("fsync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| SpoolError::io("rename", &tmp, e))?;
    sync_dir(dir)
}

/// fsyncs a directory, so entries created, renamed or removed in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync", dir, e))
}

/// What one segment holds.
struct Scan {
    /// Bytes of valid records (the file is truncated to this if it had a torn tail).
    len: u64,
    /// The seq after its last record.
    next_seq: u64,
    /// Bytes of its records after `acked`.
    pending_bytes: u64,
    /// The offset of its first record after `acked`, if it has one.
    first_unacked: Option<u64>,
}

/// Checks every record of a segment. A bad record in the `last` segment with no good record
/// after it is a torn tail, truncated away; anything else bad is `Corrupt`.
fn scan_segment(path: &Path, first: u64, acked: u64, last: bool) -> Result<Scan, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(last)
        .open(path)
        .map_err(|e| SpoolError::io("open", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| SpoolError::io("stat", path, e))?
        .len();
    let mut input = BufReader::with_capacity(READ_CHUNK, &file);
    let mut scan = Scan {
        len: 0,
        next_seq: first,
        pending_bytes: 0,
        first_unacked: None,
    };
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    let bad = loop {
        let offset = scan.len;
        let remaining = file_len - offset;
        if remaining == 0 {
            return Ok(scan);
        }
        if remaining < HEADER as u64 {
            break "a record header cut short";
        }
        input
            .read_exact(&mut header)
            .map_err(|e| SpoolError::io("read", path, e))?;
        let Some(h) = Header::at(&header) else {
            break "a record header cut short";
        };
        if h.seq != scan.next_seq {
            break "a record with the wrong seq or a damaged header";
        }
        if h.len as usize > MAX_RECORD {
            break "a record length over the limit";
        }
        if h.record_len() > remaining {
            break "a record cut short";
        }
        payload.resize(h.len as usize, 0);
        input
            .read_exact(&mut payload)
            .map_err(|e| SpoolError::io("read", path, e))?;
        if !h.matches(&payload) {
            break "a record whose CRC does not match";
        }
        if h.seq > acked {
            scan.pending_bytes += h.record_len();
            scan.first_unacked.get_or_insert(offset);
        }
        scan.len += h.record_len();
        scan.next_seq += 1;
    };
    let (offset, expected) = (scan.len, scan.next_seq);
    if !last {
        let why = format!("{bad} (seq {expected} expected)");
        return Err(SpoolError::corrupt(path, offset, why));
    }
    if let Some(at) = later_record(&file, offset, file_len, expected)
        .map_err(|e| SpoolError::io("read", path, e))?
    {
        let why =
            format!("{bad} (seq {expected} expected), and a good record after it at offset {at}");
        return Err(SpoolError::corrupt(path, offset, why));
    }
    tracing::warn!(
        file = %path.display(),
        offset,
        bytes = file_len - offset,
        reason = bad,
        "spool: truncating a torn tail (a write cut short by a crash)"
    );
    file.set_len(offset)
        .map_err(|e| SpoolError::io("truncate", path, e))?;
    file.sync_all()
        .map_err(|e| SpoolError::io("fsync", path, e))?;
    Ok(scan)
}

/// The offset of a good record (seq after `expected - 1`, CRC matching) somewhere in
/// `file[from + 1..end]`, if any: what tells corruption in the middle from a torn tail. Each
/// offset's header is checked for a plausible seq and length before its payload is read.
fn later_record(file: &File, from: u64, end: u64, expected: u64) -> io::Result<Option<u64>> {
    let mut window = vec![0u8; READ_CHUNK + HEADER];
    let mut start = from + 1;
    let mut payload = Vec::new();
    while start + HEADER as u64 <= end {
        let n = (end - start).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..n], start)?;
        let candidates = n - HEADER + 1;
        for i in 0..candidates {
            let at = start + i as u64;
            let Some(h) = Header::at(&window[i..n]) else {
                break;
            };
            // A record at `at` has at most (at - from) / HEADER records before it since
            // `from`, so its seq is bounded; and it must fit in the file.
            let max_seq = expected + (at - from) / HEADER as u64;
            if h.seq < expected || h.seq > max_seq || h.len as usize > MAX_RECORD {
                continue;
            }
            if at + h.record_len() > end {
                continue;
            }
            payload.resize(h.len as usize, 0);
            file.read_exact_at(&mut payload, at + HEADER as u64)?;
            if h.matches(&payload) {
                return Ok(Some(at));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}

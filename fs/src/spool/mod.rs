//! The on-disk spool: requests wait here, in order, between a `write(2)` to a trigger file
//! and the broker's answer.
//!
//! A write returns once its records are in the spool's segment file, that is in the page
//! cache: they survive the fs process being killed (`SIGKILL`, a panic, an OOM kill). They
//! survive a power loss once made durable: every `sync_every` (default 100 ms), and at once
//! when the writer calls `fsync(2)` on the trigger file ([`Spool::sync`]).
//!
//! ## On disk
//!
//! `dir` (0700) holds:
//! - `source`: the spool's 16-byte id, made when the directory was created. It is half of
//!   each request's idempotency key, so it outlives restarts.
//! - `<first seq, 20 digits>.seg`: segment files of records (see `record.rs`: length, CRC32C,
//!   seq, payload). Seqs are consecutive across segments, start at 1, and never go back.
//!   The writer rolls to a new segment once the current one is past `segment_bytes`; the
//!   old one is fdatasynced and the directory fsynced first, so after a power loss only the
//!   last segment can have a torn tail.
//! - `ack`: the highest acknowledged seq (8 bytes LE and their CRC32C), replaced by
//!   write-temp, fsync, rename, fsync-dir. It is persisted before any segment is deleted, so
//!   an acknowledged record is never sent again once its segment is gone, and the next seq
//!   is known even when every segment has been deleted.
//! - `ack.fast`: the same, written in place with one `pwrite(2)` and no fsync every 256
//!   acknowledgements, so that a restart after the process was killed sends again at most
//!   ~1,300 records (256 plus the sender's 1,024 in flight), inside the idempotency windows
//!   of 4,096 keys; recovery takes the larger of the two (a torn `ack.fast`, possible only
//!   after a power loss, is ignored).
//! - `lock`: `flock`ed while a [`Spool`] or its [`SpoolReader`] is alive; a second opener
//!   gets [`SpoolError::InUse`] instead of two writers interleaving in one segment.
//!
//! ## Threads
//!
//! FUSE threads call [`Spool::append`]. The writer (segment, position, next seq) sits behind
//! a mutex: a caller that finds it free writes its group itself, with one `pwrite(2)`, on
//! its own thread; one that finds it busy hands its group to the writer thread over a
//! bounded channel with a reply channel of its own, and that thread takes everything queued,
//! encodes it into one buffer and writes it with one `pwrite(2)`: a burst from many threads
//! costs one syscall, and a lone write no thread hand-over (two wake-ups, about a third of a
//! one-line write: `bench fs`'s one-line-per-write case went from 18k to 48k lines/s). The
//! periodic fdatasync runs on a thread of its own (`spool-sync`) on a duplicate of the
//! segment's fd, so appends go on while it runs (it takes milliseconds, more while the
//! kernel writes back other dirty pages); an fdatasync asked for by [`Spool::sync`] (a
//! writer's `fsync(2)`) and a segment roll's run under the writer's lock and are answered
//! only once durable.
//!
//! The writer uses plain `pwrite(2)`/`fdatasync(2)` (std's `FileExt::write_all_at`,
//! `File::sync_data`), not tokio-uring. Measured with `fs/examples/spool_ab.rs` (release,
//! 100-byte records, this 2-core VM with an ext4 virtio disk, default `sync_every` and
//! segments; both backends interleaved in each round; the tokio-uring variant ran its
//! `write_all_at`/`sync_data` on a `tokio_uring::Runtime` owned by the writer thread, commit
//! 2a71856):
//!
//! | threads × group | pwrite records/s | tokio-uring records/s | p50 µs pwrite / uring |
//! |---|---|---|---|
//! | 1 × 1   | 53 k, 60 k, 78 k     | 12 k, 13 k, 10 k      | 7.5–8.5 / 15–58 |
//! | 4 × 1   | 61 k, 89 k, 62 k     | 26 k, 30 k, 54 k      | 2.8–20 / 27–137 |
//! | 1 × 650 | 0.8–3.5 M (median 1.3 M) | 0.8–2.7 M (median 1.7 M) | 72–172 / 62–178 |
//! | 4 × 650 | 1.3–2.6 M (median 2.2 M) | 2.1–4.0 M (median 3.3 M) | 296–906 / 305–570 |
//!
//! (Group-of-1 rows: three runs of 100 k–300 k records; 650 rows: six runs of 0.1–3 M.)
//! p99 is 1–18 ms for both wherever an fdatasync (periodic, or at a segment roll) falls in
//! a case: the writer is blocked for it. A FUSE write is one group, mostly of one record:
//! there pwrite is 1.2–7× faster and half the latency (tokio-uring pays a runtime
//! park/unpark per operation on top of the submission). With 650-record groups the spread
//! between runs is larger than the difference (tokio-uring's medians are ahead, its ranges
//! overlap pwrite's); with every fdatasync left out (`SPOOL_AB_SYNC_MS`,
//! `SPOOL_AB_SEGMENT_MB`) tokio-uring was ahead at 4 × 650 (3.1–6.4 M against 1.3–1.4 M
//! records/s) and level at 1 × 650, not explained further (5 busy threads on 2 cores).
//! So pwrite is kept: it wins the case the fs lives on and is simpler (no second runtime,
//! no owned buffers); worth re-measuring on the target hardware with large groups.

//! The [`SpoolReader`] (the sender task) reads the records back from the segment files with
//! `pread(2)` (they are in the page cache), a chunk at a time: its memory is one chunk
//! (1 MiB, or one record if larger) whatever `max_bytes` is. The writer publishes the last
//! written seq on a `tokio::sync::watch`, which is what `next()` waits on.
//!
//! ## Recovery
//!
//! [`Spool::open`] reads every segment in order, checking each record's CRC and that seqs
//! are consecutive. A torn or corrupt tail of the last segment (a crash mid-write) is
//! truncated away with a warning; anything else that does not check out (a bad record with a
//! good one after it, a gap in seqs, a bad record in an earlier segment) is
//! [`SpoolError::Corrupt`], naming the file and offset, never silently skipped.

mod reader;
mod record;
mod recover;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

pub use reader::SpoolReader;
pub use record::MAX_RECORD;

/// Where and how big the spool is.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool's directory; created (0700) if missing.
    pub dir: PathBuf,
    /// `spool_max`: bytes (headers included) of records not yet acknowledged. Past it,
    /// [`Spool::append`] fails with [`SpoolError::Full`] until the reader acknowledges.
    pub max_bytes: u64,
    /// `spool_sync`: how often what was written is made durable (fdatasync).
    pub sync_every: Duration,
    /// A segment file is closed and a new one started once it is past this many bytes.
    pub segment_bytes: u64,
}

impl SpoolConfig {
    /// The defaults: 1 GiB of unacknowledged records, fdatasync every 100 ms, 16 MiB
    /// segments.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: 1 << 30,
            sync_every: Duration::from_millis(100),
            segment_bytes: 16 << 20,
        }
    }
}

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The records not yet acknowledged already take `max_bytes` (the caller answers
    /// `ENOSPC`). Nothing of the refused group was written.
    #[error("the spool is full: {max_bytes} bytes of records wait for the broker")]
    Full {
        /// The configured bound.
        max_bytes: u64,
    },
    /// One record is over [`MAX_RECORD`].
    #[error("a record of {len} bytes is over the spool's limit of {max}")]
    TooLarge {
        /// The record's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file operation failed.
    #[error("spool: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"write"`, `"fdatasync"`, `"open"`, ...).
        op: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The writer thread is gone (the spool was dropped, or it stopped after an error).
    #[error("the spool's writer is gone")]
    Closed,
    /// The spool's files hold something recovery cannot repair by truncating a torn tail.
    #[error("spool corrupt: {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another [`Spool`] (in this or another process) has the directory open.
    #[error("the spool {} is in use by another process", dir.display())]
    InUse {
        /// The spool's directory.
        dir: PathBuf,
    },
    /// [`SpoolReader::ack`] of a seq the reader has not returned yet.
    #[error("ack of seq {seq}, but only up to {delivered} was delivered")]
    NotDelivered {
        /// The seq acknowledged.
        seq: u64,
        /// The highest seq `next()` returned.
        delivered: u64,
    },
}

impl SpoolError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> SpoolError {
        SpoolError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    fn corrupt(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> SpoolError {
        SpoolError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records written and not yet acknowledged.
    pub pending_records: u64,
    /// Their bytes on disk, headers included (what `max_bytes` bounds).
    pub pending_bytes: u64,
    /// Records appended since the spool was opened.
    pub appended_total: u64,
    /// Records acknowledged since the spool was opened.
    pub acked_total: u64,
    /// Appends refused with [`SpoolError::Full`] since the spool was opened.
    pub refused_full_total: u64,
    /// Segment files on disk.
    pub segments: usize,
}

/// The handle FUSE threads append through. Cheap to clone; the writer thread stops (after a
/// last fdatasync) when the last clone is dropped.
#[derive(Clone)]
pub struct Spool {
    handle: Arc<Handle>,
}

/// What the clones of a [`Spool`] share; dropping it stops and joins the writer.
struct Handle {
    tx: Option<crossbeam_channel::Sender<writer::Msg>>,
    thread: Option<JoinHandle<()>>,
    /// The writer itself: a caller that finds it idle writes its group on its own thread.
    writer: writer::SharedWriter,
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Closing the channel is the writer's signal to sync and stop; joining makes the
        // drop the point after which the files are quiet (a reopen does not race it).
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(dir = %self.shared.dir.display(), "spool writer thread panicked");
            }
        }
    }
}

/// State the writer, the reader and the handles share.
struct Shared {
    dir: PathBuf,
    source: [u8; 16],
    max_bytes: u64,
    /// The segments on disk and how much of each is written; the writer pushes, the reader's
    /// `ack` pops. Held only for a few field accesses, never across I/O.
    segments: Mutex<VecDeque<Segment>>,
    /// Bytes of records written since open plus those pending at open.
    written_bytes: AtomicU64,
    /// Bytes of records acknowledged since open.
    acked_bytes: AtomicU64,
    /// The last seq written to a segment (0 before the first).
    written_seq: AtomicU64,
    /// The highest acknowledged seq (in memory; the `ack` file may lag behind).
    acked_seq: AtomicU64,
    appended_total: AtomicU64,
    acked_total: AtomicU64,
    refused_full_total: AtomicU64,
    /// The `flock`ed `lock` file; the lock goes with the last reference.
    _lock: File,
}

impl Shared {
    fn segments(&self) -> MutexGuard<'_, VecDeque<Segment>> {
        // A panic while holding this lock leaves only plain numbers behind: still usable.
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending_bytes(&self) -> u64 {
        let written = self.written_bytes.load(Ordering::Acquire);
        written.saturating_sub(self.acked_bytes.load(Ordering::Acquire))
    }

    fn segment_path(&self, first: u64) -> PathBuf {
        segment_path(&self.dir, first)
    }
}

/// One segment file: the seq of its first record (its name) and the bytes written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    first: u64,
    len: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

impl Spool {
    /// Opens or creates the spool in `cfg.dir`, recovers it (see the module docs) and starts
    /// the writer thread.
    pub fn open(cfg: SpoolConfig) -> Result<(Spool, SpoolReader), SpoolError> {
        let mut recovered = recover::open(&cfg)?;
        let lock = recovered.lock.take().ok_or(SpoolError::Closed)?;
        let shared = Arc::new(Shared {
            dir: cfg.dir.clone(),
            source: recovered.source,
            max_bytes: cfg.max_bytes,
            segments: Mutex::new(recovered.segments.iter().copied().collect()),
            written_bytes: AtomicU64::new(recovered.pending_bytes),
            acked_bytes: AtomicU64::new(0),
            written_seq: AtomicU64::new(recovered.next_seq - 1),
            acked_seq: AtomicU64::new(recovered.acked),
            appended_total: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            refused_full_total: AtomicU64::new(0),
            _lock: lock,
        });
        let (written_tx, written_rx) = tokio::sync::watch::channel(recovered.next_seq - 1);
        let (tx, thread, writer) = writer::start(&cfg, shared.clone(), &recovered, written_tx)?;
        let reader = SpoolReader::new(shared.clone(), &recovered, written_rx);
        let handle = Handle {
            tx: Some(tx),
            thread: Some(thread),
            writer,
            shared,
        };
        Ok((
            Spool {
                handle: Arc::new(handle),
            },
            reader,
        ))
    }

    /// The spool's id: 16 random bytes made when its directory was created, kept in it.
    pub fn source(&self) -> [u8; 16] {
        self.handle.shared.source
    }

    /// Appends `records`, in order, as one group (all or none), blocking the calling thread
    /// until they are written to the segment file (the page cache). Returns the seq of the
    /// first; the others follow it consecutively. An empty group writes nothing and returns
    /// the seq the next record will get.
    pub fn append(&self, records: Vec<Bytes>) -> Result<u64, SpoolError> {
        if let Some(big) = records.iter().find(|r| r.len() > MAX_RECORD) {
            return Err(SpoolError::TooLarge {
                len: big.len(),
                max: MAX_RECORD,
            });
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        // A FUSE write is mostly alone: then the calling thread writes its group itself,
        // saving the two thread wake-ups of a hand-over (about a third of a one-line
        // write's cost). When the writer is busy, the group is queued and goes out with
        // whatever else is queued, in one write.
        match self.handle.writer.try_lock() {
            Ok(mut w) => w.append_here(records, reply),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().append_here(records, reply),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.send(writer::Msg::Append { records, reply })?
            }
        }
        answer.recv().map_err(|_| SpoolError::Closed)?
    }

    /// Blocks until everything appended before the call is durable (fdatasync).
    pub fn sync(&self) -> Result<(), SpoolError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.send(writer::Msg::Sync { reply })?;
        answer.recv().map_err(|_| SpoolError::Closed)?
    }

    /// The spool's counters now.
    pub fn stats(&self) -> SpoolStats {
        stats(&self.handle.shared)
    }

    fn send(&self, msg: writer::Msg) -> Result<(), SpoolError> {
        let tx = self.handle.tx.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(msg).map_err(|_| SpoolError::Closed)
    }
}

fn stats(shared: &Shared) -> SpoolStats {
    let segments = shared.segments().len();
    let written = shared.written_seq.load(Ordering::Acquire);
    let acked = shared.acked_seq.load(Ordering::Acquire);
    SpoolStats {
        pending_records: written.saturating_sub(acked),
        pending_bytes: shared.pending_bytes(),
        appended_total: shared.appended_total.load(Ordering::Relaxed),
        acked_total: shared.acked_total.load(Ordering::Relaxed),
        refused_full_total: shared.refused_full_total.load(Ordering::Relaxed),
        segments,
    }
}

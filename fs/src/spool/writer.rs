//! The writer thread: the one place segments are written, rolled and fdatasynced.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::record::{encode, encoded_len};
use super::recover::{sync_dir, Recovered};
use super::{Segment, Shared, SpoolConfig, SpoolError};

/// Calls queued for the writer at most: a FUSE thread that finds the queue full waits
/// (backpressure), and what waits in memory is bounded by this many groups.
const QUEUE: usize = 1024;

/// The writer writes what it has encoded once this much is buffered, even if more calls
/// are queued: its buffer stays bounded.
const FLUSH_AT: usize = 8 << 20;

/// A call to the writer, with the channel its answer goes back on.
pub(super) enum Msg {
    Append {
        records: Vec<Bytes>,
        reply: Sender<Result<u64, SpoolError>>,
    },
    Sync {
        reply: Sender<Result<(), SpoolError>>,
    },
}

/// Starts the writer thread on the recovered spool.
pub(super) fn start(
    cfg: &SpoolConfig,
    shared: Arc<Shared>,
    recovered: &Recovered,
    written: tokio::sync::watch::Sender<u64>,
) -> Result<(Sender<Msg>, JoinHandle<()>, SharedWriter), SpoolError> {
    // Recovery leaves the last segment in place only when the next record continues it.
    let current = match recovered.segments.last() {
        Some(seg) => {
            let path = shared.segment_path(seg.first);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| SpoolError::io("open", &path, e))?;
            Some(Current {
                len: seg.len,
                file,
                path,
            })
        }
        None => None,
    };
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let writer = Writer {
        shared,
        sync_every: cfg.sync_every,
        segment_bytes: cfg.segment_bytes,
        current,
        next_seq: recovered.next_seq,
        buf: Vec::new(),
        waiting: Vec::new(),
        buffered_bytes: 0,
        dirty: false,
        last_sync: Instant::now(),
        failed: None,
        written,
        syncer: Syncer::start(cfg)?,
    };
    let writer = Arc::new(Mutex::new(writer));
    let w = writer.clone();
    let sync_every = cfg.sync_every;
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || run(&w, &rx, sync_every))
        .map_err(|e| SpoolError::io("start the writer thread for", &cfg.dir, e))?;
    Ok((tx, thread, writer))
}

/// The writer, shared by the writer thread and the callers that find it idle.
pub(super) type SharedWriter = Arc<Mutex<Writer>>;

/// Locks the writer (a panic while holding it leaves a writer that still works or has
/// `failed` set).
pub(super) fn lock(writer: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer thread: what callers queued (when the writer was busy), and the periodic
/// fdatasync, also of what callers wrote themselves (so it wakes at least every
/// `sync_every`).
fn run(writer: &Mutex<Writer>, rx: &Receiver<Msg>, sync_every: Duration) {
    loop {
        let wait = {
            let w = lock(writer);
            if w.dirty {
                (w.last_sync + sync_every).saturating_duration_since(Instant::now())
            } else {
                sync_every
            }
        };
        let msg = match rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut w = lock(writer);
        if let Some(msg) = msg {
            w.handle(msg);
            // Everything queued meanwhile goes into the same write.
            while let Ok(msg) = rx.try_recv() {
                w.handle(msg);
            }
            w.flush();
        }
        if w.dirty && Instant::now() >= w.last_sync + sync_every {
            w.sync_in_background();
        }
    }
    let mut w = lock(writer);
    if w.dirty {
        if let Err(e) = w.sync() {
            tracing::error!(error = %e, "spool: last fdatasync failed");
        }
    }
}

/// The segment being appended to.
struct Current {
    len: u64,
    file: File,
    path: PathBuf,
}

pub(super) struct Writer {
    shared: Arc<Shared>,
    sync_every: Duration,
    segment_bytes: u64,
    current: Option<Current>,
    /// The seq the next encoded record gets.
    next_seq: u64,
    /// Records encoded and not yet written.
    buf: Vec<u8>,
    /// The callers whose records are in `buf`, with the seq of their first record.
    waiting: Vec<(Sender<Result<u64, SpoolError>>, u64)>,
    /// Records in `buf` (their bytes are `buf.len()`).
    buffered_bytes: u64,
    /// Something was written since the last fdatasync.
    dirty: bool,
    last_sync: Instant,
    /// Set when an fdatasync failed: the kernel may have dropped the pages it could not
    /// write, so what the spool holds is unknown and nothing more is accepted.
    failed: Option<(PathBuf, String)>,
    written: tokio::sync::watch::Sender<u64>,
    /// Where the periodic fdatasync runs, so appends go on meanwhile.
    syncer: Syncer,
}

/// The thread of the periodic fdatasync. An fdatasync takes milliseconds (more while the
/// kernel writes back other dirty pages); on the writer thread every append queued behind
/// it would wait that long, and a FUSE write with it. A sync asked for with
/// [`super::Spool::sync`] (a writer's `fsync(2)`) still runs on the writer thread and is
/// answered only once durable.
struct Syncer {
    jobs: Sender<(File, PathBuf)>,
    /// A sync is running: the next periodic one waits for the one after it.
    busy: Arc<std::sync::atomic::AtomicBool>,
    /// The first failure of a background sync (the writer then stops, as after its own).
    failed: Arc<std::sync::Mutex<Option<(PathBuf, String)>>>,
}

impl Syncer {
    fn start(cfg: &SpoolConfig) -> Result<Syncer, SpoolError> {
        let (jobs, rx) = crossbeam_channel::bounded::<(File, PathBuf)>(1);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = Arc::new(std::sync::Mutex::new(None));
        let (b, f) = (busy.clone(), failed.clone());
        std::thread::Builder::new()
            .name("spool-sync".into())
            .spawn(move || {
                for (file, path) in rx {
                    if let Err(e) = file.sync_data() {
                        tracing::error!(error = %e, path = %path.display(), "spool: periodic fdatasync failed");
                        let mut failed = f.lock().unwrap_or_else(|e| e.into_inner());
                        failed.get_or_insert((path, format!("fdatasync failed: {e}")));
                    }
                    b.store(false, Ordering::Release);
                }
            })
            .map_err(|e| SpoolError::io("start the sync thread for", &cfg.dir, e))?;
        Ok(Syncer { jobs, busy, failed })
    }

    /// Hands `file` to the sync thread unless a sync is still running; true if handed.
    fn start_sync(&self, file: &File, path: &std::path::Path) -> bool {
        if self.busy.swap(true, Ordering::AcqRel) {
            return false;
        }
        let handed = match file.try_clone() {
            Ok(dup) => self.jobs.try_send((dup, path.to_path_buf())).is_ok(),
            Err(_) => false,
        };
        if !handed {
            self.busy.store(false, Ordering::Release);
        }
        handed
    }

    fn failure(&self) -> Option<(PathBuf, String)> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Writer {
    /// The periodic fdatasync, on the sync thread: what was written so far becomes durable
    /// there while appends go on here.
    fn sync_in_background(&mut self) {
        if let Some(failure) = self.syncer.failure() {
            self.failed.get_or_insert(failure);
            return;
        }
        let Some(cur) = &self.current else {
            self.dirty = false;
            return;
        };
        if self.syncer.start_sync(&cur.file, &cur.path) {
            self.dirty = false;
            self.last_sync = Instant::now();
        } else {
            // The last one still runs: try again in 5 ms (not at once, which would spin).
            let retry = Duration::from_millis(5).min(self.sync_every);
            self.last_sync = Instant::now()
                .checked_sub(self.sync_every - retry)
                .unwrap_or_else(Instant::now);
        }
    }

    /// Writes a group on the calling thread (the writer was idle): the answer is in
    /// `reply` when this returns.
    pub(super) fn append_here(
        &mut self,
        records: Vec<Bytes>,
        reply: Sender<Result<u64, SpoolError>>,
    ) {
        self.handle(Msg::Append { records, reply });
        self.flush();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Append { records, reply } => {
                if let Err(e) = self.encode(&records) {
                    let _ = reply.send(Err(e));
                    return;
                }
                let first = self.next_seq - records.len() as u64;
                if records.is_empty() {
                    let _ = reply.send(Ok(first));
                } else {
                    self.waiting.push((reply, first));
                }
                if self.buf.len() >= FLUSH_AT {
                    self.flush();
                }
            }
            Msg::Sync { reply } => {
                self.flush();
                let _ = reply.send(self.sync());
            }
        }
    }

    /// Encodes one group into `buf`, or refuses it whole.
    fn encode(&mut self, records: &[Bytes]) -> Result<(), SpoolError> {
        self.check_failed()?;
        if records.is_empty() {
            return Ok(());
        }
        let bytes: u64 = records.iter().map(|r| encoded_len(r)).sum();
        let pending = self.shared.pending_bytes() + self.buffered_bytes;
        if pending + bytes > self.shared.max_bytes {
            self.shared
                .refused_full_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(SpoolError::Full {
                max_bytes: self.shared.max_bytes,
            });
        }
        let roll = match &self.current {
            None => true,
            Some(cur) => {
                let len = cur.len + self.buf.len() as u64;
                len > 0 && len >= self.segment_bytes
            }
        };
        if roll {
            self.flush();
            self.roll()?;
        }
        for record in records {
            encode(&mut self.buf, self.next_seq, record);
            self.next_seq += 1;
        }
        self.buffered_bytes += bytes;
        Ok(())
    }

    /// Writes `buf` at the end of the current segment in one write, publishes it, and
    /// answers the callers it holds.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let Some(cur) = self.current.as_mut() else {
            return; // `encode` rolls before it encodes: unreachable.
        };
        let first = self.waiting.first().map_or(self.next_seq, |w| w.1);
        let result = cur.file.write_all_at(&self.buf, cur.len);
        let records = self.next_seq - first;
        match result {
            Ok(()) => {
                cur.len += self.buf.len() as u64;
                let shared = &self.shared;
                if let Some(seg) = shared.segments().back_mut() {
                    seg.len = cur.len;
                }
                shared
                    .written_bytes
                    .fetch_add(self.buffered_bytes, Ordering::AcqRel);
                shared
                    .written_seq
                    .store(self.next_seq - 1, Ordering::Release);
                shared.appended_total.fetch_add(records, Ordering::Relaxed);
                self.written.send_replace(self.next_seq - 1);
                self.dirty = true;
                for (reply, first) in self.waiting.drain(..) {
                    let _ = reply.send(Ok(first));
                }
            }
            Err(e) => {
                // Part of the buffer may have landed: cut it off, so the segment ends at a
                // record boundary and the seqs can be given out again.
                if let Err(trunc) = cur.file.set_len(cur.len) {
                    tracing::error!(file = %cur.path.display(), error = %trunc, "spool: cannot truncate after a failed write");
                    self.failed = Some((
                        cur.path.clone(),
                        format!("truncate after a failed write: {trunc}"),
                    ));
                }
                self.next_seq = first;
                for (reply, _) in self.waiting.drain(..) {
                    let err = io::Error::new(e.kind(), e.to_string());
                    let _ = reply.send(Err(SpoolError::io("write", &cur.path, err)));
                }
            }
        }
        self.buf.clear();
        self.buffered_bytes = 0;
    }

    /// Starts a new segment at `next_seq`, after making the current one durable: only the
    /// last segment may then have a torn tail after a power loss.
    fn roll(&mut self) -> Result<(), SpoolError> {
        if let Some(cur) = &self.current {
            cur.file
                .sync_data()
                .map_err(|e| SpoolError::io("fdatasync", &cur.path, e))?;
        }
        let path = self.shared.segment_path(self.next_seq);
        // Not `create_new`: an earlier roll may have created it and failed after.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SpoolError::io("create", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| SpoolError::io("stat", &path, e))?
            .len();
        if len != 0 {
            return Err(SpoolError::corrupt(
                &path,
                0,
                "a new segment's file already holds data",
            ));
        }
        sync_dir(&self.shared.dir)?;
        self.shared.segments().push_back(Segment {
            first: self.next_seq,
            len: 0,
        });
        self.current = Some(Current { len: 0, file, path });
        Ok(())
    }

    /// fdatasyncs the current segment (earlier ones were synced when rolled).
    fn sync(&mut self) -> Result<(), SpoolError> {
        self.check_failed()?;
        self.last_sync = Instant::now();
        let Some(cur) = &self.current else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        match cur.file.sync_data() {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.failed = Some((cur.path.clone(), format!("fdatasync failed: {e}")));
                Err(SpoolError::io("fdatasync", &cur.path, e))
            }
        }
    }

    fn check_failed(&mut self) -> Result<(), SpoolError> {
        if let Some(failure) = self.syncer.failure() {
            self.failed.get_or_insert(failure);
        }
        match &self.failed {
            None => Ok(()),
            Some((path, why)) => Err(SpoolError::io(
                "write",
                path,
                io::Error::other(format!("the spool stopped after an earlier error: {why}")),
            )),
        }
    }
}

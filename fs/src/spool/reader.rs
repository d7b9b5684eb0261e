//! The reader: the one consumer, reading records back from the segment files in order.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::record::{Header, HEADER, MAX_RECORD};
use super::recover::{write_ack, Position, Recovered};
use super::{Segment, Shared, SpoolError};

/// Bytes `next()` reads from a segment at a time (more for a larger record).
const READ_CHUNK: usize = 1 << 20;

/// Bytes `ack` reads at a time while it steps over the headers of acknowledged records.
const ACK_CHUNK: usize = 64 << 10;

/// How often `ack` makes the acknowledged position durable when no segment is to be
/// deleted: what a restart sends again (harmlessly: each request carries its idempotency
/// key) is then at most this much, and a busy sender pays one fsync a second.
const ACK_PERSIST_EVERY: Duration = Duration::from_secs(1);

/// How many acknowledgements may pass before `ack.fast` is written: with the sender's 1,024
/// requests in flight, a restart after a kill sends again at most ~1,300 records, well
/// inside the idempotency windows (`proto::IDEM_WINDOW`, 4,096 keys), which a second's worth
/// of records at 20,000 a second would not be.
pub(super) const ACK_FAST_EVERY: u64 = 256;

/// The spool's one consumer: the task that sends records to the broker.
///
/// `next()` reads with `pread(2)` from the page cache on the calling task (no blocking
/// pool); `ack` writes and fsyncs the `ack` file at most once a second or when a segment
/// can be deleted, and `ack.fast` (one `pwrite(2)`) every [`ACK_FAST_EVERY`]
/// acknowledgements, also on the calling task.
pub struct SpoolReader {
    shared: Arc<Shared>,
    written: tokio::sync::watch::Receiver<u64>,
    /// Where `next()` reads.
    read: Position,
    read_window: Window,
    /// The first unacknowledged record.
    ack: Position,
    ack_window: Window,
    /// The highest seq `next()` returned.
    delivered: u64,
    /// The seq in the `ack` file and when it was written.
    persisted: u64,
    persisted_at: Instant,
    /// `ack.fast`, written in place with one `pwrite(2)` and no fsync every
    /// [`ACK_FAST_EVERY`] acknowledgements (it survives the process being killed; after a
    /// power loss `ack` counts), and the seq it holds.
    fast: Option<std::fs::File>,
    fast_persisted: u64,
}

impl SpoolReader {
    pub(super) fn new(
        shared: Arc<Shared>,
        recovered: &Recovered,
        written: tokio::sync::watch::Receiver<u64>,
    ) -> SpoolReader {
        SpoolReader {
            shared,
            written,
            read: recovered.first_unacked,
            read_window: Window::default(),
            ack: recovered.first_unacked,
            ack_window: Window::default(),
            delivered: recovered.acked,
            persisted: recovered.acked,
            persisted_at: Instant::now(),
            fast: None,
            fast_persisted: recovered.acked,
        }
    }

    /// The next record after the last one returned, waiting until there is one. Returns
    /// its seq and payload. [`SpoolError::Closed`] once every record is read and the
    /// [`Spool`](super::Spool) is gone.
    pub async fn next(&mut self) -> Result<(u64, Bytes), SpoolError> {
        loop {
            let written = *self.written.borrow_and_update();
            if self.read.next_seq <= written {
                break;
            }
            if self.written.changed().await.is_err() && self.read.next_seq > *self.written.borrow()
            {
                return Err(SpoolError::Closed);
            }
        }
        let seq = self.read.next_seq;
        let (header, record) = step(
            &self.shared,
            &mut self.read,
            &mut self.read_window,
            READ_CHUNK,
            true,
        )?;
        if !header.matches(&record[HEADER..]) {
            return Err(SpoolError::corrupt(
                self.shared.segment_path(self.read.segment),
                self.read.offset - header.record_len(),
                format!("record {seq} no longer matches its CRC"),
            ));
        }
        self.delivered = self.delivered.max(seq);
        Ok((seq, record.slice(HEADER..)))
    }

    /// Everything up to and including `seq` was delivered: frees its room for `append`,
    /// and deletes the segments that hold only acknowledged records, after persisting the
    /// acknowledged position. Acknowledging a seq `next()` has not returned yet is
    /// [`SpoolError::NotDelivered`]; an older one only retries what an earlier `ack` failed
    /// to persist or delete.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let acked = self.acked();
        if seq > self.delivered {
            return Err(SpoolError::NotDelivered {
                seq,
                delivered: self.delivered,
            });
        }
        if seq > acked {
            let mut bytes = 0;
            while self.ack.next_seq <= seq {
                let (header, _) = step(
                    &self.shared,
                    &mut self.ack,
                    &mut self.ack_window,
                    ACK_CHUNK,
                    false,
                )?;
                bytes += header.record_len();
            }
            let shared = &self.shared;
            shared.acked_bytes.fetch_add(bytes, Ordering::AcqRel);
            shared.acked_seq.store(seq, Ordering::Release);
            shared.acked_total.fetch_add(seq - acked, Ordering::Relaxed);
            if seq >= self.fast_persisted + ACK_FAST_EVERY {
                self.persist_fast(seq)?;
            }
        } else if self.persisted == acked {
            return Ok(());
        }
        // From here on `seq` is at most the acknowledged seq (an earlier failure to persist
        // it is retried).
        let seq = self.acked();
        let shared = &self.shared;

        // Segments before the one holding `seq + 1` hold only acknowledged records; the
        // last segment is the writer's and stays.
        let doomed: Vec<Segment> = {
            let segments = shared.segments();
            let keep_from = segments
                .iter()
                .rposition(|s| s.first <= seq + 1)
                .unwrap_or(0)
                .min(segments.len().saturating_sub(1));
            segments.iter().take(keep_from).copied().collect()
        };
        if doomed.is_empty() && self.persisted_at.elapsed() < ACK_PERSIST_EVERY {
            return Ok(());
        }
        self.persist()?;
        let shared = &self.shared;
        for seg in &doomed {
            let path = shared.segment_path(seg.first);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io("delete", &path, e)),
            }
            shared.segments().pop_front();
        }
        Ok(())
    }

    /// The next `next()` starts again at the first unacknowledged record.
    pub fn rewind(&mut self) {
        self.read = self.ack;
    }

    /// The highest acknowledged seq.
    pub fn acked(&self) -> u64 {
        self.ack.next_seq - 1
    }

    /// Writes `seq` into `ack.fast` in place.
    fn persist_fast(&mut self, seq: u64) -> Result<(), SpoolError> {
        use std::os::unix::fs::FileExt;
        let path = self.shared.dir.join(super::recover::ACK_FAST);
        if self.fast.is_none() {
            self.fast = Some(super::recover::open_private(&path)?);
        }
        if let Some(file) = &self.fast {
            // 12 bytes at offset 0: within one page, so a killed process leaves the old
            // value or the new one, never a mix.
            file.write_all_at(&super::recover::encode_ack(seq), 0)
                .map_err(|e| SpoolError::io("write", &path, e))?;
        }
        self.fast_persisted = seq;
        Ok(())
    }

    /// Writes the acknowledged seq to the `ack` file, if it moved.
    fn persist(&mut self) -> Result<(), SpoolError> {
        let acked = self.acked();
        if acked != self.persisted {
            write_ack(&self.shared.dir, acked)?;
            self.persisted = acked;
        }
        self.persisted_at = Instant::now();
        Ok(())
    }
}

impl Drop for SpoolReader {
    /// A clean stop persists the last acknowledgement, so a restart sends nothing again.
    fn drop(&mut self) {
        if let Err(e) = self.persist() {
            tracing::warn!(error = %e, "spool: cannot persist the acknowledged seq at close");
        }
    }
}

/// Reads the record at `pos` (which must be written) through `window` and moves `pos` past
/// it. Checks the header's seq and length, not the CRC (the caller does, if it needs the
/// payload). Returns the header and, if `whole`, the whole record's bytes (else only the
/// header's: `ack` steps over payloads without reading them).
fn step(
    shared: &Shared,
    pos: &mut Position,
    window: &mut Window,
    chunk: usize,
    whole: bool,
) -> Result<(Header, Bytes), SpoolError> {
    let seg = {
        let segments = shared.segments();
        segments
            .iter()
            .rev()
            .find(|s| s.first <= pos.next_seq)
            .copied()
    };
    let Some(seg) = seg else {
        return Err(SpoolError::corrupt(
            shared.segment_path(pos.next_seq),
            0,
            format!("no segment holds record {}", pos.next_seq),
        ));
    };
    if seg.first != pos.segment {
        // The previous segment is done: its successor starts with this record.
        pos.segment = seg.first;
        pos.offset = 0;
    }
    let bytes = window.get(shared, seg, pos.offset, HEADER, chunk)?;
    let header =
        Header::at(&bytes).filter(|h| h.seq == pos.next_seq && h.len as usize <= MAX_RECORD);
    let Some(header) = header else {
        return Err(SpoolError::corrupt(
            shared.segment_path(seg.first),
            pos.offset,
            format!("record {} has a damaged header", pos.next_seq),
        ));
    };
    let record = if whole {
        window.get(shared, seg, pos.offset, header.record_len() as usize, chunk)?
    } else {
        bytes
    };
    pos.offset += header.record_len();
    pos.next_seq += 1;
    Ok((header, record))
}

/// A piece of one segment file held in memory.
#[derive(Default)]
struct Window {
    /// The segment and its open file.
    file: Option<(u64, File)>,
    /// Bytes of the file from offset `start`.
    data: Bytes,
    start: u64,
}

impl Window {
    /// `need` bytes at `offset` of `seg`, reading `chunk` bytes (or `need`, if larger, and
    /// never past what is written) when they are not in the window already.
    fn get(
        &mut self,
        shared: &Shared,
        seg: Segment,
        offset: u64,
        need: usize,
        chunk: usize,
    ) -> Result<Bytes, SpoolError> {
        let same_file = matches!(&self.file, Some((first, _)) if *first == seg.first);
        if same_file && offset >= self.start {
            let at = (offset - self.start) as usize;
            if at + need <= self.data.len() {
                return Ok(self.data.slice(at..at + need));
            }
        }
        let path = shared.segment_path(seg.first);
        if !same_file {
            let file = File::open(&path).map_err(|e| SpoolError::io("open", &path, e))?;
            self.file = Some((seg.first, file));
            self.data = Bytes::new();
        }
        let available = seg.len.saturating_sub(offset);
        if (need as u64) > available {
            return Err(SpoolError::corrupt(
                &path,
                offset,
                format!("a record runs past the {} bytes written", seg.len),
            ));
        }
        let len = (need.max(chunk) as u64).min(available) as usize;
        let mut buf = BytesMut::zeroed(len);
        if let Some((_, file)) = &self.file {
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| SpoolError::io("read", &path, e))?;
        }
        self.data = buf.freeze();
        self.start = offset;
        Ok(self.data.slice(..need))
    }
}

//! One record on disk: a 16-byte header, then the payload.
//!
//! ```text
//! offset 0   u32 LE  payload length
//! offset 4   u32 LE  CRC32C of bytes 0..4 (length), 8..16 (seq) and the payload
//! offset 8   u64 LE  sequence number
//! offset 16  payload
//! ```
//!
//! The CRC covers the length and the seq too, so a torn header (a crash mid-write) and a
//! zero-filled tail (what some filesystems leave after a power loss) never pass as a record.

/// Bytes of a record's header.
pub(crate) const HEADER: usize = 16;

/// The largest payload one record may carry. A FUSE write is at most a few MiB; this only
/// bounds what recovery and the reader may have to hold in memory for one record.
pub const MAX_RECORD: usize = 64 << 20;

/// A record's header fields, as read from disk (not yet checked against a payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub len: u32,
    pub crc: u32,
    pub seq: u64,
}

impl Header {
    /// Reads the header at the start of `bytes`; `None` when fewer than [`HEADER`] bytes.
    pub fn at(bytes: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER] = bytes.get(..HEADER)?.try_into().ok()?;
        let [l0, l1, l2, l3, c0, c1, c2, c3, s @ ..] = *h;
        Some(Header {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            seq: u64::from_le_bytes(s),
        })
    }

    /// Bytes of the whole record (header and payload).
    pub fn record_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }

    /// Whether `payload` is this header's payload, unchanged.
    pub fn matches(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && checksum(self.len, self.seq, payload) == self.crc
    }
}

/// The CRC32C of a record's length, seq and payload.
pub(crate) fn checksum(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &seq.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends one record to `out`. `payload` must be at most [`MAX_RECORD`] bytes (checked by
/// the caller, which reports `TooLarge`).
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(len, seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Bytes `payload` takes on disk, header included.
pub(crate) fn encoded_len(payload: &[u8]) -> u64 {
    HEADER as u64 + payload.len() as u64
}

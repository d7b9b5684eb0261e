//! The framing codec: a `u32` little-endian length, then an rkyv archive of [`Frame`].
//!
//! [`decode`] takes bytes from a buffer and returns `Ok(None)` when a whole frame is not
//! buffered yet: that is ordinary control flow, not a failure. Every archive is validated
//! (bytecheck) before it is turned into a value, so no input can make the reader panic.

use crate::frame::{Frame, Hello, Role, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use bytes::{Buf, BufMut, BytesMut};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Default largest frame body: 16 MiB, large enough for a big payload, small enough that
/// one misbehaving peer cannot make the broker allocate without bound.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Why bytes could not become a frame, or a frame could not become bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Announced (or encoded) length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A zero-length frame.
    #[error("empty frame")]
    Empty,
    /// The body is not a valid archive of `Frame`.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What the validator said.
        reason: String,
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {expected})")]
    UnsupportedVersion {
        /// What the peer sent.
        got: u16,
        /// What we speak.
        expected: u16,
    },
    /// The first frame was not a well-formed `Hello`.
    #[error("bad handshake: {reason}")]
    BadHandshake {
        /// What was wrong.
        reason: String,
    },
}

/// rkyv writes the archive straight into the output buffer, after the length prefix.
///
/// Positions count from the start of the body; with unaligned archives no padding depends
/// on where the body starts, so the bytes are exactly what `to_bytes` would produce.
struct BodyWriter<'a> {
    out: &'a mut BytesMut,
    body_start: usize,
}

impl rkyv::ser::Positional for BodyWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.body_start
    }
}

impl<E> rkyv::ser::Writer<E> for BodyWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends `frame`, length-prefixed, to `out`. On error `out` is left as it was.
pub fn encode(frame: &Frame, out: &mut BytesMut, max_frame: usize) -> Result<(), ProtoError> {
    let prefix_at = out.len();
    out.put_u32_le(0);
    let body_start = out.len();
    let written = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(
        frame,
        BodyWriter {
            out: &mut *out,
            body_start,
        },
    );
    if let Err(e) = written {
        out.truncate(prefix_at);
        return Err(ProtoError::Malformed {
            reason: e.to_string(),
        });
    }
    let len = out.len() - body_start;
    if len > max_frame {
        out.truncate(prefix_at);
        return Err(ProtoError::Oversized {
            len,
            max: max_frame,
        });
    }
    out[prefix_at..body_start].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// `frame`, length-prefixed, as a new vector (for tests and one-off writes).
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(frame, &mut out, usize::MAX).expect("a frame always serializes");
    out.to_vec()
}

/// The announced body length of the frame at the start of `buf`, once 4 bytes are there.
pub fn peek_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < LEN_PREFIX {
        return None;
    }
    Some(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize)
}

/// Takes one frame off the front of `buf`.
///
/// `Ok(None)`: more bytes are needed. An `Oversized` error is returned as soon as the prefix
/// is read, before any body is buffered, so the caller can refuse it without reading it.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ProtoError> {
    let Some(len) = peek_len(buf) else {
        return Ok(None);
    };
    if len == 0 {
        return Err(ProtoError::Empty);
    }
    if len > max_frame {
        return Err(ProtoError::Oversized {
            len,
            max: max_frame,
        });
    }
    if buf.len() < LEN_PREFIX + len {
        buf.reserve(LEN_PREFIX + len - buf.len());
        return Ok(None);
    }
    // Read in place, then step over it: `split_to` would turn the buffer into a shared one
    // (an allocation, then an atomic count per frame) for a body that is dropped at once.
    let frame = decode_body(&buf[LEN_PREFIX..LEN_PREFIX + len]);
    buf.advance(LEN_PREFIX + len);
    frame.map(Some)
}

/// Validates and deserializes one frame body (no length prefix).
///
/// Archived types are unaligned (rkyv's `unaligned` feature), so the body is read where it
/// lies in the socket buffer, without a copy.
pub fn decode_body(body: &[u8]) -> Result<Frame, ProtoError> {
    rkyv::from_bytes::<Frame, rkyv::rancor::Error>(body).map_err(|e| ProtoError::Malformed {
        reason: e.to_string(),
    })
}

/// Checks that the first frame of a connection is an acceptable `Hello`.
pub fn check_hello(frame: Frame) -> Result<Hello, ProtoError> {
    let Frame::Hello(hello) = frame else {
        return Err(ProtoError::BadHandshake {
            reason: format!("expected Hello, got {}", frame.kind_name()),
        });
    };
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.protocol_version) {
        return Err(ProtoError::UnsupportedVersion {
            got: hello.protocol_version,
            expected: PROTOCOL_VERSION,
        });
    }
    let role_fits = matches!(
        (&hello.role, &hello.credential),
        (Role::Client, crate::Credential::Jwt { .. })
            | (Role::Worker, crate::Credential::Worker { .. })
    );
    if !role_fits {
        return Err(ProtoError::BadHandshake {
            reason: "role does not match the credential".into(),
        });
    }
    Ok(hello)
}

#[cfg(test)]
mod tests;

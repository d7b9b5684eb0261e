//! Standard base64 (RFC 4648, with `=` padding), enough for `payload_base64`.
//!
//! Written here rather than pulled in as a crate: it is forty lines, and plugins in other
//! languages only need it to agree with the standard alphabet.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why a string is not base64.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base64Error {
    /// A byte outside the alphabet (or padding in the middle).
    #[error("invalid base64 byte {byte:#04x} at offset {offset}")]
    InvalidByte {
        /// The byte.
        byte: u8,
        /// Where it is.
        offset: usize,
    },
    /// The length (without padding) cannot come from whole bytes.
    #[error("invalid base64 length {len}")]
    InvalidLength {
        /// The length of the input.
        len: usize,
    },
}

/// Encodes `bytes` with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn value_of(byte: u8) -> Option<u32> {
    let v = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes padded or unpadded standard base64.
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let input = text.as_bytes();
    let trimmed = input
        .strip_suffix(b"==")
        .or_else(|| input.strip_suffix(b"="))
        .unwrap_or(input);
    if trimmed.len() % 4 == 1 {
        return Err(Base64Error::InvalidLength { len: input.len() });
    }
    let mut out = Vec::with_capacity(trimmed.len() / 4 * 3 + 2);
    for (chunk_idx, chunk) in trimmed.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &byte) in chunk.iter().enumerate() {
            let v = value_of(byte).ok_or(Base64Error::InvalidByte {
                byte,
                offset: chunk_idx * 4 + i,
            })?;
            n |= v << (18 - 6 * i);
        }
        let n_bytes = chunk.len() - 1;
        for i in 0..n_bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_values() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0x00, 0x80], "//4AgA=="),
        ];
        for (raw, text) in cases {
            assert_eq!(encode(raw), *text);
            assert_eq!(decode(text).unwrap(), *raw);
        }
        assert_eq!(decode("Zm9vYg").unwrap(), b"foob");
    }

    #[test]
    fn refuses_garbage() {
        assert!(matches!(
            decode("Zm9v!A=="),
            Err(Base64Error::InvalidByte { byte: b'!', .. })
        ));
        assert!(matches!(
            decode("Zm9vY"),
            Err(Base64Error::InvalidLength { .. })
        ));
    }
}

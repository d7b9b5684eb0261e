//! Reading a plugin's output as lines of at most [`MAX_LINE`] bytes.
//!
//! Bytes are not assumed to be UTF-8. A line longer than the limit is cut into chunks of
//! exactly [`MAX_LINE`] bytes; the newline right after a full chunk ends that line (it does
//! not produce an extra empty line).

use plugins::persistent::output_lines;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest `Output` data: 64 KiB keeps one frame small against the 16 MiB frame limit and
/// lets a runaway line stream instead of growing a buffer without bound.
pub const MAX_LINE: usize = 64 * 1024;

/// The `Output` data that bytes a plugin printed at once stand for: their lines
/// ([`output_lines`]), each cut into chunks of at most [`MAX_LINE`] bytes (an empty line is one
/// empty chunk), as [`LineReader`] reads them from a pipe.
pub fn output_chunks(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    output_lines(bytes).flat_map(|line| {
        let mut chunks = line.chunks(MAX_LINE);
        let first = chunks.next().unwrap_or_default();
        std::iter::once(first).chain(chunks)
    })
}

/// Splits a byte stream into lines (without their `\n`) and chunks of at most `max` bytes.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
    /// The last item was a full chunk without its newline: a newline that follows at once
    /// belongs to it.
    after_full_chunk: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of lines of at most `max` bytes (`max` ≥ 1).
    pub fn new(inner: R, max: usize) -> Self {
        let max = max.max(1);
        LineReader {
            inner: BufReader::with_capacity(max.max(8 * 1024), inner),
            max,
            after_full_chunk: false,
        }
    }

    /// The next line or chunk; `None` at end of stream. A last line without a newline is
    /// returned as it is.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                self.after_full_chunk = false;
                return Ok((!line.is_empty()).then_some(line));
            }
            if std::mem::take(&mut self.after_full_chunk) && available[0] == b'\n' {
                self.inner.consume(1);
                continue;
            }
            let room = self.max - line.len();
            let window = &available[..available.len().min(room)];
            if let Some(pos) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&window[..pos]);
                self.inner.consume(pos + 1);
                return Ok(Some(line));
            }
            let n = window.len();
            line.extend_from_slice(window);
            self.inner.consume(n);
            if line.len() >= self.max {
                self.after_full_chunk = true;
                return Ok(Some(line));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_chunks() {
        // (input, max, expected lines)
        type Case<'a> = (&'a [u8], usize, &'a [&'a [u8]]);
        let cases: &[Case] = &[
            (b"", 4, &[]),
            (b"a\nb\n", 4, &[b"a", b"b"]),
            (b"a\n\nb", 4, &[b"a", b"", b"b"]),
            (b"abcdefghij\n", 4, &[b"abcd", b"efgh", b"ij"]),
            // A line of exactly the limit: its newline does not make an empty line...
            (b"abcd\nx\n", 4, &[b"abcd", b"x"]),
            // ...but a real empty line after it is kept.
            (b"abcd\n\nx", 4, &[b"abcd", b"", b"x"]),
            (b"\xff\xfe\n\x00", 4, &[b"\xff\xfe", b"\x00"]),
        ];
        for (input, max, want) in cases {
            let got = lines(input, *max).await;
            let want: Vec<Vec<u8>> = want.iter().map(|l| l.to_vec()).collect();
            assert_eq!(got, want, "input {input:?}");
        }
    }

    #[tokio::test]
    async fn long_line_at_the_real_limit() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        let got = lines(&input, MAX_LINE).await;
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![MAX_LINE, MAX_LINE, 10]);
    }
}

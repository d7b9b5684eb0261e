//! `split = "lines"`: what one open file handle holds back, and how complete lines are
//! batched into requests.
//!
//! A write's complete lines travel together, at most `batch_lines` (and [`MAX_BATCH_BYTES`])
//! per request, the way log shippers batch; the partial line at its end waits in the handle
//! for its newline, or for `close`. Each open file has its own buffer, so two writers to one
//! trigger never splice each other's lines.

/// Bytes one batch of lines may carry; a write with more complete lines is several requests.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A partial line longer than this is sent as it is (as if its newline had come): the handle
/// must not hold an unbounded line for a writer that never ends one.
pub const MAX_PARTIAL: usize = 1024 * 1024;

/// The partial line of one open file.
#[derive(Debug, Default, Clone)]
pub struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Takes the bytes of one `write(2)`; returns the payloads to send, in order: each is
    /// whole lines, each line ending with `\n`, at most `batch_lines` lines and about
    /// [`MAX_BATCH_BYTES`] bytes (a single longer line is a payload of its own).
    pub fn push(&mut self, data: &[u8], batch_lines: usize) -> Vec<Vec<u8>> {
        let batch_lines = batch_lines.max(1);
        let mut out = Vec::new();
        let Some(last_newline) = memchr_rev(data) else {
            self.partial.extend_from_slice(data);
            if self.partial.len() > MAX_PARTIAL {
                let mut line = std::mem::take(&mut self.partial);
                line.push(b'\n');
                out.push(line);
            }
            return out;
        };
        let (complete, rest) = data.split_at(last_newline + 1);
        let mut batch: Vec<u8> = std::mem::take(&mut self.partial);
        let mut lines_in_batch = 0usize;
        for line in complete.split_inclusive(|b| *b == b'\n') {
            if lines_in_batch > 0
                && (lines_in_batch == batch_lines || batch.len() + line.len() > MAX_BATCH_BYTES)
            {
                out.push(std::mem::take(&mut batch));
                lines_in_batch = 0;
            }
            batch.extend_from_slice(line);
            lines_in_batch += 1;
        }
        if !batch.is_empty() {
            out.push(batch);
        }
        self.partial.extend_from_slice(rest);
        out
    }

    /// At `close`: the partial line, if one is waiting (it goes out without a newline; the
    /// `append` plugin ends it with one).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }

    /// Whether a partial line is waiting.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

fn memchr_rev(data: &[u8]) -> Option<usize> {
    data.iter().rposition(|b| *b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(payloads: &[Vec<u8>]) -> Vec<String> {
        payloads
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    #[test]
    fn complete_lines_of_a_write_travel_together() {
        let mut b = LineBuffer::default();
        assert_eq!(text(&b.push(b"a\nb\nc\n", 1000)), ["a\nb\nc\n"]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let mut b = LineBuffer::default();
        assert!(b.push(b"hel", 1000).is_empty());
        assert!(b.push(b"lo wor", 1000).is_empty());
        assert_eq!(text(&b.push(b"ld\nnext", 1000)), ["hello world\n"]);
        assert_eq!(b.finish(), Some(b"next".to_vec()));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn batches_hold_at_most_batch_lines() {
        let mut b = LineBuffer::default();
        assert_eq!(
            text(&b.push(b"1\n2\n3\n4\n5\n", 2)),
            ["1\n2\n", "3\n4\n", "5\n"]
        );
        assert_eq!(text(&b.push(b"x\ny\n", 1)), ["x\n", "y\n"]);
        // 0 is taken as 1: never an empty batch, never a hang.
        assert_eq!(text(&b.push(b"p\nq\n", 0)), ["p\n", "q\n"]);
    }

    #[test]
    fn a_waiting_partial_line_leads_the_next_batch() {
        let mut b = LineBuffer::default();
        b.push(b"par", 2);
        assert_eq!(text(&b.push(b"t\n2\n3\n", 2)), ["part\n2\n", "3\n"]);
    }

    #[test]
    fn batches_are_bounded_in_bytes() {
        let mut b = LineBuffer::default();
        let line = vec![b'x'; 1024 * 1024 - 1];
        let mut data = Vec::new();
        for _ in 0..9 {
            data.extend_from_slice(&line);
            data.push(b'\n');
        }
        let out = b.push(&data, 1000);
        assert_eq!(out.len(), 3, "9 lines of 1 MiB in batches of at most 4 MiB");
        assert!(out.iter().all(|p| p.len() <= MAX_BATCH_BYTES));
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), data.len());
    }

    #[test]
    fn an_endless_line_is_sent_past_the_bound() {
        let mut b = LineBuffer::default();
        let chunk = vec![b'y'; MAX_PARTIAL / 2 + 1];
        assert!(b.push(&chunk, 10).is_empty());
        let out = b.push(&chunk, 10);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2 * chunk.len() + 1);
        assert!(b.is_empty());
    }
}

//! The most recent responses of each trigger: what reading a trigger file returns.
//!
//! Bounded twice: [`KEPT`] responses per trigger, and [`OUTPUT_KEPT`] bytes of output per
//! response (the tail is kept; a note says how much was left out).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Responses kept per trigger.
pub const KEPT: usize = 20;
/// Output bytes kept per response.
pub const OUTPUT_KEPT: usize = 16 * 1024;

/// How a request ended, as the file shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The plugin exited with this code.
    Exit(i32),
    /// It did not run, or did not finish (the error's name, e.g. `Timeout`, `NoSuchService`).
    Error(String),
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// When it came back (RFC 3339, local time zone as the seed's logs).
    pub time: String,
    /// The worker that ran it (empty when none did).
    pub worker: String,
    /// How it ended.
    pub ending: Ending,
    /// A note (e.g. "answered from the broker's window: it had run").
    pub note: Option<String>,
    /// Output lines, stdout and stderr as they came, each ending with `\n`.
    pub output: Vec<u8>,
    /// Output bytes left out (the head).
    pub dropped: usize,
}

impl Response {
    /// The text of this response in a trigger file: its time, then [`Response::body`].
    pub fn render(&self, path: &str, into: &mut String) {
        into.push_str(&self.time);
        into.push(' ');
        self.body(path, into);
    }

    /// `path worker W exit N`, a note, then the output (as the fs log shows a response).
    pub fn body(&self, path: &str, into: &mut String) {
        let ending = match &self.ending {
            Ending::Exit(code) => format!("exit {code}"),
            Ending::Error(kind) => format!("error {kind}"),
        };
        let worker = if self.worker.is_empty() {
            "-"
        } else {
            &self.worker
        };
        into.push_str(&format!("{path} worker {worker} {ending}"));
        if let Some(note) = &self.note {
            into.push_str(&format!(" ({note})"));
        }
        into.push('\n');
        if self.dropped > 0 {
            into.push_str(&format!("[{} bytes of output left out]\n", self.dropped));
        }
        into.push_str(&String::from_utf8_lossy(&self.output));
    }

    /// Keeps at most [`OUTPUT_KEPT`] bytes of output, the newest.
    pub fn bound_output(&mut self) {
        if self.output.len() > OUTPUT_KEPT {
            let cut = self.output.len() - OUTPUT_KEPT;
            self.output.drain(..cut);
            self.dropped += cut;
        }
    }
}

/// Every trigger's recent responses, by trigger id, as the text a read returns.
#[derive(Debug, Default)]
pub struct Responses {
    by_trigger: Mutex<HashMap<i64, VecDeque<String>>>,
}

impl Responses {
    /// Records a response of trigger `id` (at `path`), forgetting its oldest past [`KEPT`].
    pub fn record(&self, id: i64, path: &str, mut response: Response) {
        response.bound_output();
        let mut text = String::new();
        response.render(path, &mut text);
        let mut map = self.by_trigger.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(id).or_default();
        if list.len() == KEPT {
            list.pop_front();
        }
        list.push_back(text);
    }

    /// The file's text: its recent responses, newest last.
    pub fn text(&self, id: i64) -> String {
        let map = self.by_trigger.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// The length of [`Responses::text`] (a file's size).
    pub fn text_len(&self, id: i64) -> usize {
        let map = self.by_trigger.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).into_iter().flatten().map(String::len).sum()
    }

    /// Forgets the triggers not in `alive` (deleted ones).
    pub fn retain(&self, alive: impl Fn(i64) -> bool) {
        let mut map = self.by_trigger.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|id, _| alive(*id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: i32, output: &str) -> Response {
        Response {
            time: "2026-11-29T10:00:00+00:00".into(),
            worker: "w1".into(),
            ending: Ending::Exit(code),
            note: None,
            output: output.as_bytes().to_vec(),
            dropped: 0,
        }
    }

    #[test]
    fn newest_last_and_bounded() {
        let r = Responses::default();
        for i in 0..(KEPT as i32 + 5) {
            r.record(1, "/d/t", response(i, &format!("line {i}\n")));
        }
        let text = r.text(1);
        assert_eq!(r.text_len(1), text.len());
        assert!(!text.contains("line 4\n"), "the oldest are forgotten");
        assert!(text.contains("line 5\n"));
        assert!(text.ends_with(&format!("exit {}\nline {}\n", KEPT + 4, KEPT + 4)));
        assert_eq!(text.matches("/d/t worker w1").count(), KEPT);
        assert_eq!(r.text(2), "");
    }

    #[test]
    fn output_keeps_its_tail() {
        let r = Responses::default();
        let big = "x".repeat(OUTPUT_KEPT) + "tail\n";
        r.record(1, "/d/t", response(0, &big));
        let text = r.text(1);
        assert!(text.contains("[5 bytes of output left out]"));
        assert!(text.ends_with("tail\n"));
    }
}

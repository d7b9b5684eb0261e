//! The fs module's log, as the original printed it: `2018/04/30 21:20:33 message` lines on
//! the terminal and, when `logfile` is set, in that file too. Each response is logged
//! (`--quiet` keeps responses off the terminal; the file still has them).
//!
//! Buffered (a log shipper's responses come by the thousand a second) and flushed by
//! [`Log::flush`], which the fs calls every 200 ms and at once for its start-up lines.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

/// Where the log goes.
#[derive(Debug)]
pub struct Log {
    terminal: Mutex<BufWriter<std::io::Stdout>>,
    file: Option<Mutex<BufWriter<File>>>,
    /// Responses stay off the terminal.
    quiet: bool,
}

/// The original's timestamp, in the local time zone.
pub fn timestamp() -> String {
    jiff::Zoned::now().strftime("%Y/%m/%d %H:%M:%S").to_string()
}

impl Log {
    /// A log on the terminal and in `file` (appended to, created 0600); `quiet` keeps
    /// responses off the terminal.
    pub fn open(file: Option<&Path>, quiet: bool) -> std::io::Result<Log> {
        let file = match file {
            Some(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?;
                Some(Mutex::new(BufWriter::new(f)))
            }
            None => None,
        };
        let terminal = Mutex::new(BufWriter::new(std::io::stdout()));
        Ok(Log {
            terminal,
            file,
            quiet,
        })
    }

    /// Logs `text` (one or more lines), the first line stamped with the time.
    pub fn line(&self, text: &str) {
        self.write(text, true);
    }

    /// Logs a response: as [`Log::line`], but not on the terminal when quiet.
    /// Whether [`Log::response`] writes anything (not `quiet`, or a log file): a caller can
    /// skip rendering a response nobody will read.
    pub fn keeps_responses(&self) -> bool {
        !self.quiet || self.file.is_some()
    }

    pub fn response(&self, text: &str) {
        self.write(text, !self.quiet);
    }

    fn write(&self, text: &str, on_terminal: bool) {
        if !on_terminal && self.file.is_none() {
            return;
        }
        let newline = if text.ends_with('\n') { "" } else { "\n" };
        let stamped = format!("{} {text}{newline}", timestamp());
        if on_terminal {
            put(&self.terminal, stamped.as_bytes());
        }
        if let Some(f) = &self.file {
            put(f, stamped.as_bytes());
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        flush(&self.terminal);
        if let Some(f) = &self.file {
            flush(f);
        }
    }
}

// A failing destination is skipped: the fs keeps serving.
fn put<W: Write>(sink: &Mutex<BufWriter<W>>, bytes: &[u8]) {
    let _ = sink
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .write_all(bytes);
}

fn flush<W: Write>(sink: &Mutex<BufWriter<W>>) {
    let _ = sink.lock().unwrap_or_else(|e| e.into_inner()).flush();
}

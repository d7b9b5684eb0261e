//! The fs module's log, as the original printed it: `2018/04/30 21:20:33 message` lines on
//! the terminal and, when `logfile` is set, in that file too. Each response is logged.
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
    terminal: Option<Mutex<BufWriter<std::io::Stdout>>>,
    file: Option<Mutex<BufWriter<File>>>,
}

/// The original's timestamp, in the local time zone.
pub fn timestamp() -> String {
    jiff::Zoned::now().strftime("%Y/%m/%d %H:%M:%S").to_string()
}

impl Log {
    /// A log on the terminal (unless `quiet`) and in `file` (appended to, created 0600).
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
        let terminal = (!quiet).then(|| Mutex::new(BufWriter::new(std::io::stdout())));
        Ok(Log { terminal, file })
    }

    /// Logs `text` (one or more lines), the first line stamped with the time.
    pub fn line(&self, text: &str) {
        let stamped = format!(
            "{} {}{}",
            timestamp(),
            text,
            if text.ends_with('\n') { "" } else { "\n" }
        );
        for sink in [
            &self.terminal.as_ref().map(|t| t as &dyn Sink),
            &self.file.as_ref().map(|f| f as &dyn Sink),
        ]
        .into_iter()
        .flatten()
        {
            sink.put(stamped.as_bytes());
        }
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        if let Some(t) = &self.terminal {
            t.put_flush();
        }
        if let Some(f) = &self.file {
            f.put_flush();
        }
    }
}

/// A buffered destination of the log; a failing one is skipped (the fs keeps serving).
trait Sink {
    fn put(&self, bytes: &[u8]);
    fn put_flush(&self);
}

impl<W: Write> Sink for Mutex<BufWriter<W>> {
    fn put(&self, bytes: &[u8]) {
        let _ = self
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(bytes);
    }
    fn put_flush(&self) {
        let _ = self.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

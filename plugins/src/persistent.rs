//! Persistent plugins: the frames of the protocol, and [`serve`], a helper for writing one in
//! Rust.
//!
//! A plugin whose `plugin.toml` says `persistent = true` is started once by the worker and
//! kept running. Requests and answers travel as JSON objects, one per line, over its stdin
//! and stdout (the whole protocol is in `plugins/README.md`):
//!
//! ```text
//! worker → plugin   {"type":"request","id":1,"request_id":7,"service":"demo",...}
//!                   {"type":"cancel","id":1}
//!                   {"type":"shutdown"}
//! plugin → worker   {"type":"output","id":1,"stream":"stdout","data":"a line"}
//!                   {"type":"output","id":1,"stream":"stderr","data_base64":"/wA="}
//!                   {"type":"done","id":1,"exit_code":0}
//! ```
//!
//! The worker and [`serve`] use these same types, so the two cannot drift apart.

use crate::request::PluginRequest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The exit code [`serve`] answers a cancelled request with: 128 + SIGTERM, what a plain
/// plugin stopped by the worker's SIGTERM reports. The worker ignores the exit code of a
/// cancelled request.
pub const EXIT_CANCELLED: i32 = 143;

/// The exit code [`serve`] answers for a request whose handler panicked, as a Rust program
/// that panics exits with.
pub const EXIT_PANICKED: i32 = 101;

/// A frame from the worker to the plugin.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToPlugin {
    /// Serve a request. `id` is the worker's name for it on this instance; the request's
    /// fields are those a plain plugin reads on stdin.
    Request {
        /// Tags every `output` and the `done` of this request.
        id: u64,
        /// The request.
        #[serde(flatten)]
        request: PluginRequest,
    },
    /// Stop serving request `id` and answer `done` soon; ignore it for an unknown id.
    Cancel {
        /// The request.
        id: u64,
    },
    /// The worker stops: exit soon.
    Shutdown,
}

/// Which of the client's streams an `output` goes to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutStream {
    /// Standard output (the default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

/// A frame from the plugin to the worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromPlugin {
    /// Output of request `id`: one or more lines.
    Output {
        /// The request.
        id: u64,
        /// `stdout` (default) or `stderr`.
        #[serde(default)]
        stream: OutStream,
        /// The lines as text, when they are UTF-8.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        /// The lines' bytes in standard base64, when they are not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_base64: Option<String>,
    },
    /// Request `id` is finished; no frame for it may follow.
    Done {
        /// The request.
        id: u64,
        /// Its exit code, as a plain plugin's process would exit with.
        exit_code: i32,
    },
}

/// Why a line from a plugin is not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Not JSON, not an object of a known `type`, or a field of the wrong type.
    #[error("not a protocol frame: {0}")]
    Json(String),
    /// Both `data` and `data_base64`.
    #[error("output with both data and data_base64")]
    BothData,
    /// `data_base64` is not base64.
    #[error("output data_base64 is not base64")]
    Base64,
}

impl FromPlugin {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<FromPlugin, FrameError> {
        serde_json::from_slice(line).map_err(|e| FrameError::Json(e.to_string()))
    }

    /// An `output` frame carrying `bytes`: as text when they are UTF-8, else in base64.
    pub fn output(id: u64, stream: OutStream, bytes: &[u8]) -> FromPlugin {
        let (data, data_base64) = match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        FromPlugin::Output {
            id,
            stream,
            data,
            data_base64,
        }
    }

    /// The request this frame is about.
    pub fn id(&self) -> u64 {
        match self {
            FromPlugin::Output { id, .. } | FromPlugin::Done { id, .. } => *id,
        }
    }

    /// This frame as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a frame always serialises");
        line.push(b'\n');
        line
    }
}

/// The bytes of an `output` frame's `data`/`data_base64` (neither means no bytes).
pub fn output_bytes(
    data: Option<String>,
    data_base64: Option<String>,
) -> Result<Vec<u8>, FrameError> {
    match (data, data_base64) {
        (Some(_), Some(_)) => Err(FrameError::BothData),
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| FrameError::Base64),
        (None, None) => Ok(Vec::new()),
    }
}

/// The lines an `output`'s bytes stand for: split at `\n`, one trailing `\n` ignored, so
/// `"a"`, `"a\n"` are one line and `"a\nb"` two; `""` is one empty line.
pub fn output_lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.split(|&b| b == b'\n')
}

impl ToPlugin {
    /// This frame as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a frame always serialises");
        line.push(b'\n');
        line
    }
}

/// One request being served by [`serve`]: where its output goes, and whether it was
/// cancelled.
pub struct Reply {
    id: u64,
    state: Arc<RequestState>,
    conn: Arc<Conn>,
}

struct RequestState {
    cancelled: AtomicBool,
    /// Set when `done` was written; nothing of this request is written after it.
    finished: Mutex<bool>,
}

type Writer = Box<dyn Write + Send>;

/// What every request thread shares: the output and the requests in flight.
struct Conn {
    out: Mutex<Writer>,
    inflight: Mutex<HashMap<u64, Arc<RequestState>>>,
}

/// A lock that survives a thread that panicked while holding it: the data are flags and a
/// writer, valid whatever the panic interrupted.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Conn {
    fn write(&self, frame: &FromPlugin) -> std::io::Result<()> {
        let line = frame.to_line();
        let mut out = lock(&self.out);
        out.write_all(&line)?;
        out.flush()
    }

    /// Writes `done` unless it was written already, and forgets the request.
    fn finish(&self, id: u64, state: &RequestState, exit_code: i32) -> std::io::Result<()> {
        let mut finished = lock(&state.finished);
        if *finished {
            return Ok(());
        }
        *finished = true;
        let written = self.write(&FromPlugin::Done { id, exit_code });
        drop(finished);
        lock(&self.inflight).remove(&id);
        written
    }
}

impl Reply {
    /// The worker's id of this request.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends `data` to the client's stdout: one line, or several if it holds newlines (one
    /// trailing newline is ignored). Nothing is sent once the request was cancelled.
    pub fn stdout(&self, data: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.send(OutStream::Stdout, data.as_ref())
    }

    /// Sends `data` to the client's stderr, as [`Reply::stdout`] does.
    pub fn stderr(&self, data: impl AsRef<[u8]>) -> std::io::Result<()> {
        self.send(OutStream::Stderr, data.as_ref())
    }

    /// True once the worker cancelled this request (client cancel, timeout, disconnect,
    /// shutdown): `done` was already answered, and whatever the handler returns or prints is
    /// dropped. A long handler should check it and return.
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::Relaxed)
    }

    fn send(&self, stream: OutStream, data: &[u8]) -> std::io::Result<()> {
        let finished = lock(&self.state.finished);
        if *finished {
            return Ok(());
        }
        let written = self.conn.write(&FromPlugin::output(self.id, stream, data));
        drop(finished);
        written
    }
}

/// Serves requests on stdin/stdout until the worker sends `shutdown` or closes stdin.
///
/// Each request runs `handler` on a thread of its own (the worker sends at most the
/// manifest's `max_concurrency` at once); its return value is the request's exit code. A
/// `cancel` is answered at once with `done` ([`EXIT_CANCELLED`]) and marks the request
/// cancelled ([`Reply::is_cancelled`]); a handler that panics answers [`EXIT_PANICKED`]. A
/// line from the worker that is not a frame is reported on stderr and skipped. Returns when
/// the worker asks to stop; handlers still running are abandoned (return from `main` then).
pub fn serve<F>(handler: F) -> std::io::Result<()>
where
    F: Fn(&PluginRequest, &Reply) -> i32 + Send + Sync + 'static,
{
    serve_io(std::io::stdin().lock(), std::io::stdout(), handler)
}

/// [`serve`] over any input and output.
pub fn serve_io<R, W, F>(mut input: R, output: W, handler: F) -> std::io::Result<()>
where
    R: BufRead,
    W: Write + Send + 'static,
    F: Fn(&PluginRequest, &Reply) -> i32 + Send + Sync + 'static,
{
    let conn = Arc::new(Conn {
        out: Mutex::new(Box::new(output)),
        inflight: Mutex::new(HashMap::new()),
    });
    let handler = Arc::new(handler);
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let frame = match serde_json::from_slice::<ToPlugin>(text) {
            Ok(frame) => frame,
            Err(e) => {
                eprintln!("persistent plugin: ignoring a line from the worker: {e}");
                continue;
            }
        };
        match frame {
            ToPlugin::Request { id, request } => start(&conn, &handler, id, request)?,
            ToPlugin::Cancel { id } => {
                let state = lock(&conn.inflight).get(&id).cloned();
                if let Some(state) = state {
                    state.cancelled.store(true, Ordering::Relaxed);
                    conn.finish(id, &state, EXIT_CANCELLED)?;
                }
            }
            ToPlugin::Shutdown => return Ok(()),
        }
    }
}

fn start<F>(
    conn: &Arc<Conn>,
    handler: &Arc<F>,
    id: u64,
    request: PluginRequest,
) -> std::io::Result<()>
where
    F: Fn(&PluginRequest, &Reply) -> i32 + Send + Sync + 'static,
{
    let state = Arc::new(RequestState {
        cancelled: AtomicBool::new(false),
        finished: Mutex::new(false),
    });
    {
        let mut inflight = lock(&conn.inflight);
        if inflight.contains_key(&id) {
            eprintln!("persistent plugin: request id {id} is already in flight; ignored");
            return Ok(());
        }
        inflight.insert(id, state.clone());
    }
    let reply = Reply {
        id,
        state: state.clone(),
        conn: conn.clone(),
    };
    let handler = handler.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("request-{id}"))
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler(&request, &reply)
            }));
            let code = ran.unwrap_or_else(|_| {
                let _ = reply.stderr("the plugin's handler panicked");
                EXIT_PANICKED
            });
            // A broken stdout means the worker is gone; nothing is left to tell.
            let _ = reply.conn.finish(id, &reply.state, code);
        });
    if let Err(e) = spawned {
        let message = format!("cannot start a thread for the request: {e}");
        conn.write(&FromPlugin::output(
            id,
            OutStream::Stderr,
            message.as_bytes(),
        ))?;
        conn.finish(id, &state, 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

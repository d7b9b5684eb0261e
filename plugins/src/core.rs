//! The core plugins: `echo`, `command`, `file` and `append`.
//!
//! Each plugin is a function over a [`PluginRequest`] and the writers it prints to, returning
//! the exit code, so that it can be tested without a process. [`run_core`] is the wrapper the
//! `triggerfs` binary calls when it is started under a core plugin's name: it reads the
//! request from stdin and prints to the real stdout and stderr.

use crate::request::PluginRequest;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};

/// Names of the core plugins, which are also the file names the binary answers to.
pub const CORE_PLUGINS: &[&str] = &["echo", "command", "file", "append"];

/// Exit code for a request the plugin cannot serve (missing argument, bad payload), as
/// shells use 2 for usage errors.
const EXIT_USAGE: i32 = 2;
/// Exit code when the plugin failed at something outside the request (I/O, spawn).
const EXIT_FAILURE: i32 = 1;

/// The core plugin `argv0` names, if its file name is one: `/x/echo/echo` → `echo`.
pub fn core_plugin_for_argv0(argv0: &str) -> Option<&'static str> {
    let file_name = std::path::Path::new(argv0).file_name()?.to_str()?;
    CORE_PLUGINS.iter().copied().find(|name| *name == file_name)
}

/// Runs core plugin `name` on the request read from stdin; returns the exit code.
pub fn run_core(name: &str) -> i32 {
    let mut stderr = std::io::stderr().lock();
    let req = match PluginRequest::read_stdin() {
        Ok(req) => req,
        Err(e) => {
            let _ = writeln!(stderr, "{name}: {e}");
            return EXIT_USAGE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let code = match name {
        "echo" => echo(&req, &mut stdout, &mut stderr),
        "command" => {
            // The child writes to the inherited descriptors; nothing of ours may sit in a
            // buffer ahead of it.
            drop(stdout);
            drop(stderr);
            return command(&req);
        }
        "file" => file(&req, &mut stdout, &mut stderr),
        "append" => append(&req, &mut stderr),
        other => {
            let _ = writeln!(stderr, "`{other}` is not a core plugin");
            EXIT_USAGE
        }
    };
    let _ = stdout.flush();
    code
}

/// The payload bytes, or the command line when the payload is empty.
fn payload_or_command_line(req: &PluginRequest) -> Result<Vec<u8>, crate::PluginError> {
    let payload = req.payload_bytes()?;
    if payload.is_empty() {
        Ok(req.command_line().into_bytes())
    } else {
        Ok(payload)
    }
}

fn with_newline(mut data: Vec<u8>) -> Vec<u8> {
    if data.last() != Some(&b'\n') {
        data.push(b'\n');
    }
    data
}

/// `echo`: prints the payload, or the command line when the payload is empty.
pub fn echo(req: &PluginRequest, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let data = match payload_or_command_line(req) {
        Ok(data) => with_newline(data),
        Err(e) => {
            let _ = writeln!(err, "echo: {e}");
            return EXIT_USAGE;
        }
    };
    match out.write_all(&data).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "echo: {e}");
            EXIT_FAILURE
        }
    }
}

/// The exit code of a finished child: its code, or 128+N when signal N killed it.
pub fn exit_code_of(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_FAILURE,
    }
}

/// `command`: runs `sh -c <command line>`; with no command words the payload is the script.
///
/// The child inherits stdout and stderr, so its output streams as it is written. When there
/// are command words and a payload, the payload is the child's stdin (`wc -l` counts the
/// payload's lines); otherwise its stdin is empty.
pub fn command(req: &PluginRequest) -> i32 {
    let payload = match req.payload_bytes() {
        Ok(payload) => payload,
        Err(e) => {
            eprintln!("command: {e}");
            return EXIT_USAGE;
        }
    };
    let (script, stdin_data) = if req.command.is_empty() {
        (String::from_utf8_lossy(&payload).into_owned(), Vec::new())
    } else {
        (req.command_line(), payload)
    };
    if script.trim().is_empty() {
        eprintln!("command: nothing to run (no command words and no payload)");
        return EXIT_USAGE;
    }
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(if stdin_data.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("command: cannot start sh: {e}");
            return EXIT_FAILURE;
        }
    };
    // A thread, so that a child that never reads its stdin cannot block us on a full pipe.
    let feeder = child.stdin.take().map(|mut stdin| {
        std::thread::spawn(move || {
            // The child may exit without reading; a broken pipe is not our failure.
            let _ = stdin.write_all(&stdin_data);
        })
    });
    let status = child.wait();
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    match status {
        Ok(status) => exit_code_of(status),
        Err(e) => {
            eprintln!("command: cannot wait for sh: {e}");
            EXIT_FAILURE
        }
    }
}

/// The file named by arg `path` (or the seed's `filepath`).
fn path_arg<'r>(plugin: &str, req: &'r PluginRequest, err: &mut dyn Write) -> Option<&'r str> {
    match req.arg(&["path", "filepath"]) {
        Some(path) if !path.is_empty() => Some(path),
        _ => {
            let _ = writeln!(err, "{plugin}: missing argument `path` (path=/some/file)");
            None
        }
    }
}

/// `file`: writes the payload (or the command line when the payload is empty) plus a trailing
/// newline, if it lacks one, to the file in arg `path`, replacing its content.
pub fn file(req: &PluginRequest, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let Some(path) = path_arg("file", req, err) else {
        return EXIT_USAGE;
    };
    let data = match payload_or_command_line(req) {
        Ok(data) => with_newline(data),
        Err(e) => {
            let _ = writeln!(err, "file: {e}");
            return EXIT_USAGE;
        }
    };
    if let Err(e) = std::fs::write(path, &data) {
        let _ = writeln!(err, "file: cannot write {path}: {e}");
        return EXIT_FAILURE;
    }
    let _ = writeln!(out, "file has been written.");
    0
}

/// `append`: appends the payload (or the command line when the payload is empty) to the file
/// in arg `path`, adding a newline if it lacks one. Prints nothing on success.
///
/// Safe with concurrent appenders: the file is opened with `O_APPEND` and each record goes
/// out in one `write`, so records from different processes never interleave.
pub fn append(req: &PluginRequest, err: &mut dyn Write) -> i32 {
    let Some(path) = path_arg("append", req, err) else {
        return EXIT_USAGE;
    };
    let data = match payload_or_command_line(req) {
        Ok(data) => with_newline(data),
        Err(e) => {
            let _ = writeln!(err, "append: {e}");
            return EXIT_USAGE;
        }
    };
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path);
    let mut file = match file {
        Ok(file) => file,
        Err(e) => {
            let _ = writeln!(err, "append: cannot open {path}: {e}");
            return EXIT_FAILURE;
        }
    };
    // One write call; a short write on a regular file means the disk is full, reported below.
    match file.write(&data) {
        Ok(n) if n == data.len() => 0,
        Ok(n) => {
            let _ = writeln!(
                err,
                "append: short write to {path}: {n} of {} bytes",
                data.len()
            );
            EXIT_FAILURE
        }
        Err(e) => {
            let _ = writeln!(err, "append: cannot write {path}: {e}");
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

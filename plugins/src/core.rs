//! The core plugins: `echo`, `command`, `file` and `append`, written once.
//!
//! Their logic is here as plain functions over a [`CoreRequest`] (the command words, the
//! payload and the `path` argument): what `echo` answers ([`CoreRequest::text`]), what `file`
//! and `append` write ([`CoreRequest::record`]) and where ([`CoreRequest::target`],
//! [`write_file`], [`append_records`]), what `command` runs ([`CoreRequest::shell`]), and
//! their error texts and exit codes ([`CoreError`]). Two wrappers call it: the worker, which
//! serves them as tasks (`command` as `<shell> -c`), and [`run_core`], which the `triggerfs`
//! binary calls when it is started under a core plugin's name: it reads the request from stdin
//! and prints to the real stdout and stderr.

use crate::manifest::CorePlugin;
use crate::request::PluginRequest;
use std::borrow::Cow;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// Names of the core plugins, which are also the file names the binary answers to.
pub const CORE_PLUGINS: &[&str] = &["echo", "command", "file", "append"];

/// Exit code for a request the plugin cannot serve (missing argument, bad payload), as
/// shells use 2 for usage errors.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the plugin failed at something outside the request (I/O, spawn).
pub const EXIT_FAILURE: i32 = 1;

/// Why a core plugin did not serve a request: the line it prints on stderr, and its exit code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The request cannot be served as it is: exit [`EXIT_USAGE`].
    #[error("{}: {}", .0.name(), .1)]
    Usage(CorePlugin, String),
    /// Something outside the request failed: exit [`EXIT_FAILURE`].
    #[error("{}: {}", .0.name(), .1)]
    Failure(CorePlugin, String),
}

impl CoreError {
    /// The plugin's exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CoreError::Usage(..) => EXIT_USAGE,
            CoreError::Failure(..) => EXIT_FAILURE,
        }
    }
}

/// What a core plugin reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct CoreRequest<'a> {
    /// The command words.
    pub command: &'a [String],
    /// The payload's bytes.
    pub payload: &'a [u8],
    /// The file of `file` and `append`, as [`path_arg`] finds it.
    pub path: Option<&'a str>,
}

/// What `command` runs: `<shell> -c <script>`, with `stdin` on its standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellRun {
    /// The script, the shell's `-c` argument.
    pub script: String,
    /// The child's standard input; empty means none.
    pub stdin: Vec<u8>,
}

/// The file of `file` and `append`, given `arg` (an argument's value by name): the first of
/// `path` and the seed's `filepath` given non-empty.
pub fn path_arg<'a>(arg: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    ["path", "filepath"]
        .iter()
        .find_map(|name| arg(name).filter(|path| !path.is_empty()))
}

impl<'a> CoreRequest<'a> {
    /// The payload, or the command line when the payload is empty: what `echo` prints.
    pub fn text(&self) -> Cow<'a, [u8]> {
        if self.payload.is_empty() {
            Cow::Owned(self.command.join(" ").into_bytes())
        } else {
            Cow::Borrowed(self.payload)
        }
    }

    /// [`CoreRequest::text`] ending in a newline: what `file` and `append` write.
    pub fn record(&self) -> Vec<u8> {
        with_newline(self.text().into_owned())
    }

    /// The file `plugin` (`file` or `append`) writes to, or why there is none.
    pub fn target(&self, plugin: CorePlugin) -> Result<&'a Path, CoreError> {
        let missing =
            || CoreError::Usage(plugin, "missing argument `path` (path=/some/file)".into());
        self.path.map(Path::new).ok_or_else(missing)
    }

    /// What `command` runs: the command line, fed the payload (`wc -l` counts the payload's
    /// lines); with no command words the payload is the script and stdin is empty.
    pub fn shell(&self) -> Result<ShellRun, CoreError> {
        let (script, stdin) = if self.command.is_empty() {
            (
                String::from_utf8_lossy(self.payload).into_owned(),
                Vec::new(),
            )
        } else {
            (self.command.join(" "), self.payload.to_vec())
        };
        if script.trim().is_empty() {
            let reason = "nothing to run (no command words and no payload)";
            return Err(CoreError::Usage(CorePlugin::Command, reason.into()));
        }
        Ok(ShellRun { script, stdin })
    }
}

fn with_newline(mut data: Vec<u8>) -> Vec<u8> {
    if data.last() != Some(&b'\n') {
        data.push(b'\n');
    }
    data
}

/// `file`: replaces the content of `path` with `record`; what it prints then.
pub fn write_file(path: &Path, record: &[u8]) -> Result<&'static str, CoreError> {
    std::fs::write(path, record).map_err(|e| {
        let reason = format!("cannot write {}: {e}", path.display());
        CoreError::Failure(CorePlugin::File, reason)
    })?;
    Ok("file has been written.")
}

/// `append`: writes `records` to `path`, opened with `O_APPEND` (created if need be), in one
/// `write(2)` (a short write, which only a full disk makes, is finished with more), then
/// `fdatasync` if `sync`. Safe with concurrent appenders: records never interleave.
pub fn append_records(path: &Path, records: &[u8], sync: bool) -> Result<(), CoreError> {
    let fail = |what: &str, e: std::io::Error| {
        let reason = format!("cannot {what} {}: {e}", path.display());
        CoreError::Failure(CorePlugin::Append, reason)
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| fail("open", e))?;
    file.write_all(records).map_err(|e| fail("write", e))?;
    if sync {
        file.sync_data().map_err(|e| fail("sync", e))?;
    }
    Ok(())
}

/// The exit code of a finished child: its code, or 128+N when signal N killed it.
pub fn exit_code_of(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => EXIT_FAILURE,
    }
}

/// The core plugin `argv0` names, if its file name is one: `/x/echo/echo` → `echo`.
pub fn core_plugin_for_argv0(argv0: &str) -> Option<CorePlugin> {
    CorePlugin::from_name(Path::new(argv0).file_name()?.to_str()?)
}

/// Runs core plugin `plugin` on the request read from stdin; returns the exit code.
pub fn run_core(plugin: CorePlugin) -> i32 {
    let served = PluginRequest::read_stdin()
        .map_err(|e| CoreError::Usage(plugin, e.to_string()))
        .and_then(|req| serve(plugin, &req, &mut std::io::stdout()));
    served.unwrap_or_else(|e| {
        eprintln!("{e}");
        e.exit_code()
    })
}

/// Serves `req` with core plugin `plugin`, printing to `out` (`command`'s child inherits the
/// process's stdout and stderr instead); the exit code, or the error to print on stderr.
pub fn serve(
    plugin: CorePlugin,
    req: &PluginRequest,
    out: &mut dyn Write,
) -> Result<i32, CoreError> {
    let payload = req.payload_bytes();
    let payload = payload.map_err(|e| CoreError::Usage(plugin, e.to_string()))?;
    let core = CoreRequest {
        command: &req.command,
        payload: &payload,
        path: path_arg(|name| req.args.get(name).map(String::as_str)),
    };
    let printed = match plugin {
        CorePlugin::Echo => core.text(),
        CorePlugin::File => write_file(core.target(plugin)?, &core.record())?
            .as_bytes()
            .into(),
        CorePlugin::Append => {
            append_records(core.target(plugin)?, &core.record(), false)?;
            return Ok(0);
        }
        CorePlugin::Command => return run_shell(&core.shell()?),
    };
    out.write_all(&with_newline(printed.into_owned()))
        .and_then(|()| out.flush())
        .map_err(|e| CoreError::Failure(plugin, e.to_string()))?;
    Ok(0)
}

/// Runs `sh -c <script>`, inheriting stdout and stderr, so its output streams as it is
/// written; its exit code.
fn run_shell(run: &ShellRun) -> Result<i32, CoreError> {
    let fail = |reason| CoreError::Failure(CorePlugin::Command, reason);
    let stdin = if run.stdin.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    };
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&run.script)
        .stdin(stdin)
        .spawn()
        .map_err(|e| fail(format!("cannot start sh: {e}")))?;
    let status = std::thread::scope(|scope| {
        // A thread, so that a child that never reads its stdin cannot block us on a full
        // pipe; it may exit without reading, and a broken pipe is not our failure.
        if let Some(mut pipe) = child.stdin.take() {
            scope.spawn(move || pipe.write_all(&run.stdin));
        }
        child.wait()
    });
    let status = status.map_err(|e| fail(format!("cannot wait for sh: {e}")))?;
    Ok(exit_code_of(status))
}

#[cfg(test)]
pub(crate) mod tests;

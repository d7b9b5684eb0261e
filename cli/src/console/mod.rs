//! `triggerfs cli`: the management console in the seed's Juniper-like syntax.
//!
//! - `grammar`: every command as one table entry; parsing, `help`, `?`, TAB and `-c` all
//!   read that table.
//! - `commands`: what each entry does (API calls) and the `Reply` it prints.
//! - `control`: the control plane, logged in from `[main]` of triggerfs.toml.
//! - `table`: tables in the seed's shape.
//! - `editor`: the line editor (rustyline): TAB completion of keywords and object names,
//!   `?` at any point, history across sessions.
//!
//! Interactive, the console keeps running through every error (one line each); `-c` runs
//! one command and exits 0, 1 on an error (or the request's own status for `request`).

mod commands;
mod control;
mod editor;
mod grammar;
mod operator;
pub(crate) mod table;

use crate::client_cmd::{self, render::Console, ClientArgs};
use anyhow::Result;
pub(crate) use commands::path_part;
use commands::{CliError, Reply};
use control::Control;
use grammar::{Kind, Mode, Next};
use launch::settings::LoginArgs;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `triggerfs cli`'s flags.
#[derive(Debug, clap::Args)]
pub struct CliArgs {
    /// Run this one command (e.g. "show workers") and exit: 0 on success, 1 on an error.
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    pub command: Option<String>,
    /// Print the API's JSON instead of tables and messages.
    #[arg(long, env = "TRIGGERFS_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// Broker address for `request` and `file` (else `[main] broker` of triggerfs.toml);
    /// several, comma-separated, to fail over between a cell's nodes.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    pub broker: client::BrokerList,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Where the console keeps its history (default:
    /// $XDG_DATA_HOME/triggerfs/cli_history, else ~/.local/share/triggerfs/cli_history).
    #[arg(long, env = "TRIGGERFS_HISTORY")]
    pub history: Option<PathBuf>,
}

/// A logged-in console.
pub struct Session {
    api: std::rc::Rc<Control>,
    mode: Mode,
    json: bool,
    /// Set by `exit` in operational mode and `quit`.
    leave: bool,
    broker: client::BrokerList,
    config: Option<PathBuf>,
    /// SIGINT while a command runs: cancels a request, never the console.
    sigint: tokio::signal::unix::Signal,
    /// The last `request`'s exit status.
    status: i32,
    /// Running one command (`-c`): every command of both modes is offered.
    one_shot: bool,
}

/// The data dir: $XDG_DATA_HOME/triggerfs, else ~/.local/share/triggerfs.
fn data_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("triggerfs"))
}

/// Runs the console (or one command with `-c`); returns the exit status. `config` is the
/// `--config` given, passed on to the `fs` that `file` starts.
pub fn run(args: CliArgs, config: Option<PathBuf>) -> Result<i32> {
    let login = args
        .login
        .required(" (`triggerfs up` writes one: triggerfs-data/triggerfs.toml)")?;
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    );
    let sigint = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    })?;
    let api =
        Control::login(rt, login, data_dir().as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut session = Session {
        api: std::rc::Rc::new(api),
        mode: Mode::Operational,
        json: args.json,
        leave: false,
        broker: args.broker.clone(),
        config,
        sigint,
        status: 0,
        one_shot: args.command.is_some(),
    };
    match &args.command {
        Some(line) => Ok(session.one_shot(line)),
        None => {
            let history = args
                .history
                .clone()
                .or_else(|| data_dir().map(|d| d.join("cli_history")));
            editor::run(&mut session, history.as_deref())?;
            Ok(0)
        }
    }
}

impl Session {
    fn team(&self) -> String {
        self.api.login.borrow().team.clone()
    }

    /// The prompt: `(team) identity@host$ `, `#` in configure mode.
    fn prompt(&self) -> String {
        let login = self.api.login.borrow();
        let host = reqwest::Url::parse(&login.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "localhost".to_string());
        let sign = match self.mode {
            Mode::Operational => '$',
            Mode::Configure => '#',
        };
        format!("({}) {}@{host}{sign} ", login.team, login.identity)
    }

    /// `-c`: any command of either mode, once.
    fn one_shot(&mut self, line: &str) -> i32 {
        match self.execute(None, line) {
            Ok(()) => self.status,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        }
    }

    /// Runs a line in `mode` (`None`: any mode) and prints what it came to.
    fn execute(&mut self, mode: Option<Mode>, line: &str) -> Result<(), CliError> {
        if let Some(prefix) = help_query(mode, line) {
            print_lines(&possible(mode, &prefix.0, &prefix.1));
            return Ok(());
        }
        let words = grammar::words_of(line)?;
        if words.is_empty() {
            return Ok(());
        }
        let (entry, args) = grammar::parse(mode, &words)?;
        self.status = 0;
        let started = Instant::now();
        let reply = (entry.run)(self, &args);
        // TAB offers what exists now.
        self.api.forget_names();
        match reply? {
            Reply::Table(table, json) => {
                if self.json {
                    print_json(&json);
                } else {
                    let mut lines = table.render();
                    lines.push(String::new());
                    lines.push(format!(
                        "Time: {}",
                        client_cmd::render::go_duration(started.elapsed())
                    ));
                    print_lines(&lines);
                }
            }
            Reply::Done(lines, json) => {
                if self.json {
                    if !json.is_null() {
                        print_json(&json);
                    }
                } else {
                    print_lines(&lines);
                }
            }
            Reply::Quiet => {}
        }
        Ok(())
    }

    /// `request`: like `triggerfs client`, with the console's login; Ctrl-C cancels it.
    fn request(&mut self, a: &grammar::Args) -> Result<Reply, CliError> {
        let timeout = match a.option("timeout").first() {
            Some(text) => Some(humantime::parse_duration(text).map_err(|_| {
                CliError::Value(format!("`{text}` is not a duration such as 10s or 1m"))
            })?),
            None => None,
        };
        let pairs = a
            .option("args")
            .iter()
            .map(|kv| client_cmd::parse_key_value(kv))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::Value)?;
        let share = |keyword: &str| -> Result<Option<proto::Share>, CliError> {
            a.option(keyword)
                .first()
                .map(|text| {
                    text.parse::<proto::Share>().map_err(|_| {
                        CliError::Value(format!(
                            "`{text}` is not a number of workers or a percentage such as 10%"
                        ))
                    })
                })
                .transpose()
        };
        let deadline =
            match a.option("deadline").first() {
                Some(text) => Some(humantime::parse_duration(text).map_err(|_| {
                    CliError::Value(format!("`{text}` is not a duration such as 10m"))
                })?),
                None => None,
            };
        let args = ClientArgs {
            broker: self.broker.clone(),
            token: self.api.jwt()?,
            login: LoginArgs {
                url: client::login::DEFAULT_URL.to_string(),
                team: None,
                identity: None,
                secret: None,
            },
            service: a.get(Kind::Service).to_string(),
            plugin: a.get(Kind::Plugin).to_string(),
            timeout,
            command: Some(a.get(Kind::Rest).to_string()),
            command_words: None,
            args: pairs,
            payload_file: None,
            json: self.json,
            debug: false,
            no_wait: false,
            batch: share("batch")?,
            max_failures: share("max-failures")?,
            quorum: None,
            quorum_cancel: false,
            deadline,
            only_workers: Vec::new(),
            rerun: None,
            rerun_only: crate::jobs_cmd::Only::Failed,
        };
        let rt = self.api.rt.clone();
        let sigint = &mut self.sigint;
        let status = rt.block_on(async {
            // A Ctrl-C from before the request does not cancel it.
            while tokio::time::timeout(Duration::ZERO, sigint.recv())
                .await
                .is_ok()
            {}
            let interrupt = async {
                sigint.recv().await;
            };
            client_cmd::run_with(args, std::io::empty(), Console::stdio(), interrupt).await
        });
        match status {
            Ok(code) => {
                self.status = code;
                Ok(Reply::Quiet)
            }
            Err(e) => Err(CliError::Run(e.to_string())),
        }
    }

    /// `file`: a shell in a temporary mount of the trigger files; unmounted when it exits.
    fn file_shell(&mut self) -> Result<Reply, CliError> {
        let run = |what: &str, e: std::io::Error| CliError::Run(format!("{what}: {e}"));
        let base = std::env::temp_dir();
        let dir = base.join(format!("triggerfs-cli{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(run(&format!("cannot create {}", dir.display()), e)),
        }
        let log_path = base.join(format!("triggerfs-cli{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| run(&format!("cannot create {}", log_path.display()), e))?;
        let exe = std::env::current_exe().map_err(|e| run("cannot find this program", e))?;
        let login = self.api.login.borrow().clone();
        let spool = data_dir().unwrap_or_else(|| base.clone()).join("cli-spool");
        let mut command = std::process::Command::new(exe);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .arg("fs")
            .arg("--mount")
            .arg(&dir)
            .arg("--quiet")
            .arg("--spool")
            .arg(&spool)
            .arg("--broker")
            .arg(self.broker.to_string())
            // The login goes by environment, not argv: other users can read argv.
            .env("TRIGGERFS_URL", &login.url)
            .env("TRIGGERFS_TEAM", &login.team)
            .env("TRIGGERFS_IDENTITY", &login.identity)
            .env("TRIGGERFS_SECRET", &login.secret)
            .env_remove("TRIGGERFS_LOGFILE")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(|e| run("log file", e))?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the shell does not reach it.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets this process's parent-death signal.
        unsafe {
            // It unmounts when the console dies, however the console dies.
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut fs = command
            .spawn()
            .map_err(|e| run("cannot start the fs module", e))?;
        let mounted = wait_mounted(&dir, &mut fs, Duration::from_secs(15));
        let result = match mounted {
            Ok(()) => {
                println!(">> Starting a new interactive shell");
                let shell = std::env::var("SHELL")
                    .ok()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "/bin/sh".to_string());
                std::process::Command::new(&shell)
                    .current_dir(&dir)
                    .status()
                    .map(|_| Reply::Quiet)
                    .map_err(|e| run(&format!("cannot start {shell}"), e))
            }
            Err(why) => {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let last = tail.lines().last().unwrap_or_default().to_string();
                Err(CliError::Run(format!(
                    "the fs module did not mount: {why}. {last}"
                )))
            }
        };
        stop_fs(&mut fs, &dir);
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_file(&log_path);
        result
    }

    /// `set password`'s two secrets: asked without echo on a terminal, else two lines of
    /// stdin (current, new).
    fn ask_secrets(&mut self) -> Result<(String, String), CliError> {
        let failed = |e: std::io::Error| CliError::Run(format!("cannot read the secret: {e}"));
        if std::io::stdin().is_terminal() {
            let current = rpassword::prompt_password("Current secret: ").map_err(failed)?;
            let new = rpassword::prompt_password("New secret: ").map_err(failed)?;
            let again = rpassword::prompt_password("New secret again: ").map_err(failed)?;
            if new != again {
                return Err(CliError::Value(
                    "the new secrets differ; nothing changed".into(),
                ));
            }
            return Ok((current, new));
        }
        let mut lines = std::io::stdin().lock().lines();
        let mut next = || -> Result<String, CliError> {
            lines.next().transpose().map_err(failed)?.ok_or_else(|| {
                CliError::Value(
                    "set password reads the current and the new secret, one per line".into(),
                )
            })
        };
        let current = next()?;
        let new = next()?;
        Ok((current, new))
    }
}

fn mounted(dir: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    table
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

fn wait_mounted(dir: &Path, fs: &mut std::process::Child, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if mounted(dir) {
            return Ok(());
        }
        if let Ok(Some(status)) = fs.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("not mounted after {}s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_fs(fs: &mut std::process::Child, dir: &Path) {
    if let Ok(pid) = i32::try_from(fs.id()) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = fs.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = fs.kill();
    let _ = fs.wait();
    let _ = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status();
}

/// A line that asks what may come next (`set services demo ?`, `set serv?`): the words
/// before and the partial word. Not inside quotes or free text, where `?` is text.
fn help_query(mode: Option<Mode>, line: &str) -> Option<(Vec<String>, String)> {
    let body = line.trim_end().strip_suffix('?')?;
    let words = grammar::split(body).ok()?;
    let (done, partial) = if body.ends_with(char::is_whitespace) || body.is_empty() {
        (words, String::new())
    } else {
        let mut words = words;
        let last = words.pop().map(|w| w.text).unwrap_or_default();
        (words, last)
    };
    let done: Vec<String> = done.into_iter().map(|w| w.text).collect();
    let next = grammar::next(mode, &done);
    if next.contains(&Next::Value(Kind::Rest)) && next.contains(&Next::End) {
        return None;
    }
    Some((done, partial))
}

/// `?`'s answer: what may follow `words`, each with one line.
fn possible(mode: Option<Mode>, words: &[String], partial: &str) -> Vec<String> {
    let mut rows: Vec<(String, &str)> = Vec::new();
    for next in grammar::next(mode, words) {
        match next {
            Next::Word(w, help) if w.starts_with(partial) => rows.push((w.to_string(), help)),
            Next::Value(kind) if partial.is_empty() => {
                rows.push((format!("<{}>", kind.label()), kind.describe()));
            }
            Next::End if partial.is_empty() => rows.push(("<Enter>".into(), "run the command")),
            _ => {}
        }
    }
    rows.dedup_by(|a, b| a.0 == b.0);
    if rows.is_empty() {
        return vec![format!(
            "Nothing fits here{}: type help for the commands of this mode",
            if partial.is_empty() {
                String::new()
            } else {
                format!(" beginning with `{partial}`")
            }
        )];
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut lines = vec!["Possible completions:".to_string()];
    lines.extend(rows.iter().map(|(w, h)| format!("  {w:width$}  {h}")));
    lines
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

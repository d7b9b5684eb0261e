//! The README's command blocks run as printed (the project guide: "Every command block in the
//! README runs as printed; a test runs them"), and its configuration blocks are accepted.
//!
//! README.md is read and parsed when the test runs, so editing it re-tests it. The rules:
//!
//! - A ```` ```sh ```` block with lines that start with `$ ` is a terminal transcript: each
//!   `$ ` line is a command (the lines after one that ends in `\` continue it), and the lines
//!   after it up to the next `$ ` are its output. Only comments may come before the first
//!   `$ `. The output must match as a whole, line by line, in order: a line `...` stands for
//!   any number of lines; a line `[plugin@worker] text` is a plugin's output as the client
//!   shows it, whose text is the host's (what `uptime` or `df` print differs from machine to
//!   machine), so only its `[plugin@worker]` must match; in every other line, dates
//!   (`2026/11/25`, the console's `Sun, 29 Nov 2026 08:04:46 UTC`), clock times (`10:14:06`)
//!   and durations (`4.914622ms`) match any date, time or duration, and the rest is literal. A command shown with no output has its output
//!   unchecked.
//! - A ```` ```sh ```` block without `$ ` lines is a script: its commands (a line, with the
//!   lines that `\` continues or that bash needs to complete it; comments skipped) run one
//!   after the other.
//! - Every command must exit 0. All of them run in one bash session (`set -o pipefail`), as
//!   in a terminal: variables, the working directory and background jobs carry over; stderr
//!   is interleaved with stdout as a terminal shows them.
//! - A ```` ```toml ```` block must parse, and the binary must accept it: a `[broker]`
//!   section is given to `triggerfs broker`, which must start and route every service it
//!   shows (no worker is online, so the answer is `NoWorkersOnline`, or every bound worker
//!   reported offline, not `NoSuchService`),
//!   also with its commented-out `# key = value` settings uncommented; `[main]` and
//!   `[workers]` are given to `triggerfs worker` for every `[workers.<team>.<identity>]`,
//!   which must connect to the `[main] broker` as that team and identity (and report the
//!   `[workers] pluginspath` as missing when it is).
//!
//! What cannot run literally in a test is mapped, and only this:
//!
//! - `cargo run --release --` becomes `triggerfs`, and `triggerfs` is the binary under test
//!   (a symlink on `PATH`): the test does not build.
//! - `triggerfs up` stays running for the rest of the test, as in its own terminal: the test
//!   starts it in the background with `TRIGGERFS_LISTEN` and `TRIGGERFS_API_LISTEN` set to
//!   `127.0.0.1:0` (its `--listen` and `--api-listen`), and the README's ports 8080 and 5555
//!   become the ones it bound, in commands, output and configuration. Where a person types
//!   the next command seconds later, the test waits until `up`'s local worker serves `demo`.
//! - `scripts/test` runs this very suite: it is only checked to be an executable file.
//! - `/mnt/triggerfs`, the seed's mount point, becomes `mnt/triggerfs` in the working
//!   directory: the test mounts nothing over the host's `/mnt`.
//! - Everything runs in a temporary directory that is also `HOME` (no real `~/triggerfs.toml`
//!   is read or written), without the `TRIGGERFS_*` and `RUST_LOG` variables of the caller.

use anyhow::{bail, ensure, Context, Result};
use proto::ErrorKind;
use regex::Regex;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::*;

/// How long one README command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The control plane's and the broker's default ports, as the README shows them.
const README_API_PORT: u16 = 8080;
const README_BROKER_PORT: u16 = 5555;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

fn readme() -> Result<String> {
    let path = repo_root().join("README.md");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    /// What follows the opening fence (`sh`, `toml`, or nothing).
    lang: String,
    /// The README line number of its first line.
    first_line: usize,
    lines: Vec<String>,
}

fn fenced_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(lang)) => {
                open = Some(Block {
                    lang: lang.trim().to_string(),
                    first_line: i + 2,
                    lines: Vec::new(),
                })
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => block.lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    blocks
}

/// One command of a block, and the output the README shows for it.
#[derive(Debug)]
struct Step {
    /// The README line number of its first line.
    line: usize,
    /// The command as printed.
    text: String,
    /// What the README shows it prints, if anything.
    expected: Option<Vec<String>>,
}

fn steps(block: &Block) -> Result<Vec<Step>> {
    if block.lines.iter().any(|l| l.starts_with("$ ")) {
        transcript_steps(block)
    } else {
        script_steps(block)
    }
}

fn is_comment_or_blank(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

fn transcript_steps(block: &Block) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = block.lines.iter().enumerate();
    while let Some((i, line)) = lines.next() {
        let at = block.first_line + i;
        if let Some(first) = line.strip_prefix("$ ") {
            let mut text = first.to_string();
            while text.trim_end().ends_with('\\') {
                let (_, next) = lines
                    .next()
                    .with_context(|| format!("README.md:{at}: `\\` continues past the block"))?;
                text.push('\n');
                text.push_str(next);
            }
            steps.push(Step {
                line: at,
                text,
                expected: Some(Vec::new()),
            });
        } else if let Some(Step {
            expected: Some(out),
            ..
        }) = steps.last_mut()
        {
            out.push(line.clone());
        } else if !is_comment_or_blank(line) {
            bail!("README.md:{at}: `{line}` comes before the block's first `$ ` command");
        }
    }
    for step in &mut steps {
        if let Some(out) = &mut step.expected {
            while out.last().is_some_and(|l| l.trim().is_empty()) {
                out.pop();
            }
            if out.is_empty() {
                step.expected = None;
            }
        }
    }
    Ok(steps)
}

fn script_steps(block: &Block) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in block.lines.iter().enumerate() {
        match &mut current {
            None if is_comment_or_blank(line) => continue,
            None => current = Some((block.first_line + i, line.clone())),
            Some((_, text)) => {
                text.push('\n');
                text.push_str(line);
            }
        }
        let text = &current.as_ref().expect("a command").1;
        if !text.trim_end().ends_with('\\') && bash_parses(text)? {
            let (line, text) = current.take().expect("a command");
            steps.push(Step {
                line,
                text,
                expected: None,
            });
        }
    }
    if let Some((line, text)) = current {
        bail!("README.md:{line}: this command does not end in its block:\n{text}");
    }
    Ok(steps)
}

/// Whether `bash -n` takes `text` as complete.
fn bash_parses(text: &str) -> Result<bool> {
    Ok(Command::new("bash")
        .args(["-n", "-c", text])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("bash")?
        .success())
}

/// The ports the test's `up` bound, once it runs.
#[derive(Debug, Default, Clone, Copy)]
struct Ports {
    api: Option<u16>,
    broker: Option<u16>,
}

/// The README's ports → the ones bound here.
fn map_ports(text: &str, ports: Ports) -> String {
    let mut text = text.to_string();
    if let Some(api) = ports.api {
        text = text.replace(&format!(":{README_API_PORT}"), &format!(":{api}"));
    }
    if let Some(broker) = ports.broker {
        text = text.replace(&format!(":{README_BROKER_PORT}"), &format!(":{broker}"));
    }
    text
}

/// The seed's mount point, as the README shows it.
const SEED_MOUNT: &str = "/mnt/triggerfs";

/// A command as printed → as the test runs it in `work` (see the module's documentation).
fn map_command(text: &str, ports: Ports, work: &Path) -> String {
    let mount = work.join(SEED_MOUNT.trim_start_matches('/'));
    let text = text
        .replace("cargo run --release --", "triggerfs")
        .replace(SEED_MOUNT, &mount.display().to_string());
    map_ports(&text, ports)
}

/// Dates, clock times and durations: what differs from one run to the next.
const VOLATILE: &str = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} UTC|\d{4}/\d{2}/\d{2}|\d{1,2}:\d{2}:\d{2}|(?:\d+h)?(?:\d+m)?\d+(?:\.\d+)?(?:ns|µs|ms|s)\b";

/// What an output line the README shows must look like (see the module's documentation).
fn line_pattern(expected: &str) -> Result<Regex> {
    let expected = expected.trim_end();
    let plugin_line = Regex::new(r"^\[[^\]\s]+@[^\]\s]+\]")?;
    let pattern = if let Some(prefix) = plugin_line.find(expected) {
        format!("^{}(?: .*)?$", regex::escape(prefix.as_str()))
    } else {
        let volatile = Regex::new(VOLATILE)?;
        let mut pattern = String::from("^");
        let mut literal_from = 0;
        for m in volatile.find_iter(expected) {
            pattern.push_str(&regex::escape(&expected[literal_from..m.start()]));
            pattern.push_str(&format!("(?:{VOLATILE})"));
            literal_from = m.end();
        }
        pattern.push_str(&regex::escape(&expected[literal_from..]));
        pattern.push('$');
        pattern
    };
    Ok(Regex::new(&pattern)?)
}

/// Whether `lines` match `patterns` (`None`: a `...` line) from first to last.
fn lines_match(patterns: &[Option<Regex>], lines: &[&str]) -> bool {
    match patterns.split_first() {
        None => lines.is_empty(),
        Some((None, rest)) => (0..=lines.len()).any(|skip| lines_match(rest, &lines[skip..])),
        Some((Some(pattern), rest)) => {
            lines
                .first()
                .is_some_and(|line| pattern.is_match(line.trim_end()))
                && lines_match(rest, &lines[1..])
        }
    }
}

fn check_output(expected: &[String], output: &str) -> Result<()> {
    let mut lines: Vec<&str> = output.lines().collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let patterns = expected
        .iter()
        .map(|line| match line.trim() {
            "..." => Ok(None),
            _ => line_pattern(line).map(Some),
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        lines_match(&patterns, &lines),
        "its output is not what the README shows.\nThe README shows:\n{}\nIt printed:\n{}",
        expected.join("\n"),
        lines.join("\n")
    );
    Ok(())
}

/// Where and with what environment everything the README runs runs: in the working
/// directory, which is also `HOME`; with `triggerfs` on `PATH` the binary under test; without
/// the caller's variables that would change what the binary does.
struct Sandbox {
    work: tempfile::TempDir,
    _bin_dir: tempfile::TempDir,
    path: OsString,
    unset: Vec<String>,
}

impl Sandbox {
    fn new() -> Result<Sandbox> {
        let work = tempfile::tempdir()?;
        let bin_dir = tempfile::tempdir()?;
        std::os::unix::fs::symlink(bin(), bin_dir.path().join("triggerfs"))?;
        let mut path = OsString::from(bin_dir.path());
        if let Some(outer) = std::env::var_os("PATH") {
            path.push(":");
            path.push(outer);
        }
        let unset = std::env::vars_os()
            .filter_map(|(key, _)| key.into_string().ok())
            .filter(|key| key.starts_with("TRIGGERFS_") || key == "RUST_LOG")
            .collect();
        Ok(Sandbox {
            work,
            _bin_dir: bin_dir,
            path,
            unset,
        })
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    /// `program`, to run in the sandbox.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.dir());
        for key in &self.unset {
            command.env_remove(key);
        }
        command.env("PATH", &self.path).env("HOME", self.dir());
        command
    }
}

/// Starts the README's `up` command in the background on ports of its own; returns it and
/// what it bound, once its local worker serves `demo`.
fn start_up(
    command: &str,
    sandbox: &Sandbox,
    runtime: &tokio::runtime::Runtime,
) -> Result<(Proc, Ports)> {
    let mut bash = sandbox.command("bash");
    bash.arg("-c")
        .arg(format!("exec {command}"))
        .env("TRIGGERFS_LISTEN", "127.0.0.1:0")
        .env("TRIGGERFS_API_LISTEN", "127.0.0.1:0");
    let (up, mut stdout) = Proc::start("up", bash)?;
    let (lines, broker) = read_until_listening(&up, &mut stdout)?;
    // Keep reading what it prints, so that it never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let api = line_value(&lines, "control plane listening on ")
        .with_context(|| format!("no API address in {lines:?}"))?;
    let created = line_value(&lines, "created team `")
        .with_context(|| format!("no first admin in {lines:?}"))?;
    let team = created.split('`').next().unwrap_or_default().to_string();
    let identity = created.split('`').nth(2).unwrap_or_default().to_string();
    let secret = line_value(&lines, "secret:").context("no secret")?;
    let port = |addr: &str| -> Result<u16> {
        let port = addr.rsplit(':').next().unwrap_or_default();
        port.parse().with_context(|| format!("no port in `{addr}`"))
    };
    let ports = Ports {
        api: Some(port(&api)?),
        broker: Some(port(&broker)?),
    };
    runtime.block_on(async {
        let admin = Api::login(&api, &team, &identity, &secret).await?;
        wait_until(
            Duration::from_secs(20),
            "`up`'s local worker to serve demo",
            || async {
                matches!(
                    admin.call("GET", "/api/v1/services/demo", serde_json::Value::Null).await,
                    Ok((status, body)) if status.is_success()
                        && body["serving"].as_array().is_some_and(|s| !s.is_empty())
                )
            },
        )
        .await
    })?;
    Ok((up, ports))
}

/// `text` without terminal colours (the logs have them).
fn plain(text: &str) -> String {
    let colour = Regex::new("\x1b\\[[0-9;]*m").expect("regex");
    colour.replace_all(text, "").into_owned()
}

/// What the README's background jobs wrote to `*.log` files in the working directory.
fn background_logs(work: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(work).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            text.push_str(&format!(
                "\n{} (a background job's log):\n{log}",
                path.display()
            ));
        }
    }
    text
}

fn check_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    ensure!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "{} is not an executable file",
        path.display()
    );
    Ok(())
}

#[test]
fn readme_command_blocks_run_as_printed() -> Result<()> {
    let readme = readme()?;
    let blocks: Vec<Block> = fenced_blocks(&readme)
        .into_iter()
        .filter(|b| b.lang == "sh")
        .collect();
    ensure!(!blocks.is_empty(), "README.md has no ```sh block");
    let sandbox = Sandbox::new()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut shell = Shell::start(sandbox.command("bash"))?;
    let mut ports = Ports::default();
    let mut up: Option<Proc> = None;
    let mut ran = 0;
    for block in &blocks {
        for step in steps(block)? {
            let at = format!("README.md:{}", step.line);
            let command = map_command(&step.text, ports, sandbox.dir());
            let words: Vec<&str> = command.split_whitespace().collect();
            if words.first() == Some(&"scripts/test") {
                check_executable(&repo_root().join("scripts/test")).context(at)?;
                continue;
            }
            if words.starts_with(&["triggerfs", "up"]) {
                ensure!(up.is_none(), "{at}: `up` runs already");
                let (proc, bound) = start_up(&command, &sandbox, &runtime)
                    .with_context(|| format!("{at}: `{command}`"))?;
                up = Some(proc);
                ports = bound;
                continue;
            }
            // A command bash cannot complete would swallow what the session sends after it.
            ensure!(
                bash_parses(&command)?,
                "{at}: bash cannot parse `{command}`"
            );
            let logs = || {
                let up = up.as_ref().map(Proc::stderr).unwrap_or_default();
                plain(&format!(
                    "`up` logged:\n{up}{}",
                    background_logs(sandbox.dir())
                ))
            };
            let (status, output) = shell
                .run(&command, COMMAND_TIMEOUT)
                .with_context(|| format!("{at}: `{command}`\n{}", logs()))?;
            ensure!(
                status == 0,
                "{at}: `{command}` exited with status {status}. Its output:\n{output}\n{}",
                logs()
            );
            if let Some(expected) = &step.expected {
                let expected: Vec<String> = expected.iter().map(|l| map_ports(l, ports)).collect();
                check_output(&expected, &output)
                    .with_context(|| format!("{at}: `{command}`\n{}", logs()))?;
            }
            ran += 1;
        }
    }
    ensure!(up.is_some(), "no README block starts `up`");
    ensure!(ran > 0, "no README command ran");
    Ok(())
}

/// `# key = value` lines uncommented.
fn uncomment_settings(text: &str) -> String {
    let setting = Regex::new(r"^\s*#\s*([A-Za-z_][A-Za-z0-9_]*\s*=.*)$").expect("regex");
    text.lines()
        .map(|line| setting.replace(line, "$1").into_owned() + "\n")
        .collect()
}

fn write_config(dir: &Path, text: &str) -> Result<PathBuf> {
    let path = dir.join("triggerfs.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `triggerfs broker` takes the `[broker]` section and routes every service it shows.
fn check_broker_section(
    text: &str,
    table: &toml::Table,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    let services: Vec<String> = table["broker"]
        .get("services")
        .and_then(toml::Value::as_table)
        .context("[broker] without services")?
        .keys()
        .cloned()
        .collect();
    ensure!(!services.is_empty(), "[broker] without services");
    let uncommented = uncomment_settings(text);
    let mut variants = vec![("as printed", text.to_string())];
    if uncommented != text {
        variants.push(("with its commented-out settings", uncommented));
    }
    for (what, text) in variants {
        let dir = tempfile::tempdir()?;
        let config = write_config(dir.path(), &text)?;
        let (broker, mut stdout) = Proc::spawn(
            "broker",
            &[
                "--config",
                config.to_str().unwrap(),
                "broker",
                "--listen",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--spin",
                "0s",
            ],
        )?;
        let (_, addr) = read_until_listening(&broker, &mut stdout)
            .with_context(|| format!("{what}:\n{text}"))?;
        runtime.block_on(async {
            let client = connect(addr.parse()?).await?;
            for service in &services {
                let outcome =
                    request(&client, service, "echo", "x", Duration::from_secs(5)).await?;
                // Roundrobin: refused, no worker online. Mirror and serial: every bound
                // worker is reported offline.
                let kind = outcome.error.as_ref().map(|e| e.kind);
                let all_offline = !outcome.workers.is_empty()
                    && outcome
                        .workers
                        .iter()
                        .all(|w| w.status == client::WorkerStatus::Offline);
                ensure!(
                    kind == Some(ErrorKind::NoWorkersOnline) || all_offline,
                    "{what}: service {service} is not configured as shown: {:?} {:?}",
                    outcome.error,
                    outcome.workers
                );
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// `triggerfs worker` takes `[main]` and `[workers]`: it connects to `[main] broker` as each
/// `[workers.<team>.<identity>]`.
fn check_worker_sections(text: &str, table: &toml::Table) -> Result<()> {
    let workers = table
        .get("workers")
        .and_then(toml::Value::as_table)
        .context("no [workers] section")?;
    let mut identities = Vec::new();
    for (team, members) in workers {
        for (identity, entry) in members.as_table().into_iter().flatten() {
            if entry.get("token").is_some() {
                identities.push((team.clone(), identity.clone()));
            }
        }
    }
    ensure!(
        !identities.is_empty(),
        "no [workers.<team>.<identity>] token"
    );
    // A broker from a file trusts every credential: it shows whom the worker connected as.
    let broker = Broker::start("", 1)?;
    let text = text.replace(
        &format!(":{README_BROKER_PORT}"),
        &format!(":{}", broker.addr.port()),
    );
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &text)?;
    let config = config.to_str().unwrap();
    let (_, first) = &identities[0];
    if let Some(path) = workers.get("pluginspath").and_then(toml::Value::as_str) {
        if !Path::new(path).exists() {
            let (status, out, err) = run_cli(
                &["--config", config, "worker", "--identity", first],
                Duration::from_secs(10),
            )?;
            ensure!(
                status != 0 && err.contains(path),
                "a worker without its [workers] pluginspath {path} started: {status}\n{out}\n{err}"
            );
        }
    }
    let plugins = Plugins::core()?;
    let mut running = Vec::new();
    for (team, identity) in &identities {
        let (worker, _stdout) = Proc::spawn(
            &format!("worker {identity}"),
            &[
                "--config",
                config,
                "worker",
                "--identity",
                identity,
                "--pluginspath",
                plugins.path().to_str().unwrap(),
            ],
        )?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let online = |log: &str| {
            plain(log).lines().any(|l| {
                l.contains("worker online")
                    && l.contains(&format!("identity={identity}"))
                    && l.contains(&format!("team={team}"))
            })
        };
        while !online(&broker.proc.stderr()) {
            ensure!(
                std::time::Instant::now() < deadline,
                "worker {team}/{identity} did not connect to the [main] broker.\nworker:\n{}\nbroker:\n{}",
                plain(&worker.stderr()),
                plain(&broker.proc.stderr())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        running.push(worker);
    }
    Ok(())
}

#[test]
fn readme_toml_blocks_are_accepted_by_the_binary() -> Result<()> {
    let readme = readme()?;
    let blocks: Vec<Block> = fenced_blocks(&readme)
        .into_iter()
        .filter(|b| b.lang == "toml")
        .collect();
    ensure!(!blocks.is_empty(), "README.md has no ```toml block");
    let runtime = tokio::runtime::Runtime::new()?;
    for block in &blocks {
        let at = format!("README.md:{}", block.first_line);
        let text = block.lines.join("\n") + "\n";
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{at}: not TOML"))?;
        let mut checked = false;
        if table.contains_key("broker") {
            check_broker_section(&text, &table, &runtime).context(at.clone())?;
            checked = true;
        }
        if table.contains_key("workers") || table.contains_key("main") {
            check_worker_sections(&text, &table).context(at.clone())?;
            checked = true;
        }
        ensure!(
            checked,
            "{at}: no check for the sections of this block: add one"
        );
    }
    Ok(())
}

#[test]
fn readme_output_lines_match_loosely_only_where_they_vary() -> Result<()> {
    let shown = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    let client = shown(&[
        "2026/11/25 10:14:06 Sending message to service demo (roundrobin)",
        "[command@local]  10:14:07 up  8:26,  7 users,  load average: 0.61, 0.60, 0.52",
        "",
        "Exit code: 0",
        "...",
        "Time ran: 4.914622ms",
    ]);
    let printed = "2027/01/02 03:04:05 Sending message to service demo (roundrobin)\n\
                   [command@local]  03:04:05 up 3 days, 1 user,  load average: 1.00, 2.00, 3.00\n\
                   \n\
                   Exit code: 0\n\
                   Total messages: 1\n\
                   Time ran: 1.2s\n";
    check_output(&client, printed)?;
    // The deterministic parts are literal.
    for wrong in [
        printed.replace("Exit code: 0", "Exit code: 1"),
        printed.replace("service demo", "service dc1"),
        printed.replace("[command@local]", "[command@web01]"),
        printed.replace("\n\nExit", "\nExit"),
        printed.replace("Time ran: 1.2s\n", "Time ran: 1.2s\nmore\n"),
    ] {
        ensure!(check_output(&client, &wrong).is_err(), "matched:\n{wrong}");
    }
    // Continuations, comments and what bash needs to complete a command.
    let block = Block {
        lang: "sh".into(),
        first_line: 1,
        lines: shown(&[
            "# a comment",
            "A=$(echo a \\",
            "  b)",
            "for x in 1 2; do",
            "  echo $x",
            "done   # trailing",
        ]),
    };
    let texts: Vec<String> = steps(&block)?.into_iter().map(|s| s.text).collect();
    assert_eq!(
        texts,
        [
            "A=$(echo a \\\n  b)",
            "for x in 1 2; do\n  echo $x\ndone   # trailing"
        ]
    );
    let block = Block {
        lang: "sh".into(),
        first_line: 1,
        lines: shown(&["# before", "$ a \\", "    b", "out", "", "$ c", ""]),
    };
    let steps = steps(&block)?;
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].text, "a \\\n    b");
    assert_eq!(steps[0].expected, Some(vec!["out".to_string()]));
    assert_eq!(steps[1].expected, None);
    Ok(())
}

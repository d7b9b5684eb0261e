//! `triggerfs client`: send one request, show its output live, exit with its result.
//!
//! [`ClientArgs`] is the flag set (each flag also a `TRIGGERFS_*` variable); [`run`] is what
//! `main` calls. [`run_with`] takes the console, stdin and the interrupt signal as
//! arguments so that tests can drive it without a terminal or a real Ctrl-C. The `client`
//! library does the talking; this module and [`render`] are the command's own (argument
//! parsing, terminal output), kept out of the library so that it needs neither clap nor
//! indicatif.
//!
//! Exit status: 0 every worker exited 0 (at least one ran, or `--no-wait` was queued, or
//! `--quorum` was met); 1 a worker failed, exited non-zero, was lost, cancelled or skipped;
//! 2 a request-level error or bad arguments; 3 a worker timed out, was offline or gave no
//! response, or the broker could not be reached or the connection dropped; 4 the run was
//! stopped by `--max-failures`; 130 interrupted.

#[cfg(test)]
mod fake_broker_tests;
pub mod render;

use client::{BrokerList, Client, ClientError, Outcome, RequestSpec};
use launch::settings::LoginArgs;
use proto::{Credential, ErrorKind, Fleet, Share};
use render::{Console, LiveRender};
use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long to wait, after Ctrl-C and `Cancel`, for the request to end before leaving.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Output `--json` keeps (see [`Outcome::keep_output`]): the latest lines within this.
pub const JSON_OUTPUT_KEPT: usize = 16 * 1024 * 1024;

/// Exit status after an interrupt (128 + SIGINT), as shells expect.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Flags of `triggerfs client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Broker address, `host:port` or `tcp://host:port` (else `[main] broker` of
    /// triggerfs.toml); several, comma-separated, to fail over between a cell's nodes.
    #[arg(long, env = "TRIGGERFS_BROKER", default_value = "127.0.0.1:5555")]
    pub broker: BrokerList,
    /// JWT from the control plane, instead of logging in.
    #[arg(
        long,
        env = "TRIGGERFS_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    pub token: String,
    #[command(flatten)]
    pub login: LoginArgs,
    /// Service to send to: `service`, a worker identity, or `team/service`.
    #[arg(
        long,
        env = "TRIGGERFS_SERVICE",
        required_unless_present = "rerun",
        default_value = ""
    )]
    pub service: String,
    /// Plugin to run, e.g. `command/command`.
    #[arg(
        long,
        env = "TRIGGERFS_PLUGIN",
        required_unless_present = "rerun",
        default_value = ""
    )]
    pub plugin: String,
    /// Run the recorded job ID again (its service, plugin, command and arguments), on the
    /// workers `--only` picks (see `triggerfs jobs list`).
    #[arg(long, value_name = "ID")]
    pub rerun: Option<i64>,
    /// With --rerun: `failed` (every worker that did not exit 0) or `all`.
    #[arg(
        long = "only",
        value_enum,
        requires = "rerun",
        default_value = "failed"
    )]
    pub rerun_only: crate::jobs_cmd::Only,
    /// How long the request may run (e.g. `10s`, `1h`); default: the service's timeout.
    #[arg(long, env = "TRIGGERFS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The command text; when absent, all of stdin (one trailing newline trimmed).
    #[arg(long, env = "TRIGGERFS_COMMAND", allow_hyphen_values = true)]
    pub command: Option<String>,
    /// The command as the words a recorded job had (`--rerun`), kept apart so that a job
    /// sent as several words (through the gateway) runs again as those words.
    #[arg(skip)]
    pub command_words: Option<Vec<String>>,
    /// A plugin argument `key=value`; repeat for more.
    #[arg(long = "args", env = "TRIGGERFS_ARGS", value_name = "KEY=VALUE", allow_hyphen_values = true, value_parser = parse_key_value)]
    pub args: Vec<(String, String)>,
    /// File whose bytes are the request's payload.
    #[arg(long, env = "TRIGGERFS_PAYLOAD_FILE")]
    pub payload_file: Option<PathBuf>,
    /// Print one JSON document at the end instead of live lines. It keeps the latest 16 MiB
    /// of output lines; a worker's `output_dropped` counts the older lines left out.
    #[arg(long, env = "TRIGGERFS_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// The seed's `-debug true`: also log the client library's debug lines on stderr.
    #[arg(long, env = "TRIGGERFS_DEBUG", num_args = 0..=1, default_missing_value = "true",
          default_value = "false", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub debug: bool,
    /// Fire and forget: return once the broker has queued the request.
    #[arg(long, env = "TRIGGERFS_NO_WAIT", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_wait: bool,
    /// Mirror: workers at once, `N` or `P%` of the request's workers (overrides the
    /// service's batch).
    #[arg(long, env = "TRIGGERFS_BATCH", value_name = "N|P%")]
    pub batch: Option<Share>,
    /// Mirror, serial: start no new worker once more than `N` (or `P%`) failed; the rest
    /// are reported `skipped` and the exit status is 4.
    #[arg(long, env = "TRIGGERFS_MAX_FAILURES", value_name = "N|P%")]
    pub max_failures: Option<Share>,
    /// Mirror, serial: the request succeeds (and returns) once K workers exited 0; the
    /// others run on unless --quorum-cancel.
    #[arg(long, env = "TRIGGERFS_QUORUM", value_name = "K",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub quorum: Option<u32>,
    /// With --quorum: cancel the workers still running when the quorum is reached.
    #[arg(long, env = "TRIGGERFS_QUORUM_CANCEL", requires = "quorum",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub quorum_cancel: bool,
    /// Mirror, serial: the request ends this long after it started (e.g. `10m`), with what
    /// it has: late workers `timed out`, unreachable ones `no response`. --timeout then
    /// bounds each worker's run.
    #[arg(long, env = "TRIGGERFS_DEADLINE", value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Run only on these workers of the service (comma-separated identities).
    #[arg(
        long,
        env = "TRIGGERFS_ONLY_WORKERS",
        value_name = "W1,W2",
        value_delimiter = ','
    )]
    pub only_workers: Vec<String>,
}

impl ClientArgs {
    /// The per-request fan-out options the flags give.
    pub fn fleet(&self) -> Fleet {
        Fleet {
            batch: self.batch,
            max_failures: self.max_failures,
            quorum: self.quorum.unwrap_or(0),
            quorum_cancel: self.quorum_cancel,
            deadline_ms: self
                .deadline
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
                .unwrap_or(0),
            only: self
                .only_workers
                .iter()
                .map(|w| w.trim().to_string())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }
}

/// Parses `key=value`; the key must be non-empty, the value may contain `=`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        Some(_) => Err(format!("`{s}` has an empty key (expected KEY=VALUE)")),
        None => Err(format!("`{s}` has no `=` (expected KEY=VALUE)")),
    }
}

/// `triggerfs client`, on a runtime of its own: the request (or `--rerun`'s); an error is
/// printed here, and the exit status returned.
pub fn main(args: ClientArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(id) = args.rerun {
        let only = args.rerun_only;
        return rt.block_on(crate::jobs_cmd::run_rerun(args, id, only));
    }
    Ok(exit_status(rt.block_on(run(args))))
}

/// The exit status of a run; an error is printed first.
pub fn exit_status(result: Result<i32, ClientError>) -> i32 {
    result.unwrap_or_else(|e| {
        eprintln!("Error: {e}");
        e.exit_status()
    })
}

/// Runs the command on the process's stdio; Ctrl-C cancels the request.
pub async fn run(args: ClientArgs) -> Result<i32, ClientError> {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handler: never interrupt rather than interrupt at once.
            std::future::pending::<()>().await;
        }
    };
    run_with(args, std::io::stdin(), Console::stdio(), interrupt).await
}

/// Runs the command with the given stdin, console and interrupt signal.
///
/// Returns the exit status; `Err` only for failures before the request is sent (bad
/// arguments, unreadable input, unreachable broker, refused handshake) and for failing to
/// write output. [`ClientError::exit_status`] says what such an error exits with.
pub async fn run_with<O: Write, E: Write>(
    args: ClientArgs,
    stdin: impl Read,
    mut console: Console<O, E>,
    interrupt: impl Future<Output = ()>,
) -> Result<i32, ClientError> {
    let spec = request_spec(&args, stdin)?;
    let token = credential_token(&args).await?;
    let anonymous = token.is_empty();
    let client = Client::connect(&args.broker, Credential::Jwt { token })
        .await
        .map_err(|e| {
            if anonymous {
                without_credentials(&args, e)
            } else {
                e
            }
        })?;

    let started = Instant::now();
    let mut handle = client.request(spec).await?;
    // The live text needs no line at the end; `--json` keeps a bounded tail.
    let keep = if args.json { JSON_OUTPUT_KEPT } else { 0 };
    let mut outcome = Outcome::new(&args.service, &args.plugin).keep_output(keep);
    let mut live = LiveRender::new(&args.service, &args.plugin, args.json);

    tokio::pin!(interrupt);
    let mut interrupted = false;
    // Output held under a progress bar goes out on this beat when no event comes.
    let mut beat = tokio::time::interval(Duration::from_secs(1) / u32::from(render::BAR_HZ));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = handle.next() => {
                let Some(event) = event else { break };
                outcome.record(&event);
                live.event(&mut console, &event).map_err(ClientError::Output)?;
            }
            _ = beat.tick() => live.tick(&mut console).map_err(ClientError::Output)?,
            () = &mut interrupt, if !interrupted => {
                interrupted = true;
                tracing::debug!(id = handle.id(), "interrupted; cancelling the request");
                // If the connection is gone the request is over anyway.
                let _ = handle.cancel().await;
                break;
            }
        }
    }
    if interrupted {
        // Keep showing what arrives while the broker winds the request down.
        let deadline = tokio::time::Instant::now() + CANCEL_GRACE;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, handle.next()).await {
            outcome.record(&event);
            live.event(&mut console, &event)
                .map_err(ClientError::Output)?;
        }
    }
    outcome.finish(started.elapsed());
    live.finish(&mut console, &outcome)
        .map_err(ClientError::Output)?;
    Ok(if interrupted {
        EXIT_INTERRUPTED
    } else {
        outcome.exit_status()
    })
}

/// The JWT to present: `--token` as given, else a fresh login with team, identity and
/// secret, else none (a broker without a control plane accepts any).
pub async fn credential_token(args: &ClientArgs) -> Result<String, ClientError> {
    if !args.token.is_empty() {
        return Ok(args.token.clone());
    }
    let login = &args.login;
    match (&login.team, &login.identity, &login.secret) {
        (Some(team), Some(identity), Some(secret)) => {
            client::login::login(&login.url, team, identity, secret).await
        }
        _ => Ok(String::new()),
    }
}

/// A refusal of a connection made without credentials ([`credential_token`] found none) as
/// [`ClientError::NoCredentials`], which says how to give them; other errors as they are.
pub fn without_credentials(args: &ClientArgs, e: ClientError) -> ClientError {
    match e {
        ClientError::Refused { kind, reason }
            if matches!(kind, ErrorKind::Unauthorized | ErrorKind::Forbidden) =>
        {
            let missing: Vec<&str> = [
                ("--team", args.login.team.is_none()),
                ("--identity", args.login.identity.is_none()),
                ("--secret", args.login.secret.is_none()),
            ]
            .into_iter()
            .filter_map(|(flag, absent)| absent.then_some(flag))
            .collect();
            let missing = if missing.len() == 3 {
                String::new()
            } else {
                format!(" ({} missing)", missing.join(", "))
            };
            ClientError::NoCredentials {
                broker: args.broker.to_string(),
                missing,
                kind,
                reason,
            }
        }
        other => other,
    }
}

/// The request the flags describe; reads stdin when `--command` is absent.
pub fn request_spec(args: &ClientArgs, mut stdin: impl Read) -> Result<RequestSpec, ClientError> {
    // The whole text is one word: the `command` plugin hands it to `sh -c`, and splitting
    // here would lose the user's quoting. A re-run job keeps the words it was sent as.
    let one_word = |text: String| match text.is_empty() {
        true => Vec::new(),
        false => vec![text],
    };
    let command = match (&args.command, &args.command_words) {
        (Some(text), _) => one_word(text.clone()),
        (None, Some(words)) => words.clone(),
        (None, None) => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(|source| ClientError::Read {
                    what: "the command from stdin".to_string(),
                    source,
                })?;
            one_word(trim_one_newline(text))
        }
    };
    let payload = match &args.payload_file {
        Some(path) => std::fs::read(path).map_err(|source| ClientError::Read {
            what: format!("payload file {}", path.display()),
            source,
        })?,
        None => Vec::new(),
    };
    Ok(RequestSpec {
        service: args.service.clone(),
        plugin: args.plugin.clone(),
        command,
        args: args.args.clone(),
        payload,
        timeout: args.timeout,
        wait: !args.no_wait,
        key: None,
        fleet: args.fleet(),
        tag: None,
        trigger: None,
    })
}

fn trim_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }

    /// `argv` as the flags after `triggerfs client`.
    pub(super) fn parse(argv: &[&str]) -> Result<ClientArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("client").chain(argv.iter().copied())).map(|c| c.client)
    }

    #[test]
    fn key_value_arguments() {
        let check = |s: &str, want: Result<(&str, &str), ()>| {
            let got = parse_key_value(s);
            match want {
                Ok((k, v)) => assert_eq!(got, Ok((k.to_string(), v.to_string())), "{s}"),
                Err(()) => assert!(got.is_err(), "{s} should be refused, got {got:?}"),
            }
        };
        check("k=v", Ok(("k", "v")));
        check("k=", Ok(("k", "")));
        check("url=http://x/?a=b", Ok(("url", "http://x/?a=b")));
        check("kv", Err(()));
        check("=v", Err(()));
    }

    #[test]
    fn flags_parse_into_a_request() {
        let args = parse(&[
            "--service",
            "demo",
            "--plugin",
            "command/command",
            "--timeout",
            "1m 30s",
            "--command",
            "apt-get update && apt-get upgrade",
            "--args",
            "a=1",
            "--args",
            "b=x=y",
            "--no-wait",
        ])
        .unwrap();
        let spec = request_spec(&args, std::io::empty()).unwrap();
        assert_eq!(
            spec,
            RequestSpec {
                service: "demo".into(),
                plugin: "command/command".into(),
                command: vec!["apt-get update && apt-get upgrade".into()],
                args: vec![("a".into(), "1".into()), ("b".into(), "x=y".into())],
                payload: Vec::new(),
                timeout: Some(Duration::from_secs(90)),
                wait: false,
                key: None,
                fleet: Fleet::default(),
                tag: None,
                trigger: None,
            }
        );
        assert_eq!(spec.timeout_ms(), 90_000);
        assert!(!args.json);
    }

    #[test]
    fn fleet_flags_parse() {
        let args = parse(&[
            "--service",
            "s",
            "--plugin",
            "p",
            "--batch",
            "10%",
            "--max-failures",
            "5",
            "--quorum",
            "3",
            "--quorum-cancel",
            "--deadline",
            "10m",
            "--only-workers",
            "w1,w2",
        ])
        .unwrap();
        assert_eq!(
            args.fleet(),
            Fleet {
                batch: Some(Share::Percent(10)),
                max_failures: Some(Share::Count(5)),
                quorum: 3,
                quorum_cancel: true,
                deadline_ms: 600_000,
                only: vec!["w1".into(), "w2".into()],
            }
        );
        let base = ["--service", "s", "--plugin", "p"];
        for bad in [
            &["--batch", "ten"][..],
            &["--batch", "101%"],
            &["--quorum", "0"],
            &["--quorum-cancel"],
            &["--deadline", "soon"],
        ] {
            let argv: Vec<&str> = base.iter().chain(bad).copied().collect();
            assert!(parse(&argv).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bad_flags_are_refused() {
        let err = parse(&["--service", "s", "--plugin", "p", "--args", "nokey"]).unwrap_err();
        assert!(err.to_string().contains("nokey"), "{err}");
        assert!(parse(&["--service", "s", "--plugin", "p", "--timeout", "soon"]).is_err());
        assert!(parse(&["--plugin", "p"]).is_err(), "--service is required");
    }

    #[test]
    fn command_comes_from_stdin_without_its_last_newline() {
        let args = parse(&["--service", "s", "--plugin", "p"]).unwrap();
        let check = |stdin: &str, want: &[&str]| {
            let spec = request_spec(&args, stdin.as_bytes()).unwrap();
            assert_eq!(spec.command, want, "{stdin:?}");
            assert_eq!(spec.timeout_ms(), 0);
            assert!(spec.wait);
        };
        check("uptime\n", &["uptime"]);
        check("uptime\r\n", &["uptime"]);
        check("a\nb\n\n", &["a\nb\n"]);
        check("", &[]);
    }

    #[test]
    fn payload_file_is_read_and_a_missing_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("triggerfs-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("payload.bin");
        std::fs::write(&path, b"\x00bytes\xff").unwrap();
        let mut args = parse(&["--service", "s", "--plugin", "p", "--command", "c"]).unwrap();
        args.payload_file = Some(path.clone());
        assert_eq!(
            request_spec(&args, std::io::empty()).unwrap().payload,
            b"\x00bytes\xff"
        );
        args.payload_file = Some(dir.join("missing"));
        let err = request_spec(&args, std::io::empty()).unwrap_err();
        assert_eq!(err.exit_status(), 2, "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The seed's program names and single-dash flags (`launch::seed`), against the real
//! command line of the binary.

use super::*;
use clap::{CommandFactory, Parser};
use launch::seed::seed_args;
use std::ffi::OsString;

fn seed(args: &[&str]) -> Vec<String> {
    seed_args(&Cli::command(), args.iter().map(OsString::from).collect())
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
}

#[test]
fn seed_names_run_their_subcommand_with_single_dash_flags() {
    assert_eq!(
        seed(&[
            "/usr/local/bin/triggerfs-client",
            "-service",
            "demoservice",
            "-plugin",
            "command/command",
            "-timeout",
            "10s",
            "-command",
            "uptime",
            "-args",
            "k=v",
        ]),
        [
            "/usr/local/bin/triggerfs-client",
            "client",
            "--service",
            "demoservice",
            "--plugin",
            "command/command",
            "--timeout",
            "10s",
            "--command",
            "uptime",
            "--args",
            "k=v",
        ]
    );
    assert_eq!(
        seed(&[
            "./triggerfs-worker",
            "-identity",
            "demo01",
            "-debug",
            "true"
        ]),
        [
            "./triggerfs-worker",
            "worker",
            "--identity",
            "demo01",
            "--debug",
            "true"
        ]
    );
    assert_eq!(
        seed(&[
            "triggerfs-worker",
            "-config",
            "t.toml",
            "-broker=b:1",
            "-pluginspath",
            "p"
        ]),
        [
            "triggerfs-worker",
            "worker",
            "--config",
            "t.toml",
            "--broker=b:1",
            "--pluginspath",
            "p"
        ]
    );
    // The subcommand spelled out works the same; so does a global flag before it.
    assert_eq!(
        seed(&["triggerfs", "-config", "t.toml", "client", "-service", "s"]),
        [
            "triggerfs",
            "--config",
            "t.toml",
            "client",
            "--service",
            "s"
        ]
    );
    // Other names are not seed names.
    assert_eq!(
        seed(&["triggerfs-clientx", "-service"]),
        ["triggerfs-clientx", "-service"]
    );
}

#[test]
fn values_and_unknown_words_are_left_alone() {
    // A value that starts with `-`, even one that spells a flag, stays.
    assert_eq!(
        seed(&[
            "triggerfs-client",
            "-command",
            "-x",
            "-args",
            "-service",
            "-plugin",
            "p"
        ]),
        [
            "triggerfs-client",
            "client",
            "--command",
            "-x",
            "--args",
            "-service",
            "--plugin",
            "p"
        ]
    );
    // Short flags, negative numbers and unknown words are for clap to take or refuse.
    assert_eq!(
        seed(&["triggerfs-client", "-h", "-5", "-nosuch", "x", "-s"]),
        [
            "triggerfs-client",
            "client",
            "-h",
            "-5",
            "-nosuch",
            "x",
            "-s"
        ]
    );
    // `-debug` takes an optional value: a following flag is not its value.
    assert_eq!(
        seed(&["triggerfs-worker", "-debug", "-identity", "w"]),
        ["triggerfs-worker", "worker", "--debug", "--identity", "w"]
    );
    // After `--` nothing is rewritten; nor under other subcommands.
    assert_eq!(
        seed(&["triggerfs-client", "--", "-service"]),
        ["triggerfs-client", "client", "--", "-service"]
    );
    assert_eq!(
        seed(&["triggerfs", "broker", "-listen", "x"]),
        ["triggerfs", "broker", "-listen", "x"]
    );
}

#[test]
fn the_rewritten_seed_lines_parse() {
    let cli = Cli::try_parse_from(seed(&[
        "triggerfs-client",
        "-service",
        "demoservice",
        "-plugin",
        "command/command",
        "-timeout",
        "10s",
        "-command",
        "-x",
    ]))
    .unwrap();
    match cli.command {
        Command::Client(args) => {
            assert_eq!(args.service, "demoservice");
            assert_eq!(args.command.as_deref(), Some("-x"));
        }
        other => panic!("{other:?}"),
    }
    let cli = Cli::try_parse_from(seed(&[
        "triggerfs-worker",
        "-identity",
        "demo01",
        "-debug",
        "true",
    ]))
    .unwrap();
    match cli.command {
        Command::Worker(args) => assert!(args.debug),
        other => panic!("{other:?}"),
    }
    let refused = Cli::try_parse_from(seed(&["triggerfs-client", "-nosuch", "x"]));
    assert!(refused.is_err());
}

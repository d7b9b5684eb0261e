//! triggerfs.toml under the binary's real command line ([`Settings::under_flags`]): which
//! flag each key stands for, and that a flag wins over it.

use super::*;

/// Every key the flags take, each set.
const FULL: &str = r#"
[main]
broker = "file-broker:1"
url = "http://file-url"
ca = "/etc/file-ca.pem"
team = "file-team"
identity = "file-identity"
secret = "file-secret"
[workers]
pluginspath = "/file/plugins"
shell = "bash"
[triggerfs]
mountpoint = "/file/mount"
logfile = "/file/log"
spool = "/file/spool"
spool_max = "1GB"
spool_sync = "250ms"
"#;

fn parse_with(text: &str, argv: &[&str]) -> Cli {
    let settings = Settings::parse(text).unwrap();
    let matches = settings
        .under_flags(Cli::command())
        .try_get_matches_from(std::iter::once("triggerfs").chain(argv.iter().copied()))
        .unwrap();
    Cli::from_arg_matches(&matches).unwrap()
}

#[test]
fn the_file_fills_the_flags_that_stand_for_its_keys() {
    let cli = parse_with(FULL, &["fs"]);
    assert_eq!(cli.ca, Some(PathBuf::from("/etc/file-ca.pem")));
    let Command::Fs(fs) = cli.command else {
        panic!("not fs")
    };
    assert_eq!(fs.mount, Some(PathBuf::from("/file/mount")));
    assert_eq!(fs.broker.to_string(), "file-broker:1");
    assert_eq!(fs.login.url, "http://file-url");
    assert_eq!(fs.login.team.as_deref(), Some("file-team"));
    assert_eq!(fs.login.identity.as_deref(), Some("file-identity"));
    assert_eq!(fs.login.secret.as_deref(), Some("file-secret"));
    assert_eq!(fs.logfile, Some(PathBuf::from("/file/log")));
    assert_eq!(fs.spool, PathBuf::from("/file/spool"));
    assert_eq!(
        fs.spool_max.as_u64(),
        1_000_000_000,
        "no rounding on the way"
    );
    assert_eq!(fs.spool_sync, std::time::Duration::from_millis(250));

    let Command::Worker(w) = parse_with(FULL, &["worker", "--identity", "w1"]).command else {
        panic!("not worker")
    };
    assert_eq!(w.broker.addrs(), ["file-broker:1"]);
    assert_eq!(w.pluginspath, Some(PathBuf::from("/file/plugins")));
    assert_eq!(w.shell, "bash");
    // A worker's team is its `[workers.<team>.<identity>]`'s first (Settings::worker_login).
    assert_eq!(w.team, None);

    let Command::Jobs(jobs) = parse_with(FULL, &["jobs", "list"]).command else {
        panic!("not jobs")
    };
    assert_eq!(jobs.auth.login.team.as_deref(), Some("file-team"));
    let Command::Cli(console) = parse_with(FULL, &["cli"]).command else {
        panic!("not cli")
    };
    assert_eq!(console.broker.to_string(), "file-broker:1");
    assert_eq!(console.login.url, "http://file-url");
}

#[test]
fn flags_win_over_the_file_and_other_commands_ignore_it() {
    let argv = [
        "client",
        "--service",
        "s",
        "--plugin",
        "p",
        "--broker",
        "127.0.0.1:5555",
        "--team",
        "flag-team",
    ];
    let Command::Client(client) = parse_with(FULL, &argv).command else {
        panic!("not client")
    };
    // Even a flag that spells the built-in default.
    assert_eq!(client.broker.to_string(), "127.0.0.1:5555");
    assert_eq!(client.login.team.as_deref(), Some("flag-team"));
    assert_eq!(client.login.secret.as_deref(), Some("file-secret"));
    // `jobs --team T list` and `jobs list --team T` alike.
    for argv in [
        ["jobs", "--url", "http://flag", "list"],
        ["jobs", "list", "--url", "http://flag"],
    ] {
        let Command::Jobs(jobs) = parse_with(FULL, &argv).command else {
            panic!("not jobs")
        };
        assert_eq!(jobs.auth.login.url, "http://flag");
    }
    // `control --broker` is where its gateway sends, not `[main] broker`.
    let Command::Control(control) = parse_with(FULL, &["control"]).command else {
        panic!("not control")
    };
    assert_eq!(control.broker.to_string(), "127.0.0.1:5555");
}

/// `[main] broker` as a TOML list is the same setting as a comma-separated flag.
#[test]
fn a_list_of_brokers_in_the_file_is_the_flags_list() {
    let text = "[main]\nbroker = [\"a:1\", \"tls://b:2\"]\n";
    let Command::Client(client) =
        parse_with(text, &["client", "--service", "s", "--plugin", "p"]).command
    else {
        panic!("not client")
    };
    assert_eq!(client.broker.addrs(), ["a:1", "tls://b:2"]);
    let Command::Cli(console) = parse_with(text, &["cli"]).command else {
        panic!("not cli")
    };
    assert_eq!(console.broker, client.broker);
    let flag = [
        "client",
        "--service",
        "s",
        "--plugin",
        "p",
        "--broker",
        "c:3,d:4",
    ];
    let Command::Client(client) = parse_with(text, &flag).command else {
        panic!("not client")
    };
    assert_eq!(client.broker.addrs(), ["c:3", "d:4"]);
    assert!(Settings::parse("[main]\nbroker = []\n").is_err());
}

#[test]
fn without_a_file_the_built_in_defaults_hold() {
    let Command::Fs(fs) = parse_with("", &["fs"]).command else {
        panic!("not fs")
    };
    assert_eq!(fs.mount, None);
    assert_eq!(fs.broker.to_string(), "127.0.0.1:5555");
    assert_eq!(fs.login.url, "http://127.0.0.1:8080");
    assert_eq!(fs.login.team, None);
    assert_eq!(fs.spool, PathBuf::from("triggerfs-spool"));
    assert_eq!(fs.spool_max.as_u64(), 1 << 30);
    assert_eq!(fs.spool_sync, std::time::Duration::from_millis(100));
}

#[test]
fn help_never_shows_the_files_secret() {
    let settings = Settings::parse(FULL).unwrap();
    let mut command = settings.under_flags(Cli::command());
    for name in ["client", "jobs", "cli", "fs"] {
        let help = command
            .find_subcommand_mut(name)
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("file-team"), "{name}: {help}");
        assert!(!help.contains("file-secret"), "{name}: {help}");
    }
}

#[test]
fn the_subcommands_keep_their_order() {
    let names = |command: &clap::Command| -> Vec<String> {
        command
            .get_subcommands()
            .map(|sub| sub.get_name().to_string())
            .collect()
    };
    let settings = Settings::parse(FULL).unwrap();
    assert_eq!(
        names(&settings.under_flags(Cli::command())),
        names(&Cli::command())
    );
}

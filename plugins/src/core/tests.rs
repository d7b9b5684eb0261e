use super::*;
use std::path::Path;

/// A temporary directory removed on drop (`tempfile`), with the name tests use.
pub(crate) struct TempDir(tempfile::TempDir);

impl TempDir {
    pub(crate) fn new(label: &str) -> Self {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("triggerfs-{label}-"))
                .tempdir()
                .expect("temp dir"),
        )
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}

fn request(command: &[&str], payload: &[u8], args: &[(&str, &str)]) -> PluginRequest {
    let mut req = PluginRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    req.set_payload(payload);
    req
}

/// Serves `req` with `plugin` and returns (exit code, stdout, stderr).
fn check(plugin: CorePlugin, req: &PluginRequest) -> (i32, String, String) {
    let mut out = Vec::new();
    let (code, err) = match serve(plugin, req, &mut out) {
        Ok(code) => (code, String::new()),
        Err(e) => (e.exit_code(), format!("{e}\n")),
    };
    (code, String::from_utf8(out).unwrap(), err)
}

/// The exit code of `command` on `req` (its output goes to the test's own stdout).
fn command(req: &PluginRequest) -> i32 {
    check(CorePlugin::Command, req).0
}

#[test]
fn argv0_names_core_plugins() {
    let cases: &[(&str, Option<&str>)] = &[
        ("echo", Some("echo")),
        ("/srv/plugins/command/command", Some("command")),
        ("./file", Some("file")),
        ("append", Some("append")),
        ("triggerfs", None),
        ("/usr/bin/triggerfs", None),
        ("echo2", None),
        ("", None),
    ];
    for (argv0, want) in cases {
        let found = core_plugin_for_argv0(argv0).map(CorePlugin::name);
        assert_eq!(found, *want, "{argv0:?}");
    }
}

#[test]
fn echo_prints_payload_else_command_line() {
    assert_eq!(
        check(CorePlugin::Echo, &request(&["a", "b"], b"", &[])),
        (0, "a b\n".into(), "".into())
    );
    assert_eq!(
        check(CorePlugin::Echo, &request(&["a"], b"hello", &[])),
        (0, "hello\n".into(), "".into())
    );
    assert_eq!(
        check(CorePlugin::Echo, &request(&[], b"two\nlines\n", &[])),
        (0, "two\nlines\n".into(), "".into())
    );
    let mut bad = request(&[], b"", &[]);
    bad.payload_base64 = Some("!!".into());
    assert_eq!(check(CorePlugin::Echo, &bad).0, EXIT_USAGE);
}

#[test]
fn file_writes_and_replaces() {
    let tmp = TempDir::new("file");
    let path = tmp.path().join("out.txt");
    let path_str = path.to_str().unwrap();
    let (code, out, _) = check(
        CorePlugin::File,
        &request(&[], b"first", &[("path", path_str)]),
    );
    assert_eq!((code, out.as_str()), (0, "file has been written.\n"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");

    // The seed's argument name, and the command line when the payload is empty.
    let (code, _, _) = check(
        CorePlugin::File,
        &request(&["from", "command"], b"", &[("filepath", path_str)]),
    );
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "from command\n");

    let (code, out, err) = check(CorePlugin::File, &request(&[], b"x", &[]));
    assert_eq!(code, EXIT_USAGE);
    assert_eq!(out, "");
    assert!(err.contains("missing argument `path`"), "{err}");

    let missing_dir = tmp.path().join("no/such/dir").display().to_string();
    assert_eq!(
        check(
            CorePlugin::File,
            &request(&[], b"x", &[("path", &missing_dir)])
        )
        .0,
        EXIT_FAILURE
    );
}

#[test]
fn append_adds_lines_silently() {
    let tmp = TempDir::new("append");
    let path = tmp.path().join("log");
    let path_str = path.to_str().unwrap();
    for payload in [&b"one"[..], b"two\n", &[0xff, b'z']] {
        assert_eq!(
            check(
                CorePlugin::Append,
                &request(&[], payload, &[("path", path_str)])
            ),
            (0, "".into(), "".into())
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n\xffz\n");
    assert_eq!(
        check(CorePlugin::Append, &request(&[], b"x", &[])).0,
        EXIT_USAGE
    );
}

#[test]
fn append_is_safe_with_concurrent_appenders() {
    let tmp = TempDir::new("append-concurrent");
    let path = tmp.path().join("log");
    let n_threads = 8;
    let n_lines = 200;
    let line = "x".repeat(1000);
    std::thread::scope(|scope| {
        for thread_idx in 0..n_threads {
            let path = path.to_str().unwrap();
            let line = &line;
            scope.spawn(move || {
                for line_idx in 0..n_lines {
                    let payload = format!("{thread_idx}:{line_idx}:{line}");
                    let req = request(&[], payload.as_bytes(), &[("path", path)]);
                    assert_eq!(check(CorePlugin::Append, &req).0, 0);
                }
            });
        }
    });
    let content = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = content.lines().collect();
    assert_eq!(lines.len(), n_threads * n_lines);
    for l in lines {
        let mut parts = l.splitn(3, ':');
        let (_, _, rest) = (parts.next(), parts.next(), parts.next().unwrap());
        assert_eq!(rest, line, "interleaved record");
    }
}

#[test]
fn command_exit_codes() {
    assert_eq!(command(&request(&["exit", "3"], b"", &[])), 3);
    assert_eq!(command(&request(&["true"], b"", &[])), 0);
    // The payload is the script when there are no command words.
    assert_eq!(command(&request(&[], b"exit 5", &[])), 5);
    // Killed by a signal: 128 + N.
    assert_eq!(command(&request(&["kill", "-9", "$$"], b"", &[])), 137);
    // Nothing to run.
    assert_eq!(command(&request(&[], b"", &[])), EXIT_USAGE);
}

#[test]
fn command_feeds_payload_to_stdin() {
    let tmp = TempDir::new("command-stdin");
    let out = tmp.path().join("copy");
    let script = format!("cat > {}", out.display());
    assert_eq!(command(&request(&[&script], b"fed\n", &[])), 0);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "fed\n");
}

#[test]
fn the_rules_both_wrappers_share() {
    fn req<'a>(command: &'a [String], payload: &'a [u8]) -> CoreRequest<'a> {
        CoreRequest {
            command,
            payload,
            path: None,
        }
    }
    let words = &["a".to_string(), "b".to_string()];
    assert_eq!(req(words, b"").text(), &b"a b"[..]);
    assert_eq!(req(words, b"x\n").record(), b"x\n");
    assert_eq!(req(words, b"x").record(), b"x\n");
    let run = req(words, b"in").shell().unwrap();
    assert_eq!(
        (run.script.as_str(), run.stdin.as_slice()),
        ("a b", &b"in"[..])
    );
    let run = req(&[], b"exit 5").shell().unwrap();
    assert_eq!((run.script.as_str(), run.stdin.len()), ("exit 5", 0));
    let nothing = req(&[], b" \n").shell().unwrap_err();
    assert_eq!(
        (nothing.to_string().as_str(), nothing.exit_code()),
        (
            "command: nothing to run (no command words and no payload)",
            EXIT_USAGE
        )
    );
    let missing = req(words, b"").target(CorePlugin::Append).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "append: missing argument `path` (path=/some/file)"
    );
    // `path` first, then the seed's `filepath`; an empty value is no value.
    let args = [("path", ""), ("filepath", "/f")];
    let arg = |name: &str| args.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    assert_eq!(path_arg(arg), Some("/f"));
    assert_eq!(path_arg(|_| None), None);
    let names: Vec<&str> = CorePlugin::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, CORE_PLUGINS);
}

use super::*;
use std::io::{BufReader, Read};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn frames_have_the_documented_shape() {
    let mut request = PluginRequest {
        request_id: 7,
        service: "demo".into(),
        command: vec!["a".into()],
        ..Default::default()
    };
    request.set_payload(b"hi");
    let line = ToPlugin::Request { id: 3, request }.to_line();
    assert_eq!(line.last(), Some(&b'\n'));
    let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "type": "request", "id": 3, "request_id": 7, "service": "demo", "plugin": "",
            "worker": "", "command": ["a"], "args": {}, "payload": "hi",
            "payload_base64": null, "timeout_ms": 0
        })
    );
    assert_eq!(
        ToPlugin::Cancel { id: 3 }.to_line(),
        b"{\"type\":\"cancel\",\"id\":3}\n"
    );
    assert_eq!(ToPlugin::Shutdown.to_line(), b"{\"type\":\"shutdown\"}\n");
    assert_eq!(
        FromPlugin::output(1, OutStream::Stdout, b"x").to_line(),
        b"{\"type\":\"output\",\"id\":1,\"stream\":\"stdout\",\"data\":\"x\"}\n"
    );
    assert_eq!(
        FromPlugin::output(1, OutStream::Stderr, &[0xff, 0]).to_line(),
        b"{\"type\":\"output\",\"id\":1,\"stream\":\"stderr\",\"data_base64\":\"/wA=\"}\n"
    );
}

#[test]
fn parsing_plugin_frames() {
    let ok: &[(&str, FromPlugin)] = &[
        (
            r#"{"type":"done","id":4,"exit_code":-3}"#,
            FromPlugin::Done {
                id: 4,
                exit_code: -3,
            },
        ),
        // stream defaults to stdout; unknown fields are ignored.
        (
            r#"{"type":"output","id":1,"data":"é","extra":[1]}"#,
            FromPlugin::Output {
                id: 1,
                stream: OutStream::Stdout,
                data: Some("é".into()),
                data_base64: None,
            },
        ),
        (
            r#" {"id":2,"type":"output","stream":"stderr","data_base64":"AAE="} "#,
            FromPlugin::Output {
                id: 2,
                stream: OutStream::Stderr,
                data: None,
                data_base64: Some("AAE=".into()),
            },
        ),
    ];
    for (line, want) in ok {
        assert_eq!(&FromPlugin::parse(line.as_bytes()).unwrap(), want, "{line}");
    }
    let bad: &[&[u8]] = &[
        b"",
        b"hello",
        b"{}",
        b"[1,2]",
        b"{\"type\":\"done\",\"id\":1}",
        b"{\"type\":\"done\",\"id\":-1,\"exit_code\":0}",
        b"{\"type\":\"done\",\"id\":1,\"exit_code\":99999999999}",
        b"{\"type\":\"output\",\"id\":1,\"stream\":\"stdin\"}",
        b"{\"type\":\"request\",\"id\":1}",
        b"{\"type\":\"done\",\"id\":1,\"exit_code\":0} {}",
        b"\xff\xfe{",
        b"{\"type\":\"output\",\"id\":1,\"data\":\"a\"",
    ];
    for line in bad {
        assert!(
            matches!(FromPlugin::parse(line), Err(FrameError::Json(_))),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(output_bytes(None, None), Ok(vec![]));
    assert_eq!(output_bytes(Some("a".into()), None), Ok(b"a".to_vec()));
    assert_eq!(output_bytes(None, Some("/wA=".into())), Ok(vec![0xff, 0]));
    assert_eq!(
        output_bytes(Some("a".into()), Some("YQ==".into())),
        Err(FrameError::BothData)
    );
    assert_eq!(
        output_bytes(None, Some("not base64!".into())),
        Err(FrameError::Base64)
    );
}

#[test]
fn output_bytes_become_lines() {
    let cases: &[(&[u8], &[&[u8]])] = &[
        (b"", &[b""]),
        (b"\n", &[b""]),
        (b"a", &[b"a"]),
        (b"a\n", &[b"a"]),
        (b"a\nb", &[b"a", b"b"]),
        (b"a\n\nb\n", &[b"a", b"", b"b"]),
        (b"a\n\n", &[b"a", b""]),
    ];
    for (bytes, want) in cases {
        let got: Vec<&[u8]> = output_lines(bytes).collect();
        assert_eq!(&got, want, "{bytes:?}");
    }
}

/// The test's end of an SDK under test: frames to it, frames from it.
struct Driver {
    to: std::io::PipeWriter,
    from: BufReader<std::io::PipeReader>,
}

impl Driver {
    fn send(&mut self, frame: &ToPlugin) {
        self.send_raw(&frame.to_line());
    }

    fn send_raw(&mut self, line: &[u8]) {
        use std::io::Write as _;
        self.to.write_all(line).unwrap();
    }

    /// The next frame; `None` at end of output.
    fn next(&mut self) -> Option<FromPlugin> {
        let mut line = Vec::new();
        if self.from.read_until(b'\n', &mut line).unwrap() == 0 {
            return None;
        }
        Some(FromPlugin::parse(line.strip_suffix(b"\n").unwrap()).unwrap())
    }
}

fn text(id: u64, stream: OutStream, data: &str) -> FromPlugin {
    FromPlugin::output(id, stream, data.as_bytes())
}

fn request(id: u64, command: &[&str], payload: &[u8]) -> ToPlugin {
    let mut request = PluginRequest {
        request_id: 1000 + id,
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    request.set_payload(payload);
    ToPlugin::Request { id, request }
}

/// Requests run concurrently, each tagged with its id; a cancel is answered at once and
/// silences the request; a panic answers 101; stray input is skipped; shutdown returns.
#[test]
fn serve_io_runs_requests_concurrently_and_honours_cancel() {
    let (in_rx, in_tx) = std::io::pipe().unwrap();
    let (out_rx, out_tx) = std::io::pipe().unwrap();
    let (wrote_after_cancel_tx, wrote_after_cancel) = mpsc::channel();
    let wrote_after_cancel_tx = Mutex::new(wrote_after_cancel_tx);
    let sdk = std::thread::spawn(move || {
        serve_io(BufReader::new(in_rx), out_tx, move |req, reply| {
            match req.command.first().map(String::as_str) {
                Some("echo") => {
                    reply.stdout(req.command[1..].join(" ")).unwrap();
                    3
                }
                Some("block") => {
                    reply.stderr(req.payload_bytes().unwrap()).unwrap();
                    while !reply.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    // Dropped: the request is done.
                    reply.stdout("after cancel").unwrap();
                    wrote_after_cancel_tx.lock().unwrap().send(()).unwrap();
                    0
                }
                _ => panic!("unexpected request"),
            }
        })
    });
    let mut d = Driver {
        to: in_tx,
        from: BufReader::new(out_rx),
    };

    d.send(&request(2, &["block"], &[0xff, 0x00]));
    assert_eq!(
        d.next(),
        Some(FromPlugin::output(2, OutStream::Stderr, &[0xff, 0]))
    );
    // Request 2 still runs while 1 is served.
    d.send(&request(1, &["echo", "hello", "world"], b""));
    assert_eq!(d.next(), Some(text(1, OutStream::Stdout, "hello world")));
    assert_eq!(
        d.next(),
        Some(FromPlugin::Done {
            id: 1,
            exit_code: 3
        })
    );

    // Noise from the worker's side is skipped.
    d.send_raw(b"not json\n\n{\"type\":\"unknown\"}\n");
    d.send(&ToPlugin::Cancel { id: 99 });
    d.send(&ToPlugin::Cancel { id: 2 });
    assert_eq!(
        d.next(),
        Some(FromPlugin::Done {
            id: 2,
            exit_code: EXIT_CANCELLED
        })
    );
    wrote_after_cancel
        .recv_timeout(Duration::from_secs(10))
        .expect("the handler saw the cancel");

    d.send(&request(3, &["panic"], b""));
    assert_eq!(
        d.next(),
        Some(text(3, OutStream::Stderr, "the plugin's handler panicked"))
    );
    assert_eq!(
        d.next(),
        Some(FromPlugin::Done {
            id: 3,
            exit_code: EXIT_PANICKED
        })
    );
    d.send(&ToPlugin::Shutdown);
    sdk.join().unwrap().unwrap();
    // Every handler thread is finished and the output closed: nothing else was written, in
    // particular nothing for request 2 after its `done`.
    let mut rest = Vec::new();
    d.from.read_to_end(&mut rest).unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "");
}

#[test]
fn serve_io_returns_at_end_of_input() {
    let input = request(1, &["x"], b"").to_line();
    let (out_rx, out_tx) = std::io::pipe().unwrap();
    serve_io(&input[..], out_tx, |_, reply| {
        reply.stdout("one\ntwo").unwrap();
        0
    })
    .unwrap();
    let mut out = String::new();
    BufReader::new(out_rx).read_to_string(&mut out).unwrap();
    // The handler thread may have run before or after the input ended; it always finishes.
    assert_eq!(
        out,
        "{\"type\":\"output\",\"id\":1,\"stream\":\"stdout\",\"data\":\"one\\ntwo\"}\n\
         {\"type\":\"done\",\"id\":1,\"exit_code\":0}\n"
    );
}

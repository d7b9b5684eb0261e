//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/`: valid inputs
//! libFuzzer mutates from. `cargo run -p fuzzing --example seed_corpus`.

use proto::frame::{Credential, Frame, Hello, Role, Stream, PROTOCOL_VERSION};
use std::path::{Path, PathBuf};

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("corpus file");
}

fn hello(role: Role, credential: Credential) -> Frame {
    Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        credential,
    })
}

fn main() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let worker = hello(
        Role::Worker,
        Credential::Worker {
            team: "main".into(),
            identity: "web01".into(),
            token: "9b1bd278-e645-4eec-bffb-0587ad84534e".into(),
        },
    );
    let client = hello(
        Role::Client,
        Credential::Jwt {
            token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2ln".into(),
        },
    );
    frames(&corpus.join("frame"), &worker, &client);
    handshakes(&corpus.join("handshake"), &worker, &client);
    plugin_lines(&corpus.join("plugin_line"));
    spool_segment(&corpus.join("spool"));
    api_bodies(&corpus.join("api_body"));
    println!("corpus written to {}", corpus.display());
}

/// `frame`: a first byte (the read size), then frames back to back; one file per frame and
/// one of them all.
fn frames(dir: &Path, worker: &Frame, client: &Frame) {
    let frames = [
        ("hello_worker", worker.clone()),
        ("hello_client", client.clone()),
        ("heartbeat", Frame::Heartbeat),
        (
            "announce",
            Frame::Announce {
                services: vec!["logs".into(), "dc1".into()],
            },
        ),
        (
            "output",
            Frame::Output {
                id: 7,
                seq: 0,
                stream: Stream::Stdout,
                data: b"Linux\n".to_vec(),
            },
        ),
        (
            "done",
            Frame::Done {
                id: 7,
                exit_code: 0,
            },
        ),
        ("pause", Frame::Pause { id: 7 }),
        ("resume", Frame::Resume { id: 7 }),
    ];
    let mut stream = vec![7u8];
    for (name, frame) in &frames {
        let bytes = proto::encode_to_vec(frame);
        let mut one = vec![255u8];
        one.extend_from_slice(&bytes);
        put(dir, name, &one);
        stream.extend_from_slice(&bytes);
    }
    put(dir, "all", &stream);
}

/// `handshake`: one frame body, no length prefix.
fn handshakes(dir: &Path, worker: &Frame, client: &Frame) {
    for (name, frame) in [
        ("worker", worker),
        ("client", client),
        ("heartbeat", &Frame::Heartbeat),
    ] {
        let bytes = proto::encode_to_vec(frame);
        put(dir, name, &bytes[proto::LEN_PREFIX..]);
    }
}

/// `plugin_line`: what a persistent plugin prints.
fn plugin_lines(dir: &Path) {
    for (name, line) in [
        (
            "output",
            r#"{"type":"output","id":1,"stream":"stdout","data":"hello"}"#,
        ),
        (
            "output_b64",
            r#"{"type":"output","id":1,"stream":"stderr","data_base64":"aGk="}"#,
        ),
        ("done", r#"{"type":"done","id":1,"exit_code":0}"#),
    ] {
        put(dir, name, line.as_bytes());
    }
}

/// `spool`: a segment the spool itself wrote, with two records.
fn spool_segment(corpus: &Path) {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (spool, _reader) =
            fs::spool::Spool::open(fs::spool::SpoolConfig::new(dir.path())).expect("spool");
        let record = fs::record::SpooledRequest {
            trigger_id: 1,
            path: "/logs/access".into(),
            service: "dc1".into(),
            plugin: "append".into(),
            args: vec![("path".into(), "/var/log/x".into())],
            timeout_ms: 0,
            payload: b"GET / 200\n".to_vec(),
        };
        spool
            .append(vec![record.encode(), record.encode()])
            .expect("append");
        spool.sync().expect("sync");
    }
    for entry in std::fs::read_dir(dir.path()).expect("spool dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "seg") {
            put(
                corpus,
                "two_records",
                &std::fs::read(&path).expect("segment"),
            );
        }
    }
}

/// `api_body`: the route's index, then a JSON body it accepts.
fn api_bodies(dir: &Path) {
    for (i, body) in [
        r#"{"name":"second"}"#,
        r#"{"identity":"web02","description":"x","visibility":"team"}"#,
        r#"{"description":"front end"}"#,
        r#"{"name":"dc2","algorithm":"mirror","timeout":"10s","batch":2}"#,
        r#"{"algorithm":"serial","stop_on_failure":true}"#,
        r#"{"identity":"local"}"#,
        r#"{"path":"/logs"}"#,
        r#"{"path":"/logs/access","plugin":"append","service":"demo","split":"lines","args":{"path":"/tmp/x"}}"#,
        r#"{"mode":420,"batch_lines":10}"#,
        r#"{"count":3}"#,
        r#"{"preset":"basic"}"#,
        r#"{"role":"admin"}"#,
        r#"{"identity":"admin","role":"member"}"#,
        r#"{"max_teams":3}"#,
        r#"{"plugin":"echo","command":"hi"}"#,
    ]
    .iter()
    .enumerate()
    {
        let mut bytes = vec![i as u8];
        bytes.extend_from_slice(body.as_bytes());
        put(dir, &format!("route{i:02}"), &bytes);
    }
}

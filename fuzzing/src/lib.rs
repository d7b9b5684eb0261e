//! The fuzz targets' bodies. Each takes arbitrary bytes and must neither panic nor hang; the
//! control plane's must also never answer 500. `fuzz/` (cargo-fuzz, nightly) runs them under
//! libFuzzer; `tests/corpus.rs` replays the committed corpus through them on stable, so every
//! input that once found a bug stays a test.

use bytes::BytesMut;
use dataplane::config::ConfigSource;
use std::sync::OnceLock;

/// The frame decoder as the broker and every peer run it: frames off a stream of bytes
/// (cut into reads at the first byte's choice) until an error or the end.
pub fn frame(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match proto::decode(&mut buf, 1 << 20) {
                Ok(Some(frame)) => {
                    // What a peer does next with a frame: name it and send it on.
                    let _ = frame.kind_name();
                    let again = proto::encode_to_vec(&frame);
                    let back = proto::codec::decode_body(&again[proto::LEN_PREFIX..]);
                    assert!(
                        back.is_ok(),
                        "a decoded frame re-encodes to one that decodes"
                    );
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The trust a controlled broker has: one team, a member, a worker, a service.
fn source() -> &'static feed::ControlSource {
    static SOURCE: OnceLock<feed::ControlSource> = OnceLock::new();
    SOURCE.get_or_init(|| {
        use proto::control::{BrokerSnapshot, MemberEntry, ServiceEntry, Visibility, WorkerEntry};
        feed::ControlSource::offline(BrokerSnapshot {
            revision: 1,
            jwt_secret_hex: "00ff10aa".into(),
            teams: vec!["main".into()],
            members: vec![MemberEntry {
                team: "main".into(),
                identity: "admin".into(),
                uid: 1,
                sgen: 0,
            }],
            workers: vec![WorkerEntry {
                team: "main".into(),
                identity: "web01".into(),
                token_sha256: proto::control::token_digest("9b1bd278-e645-4eec-bffb-0587ad84534e"),
                owner: "admin".into(),
                visibility: Visibility::Team,
            }],
            services: vec![ServiceEntry {
                team: "main".into(),
                name: "dc1".into(),
                owner: "admin".into(),
                algorithm: proto::Algorithm::Mirror,
                workers: vec!["web01".into()],
                timeout_ms: 0,
                visibility: Visibility::Team,
                batch: None,
                stop_on_failure: false,
                retry: false,
                history: Default::default(),
            }],
        })
        .expect("the fixed snapshot compiles")
    })
}

/// A connection's first frame as the broker's handshake takes it: decoded, checked to be an
/// acceptable `Hello`, its credential (a JWT, or a worker's team, identity and token)
/// authenticated against the control plane's trust.
pub fn handshake(data: &[u8]) {
    let Ok(frame) = proto::codec::decode_body(data) else {
        return;
    };
    let Ok(hello) = proto::codec::check_hello(frame) else {
        return;
    };
    let _ = source().authenticate(&hello.credential);
}

/// A line a persistent plugin writes on its stdout, as the worker reads it.
pub fn plugin_line(data: &[u8]) {
    use plugins::persistent::{output_bytes, FromPlugin};
    if let Ok(FromPlugin::Output {
        data, data_base64, ..
    }) = FromPlugin::parse(data)
    {
        let _ = output_bytes(data, data_base64);
    }
}

/// A spool directory holding `data` as its one segment file, opened and read to the end
/// (as the fs does after a crash), every record decoded as the sender decodes it.
pub fn spool(data: &[u8]) {
    let rt = runtime();
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    // The first segment's name, as the spool writes it.
    if std::fs::write(dir.path().join("00000000000000000001.seg"), data).is_err() {
        return;
    }
    let Ok((_spool, mut reader)) = fs::spool::Spool::open(fs::spool::SpoolConfig::new(dir.path()))
    else {
        return;
    };
    rt.block_on(async {
        for _ in 0..10_000 {
            match tokio::time::timeout(std::time::Duration::from_millis(20), reader.next()).await {
                Ok(Ok((_seq, record))) => {
                    let _ = fs::record::SpooledRequest::decode(&record);
                }
                // An error, or no more records (the reader waits for appends).
                _ => return,
            }
        }
    });
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// The control plane on SQLite in a temporary directory, and its first admin's JWT.
struct Plane {
    router: axum::Router,
    token: String,
    _dir: tempfile::TempDir,
}

fn plane() -> &'static Plane {
    static PLANE: OnceLock<Plane> = OnceLock::new();
    PLANE.get_or_init(|| {
        runtime().block_on(async {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let settings = controlplane::ControlSettings::new(dir.path());
            let plane = controlplane::ControlPlane::open(settings)
                .await
                .expect("the control plane opens");
            let admin = plane
                .bootstrap()
                .await
                .expect("bootstrap")
                .expect("a first admin");
            let router = plane.router();
            let body = serde_json::json!({
                "team": admin.team, "identity": admin.identity, "secret": admin.secret,
            });
            let (status, answer) = call(
                &router,
                "POST",
                "/api/v1/login",
                None,
                body.to_string().into_bytes(),
            )
            .await;
            assert_eq!(status, 200, "login: {answer}");
            let answer: api::login::LoginResponse =
                serde_json::from_str(&answer).expect("login JSON");
            let token = answer.token;
            Plane {
                router,
                token,
                _dir: dir,
            }
        })
    })
}

async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let mut req = req.body(axum::body::Body::from(body)).expect("a request");
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            40000,
        ))));
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// The routes whose JSON bodies are fuzzed (no secrets: those cost an argon2 hash each).
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/teams"),
    ("POST", "/api/v1/workers"),
    ("PATCH", "/api/v1/workers/local"),
    ("POST", "/api/v1/services"),
    ("PATCH", "/api/v1/services/demo"),
    ("POST", "/api/v1/services/demo/workers"),
    ("POST", "/api/v1/directories"),
    ("POST", "/api/v1/triggers"),
    ("PATCH", "/api/v1/triggers/1"),
    ("POST", "/api/v1/triggers/1/hits"),
    ("PUT", "/api/v1/teams/main/quota"),
    ("PATCH", "/api/v1/teams/main/members/admin"),
    ("POST", "/api/v1/teams/main/invitations"),
    ("PATCH", "/api/v1/users/admin"),
    ("POST", "/api/v1/services/demo/requests"),
];

/// A JSON body (after a first byte choosing the route) sent to the control plane as its
/// admin: any answer but a 5xx.
pub fn api_body(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let (method, path) = ROUTES[usize::from(pick) % ROUTES.len()];
    let plane = plane();
    let (status, answer) = runtime().block_on(call(
        &plane.router,
        method,
        path,
        Some(&plane.token),
        body.to_vec(),
    ));
    // The gateway with no broker configured is 503 by design; nothing else may be 5xx.
    let gateway = path.ends_with("/requests") && status == 503;
    assert!(
        status < 500 || gateway,
        "{method} {path} answered {status}: {answer}"
    );
}

//! The client against a small axum server that logs in, refuses and answers as told.

use super::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as Status};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use std::sync::atomic::AtomicBool;

/// What the server saw, and how it answers.
#[derive(Default)]
struct Server {
    logins: AtomicUsize,
    /// Every call that reached the server.
    hits: AtomicUsize,
    /// The JWT `/me` accepts (the last one issued, until the test clears it).
    valid: Mutex<String>,
    /// Issue JWTs with 30 s left (less than the client's minute).
    short: AtomicBool,
}

fn jwt(exp: u64, n: usize) -> String {
    let claims = format!(r#"{{"exp":{exp}}}"#);
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
    format!("h.{payload}.{n}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn refused(status: Status, code: &str) -> (Status, Json<serde_json::Value>) {
    let body = serde_json::json!({ "code": code, "message": format!("{code} here") });
    (status, Json(body))
}

async fn login(
    State(s): State<Arc<Server>>,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, (Status, Json<serde_json::Value>)> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    if body != serde_json::json!({"team": "t", "identity": "i", "secret": "s"}) {
        return Err(refused(Status::UNAUTHORIZED, "Unauthorized"));
    }
    let n = s.logins.fetch_add(1, Ordering::SeqCst) + 1;
    let left = if s.short.load(Ordering::SeqCst) {
        30
    } else {
        3600
    };
    let token = jwt(now() + left, n);
    *s.valid.lock().unwrap() = token.clone();
    Ok(Json(serde_json::json!({
        "token": token,
        "expires_at": "2030-01-01T00:00:00Z",
        "team": "t",
        "identity": "i",
        "role": "member",
    })))
}

async fn me(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, (Status, Json<serde_json::Value>)> {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let valid = format!("Bearer {}", s.valid.lock().unwrap());
    match headers.get("authorization") {
        Some(h) if h.to_str().ok() == Some(valid.as_str()) => {
            Ok(Json(serde_json::json!({ "identity": "i" })))
        }
        _ => Err(refused(Status::UNAUTHORIZED, "TokenExpired")),
    }
}

/// Starts the server on 127.0.0.1:0; its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

async fn control_plane() -> (Arc<Server>, String) {
    let server = Arc::new(Server::default());
    let router = Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/me", get(me))
        .route(
            "/api/v1/missing",
            get(|| async { refused(Status::NOT_FOUND, "NotFound") }),
        )
        .route("/api/v1/garbage", get(|| async { "not JSON" }))
        .with_state(server.clone());
    (server, serve(router).await)
}

/// A server that answers everything with 503, and counts.
async fn unavailable() -> (Arc<Server>, String) {
    let server = Arc::new(Server::default());
    let s = server.clone();
    let router = Router::new().fallback(move || async move {
        s.hits.fetch_add(1, Ordering::SeqCst);
        refused(Status::SERVICE_UNAVAILABLE, "ServiceUnavailable")
    });
    (server, serve(router).await)
}

/// A URL nothing listens on.
fn closed() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn client(urls: &[&str]) -> Api {
    Api::builder(urls.iter().copied())
        .login("t", "i", "s")
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[derive(Debug, Deserialize, PartialEq)]
struct Me {
    identity: String,
}

#[tokio::test]
async fn fails_over_past_a_closed_port_and_a_503_and_then_prefers_the_one_that_answered() {
    let down = closed();
    let (busy, busy_url) = unavailable().await;
    let (server, url) = control_plane().await;
    let api = client(&[&down, &busy_url, &url]);
    let me: Me = api.get("/me").await.unwrap();
    assert_eq!(me.identity, "i");
    // The login went down the list; `/me` went straight to the one that answered.
    assert_eq!(busy.hits.load(Ordering::SeqCst), 1);
    let _: Me = api.get("me").await.unwrap();
    assert_eq!(busy.hits.load(Ordering::SeqCst), 1);
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);

    // The last URL's 503 is the answer.
    let api = client(&[&down, &busy_url]);
    match api.get::<Me>("/me").await {
        Err(ApiError::Refused {
            status: 503, code, ..
        }) => assert_eq!(code, Some(ErrorCode::ServiceUnavailable)),
        other => panic!("{other:?}"),
    }
    // Nothing answers: unreachable, naming the URL and why.
    match client(&[&down]).get::<Me>("/me").await {
        Err(ApiError::Unreachable { url, cause }) => {
            assert_eq!(url, format!("{down}/api/v1/login"));
            assert!(cause.to_lowercase().contains("connect"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_401_logs_in_again_once_and_a_jwt_about_to_expire_is_replaced() {
    let (server, url) = control_plane().await;
    let api = client(&[&url]);
    let _: Me = api.get("/me").await.unwrap();
    assert_eq!(server.logins.load(Ordering::SeqCst), 1);
    // The server no longer takes the JWT: one more login, and the call succeeds.
    server.valid.lock().unwrap().clear();
    let _: Me = api.get("/me").await.unwrap();
    assert_eq!(server.logins.load(Ordering::SeqCst), 2);

    // JWTs with less than a minute left are not used: each call logs in first.
    server.short.store(true, Ordering::SeqCst);
    api.forget_token();
    let first = api.jwt().await.unwrap();
    let second = api.jwt().await.unwrap();
    assert_ne!(first, second);
    assert_eq!(server.logins.load(Ordering::SeqCst), 4);

    // A client given a JWT and no credentials does not log in: the 401 is the answer.
    let api = Api::builder([url.as_str()]).token("stale").build().unwrap();
    assert_eq!(api.get::<Me>("/me").await.unwrap_err().status(), Some(401));
    assert_eq!(api.token().as_deref(), Some("stale"));
}

#[tokio::test]
async fn refusals_and_answers_that_cannot_be_read_are_typed() {
    let (_, url) = control_plane().await;
    let api = client(&[&url]);
    match api.get::<Me>("/missing").await {
        Err(ApiError::Refused {
            status,
            code,
            message,
        }) => assert_eq!(
            (status, code, &*message),
            (404, Some(ErrorCode::NotFound), "NotFound here")
        ),
        other => panic!("{other:?}"),
    }
    match api.get::<Me>("/garbage").await {
        Err(ApiError::Undecodable { url: called, .. }) => {
            assert_eq!(called, format!("{url}/api/v1/garbage"))
        }
        other => panic!("{other:?}"),
    }
    // A wrong secret: the login's refusal.
    let api = Api::builder([url.as_str()])
        .login("t", "i", "wrong")
        .build()
        .unwrap();
    assert_eq!(api.jwt().await.unwrap_err().status(), Some(401));
    // The raw call returns whatever came back, bad input included.
    let (status, body) = client(&[&url])
        .raw(Method::POST, "/login", Some(b"{not json"))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 400, "{body:?}");
}

#[tokio::test]
async fn the_token_cache_spares_a_second_run_its_login_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (server, url) = control_plane().await;
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Api::builder([url.as_str()])
            .login("t", "i", "s")
            .token_cache(dir.path())
            .build()
            .unwrap()
    };
    let _: Me = run().get("/me").await.unwrap();
    let _: Me = run().get("/me").await.unwrap();
    assert_eq!(server.logins.load(Ordering::SeqCst), 1);
    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    // Another identity does not take it.
    let other = Api::builder([url.as_str()])
        .login("t", "j", "s")
        .token_cache(dir.path())
        .build()
        .unwrap();
    assert_eq!(other.token(), None);
}

#[test]
fn reads_the_expiry_of_a_jwt() {
    assert_eq!(token_expiry(&jwt(1_900_000_000, 1)), 1_900_000_000);
    assert_eq!(token_expiry("garbage"), 0);
    assert_eq!(token_expiry("a.!!.c"), 0);
}

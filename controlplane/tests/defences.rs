//! Issue 10's control-plane findings, on SQLite and on PostgreSQL: the install cannot be
//! bricked by deleting team `main`, logins are rate limited, tier limits hold, request
//! bodies with unknown fields are refused, triggers name reachable services, only owners
//! count a `local` trigger's hits, services and workers do not share names, and the data
//! files are private.

mod common;

use common::{assert_error, Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

on_both_backends!(
    deleting_main_does_not_lock_out_the_admin,
    logins_are_rate_limited,
    wrong_secrets_in_a_row_lock_logins,
    event_streams_are_bounded,
    tier_limits_hold,
    unknown_fields_are_refused,
    triggers_need_a_reachable_service,
    local_trigger_hits_only_by_owner_or_admin,
    services_and_workers_do_not_share_names,
);

async fn deleting_main_does_not_lock_out_the_admin(backend: Backend) {
    let h = Harness::start(backend).await;
    let main = "/api/v1/teams/main";
    let refused = h
        .call(Method::DELETE, main, Some(&h.admin_token), None)
        .await;
    assert_error(&refused, 409, "Conflict");
    h.login("main", "admin", &h.admin.secret).await;

    // With another team to log in to, main still stays (issue 25): it is the install's
    // team, which `up` and the configuration it wrote log in to.
    let (status, body) = h
        .post("/api/v1/teams", &h.admin_token, json!({"name": "other"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let refused = h
        .call(Method::DELETE, main, Some(&h.admin_token), None)
        .await;
    assert_error(&refused, 409, "Conflict");
    h.login("main", "admin", &h.admin.secret).await;
    h.login("other", "admin", &h.admin.secret).await;

    // A store whose teams are all gone (older versions allowed it) starts again: the
    // bootstrap makes team main and gives the existing admin a new secret.
    h.execute_sql("DELETE FROM teams").await;
    let again = h
        .plane
        .bootstrap()
        .await
        .expect("bootstrap on a store with users but no teams")
        .expect("a new first admin");
    assert_ne!(again.secret, h.admin.secret);
    h.login("main", "admin", &again.secret).await;
    assert!(h.plane.bootstrap().await.expect("bootstrap").is_none());
}

async fn logins_are_rate_limited(backend: Backend) {
    // The rate limiter alone: wrong secrets in a row do not lock here.
    let h = Harness::start_configured(backend, |s| s.login_limits.lockout_after = 1000).await;
    let wrong = json!({"team": "main", "identity": "admin", "secret": "wrong"});
    let mut limited = None;
    for _ in 0..50 {
        let resp = h
            .http
            .post(h.url("/api/v1/login"))
            .json(&wrong)
            .send()
            .await
            .expect("login");
        match resp.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("429 carries Retry-After in seconds");
                let body: serde_json::Value = resp.json().await.expect("JSON error");
                assert_eq!(body["code"], "TooManyRequests", "{body}");
                limited = Some(retry);
                break;
            }
            other => panic!("wrong login answered {other}"),
        }
    }
    let retry = limited.expect("50 fast wrong logins for one identity are limited");
    assert!((1..=10).contains(&retry), "Retry-After {retry}");
    // Even the right secret waits...
    let early = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "admin", "secret": h.admin.secret})),
        )
        .await;
    assert_error(&early, 429, "TooManyRequests");
    // ...and works once the window has passed.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    h.login("main", "admin", &h.admin.secret).await;
}

/// One login attempt; its status, `code` and `Retry-After`.
async fn attempt(h: &Harness, identity: &str, secret: &str) -> (u16, String, Option<u64>) {
    let resp = h
        .http
        .post(h.url("/api/v1/login"))
        .json(&json!({"team": "main", "identity": identity, "secret": secret}))
        .send()
        .await
        .expect("login");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let text = format!(
        "{} {}",
        body["code"].as_str().unwrap_or(""),
        body["message"]
    );
    (status, text, retry)
}

async fn wrong_secrets_in_a_row_lock_logins(backend: Backend) {
    let h = Harness::start_configured(backend, |s| {
        // The lockout alone (the rate limiter would answer first), with a short lock.
        s.login_limits.identity_burst = 100_000;
        s.login_limits.address_burst = 100_000;
        s.login_limits.lockout_after = 10;
        s.login_limits.lockout = Duration::from_secs(2);
    })
    .await;
    // 200 wrong secrets: 10 are checked (401), then the identity is locked (429 LockedOut).
    let mut answers = Vec::new();
    for _ in 0..200 {
        answers.push(attempt(&h, "admin", "wrong").await);
    }
    assert!(
        answers[..10].iter().all(|a| a.0 == 401),
        "{:?}",
        &answers[..11]
    );
    for (status, text, retry) in &answers[10..] {
        assert_eq!(*status, 429, "{text}");
        assert!(text.starts_with("LockedOut"), "{text}");
        assert!(text.contains("locked after 10 wrong secrets"), "{text}");
        assert!(retry.is_some_and(|r| (1..=2).contains(&r)), "{retry:?}");
    }
    // The right secret fails too while the lock lasts, saying so...
    let (status, text, _) = attempt(&h, "admin", &h.admin.secret).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("retry in"), "{text}");
    // ...and works once it has ended; the count starts again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    h.login("main", "admin", &h.admin.secret).await;
    // An identity that does not exist locks the same way: a lock tells nothing.
    for _ in 0..10 {
        assert_eq!(attempt(&h, "ghost", "wrong").await.0, 401);
    }
    let (status, text, _) = attempt(&h, "ghost", "wrong").await;
    assert_eq!(status, 429, "{text}");
    assert!(text.starts_with("LockedOut"), "{text}");
    // After a good login the count and the locks start again: the next lock is the first's
    // length, not twice it.
    for _ in 0..10 {
        attempt(&h, "admin", "wrong").await;
    }
    let (_, text, retry) = attempt(&h, "admin", &h.admin.secret).await;
    assert!(text.starts_with("LockedOut"), "{text}");
    assert!(
        retry.is_some_and(|r| r <= 2),
        "a good login in between reset the locks: {retry:?}"
    );
}

async fn event_streams_are_bounded(backend: Backend) {
    let h = Harness::start_configured(backend, |s| {
        s.max_event_streams = 3;
        s.max_event_streams_per_user = 2;
    })
    .await;
    let open = |token: String| {
        let http = h.http.clone();
        let url = h.url("/api/v1/events");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("events")
        }
    };
    let first = open(h.admin_token.clone()).await;
    let second = open(h.admin_token.clone()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    // A third for the same user: 429.
    let third = open(h.admin_token.clone()).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another user may open one; then the control plane is full: 503.
    let bob = h.member("bob").await;
    let bobs = open(bob.clone()).await;
    assert_eq!(bobs.status(), StatusCode::OK);
    let full = open(bob.clone()).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A closed stream frees its slot.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = open(h.admin_token.clone()).await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn tier_limits_hold(backend: Backend) {
    let h = Harness::start(backend).await;
    let bob = h.member("bob").await;
    let (status, body) = h.post("/api/v1/teams", &bob, json!({"name": "bobs"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["quota"]["max_services"], 1, "{body}");
    assert_eq!(body["quota"]["public_services"], false, "{body}");
    let second = h
        .post("/api/v1/teams", &bob, json!({"name": "bobs2"}))
        .await;
    assert_error(&second, 403, "QuotaExceeded");

    // In the free team, services cannot be public.
    let bobs = h.login("bobs", "bob", "bob-secret").await;
    let public = h
        .post(
            "/api/v1/services",
            &bobs,
            json!({"name": "s", "visibility": "public"}),
        )
        .await;
    assert_error(&public, 403, "Forbidden");
    let (status, body) = h
        .post(
            "/api/v1/services",
            &bobs,
            json!({"name": "s", "visibility": "team"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let made_public = h
        .call(
            Method::PATCH,
            "/api/v1/services/s",
            Some(&bobs),
            Some(json!({"visibility": "public"})),
        )
        .await;
    assert_error(&made_public, 403, "Forbidden");

    // The operator's teams stay unlimited.
    let (status, body) = h
        .post(
            "/api/v1/services",
            &h.admin_token,
            json!({"name": "open", "visibility": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for name in ["t1", "t2"] {
        let (status, body) = h
            .post("/api/v1/teams", &h.admin_token, json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["quota"]["max_services"], serde_json::Value::Null);
    }
}

async fn unknown_fields_are_refused(backend: Backend) {
    let h = Harness::start(backend).await;
    let typo = h
        .post(
            "/api/v1/services",
            &h.admin_token,
            json!({"name": "s", "algorithim": "mirror"}),
        )
        .await;
    assert_error(&typo, 400, "BadRequest");
    assert!(
        typo.1["message"].as_str().unwrap().contains("algorithim"),
        "{}",
        typo.1
    );
    let (status, _) = h.get("/api/v1/services/s", &h.admin_token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was created");
    let login = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "admin", "secret": h.admin.secret, "x": 1})),
        )
        .await;
    assert_error(&login, 400, "BadRequest");
    let worker = h
        .post(
            "/api/v1/workers",
            &h.admin_token,
            json!({"identity": "w", "descripton": "typo"}),
        )
        .await;
    assert_error(&worker, 400, "BadRequest");
}

async fn triggers_need_a_reachable_service(backend: Backend) {
    let h = Harness::start(backend).await;
    let t = &h.admin_token;
    let (status, body) = h
        .post("/api/v1/directories", t, json!({"path": "/d"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let trigger =
        |service: &str| json!({"path": "/d/x", "plugin": "command/command", "service": service});
    let missing = h.post("/api/v1/triggers", t, trigger("nope")).await;
    assert_error(&missing, 422, "Unprocessable");
    let elsewhere = h.post("/api/v1/triggers", t, trigger("other/nope")).await;
    assert_error(&elsewhere, 422, "Unprocessable");
    let (status, body) = h.post("/api/v1/services", t, json!({"name": "s"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h.post("/api/v1/triggers", t, trigger("s")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_i64().unwrap();
    let moved = h
        .call(
            Method::PATCH,
            &format!("/api/v1/triggers/{id}"),
            Some(t),
            Some(json!({"service": "gone"})),
        )
        .await;
    assert_error(&moved, 422, "Unprocessable");
    // A worker serves its identity: a trigger may name it.
    let (status, body) = h.post("/api/v1/workers", t, json!({"identity": "w"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/triggers/{id}"),
            Some(t),
            Some(json!({"service": "main/w"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn local_trigger_hits_only_by_owner_or_admin(backend: Backend) {
    let h = Harness::start(backend).await;
    let bob = h.member("bob").await;
    let carol = h.member("carol").await;
    let t = &h.admin_token;
    let (status, body) = h
        .post("/api/v1/directories", t, json!({"path": "/d"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h.post("/api/v1/services", t, json!({"name": "s"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .post(
            "/api/v1/triggers",
            &bob,
            json!({"path": "/d/mine", "plugin": "command/command", "service": "s"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hits = format!("/api/v1/triggers/{}/hits", body["id"]);
    let other = h.post(&hits, &carol, json!({"count": 1000})).await;
    assert_error(&other, 403, "Forbidden");
    let (status, body) = h.post(&hits, &bob, json!({"count": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h.post(&hits, t, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["hits"], 3);
}

async fn services_and_workers_do_not_share_names(backend: Backend) {
    let h = Harness::start(backend).await;
    let t = &h.admin_token;
    let (status, body) = h
        .post("/api/v1/workers", t, json!({"identity": "w1"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let service = h.post("/api/v1/services", t, json!({"name": "w1"})).await;
    assert_error(&service, 409, "Conflict");
    let (status, body) = h.post("/api/v1/services", t, json!({"name": "s1"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let worker = h
        .post("/api/v1/workers", t, json!({"identity": "s1"}))
        .await;
    assert_error(&worker, 409, "Conflict");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start(Backend::Sqlite).await;
    // A write, so that the WAL files exist.
    let (status, body) = h
        .post("/api/v1/workers", &h.admin_token, json!({"identity": "w"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let data = h.data.path().join("data");
    let mode = |name: &str| {
        let path = if name.is_empty() {
            data.clone()
        } else {
            data.join(name)
        };
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "data dir");
    for file in [
        "triggerfs.db",
        "triggerfs.db-wal",
        "triggerfs.db-shm",
        "jwt.key",
        "broker.token",
        "admin.credentials",
    ] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
}

//! Issue 25, finding 8's API findings, on SQLite and on PostgreSQL: who reads a job of the
//! history (and what the API shows of its secrets), members added only with their consent
//! and without telling who exists, the install's team kept, triggers private by default,
//! non-object bodies refused and the gateway's arguments bounded.

mod common;

use common::{assert_error, Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(
    jobs_are_read_by_their_sender_and_admins_unless_the_service_says_team,
    members_are_added_only_with_their_consent,
    the_install_team_stays,
    triggers_are_private_by_default,
    only_object_bodies_and_bounded_gateway_args,
);

fn record(key: &str, identity: &str, readers: Option<&str>, output: &str) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut r = json!({"key": key, "team": "main", "identity": identity, "service": key,
        "algorithm": "roundrobin", "plugin": "command",
        "command": ["curl -u deploy:S3CR3T-CMD https://h"],
        "args": [["dsn", "postgres://u:S3CR3T-ARG@db/app"], ["repo", "https://u:S3CR3T-URL@h/r"]],
        "started_unix_ms": now, "duration_ms": 5,
        "workers": [{"worker": "w", "outcome": "ok", "exit_code": 0, "duration_ms": 1,
                     "output": output, "truncated": false}]});
    if let Some(readers) = readers {
        r["readers"] = json!(readers);
    }
    r
}

/// Which of `keys` (each job's service) the holder of `token` lists and reads by id (the ids
/// as `sender`, who reads them all, finds them).
async fn readable(h: &Harness, token: &str, sender: &str, keys: &[&str]) -> Vec<String> {
    let (status, page) = h.get("/api/v1/jobs?limit=500", token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<(String, i64)> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["service"].as_str().unwrap().to_string(),
                j["id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut seen = Vec::new();
    for key in keys {
        let listed_id = listed.iter().find(|(s, _)| s == key).map(|(_, id)| *id);
        // Read by id whatever the list said.
        let (_, all) = h.get("/api/v1/jobs?limit=500", sender).await;
        let id = all["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["service"] == *key)
            .map(|j| j["id"].as_i64().unwrap());
        let by_id = match id {
            Some(id) => h.get(&format!("/api/v1/jobs/{id}"), token).await.0 == StatusCode::OK,
            None => false,
        };
        assert_eq!(
            listed_id.is_some(),
            by_id,
            "{key}: listed and readable by id must agree"
        );
        if by_id {
            seen.push(key.to_string());
        }
    }
    seen
}

/// A job is its sender's and the team's admins' to read unless it says `team`; a `local`
/// one its sender's alone. Whoever reads it, the secrets found by pattern are `***`, also in
/// a record stored as the broker sent it (the API redacts again when it answers).
async fn jobs_are_read_by_their_sender_and_admins_unless_the_service_says_team(backend: Backend) {
    let h = Harness::start(backend).await;
    let carol = h.member("carol").await;
    let dave = h.member("dave").await;
    let out = "Authorization: Bearer S3CR3T-OUT\nok\n";
    let jobs = vec![
        record("default", "dave", None, out),
        record("admins", "dave", Some("sender_and_admins"), out),
        record("team", "dave", Some("team"), out),
        record("mine", "dave", Some("sender"), out),
    ];
    h.deliver_jobs(jobs).await;
    let keys = ["default", "admins", "team", "mine"];
    assert_eq!(
        readable(&h, &carol, &dave, &keys).await,
        ["team"],
        "a plain member"
    );
    assert_eq!(readable(&h, &dave, &dave, &keys).await, keys, "the sender");
    assert_eq!(
        readable(&h, &h.admin_token, &dave, &keys).await,
        ["default", "admins", "team"],
        "an admin"
    );
    // What carol reads of the `team` job holds no secret.
    let (_, page) = h.get("/api/v1/jobs?service=team", &carol).await;
    let id = page["jobs"][0]["id"].as_i64().unwrap();
    let (status, job) = h.get(&format!("/api/v1/jobs/{id}"), &carol).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let text = job.to_string();
    assert!(!text.contains("S3CR3T"), "{text}");
    assert_eq!(job["command"][0], "curl -u deploy:*** https://h", "{job}");
    assert_eq!(
        job["outcomes"][0]["output"],
        "Authorization: Bearer ***\nok\n"
    );
}

/// An admin of another team cannot make an existing user a member without their consent,
/// and the answer is the same whether the identity exists or not; the user joins by
/// accepting an invitation. Creating a new user with a secret works as before.
async fn members_are_added_only_with_their_consent(backend: Backend) {
    let h = Harness::start(backend).await;
    let carol = h.member("carol").await;
    // bob, admin of teamb alone.
    let (status, body) = h
        .post("/api/v1/teams", &h.admin_token, json!({"name": "teamb"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .post(
            "/api/v1/teams/teamb/members",
            &h.admin_token,
            json!({"identity": "bob", "secret": "bob-secret", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bob = h.login("teamb", "bob", "bob-secret").await;

    let add = |body: Value| h.post("/api/v1/teams/teamb/members", &bob, body);
    let shape = |answer: (StatusCode, Value), identity: &str| {
        let message = answer.1["message"]
            .as_str()
            .unwrap_or("")
            .replace(identity, "X");
        (answer.0, answer.1["code"].clone(), message)
    };
    // Without a secret: refused before any identity is looked at.
    let existing = shape(add(json!({"identity": "carol"})).await, "carol");
    // (Identities of one length: the parser's message names the column.)
    let unknown = shape(add(json!({"identity": "nobod"})).await, "nobod");
    assert_eq!(existing.0, StatusCode::BAD_REQUEST, "{existing:?}");
    assert_eq!(
        existing, unknown,
        "existing and unknown identities answered alike"
    );
    // With one, an existing identity is not added, and the answer says why without saying
    // more than that the identity could not be created.
    for identity in ["carol", "admin", "bob"] {
        let answer = add(json!({"identity": identity, "secret": "bobs-choice"})).await;
        assert_error(&answer, 422, "Unprocessable");
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains("invitation"), "{message}");
    }
    // carol is not in teamb, and her secret is hers.
    assert_error(
        &h.call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "teamb", "identity": "carol", "secret": "carol-secret"})),
        )
        .await,
        401,
        "Unauthorized",
    );
    let (_, members) = h.get("/api/v1/teams/teamb/members", &bob).await;
    assert!(!members.to_string().contains("carol"), "{members}");
    // A new user with a secret is made as before.
    let (status, body) = add(json!({"identity": "erin", "secret": "erin-secret"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h.login("teamb", "erin", "erin-secret").await;
    // Invited, carol joins when she accepts.
    let (status, body) = h
        .post(
            "/api/v1/teams/teamb/invitations",
            &bob,
            json!({"identity": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/invitations/teamb/accept",
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.login("teamb", "carol", "carol-secret").await;
}

/// The install's team (`main`, made with the first admin) is neither deleted nor left by
/// its operator, even when the operator has another team: `up` logs in to it at each start.
async fn the_install_team_stays(backend: Backend) {
    let h = Harness::start(backend).await;
    let (status, body) = h
        .post("/api/v1/teams", &h.admin_token, json!({"name": "teamb"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let answer = h
        .call(
            Method::DELETE,
            "/api/v1/teams/main",
            Some(&h.admin_token),
            None,
        )
        .await;
    assert_error(&answer, 409, "Conflict");
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("install's team"),
        "{}",
        answer.1
    );
    // Another admin of main cannot remove the operator from it either.
    let (status, body) = h
        .post(
            "/api/v1/teams/main/members",
            &h.admin_token,
            json!({"identity": "second", "secret": "second-secret", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = h.login("main", "second", "second-secret").await;
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/teams/main/members/admin",
            Some(&second),
            None,
        )
        .await,
        409,
        "Conflict",
    );
    h.login("main", "admin", &h.admin.secret).await;
    // Any other team goes as before.
    let (status, body) = h
        .call(
            Method::DELETE,
            "/api/v1/teams/teamb",
            Some(&h.admin_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

/// A trigger made without a mode is 0600: its file (which returns the responses) is its
/// mounting user's alone, also under `--allow-other`.
async fn triggers_are_private_by_default(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, body) = h
        .post("/api/v1/directories", admin, json!({"path": "/logs"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, t) = h
        .post("/api/v1/triggers", admin, json!({"path": "/logs/t"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["mode"], 0o600, "{t}");
}

/// A body that is not a JSON object is refused with a 400 (serde would read a struct from
/// an array of its fields); the gateway takes at most 256 args of at most 4096 characters.
async fn only_object_bodies_and_bounded_gateway_args(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, body) = h
        .post("/api/v1/workers", admin, json!({"identity": "w0"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for (method, path, body) in [
        (Method::PATCH, "/api/v1/workers/w0", json!([null, null])),
        (Method::PATCH, "/api/v1/workers/w0", json!(["x"])),
        (Method::POST, "/api/v1/services", json!(["s", null])),
        (Method::POST, "/api/v1/login", json!(["main", "admin", "x"])),
        (Method::PATCH, "/api/v1/workers/w0", json!(null)),
        (Method::PATCH, "/api/v1/workers/w0", json!("text")),
    ] {
        let answer = h
            .call(method.clone(), path, Some(admin), Some(body.clone()))
            .await;
        assert_error(&answer, 400, "BadRequest");
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap()
                .contains("JSON object"),
            "{method} {path} {body}: {}",
            answer.1
        );
    }
    let (status, body) = h
        .call(
            Method::PATCH,
            "/api/v1/workers/w0",
            Some(admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The broker job route too.
    let answer = h
        .post("/api/v1/broker/jobs", &h.broker_token(), json!([[]]))
        .await;
    assert_error(&answer, 400, "BadRequest");

    let args = |n: usize, len: usize| -> Value {
        let map: serde_json::Map<String, Value> = (0..n)
            .map(|i| (format!("k{i}"), json!("v".repeat(len))))
            .collect();
        json!({"plugin": "echo", "args": map})
    };
    let gateway = "/api/v1/services/demo/requests";
    for body in [args(257, 1), args(2_000, 1), args(1, 4097)] {
        assert_error(&h.post(gateway, admin, body).await, 422, "Unprocessable");
    }
    // Within the bounds the request goes on (to the broker this control plane does not have).
    for body in [args(256, 1), args(1, 4096)] {
        let (status, body) = h.post(gateway, admin, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
}

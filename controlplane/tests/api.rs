//! The API suite, run on SQLite and on PostgreSQL (see `on_both_backends!`).

mod common;

use common::{assert_error, Backend, Harness};
use futures::StreamExt;
use proto::control::{Action, Object};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

on_both_backends!(
    login_and_tokens,
    bootstrap_runs_once,
    team_isolation_and_membership,
    worker_tokens,
    services_crud,
    directories_and_triggers,
    quotas,
    broker_endpoints,
    events_stream,
    gateway_without_broker,
    metrics_count_requests,
    unreadable_rows,
    no_lockout,
    no_lockout_under_concurrent_demotions,
    users_max_teams,
    trigger_rename_and_move,
    trigger_batch_lines,
    hits_are_not_configuration,
    trigger_service_must_exist,
    invitations,
    invitations_made_while_others_write_never_fail,
    invitation_accept_respects_quota,
    secret_change,
    triggers_created_before_configured,
);

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mint(key: &[u8], sub: &str, team: &str, exp: u64) -> String {
    let claims = proto::control::Claims {
        uid: 1,
        sgen: 0,
        sub: sub.into(),
        team: team.into(),
        role: proto::control::TeamRole::Admin,
        iat: now_s().saturating_sub(7200),
        exp,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

async fn login_and_tokens(backend: Backend) {
    let h = Harness::start(backend).await;
    let (status, body) = h.get("/api/v1/workers", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "admin", "secret": h.admin.secret})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "admin");
    assert_eq!(body["team"], "main");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    let wrong = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "admin", "secret": "nope"})),
        )
        .await;
    assert_error(&wrong, 401, "Unauthorized");
    let unknown = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "ghost", "secret": "nope"})),
        )
        .await;
    assert_error(&unknown, 401, "Unauthorized");
    let no_team = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "other", "identity": "admin", "secret": h.admin.secret})),
        )
        .await;
    assert_error(&no_team, 401, "Unauthorized");
    assert_eq!(wrong.1["message"], unknown.1["message"]);
    assert_eq!(wrong.1["message"], no_team.1["message"]);

    let expired = mint(&h.jwt_key(), "admin", "main", now_s() - 120);
    assert_error(
        &h.get("/api/v1/workers", &expired).await,
        401,
        "TokenExpired",
    );
    let forged = mint(&[7u8; 32], "admin", "main", now_s() + 600);
    assert_error(
        &h.get("/api/v1/workers", &forged).await,
        401,
        "Unauthorized",
    );
    let valid_minted = mint(&h.jwt_key(), "admin", "main", now_s() + 600);
    assert_eq!(
        h.get("/api/v1/workers", &valid_minted).await.0,
        StatusCode::OK
    );
    // A well-signed token for a team the user is not in is refused.
    let other_team = mint(&h.jwt_key(), "admin", "elsewhere", now_s() + 600);
    assert_error(
        &h.get("/api/v1/workers", &other_team).await,
        401,
        "Unauthorized",
    );
    assert_error(
        &h.call(Method::GET, "/api/v1/workers", None, None).await,
        401,
        "Unauthorized",
    );
    assert_error(
        &h.get("/api/v1/workers", "not-a-jwt").await,
        401,
        "Unauthorized",
    );
}

async fn bootstrap_runs_once(backend: Backend) {
    let h = Harness::start(backend).await;
    assert!(h.plane.bootstrap().await.unwrap().is_none());
    let path = h.data.path().join("data/admin.credentials");
    assert_eq!(path, h.admin.path);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("[main]\n"), "{text}");
    assert!(text.contains(&h.admin.secret));
    use std::os::unix::fs::PermissionsExt;
    for file in ["admin.credentials", "jwt.key", "broker.token"] {
        let mode = std::fs::metadata(h.data.path().join("data").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(parsed["main"]["team"].as_str(), Some("main"));
    assert_eq!(parsed["main"]["identity"].as_str(), Some("admin"));
}

async fn team_isolation_and_membership(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    assert_eq!(
        h.post("/api/v1/workers", admin, json!({"identity": "w1"}))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.post(
            "/api/v1/services",
            admin,
            json!({"name": "svc", "workers": ["w1"], "visibility": "team"})
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let bob = create_teamb_with_member_bob(&h).await;
    bob_cannot_reach_main_or_administer_teamb(&h, &bob).await;
    let bob_main = bob_joins_main_as_member(&h, &bob).await;
    roles_removal_and_team_deletion(&h, &bob, &bob_main).await;
}

/// Creates teamb with bob (secret `bobsecret`) as its only ordinary member; returns his token.
async fn create_teamb_with_member_bob(h: &Harness) -> String {
    let admin = &h.admin_token;
    // A second team, with bob as its only ordinary member.
    let (status, team) = h
        .post("/api/v1/teams", admin, json!({"name": "teamb"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    assert_eq!(team["role"], "admin");
    assert_error(
        &h.post("/api/v1/teams", admin, json!({"name": "teamb"}))
            .await,
        409,
        "Conflict",
    );
    assert_error(
        &h.post("/api/v1/teams", admin, json!({"name": "bad name"}))
            .await,
        422,
        "Unprocessable",
    );
    let (status, body) = h
        .post(
            "/api/v1/teams/teamb/members",
            admin,
            json!({"identity": "bob", "secret": "bobsecret", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A new user needs a secret (a user who exists joins through an invitation).
    assert_error(
        &h.post(
            "/api/v1/teams/teamb/members",
            admin,
            json!({"identity": "carol"}),
        )
        .await,
        400,
        "BadRequest",
    );
    h.login("teamb", "bob", "bobsecret").await
}

/// bob (of teamb) cannot log into main, nor see or touch its objects, nor administer teamb.
async fn bob_cannot_reach_main_or_administer_teamb(h: &Harness, bob: &str) {
    // bob cannot log into main, nor see or touch main's objects.
    let refused = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "bob", "secret": "bobsecret"})),
        )
        .await;
    assert_error(&refused, 401, "Unauthorized");
    let (status, list) = h.get("/api/v1/workers", bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
    assert_error(&h.get("/api/v1/workers/w1", bob).await, 404, "NotFound");
    assert_error(
        &h.call(Method::DELETE, "/api/v1/workers/w1", Some(bob), None)
            .await,
        404,
        "NotFound",
    );
    assert_error(&h.get("/api/v1/services/svc", bob).await, 404, "NotFound");
    assert_error(
        &h.call(
            Method::PATCH,
            "/api/v1/services/svc",
            Some(bob),
            Some(json!({"visibility": "public"})),
        )
        .await,
        404,
        "NotFound",
    );
    assert_error(&h.get("/api/v1/teams/main", bob).await, 404, "NotFound");
    assert_error(
        &h.get("/api/v1/teams/main/members", bob).await,
        404,
        "NotFound",
    );
    assert_error(
        &h.call(Method::DELETE, "/api/v1/teams/main", Some(bob), None)
            .await,
        404,
        "NotFound",
    );
    // A member of teamb is not its admin.
    assert_error(
        &h.post(
            "/api/v1/teams/teamb/members",
            bob,
            json!({"identity": "eve", "secret": "x"}),
        )
        .await,
        403,
        "Forbidden",
    );
    assert_error(
        &h.call(Method::DELETE, "/api/v1/teams/teamb", Some(bob), None)
            .await,
        403,
        "Forbidden",
    );
    let (_, teams) = h.get("/api/v1/teams", bob).await;
    assert_eq!(teams.as_array().unwrap().len(), 1);
    assert_eq!(teams[0]["name"], "teamb");
}

/// bob, an existing user, joins main by invitation as a member; returns his main token.
async fn bob_joins_main_as_member(h: &Harness, bob: &str) -> String {
    let admin = &h.admin_token;
    // bob joins main too (an existing user: invited, and he accepts), as a member.
    let (status, body) = h
        .post(
            "/api/v1/teams/main/invitations",
            admin,
            json!({"identity": "bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .call(
            Method::POST,
            "/api/v1/invitations/main/accept",
            Some(bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_error(
        &h.post(
            "/api/v1/teams/main/invitations",
            admin,
            json!({"identity": "bob"}),
        )
        .await,
        409,
        "Conflict",
    );
    let bob_main = h.login("main", "bob", "bobsecret").await;
    let (_, teams) = h.get("/api/v1/teams", &bob_main).await;
    assert_eq!(teams.as_array().unwrap().len(), 2);
    assert_eq!(
        h.get("/api/v1/services/svc", &bob_main).await.0,
        StatusCode::OK
    );
    // ...but may not change the admin's service.
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/services/svc",
            Some(&bob_main),
            None,
        )
        .await,
        403,
        "Forbidden",
    );
    bob_main
}

/// Roles: bob promoted in main, teamb's last admin kept; bob removed from main, then teamb
/// deleted.
async fn roles_removal_and_team_deletion(h: &Harness, bob: &str, bob_main: &str) {
    let admin = &h.admin_token;
    // Roles: promote, then the last admin cannot be removed or demoted.
    let (status, body) = h
        .call(
            Method::PATCH,
            "/api/v1/teams/main/members/bob",
            Some(admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "admin");
    assert_error(
        &h.call(
            Method::PATCH,
            "/api/v1/teams/main/members/bob",
            Some(admin),
            Some(json!({"role": "boss"})),
        )
        .await,
        400,
        "BadRequest",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/teams/teamb/members/admin",
            Some(admin),
            None,
        )
        .await,
        409,
        "Conflict",
    );
    assert_eq!(
        h.call(
            Method::DELETE,
            "/api/v1/teams/main/members/bob",
            Some(admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    // bob's main token no longer works; his teamb token does.
    assert_error(
        &h.get("/api/v1/workers", bob_main).await,
        401,
        "Unauthorized",
    );
    assert_eq!(h.get("/api/v1/workers", bob).await.0, StatusCode::OK);
    let (_, members) = h.get("/api/v1/teams/main/members", admin).await;
    assert_eq!(members.as_array().unwrap().len(), 1);
    // Deleting a team.
    assert_eq!(
        h.call(Method::DELETE, "/api/v1/teams/teamb", Some(admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_error(&h.get("/api/v1/workers", bob).await, 401, "Unauthorized");
}

async fn snapshot(h: &Harness) -> proto::control::BrokerSnapshot {
    let (status, body) = h.get("/api/v1/broker/snapshot", &h.broker_token()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).expect("snapshot JSON")
}

async fn worker_tokens(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, created) = h
        .post(
            "/api/v1/workers",
            admin,
            json!({"identity": "w1", "description": "first"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&token).unwrap().get_version_num(), 4);
    assert_eq!(created["state"], "DISCONNECTED");
    assert_eq!(created["owner"], "admin");
    let (_, got) = h.get("/api/v1/workers/w1", admin).await;
    assert!(got.get("token").is_none(), "{got}");
    assert_eq!(got["description"], "first");
    let (_, list) = h.get("/api/v1/workers", admin).await;
    assert!(list[0].get("token").is_none(), "{list}");
    let snap = snapshot(&h).await;
    assert_eq!(snap.workers.len(), 1);
    assert_eq!(
        snap.workers[0].token_sha256,
        proto::control::token_digest(&token)
    );
    let (status, regenerated) = h
        .post("/api/v1/workers/w1/regenerate", admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{regenerated}");
    let new_token = regenerated["token"].as_str().unwrap();
    assert_ne!(new_token, token);
    let snap2 = snapshot(&h).await;
    assert_eq!(
        snap2.workers[0].token_sha256,
        proto::control::token_digest(new_token)
    );
    assert!(snap2.revision > snap.revision);
    // Update, conflicts, names.
    let (status, patched) = h
        .call(
            Method::PATCH,
            "/api/v1/workers/w1",
            Some(admin),
            Some(json!({"description": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["description"], "renamed");
    assert_error(
        &h.post("/api/v1/workers", admin, json!({"identity": "w1"}))
            .await,
        409,
        "Conflict",
    );
    assert_error(
        &h.post("/api/v1/workers", admin, json!({"identity": "wö"}))
            .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post(
            "/api/v1/workers",
            admin,
            json!({"identity": "x".repeat(300)}),
        )
        .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post("/api/v1/workers", admin, json!({"identity": ".."}))
            .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post("/api/v1/workers", admin, json!({"identity": 5}))
            .await,
        400,
        "BadRequest",
    );
    assert_eq!(
        h.call(Method::DELETE, "/api/v1/workers/w1", Some(admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_error(&h.get("/api/v1/workers/w1", admin).await, 404, "NotFound");
    assert!(snapshot(&h).await.workers.is_empty());
}

async fn services_crud(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    for w in ["w1", "w2"] {
        assert_eq!(
            h.post("/api/v1/workers", admin, json!({"identity": w}))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let (status, svc) = h
        .post("/api/v1/services", admin, json!({"name": "svc", "workers": ["w1"], "timeout": "10s", "algorithm": "mirror", "batch": 2}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{svc}");
    assert_eq!(svc["timeout_ms"], 10_000);
    assert_eq!(svc["timeout"], "10s");
    assert_eq!(svc["visibility"], "local");
    assert_eq!(svc["algorithm"], "mirror");
    assert_eq!(svc["batch"], 2);
    assert_eq!(svc["workers"], json!(["w1"]));
    assert_eq!(svc["owner"], "admin");
    let (_, defaults) = h
        .post("/api/v1/services", admin, json!({"name": "plain"}))
        .await;
    assert_eq!(defaults["algorithm"], "roundrobin");
    assert_eq!(defaults["timeout_ms"], 0);
    assert_eq!(defaults["timeout"], Value::Null);
    refused_service_creates_leave_nothing(&h).await;
    service_workers_added_and_removed(&h).await;
    // Visibility and the other fields.
    let (status, svc) = h
        .call(Method::PATCH, "/api/v1/services/svc", Some(admin),
            Some(json!({"visibility": "public", "timeout_ms": 1500, "stop_on_failure": true, "description": "d"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{svc}");
    assert_eq!(svc["visibility"], "public");
    assert_eq!(svc["timeout_ms"], 1500);
    assert_eq!(svc["stop_on_failure"], true);
    assert_eq!(svc["algorithm"], "mirror");
    assert_eq!(svc["batch"], 2);
    let snap = snapshot(&h).await;
    let entry = snap.services.iter().find(|s| s.name == "svc").unwrap();
    assert_eq!(entry.visibility, proto::control::Visibility::Public);
    assert_eq!(entry.workers, vec!["w2".to_string()]);
    assert_eq!(entry.algorithm, proto::Algorithm::Mirror);
    assert_eq!(entry.batch, Some(2));
    assert_eq!(entry.timeout_ms, 1500);
    assert_eq!(entry.owner, "admin");
    // Deleting a bound worker unbinds it.
    assert_eq!(
        h.call(Method::DELETE, "/api/v1/workers/w2", Some(admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.get("/api/v1/services/svc", admin).await.1["workers"],
        json!([])
    );
    assert_eq!(
        h.call(Method::DELETE, "/api/v1/services/svc", Some(admin), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_error(&h.get("/api/v1/services/svc", admin).await, 404, "NotFound");
}

/// Refused creates (taken name, unknown worker, bad algorithm or timeout) leave nothing behind.
async fn refused_service_creates_leave_nothing(h: &Harness) {
    let admin = &h.admin_token;
    assert_error(
        &h.post("/api/v1/services", admin, json!({"name": "svc"}))
            .await,
        409,
        "Conflict",
    );
    assert_error(
        &h.post(
            "/api/v1/services",
            admin,
            json!({"name": "s2", "workers": ["ghost"]}),
        )
        .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post(
            "/api/v1/services",
            admin,
            json!({"name": "s3", "algorithm": "random"}),
        )
        .await,
        400,
        "BadRequest",
    );
    assert_error(
        &h.post(
            "/api/v1/services",
            admin,
            json!({"name": "s4", "timeout": "soon"}),
        )
        .await,
        422,
        "Unprocessable",
    );
    // The failed creates left nothing behind.
    let (_, list) = h.get("/api/v1/services", admin).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

/// Workers added to and removed from a service, each once.
async fn service_workers_added_and_removed(h: &Harness) {
    let admin = &h.admin_token;
    // Workers add/remove.
    let (status, svc) = h
        .post(
            "/api/v1/services/svc/workers",
            admin,
            json!({"identity": "w2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{svc}");
    assert_eq!(svc["workers"], json!(["w1", "w2"]));
    assert_error(
        &h.post(
            "/api/v1/services/svc/workers",
            admin,
            json!({"identity": "w2"}),
        )
        .await,
        409,
        "Conflict",
    );
    assert_error(
        &h.post(
            "/api/v1/services/svc/workers",
            admin,
            json!({"identity": "ghost"}),
        )
        .await,
        422,
        "Unprocessable",
    );
    let (status, svc) = h
        .call(
            Method::DELETE,
            "/api/v1/services/svc/workers/w1",
            Some(admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(svc["workers"], json!(["w2"]));
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/services/svc/workers/w1",
            Some(admin),
            None,
        )
        .await,
        404,
        "NotFound",
    );
}

async fn directories_and_triggers(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let trigger = json!({"path": "/logs/t1", "plugin": "command/command", "service": "svc",
        "args": {"k": "v"}, "timeout": "5s", "mode": 0o755, "split": "lines"});
    directories_come_first(&h, &trigger).await;
    let id = create_the_trigger(&h, &trigger).await;
    trigger_hits_and_patch(&h, id).await;
    let (_, list) = h.get("/api/v1/directories", admin).await;
    assert_eq!(list[0]["n_triggers"], 1);
    assert_eq!(
        h.call(
            Method::DELETE,
            &format!("/api/v1/triggers/{id}"),
            Some(admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.call(
            Method::DELETE,
            "/api/v1/directories/logs",
            Some(admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/directories/logs",
            Some(admin),
            None,
        )
        .await,
        404,
        "NotFound",
    );
}

/// A trigger needs its directory; directories are unique and well named, and a nested one
/// needs its parent (see `directories.rs`).
async fn directories_come_first(h: &Harness, trigger: &Value) {
    let admin = &h.admin_token;
    assert_error(
        &h.post("/api/v1/triggers", admin, trigger.clone()).await,
        422,
        "Unprocessable",
    );
    let (status, dir) = h
        .post("/api/v1/directories", admin, json!({"path": "/logs"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{dir}");
    assert_eq!(dir["path"], "/logs");
    assert_error(
        &h.post("/api/v1/directories", admin, json!({"path": "/logs"}))
            .await,
        409,
        "Conflict",
    );
    assert_error(
        &h.post("/api/v1/directories", admin, json!({"path": "/a/b"}))
            .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post("/api/v1/directories", admin, json!({"path": "/logs/../x"}))
            .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post("/api/v1/directories", admin, json!({"path": "/.."}))
            .await,
        422,
        "Unprocessable",
    );
}

/// Creates service svc and the trigger (refused twice, and /logs then cannot go); returns its id.
async fn create_the_trigger(h: &Harness, trigger: &Value) -> i64 {
    let admin = &h.admin_token;
    // A trigger names an existing service.
    let (status, body) = h
        .post("/api/v1/services", admin, json!({"name": "svc"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, t) = h.post("/api/v1/triggers", admin, trigger.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["path"], "/logs/t1");
    assert_eq!(t["mode"], 0o755);
    assert_eq!(t["split"], "lines");
    assert_eq!(t["timeout_ms"], 5000);
    assert_eq!(t["args"], json!({"k": "v"}));
    assert_eq!(t["hits"], 0);
    let id = t["id"].as_i64().unwrap();
    assert_error(
        &h.post("/api/v1/triggers", admin, trigger.clone()).await,
        409,
        "Conflict",
    );
    let mut bad_mode = trigger.clone();
    bad_mode["path"] = json!("/logs/t2");
    bad_mode["mode"] = json!(0o17777);
    assert_error(
        &h.post("/api/v1/triggers", admin, bad_mode).await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/directories/logs",
            Some(admin),
            None,
        )
        .await,
        409,
        "Conflict",
    );
    id
}

/// Hits count up; a patch keeps them; unknown ids are 404.
async fn trigger_hits_and_patch(h: &Harness, id: i64) {
    let admin = &h.admin_token;
    let (status, hit) = h
        .post(&format!("/api/v1/triggers/{id}/hits"), admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{hit}");
    assert_eq!(hit["hits"], 1);
    let (_, hit) = h
        .post(
            &format!("/api/v1/triggers/{id}/hits"),
            admin,
            json!({"count": 4}),
        )
        .await;
    assert_eq!(hit["hits"], 5);
    let (status, t) = h
        .call(
            Method::PATCH,
            &format!("/api/v1/triggers/{id}"),
            Some(admin),
            Some(json!({"plugin": "echo", "mode": 0o600})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["plugin"], "echo");
    assert_eq!(t["mode"], 0o600);
    assert_eq!(t["split"], "lines");
    assert_eq!(
        h.get(&format!("/api/v1/triggers/{id}"), admin).await.1["hits"],
        5
    );
    assert_error(&h.get("/api/v1/triggers/abc", admin).await, 404, "NotFound");
    assert_error(
        &h.get("/api/v1/triggers/99999999999999999999999", admin)
            .await,
        404,
        "NotFound",
    );
    assert_error(
        &h.get("/api/v1/triggers/424242", admin).await,
        404,
        "NotFound",
    );
}

async fn quotas(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, q) = h.get("/api/v1/teams/main/quota", admin).await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["max_triggers"], Value::Null);
    let (status, q) = h
        .call(
            Method::PUT,
            "/api/v1/teams/main/quota",
            Some(admin),
            Some(json!({"preset": "free"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{q}");
    assert_eq!(q["max_workers"], 2);
    assert_eq!(q["max_services"], 1);
    assert_eq!(q["max_triggers"], 3);
    assert_eq!(q["max_users"], 2);
    assert_error(
        &h.call(
            Method::PUT,
            "/api/v1/teams/main/quota",
            Some(admin),
            Some(json!({"preset": "gold"})),
        )
        .await,
        400,
        "BadRequest",
    );
    the_free_preset_is_enforced(&h).await;
    // Explicit limits; unlimited again.
    let (status, q) = h
        .call(
            Method::PUT,
            "/api/v1/teams/main/quota",
            Some(admin),
            Some(json!({"max_triggers": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(q["max_triggers"], 10);
    assert_eq!(q["max_workers"], Value::Null);
    assert_eq!(
        h.post(
            "/api/v1/triggers",
            admin,
            json!({"path": "/d/t4", "plugin": "echo", "service": "s"})
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // Only operators set quotas.
    let u2 = h.login("main", "u2", "s").await;
    assert_error(
        &h.call(
            Method::PUT,
            "/api/v1/teams/main/quota",
            Some(&u2),
            Some(json!({"preset": "unlimited"})),
        )
        .await,
        403,
        "Forbidden",
    );
}

/// Under the free preset the 4th trigger, 2nd service, 3rd worker and 3rd user (the
/// operator is not counted) are refused.
async fn the_free_preset_is_enforced(h: &Harness) {
    let admin = &h.admin_token;
    assert_eq!(
        h.post("/api/v1/directories", admin, json!({"path": "/d"}))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, body) = h
        .post("/api/v1/services", admin, json!({"name": "s"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for i in 1..=3 {
        let (status, body) = h
            .post(
                "/api/v1/triggers",
                admin,
                json!({"path": format!("/d/t{i}"), "plugin": "echo", "service": "s"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let fourth = h
        .post(
            "/api/v1/triggers",
            admin,
            json!({"path": "/d/t4", "plugin": "echo", "service": "s"}),
        )
        .await;
    assert_error(&fourth, 403, "QuotaExceeded");
    assert_eq!(fourth.1["message"], "team main allows 3 triggers");
    // `s` above is the free tier's one service.
    assert_error(
        &h.post("/api/v1/services", admin, json!({"name": "s2"}))
            .await,
        403,
        "QuotaExceeded",
    );
    for w in ["w1", "w2"] {
        assert_eq!(
            h.post("/api/v1/workers", admin, json!({"identity": w}))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    assert_error(
        &h.post("/api/v1/workers", admin, json!({"identity": "w3"}))
            .await,
        403,
        "QuotaExceeded",
    );
    // The operator is not counted: u2 and u3 fit, u4 does not.
    for identity in ["u2", "u3"] {
        assert_eq!(
            h.post(
                "/api/v1/teams/main/members",
                admin,
                json!({"identity": identity, "secret": "s"})
            )
            .await
            .0,
            StatusCode::CREATED
        );
    }
    assert_error(
        &h.post(
            "/api/v1/teams/main/members",
            admin,
            json!({"identity": "u4", "secret": "s"}),
        )
        .await,
        403,
        "QuotaExceeded",
    );
    let (_, q) = h.get("/api/v1/teams/main/quota", admin).await;
    assert_eq!(
        q["used"],
        json!({"workers": 2, "services": 1, "triggers": 3, "users": 2})
    );
}

async fn broker_endpoints(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    assert_error(
        &h.call(Method::GET, "/api/v1/broker/snapshot", None, None)
            .await,
        401,
        "Unauthorized",
    );
    assert_error(
        &h.get("/api/v1/broker/snapshot", admin).await,
        401,
        "Unauthorized",
    );
    assert_error(
        &h.get("/api/v1/broker/snapshot", "wrong").await,
        401,
        "Unauthorized",
    );
    h.post("/api/v1/workers", admin, json!({"identity": "w1"}))
        .await;
    h.post(
        "/api/v1/services",
        admin,
        json!({"name": "svc", "workers": ["w1"], "visibility": "team"}),
    )
    .await;
    let snap = snapshot(&h).await;
    assert_eq!(snap.teams, vec!["main".to_string()]);
    assert_eq!(snap.jwt_secret_hex.len(), 64);
    assert_eq!(snap.services[0].workers, vec!["w1".to_string()]);
    assert_eq!(
        snap.services[0].visibility,
        proto::control::Visibility::Team
    );
    assert_eq!(snap.revision, 3, "bootstrap, worker, service");
    let at = 1_700_000_000_000u64;
    let report = proto::control::BrokerReport {
        workers: vec![
            proto::control::WorkerStateReport {
                team: "main".into(),
                identity: "w1".into(),
                state: proto::control::WorkerState::Online,
                at_unix_ms: at,
                generation: 1,
                services: vec!["logs".into()],
            },
            proto::control::WorkerStateReport {
                team: "main".into(),
                identity: "ghost".into(),
                state: proto::control::WorkerState::Online,
                at_unix_ms: at,
                generation: 2,
                services: vec![],
            },
        ],
        full: false,
        node: None,
    };
    let body = serde_json::to_value(&report).unwrap();
    assert_error(
        &h.post("/api/v1/broker/report", admin, body.clone()).await,
        401,
        "Unauthorized",
    );
    let (status, answer) = h
        .post("/api/v1/broker/report", &h.broker_token(), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["updated"], 1);
    let (_, w) = h.get("/api/v1/workers/w1", admin).await;
    assert_eq!(w["state"], "ONLINE");
    assert_eq!(w["last_seen"], "2023-11-14T22:13:20.000Z");
    assert_eq!(w["announces"], serde_json::json!(["logs"]));
    assert_eq!(w["visibility"], "team");
    let name = snap.services[0].name.clone();
    let (_, service) = h.get(&format!("/api/v1/services/{name}"), admin).await;
    assert_eq!(service["serving"], serde_json::json!(["w1"]), "{service}");

    // A broker that (re)connects lists every worker online at it: w1, left ONLINE by a
    // crash, is not among them and becomes DISCONNECTED.
    let full = proto::control::BrokerReport {
        workers: vec![],
        full: true,
        node: None,
    };
    let (status, answer) = h
        .post(
            "/api/v1/broker/report",
            &h.broker_token(),
            serde_json::to_value(&full).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, w) = h.get("/api/v1/workers/w1", admin).await;
    assert_eq!(w["state"], "DISCONNECTED");
    let (_, service) = h.get(&format!("/api/v1/services/{name}"), admin).await;
    assert_eq!(service["serving"], serde_json::json!([]), "{service}");
}

/// Reads SSE `event: config` data lines from a response until `want` matches or 1 s passes.
async fn next_config_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
) -> Option<proto::control::ConfigEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: config") {
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                return serde_json::from_str(data).ok();
            }
            continue;
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .ok()??
            .ok()?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn events_stream(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    assert_error(
        &h.call(Method::GET, "/api/v1/events", None, None).await,
        401,
        "Unauthorized",
    );
    let broker = h
        .http
        .get(h.url("/api/v1/events"))
        .bearer_auth(h.broker_token())
        .send()
        .await
        .unwrap();
    assert_eq!(broker.status(), StatusCode::OK);
    assert!(broker.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut broker_stream = broker.bytes_stream();
    let mut broker_buf = String::new();
    // A second team's member subscribes too: they must not see main's events.
    h.post("/api/v1/teams", admin, json!({"name": "teamb"}))
        .await;
    h.post(
        "/api/v1/teams/teamb/members",
        admin,
        json!({"identity": "bob", "secret": "b"}),
    )
    .await;
    let bob = h.login("teamb", "bob", "b").await;
    let bob_resp = h
        .http
        .get(h.url("/api/v1/events"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(bob_resp.status(), StatusCode::OK);
    let mut bob_stream = bob_resp.bytes_stream();
    let mut bob_buf = String::new();
    // Skip the events of the set-up above on the broker's stream.
    let e1 = next_config_event(&mut broker_stream, &mut broker_buf)
        .await
        .unwrap();
    assert_eq!((e1.object, e1.action), (Object::Team, Action::Created));
    let e2 = next_config_event(&mut broker_stream, &mut broker_buf)
        .await
        .unwrap();
    assert_eq!((e2.object, e2.name.as_str()), (Object::User, "bob"));
    assert!(e2.revision > e1.revision);

    let (status, _) = h
        .post("/api/v1/services", admin, json!({"name": "fresh"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let e3 = next_config_event(&mut broker_stream, &mut broker_buf)
        .await
        .expect("service event within 1 s");
    assert_eq!(e3.team, "main");
    assert_eq!(e3.object, Object::Service);
    assert_eq!(e3.action, Action::Created);
    assert_eq!(e3.name, "fresh");
    assert!(e3.revision > e2.revision);
    // bob's first event is his own team's, not main's service.
    let bob_token = h.login("teamb", "bob", "b").await;
    let (status, _) = h
        .post("/api/v1/workers", &bob_token, json!({"identity": "bw"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let seen = next_config_event(&mut bob_stream, &mut bob_buf)
        .await
        .expect("bob's event within 1 s");
    assert_eq!(seen.team, "teamb");
    assert_eq!(seen.object, Object::Worker);
    assert_eq!(seen.name, "bw");
}

async fn gateway_without_broker(backend: Backend) {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::start_with(backend, Some(closed.to_string())).await;
    let body = json!({"plugin": "command/command", "command": "uptime"});
    let answer = h
        .post(
            "/api/v1/services/demo/requests",
            &h.admin_token,
            body.clone(),
        )
        .await;
    assert_error(&answer, 503, "ServiceUnavailable");
    assert_error(
        &h.post(
            "/api/v1/services/demo/requests",
            &h.admin_token,
            json!({"plugin": "../x"}),
        )
        .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/api/v1/services/demo/requests",
            None,
            Some(body),
        )
        .await,
        401,
        "Unauthorized",
    );
    let h2 = Harness::start(backend).await;
    let answer = h2
        .post(
            "/api/v1/services/demo/requests",
            &h2.admin_token,
            json!({"plugin": "echo", "command": ["a", "b"]}),
        )
        .await;
    assert_error(&answer, 503, "ServiceUnavailable");
}

async fn metrics_count_requests(backend: Backend) {
    let h = Harness::start(backend).await;
    for _ in 0..3 {
        h.get("/api/v1/workers", &h.admin_token).await;
    }
    h.call(Method::GET, "/nowhere", None, None).await;
    let text = h
        .http
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"triggerfs_control_http_requests_total{method="GET",route="/api/v1/workers",status="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/api/v1/login",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("triggerfs_control_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

/// A row whose stored text names no known value (edited by hand, or by a newer version) is
/// never read as a default: the snapshot and lists leave it out, reading it answers Internal.
async fn unreadable_rows(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    assert_eq!(
        h.post("/api/v1/workers", admin, json!({"identity": "w1"}))
            .await
            .0,
        201
    );
    for name in ["good", "bad"] {
        let body =
            json!({"name": name, "algorithm": "mirror", "visibility": "team", "workers": ["w1"]});
        assert_eq!(h.post("/api/v1/services", admin, body).await.0, 201);
    }
    assert_eq!(
        h.post("/api/v1/directories", admin, json!({"path": "/d"}))
            .await
            .0,
        201
    );
    let trigger = json!({"path": "/d/t", "plugin": "echo", "service": "good"});
    let (status, created) = h.post("/api/v1/triggers", admin, trigger).await;
    assert_eq!(status, 201, "{created}");
    h.execute_sql("UPDATE services SET algorithm = 'random' WHERE name = 'bad'")
        .await;
    h.execute_sql("UPDATE workers SET state = 'ASLEEP'").await;
    h.execute_sql("UPDATE triggers SET split = 'words'").await;

    let names = |snap: proto::control::BrokerSnapshot| -> Vec<String> {
        snap.services.into_iter().map(|s| s.name).collect()
    };
    assert_eq!(names(snapshot(&h).await), ["good"]);
    let (status, list) = h.get("/api/v1/services", admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_error(&h.get("/api/v1/services/bad", admin).await, 500, "Internal");
    assert_eq!(h.get("/api/v1/workers", admin).await.1, json!([]));
    assert_error(&h.get("/api/v1/workers/w1", admin).await, 500, "Internal");
    assert_eq!(h.get("/api/v1/triggers", admin).await.1, json!([]));
    let path = format!("/api/v1/triggers/{}", created["id"]);
    assert_error(&h.get(&path, admin).await, 500, "Internal");

    // Writing a known value through the API makes the row readable again.
    let (status, fixed) = h
        .call(
            Method::PATCH,
            "/api/v1/services/bad",
            Some(admin),
            Some(json!({"algorithm": "serial"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    assert_eq!(fixed["algorithm"], "serial");
    assert_eq!(names(snapshot(&h).await), ["bad", "good"]);
}

async fn call_status(
    h: &Harness,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> StatusCode {
    h.call(method, path, Some(token), body).await.0
}

/// What an admin's JWT can do with valid input never leaves a team without an admin, nor the
/// operator without a team to log in to: each is refused with 409 and a message that says
/// what to do instead.
async fn no_lockout(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let last_admin = |answer: &(StatusCode, Value)| {
        assert_error(answer, 409, "Conflict");
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains("last admin of team main"), "{message}");
    };
    // The operator is main's only admin: it cannot leave, be demoted, or delete main.
    last_admin(
        &h.call(
            Method::DELETE,
            "/api/v1/teams/main/members/admin",
            Some(admin),
            None,
        )
        .await,
    );
    last_admin(
        &h.call(
            Method::PATCH,
            "/api/v1/teams/main/members/admin",
            Some(admin),
            Some(json!({"role": "member"})),
        )
        .await,
    );
    assert_error(
        &h.call(Method::DELETE, "/api/v1/teams/main", Some(admin), None)
            .await,
        409,
        "Conflict",
    );
    // With a second admin the operator still cannot leave main: it is their only team.
    let (status, body) = h
        .post(
            "/api/v1/teams/main/members",
            admin,
            json!({"identity": "second", "secret": "second-secret", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = h.login("main", "second", "second-secret").await;
    for token in [admin, &second] {
        let answer = h
            .call(
                Method::DELETE,
                "/api/v1/teams/main/members/admin",
                Some(token),
                None,
            )
            .await;
        assert_error(&answer, 409, "Conflict");
        let message = answer.1["message"].as_str().unwrap();
        assert!(message.contains("only team of operator admin"), "{message}");
    }
    second_admin_demotes_then_restores_the_operator(&h, &second).await;
    // The operator logs in as before.
    let again = h.login("main", "admin", &h.admin.secret).await;
    assert_eq!(h.get("/api/v1/teams/main", &again).await.1["role"], "admin");
    operator_keeps_main_but_not_its_other_team(&h, &second).await;
}

/// The second admin demotes the operator, becomes main's last admin, and promotes it back.
async fn second_admin_demotes_then_restores_the_operator(h: &Harness, second: &str) {
    // Demoting the operator is not a lockout (another admin remains, the operator can still
    // log in); removing them, demoted, from their only team still is.
    assert_eq!(
        call_status(
            h,
            Method::PATCH,
            "/api/v1/teams/main/members/admin",
            second,
            Some(json!({"role": "member"}))
        )
        .await,
        StatusCode::OK
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/teams/main/members/admin",
            Some(second),
            None,
        )
        .await,
        409,
        "Conflict",
    );
    // Now `second` is main's last admin, and cannot demote or remove itself either.
    assert_error(
        &h.call(
            Method::PATCH,
            "/api/v1/teams/main/members/second",
            Some(second),
            Some(json!({"role": "member"})),
        )
        .await,
        409,
        "Conflict",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/teams/main/members/second",
            Some(second),
            None,
        )
        .await,
        409,
        "Conflict",
    );
    assert_eq!(
        call_status(
            h,
            Method::PATCH,
            "/api/v1/teams/main/members/admin",
            second,
            Some(json!({"role": "admin"}))
        )
        .await,
        StatusCode::OK
    );
}

/// With a team of its own elsewhere, the operator still may not leave main; that other team may go.
async fn operator_keeps_main_but_not_its_other_team(h: &Harness, second: &str) {
    let admin = &h.admin_token;
    // With a team of its own elsewhere, the operator still may not leave main, nor delete
    // it: main is the install's team, which `up` logs in to (see `the_install_team_stays`).
    assert_eq!(
        call_status(
            h,
            Method::POST,
            "/api/v1/teams",
            admin,
            Some(json!({"name": "other"}))
        )
        .await,
        StatusCode::CREATED
    );
    let answer = h
        .call(
            Method::DELETE,
            "/api/v1/teams/main/members/admin",
            Some(second),
            None,
        )
        .await;
    assert_error(&answer, 409, "Conflict");
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains("install's team"), "{message}");
    // An operator's other team, which is not its only one, may go.
    let other = h.login("other", "admin", &h.admin.secret).await;
    assert_eq!(
        call_status(h, Method::DELETE, "/api/v1/teams/other", &other, None).await,
        StatusCode::NO_CONTENT
    );
}

/// Two admins demoting each other at the same moment: one may win, never both (the check
/// runs in the change's transaction, after the write lock).
async fn no_lockout_under_concurrent_demotions(backend: Backend) {
    let h = Harness::start(backend).await;
    for round in 0..8 {
        let team = format!("race{round}");
        assert_eq!(
            call_status(
                &h,
                Method::POST,
                "/api/v1/teams",
                &h.admin_token,
                Some(json!({"name": team}))
            )
            .await,
            StatusCode::CREATED
        );
        let path = format!("/api/v1/teams/{team}/members");
        let body =
            json!({"identity": format!("peer{round}"), "secret": "peer-secret", "role": "admin"});
        assert_eq!(
            call_status(&h, Method::POST, &path, &h.admin_token, Some(body)).await,
            StatusCode::CREATED
        );
        let admin = h.login(&team, "admin", &h.admin.secret).await;
        let peer = h.login(&team, &format!("peer{round}"), "peer-secret").await;
        let demote = |token: String, who: String| {
            let h = &h;
            let path = format!("/api/v1/teams/{team}/members/{who}");
            async move {
                call_status(
                    h,
                    Method::PATCH,
                    &path,
                    &token,
                    Some(json!({"role": "member"})),
                )
                .await
            }
        };
        let (a, b) = tokio::join!(
            demote(admin.clone(), format!("peer{round}")),
            demote(peer, "admin".to_string())
        );
        let wins = [a, b].iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(wins, 1, "round {round}: {a} and {b}");
        let (_, members) = h.get(&path, &h.admin_token).await;
        let admins = members
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "admin")
            .count();
        assert_eq!(admins, 1, "round {round}: {members}");
    }
}

/// `max_teams`: operators read and set it, nobody else; unknown users are 404; an operator's
/// stays unlimited; every change bumps the revision.
async fn users_max_teams(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, me) = h.get("/api/v1/users/admin", admin).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["operator"], true);
    assert_eq!(me["max_teams"], Value::Null);
    assert_eq!(
        call_status(
            &h,
            Method::POST,
            "/api/v1/teams/main/members",
            admin,
            Some(json!({"identity": "bob", "secret": "bob-secret"}))
        )
        .await,
        StatusCode::CREATED
    );
    let (status, bob_view) = h.get("/api/v1/users/bob", admin).await;
    assert_eq!(status, StatusCode::OK, "{bob_view}");
    assert_eq!(bob_view["operator"], false);
    assert_eq!(bob_view["max_teams"], 1);
    assert_eq!(bob_view["max_teams_from"], "tier");
    assert_eq!(bob_view["teams_created"], 0);
    assert!(bob_view["created"].as_str().unwrap().ends_with('Z'));

    // bob may create one team; then he is an admin (of that team), but no operator.
    let bob = h.login("main", "bob", "bob-secret").await;
    assert_eq!(
        call_status(
            &h,
            Method::POST,
            "/api/v1/teams",
            &bob,
            Some(json!({"name": "bobs"}))
        )
        .await,
        StatusCode::CREATED
    );
    assert_error(
        &h.post("/api/v1/teams", &bob, json!({"name": "bobs2"}))
            .await,
        403,
        "QuotaExceeded",
    );
    let bob_admin = h.login("bobs", "bob", "bob-secret").await;
    for token in [&bob, &bob_admin] {
        assert_error(&h.get("/api/v1/users/bob", token).await, 403, "Forbidden");
        assert_error(&h.get("/api/v1/users/admin", token).await, 403, "Forbidden");
        assert_error(
            &h.call(
                Method::PATCH,
                "/api/v1/users/bob",
                Some(token),
                Some(json!({"max_teams": 5})),
            )
            .await,
            403,
            "Forbidden",
        );
    }
    // Non-operators learn nothing about who exists.
    assert_error(&h.get("/api/v1/users/nobody", &bob).await, 403, "Forbidden");

    operator_changes_bobs_limit(&h, &bob).await;
    max_teams_refusals_and_the_operators_limit(&h).await;
}

/// The operator raises bob's limit (one change, one revision); 0 allows none; null gives the
/// say back to the tiers of his teams (free: 1).
async fn operator_changes_bobs_limit(h: &Harness, bob: &str) {
    let admin = &h.admin_token;
    // The operator raises bob's limit: one change, one revision.
    let before = snapshot(h).await.revision;
    let (status, body) = h
        .call(
            Method::PATCH,
            "/api/v1/users/bob",
            Some(admin),
            Some(json!({"max_teams": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["max_teams"], 2);
    assert_eq!(body["max_teams_from"], "user");
    assert_eq!(body["teams_created"], 1);
    assert_eq!(snapshot(h).await.revision, before + 1);
    assert_eq!(
        call_status(
            h,
            Method::POST,
            "/api/v1/teams",
            bob,
            Some(json!({"name": "bobs2"}))
        )
        .await,
        StatusCode::CREATED
    );
    // 0 allows none; null follows the tier.
    let (_, body) = h
        .call(
            Method::PATCH,
            "/api/v1/users/bob",
            Some(admin),
            Some(json!({"max_teams": 0})),
        )
        .await;
    assert_eq!(body["max_teams"], 0);
    let (_, body) = h
        .call(
            Method::PATCH,
            "/api/v1/users/bob",
            Some(admin),
            Some(json!({"max_teams": null})),
        )
        .await;
    assert_eq!(body["max_teams"], 1, "{body}");
    assert_eq!(body["max_teams_from"], "tier");
    assert_error(
        &h.post("/api/v1/teams", bob, json!({"name": "bobs3"})).await,
        403,
        "QuotaExceeded",
    );
}

/// Refused limits, unknown users, and an operator's limit that stays unlimited.
async fn max_teams_refusals_and_the_operators_limit(h: &Harness) {
    let admin = &h.admin_token;
    // Leaving the limit out is not "unlimited": it is refused, as are negative limits and
    // unknown fields.
    for (body, status, code) in [
        (json!({}), 400, "BadRequest"),
        (json!({"max_teams": -1}), 422, "Unprocessable"),
        (json!({"max_teams": 1, "operator": true}), 400, "BadRequest"),
        (json!({"max_teams": "many"}), 400, "BadRequest"),
    ] {
        assert_error(
            &h.call(Method::PATCH, "/api/v1/users/bob", Some(admin), Some(body))
                .await,
            status,
            code,
        );
    }
    // Unknown users.
    assert_error(&h.get("/api/v1/users/nobody", admin).await, 404, "NotFound");
    assert_error(
        &h.call(
            Method::PATCH,
            "/api/v1/users/nobody",
            Some(admin),
            Some(json!({"max_teams": 1})),
        )
        .await,
        404,
        "NotFound",
    );
    // An operator's teams stay unlimited; `null` changes nothing and bumps nothing.
    let answer = h
        .call(
            Method::PATCH,
            "/api/v1/users/admin",
            Some(admin),
            Some(json!({"max_teams": 3})),
        )
        .await;
    assert_error(&answer, 409, "Conflict");
    assert!(answer.1["message"].as_str().unwrap().contains("operator"));
    let before = snapshot(h).await.revision;
    let (status, body) = h
        .call(
            Method::PATCH,
            "/api/v1/users/admin",
            Some(admin),
            Some(json!({"max_teams": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["max_teams"], Value::Null);
    assert_eq!(snapshot(h).await.revision, before);
}

/// Makes directories `dirs`, a service `svc` and triggers at `paths` (bound to `svc`);
/// returns the triggers' ids.
async fn triggers_in(h: &Harness, dirs: &[&str], paths: &[&str]) -> Vec<i64> {
    let admin = &h.admin_token;
    for dir in dirs {
        let answer = h
            .post("/api/v1/directories", admin, json!({"path": dir}))
            .await;
        assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);
    }
    let answer = h
        .post("/api/v1/services", admin, json!({"name": "svc"}))
        .await;
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);
    let mut ids = Vec::new();
    for path in paths {
        let body = json!({"path": path, "plugin": "command/command", "service": "svc"});
        let (status, t) = h.post("/api/v1/triggers", admin, body).await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        ids.push(t["id"].as_i64().unwrap());
    }
    ids
}

/// Asserts an error answer whose message says `text`.
#[track_caller]
fn assert_error_says(answer: &(StatusCode, Value), status: u16, code: &str, text: &str) {
    assert_error(answer, status, code);
    let message = answer.1["message"].as_str().unwrap_or_default();
    assert!(message.contains(text), "`{text}` not in {}", answer.1);
}

async fn patch(h: &Harness, path: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::PATCH, path, Some(&h.admin_token), Some(body))
        .await
}

/// The admin's own `/events` stream.
async fn admin_events(
    h: &Harness,
) -> impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin {
    let resp = h
        .http
        .get(h.url("/api/v1/events"))
        .bearer_auth(&h.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.bytes_stream()
}

/// `PATCH /api/v1/triggers/{id}` with `path`: a rename in its directory, a move to another
/// (with another change in the same call), 409 on a taken path, 422 on a missing directory;
/// each rename bumps the revision and emits one `renamed` event naming the new path.
async fn trigger_rename_and_move(backend: Backend) {
    let h = Harness::start(backend).await;
    let ids = triggers_in(&h, &["/logs", "/archive"], &["/logs/t1", "/logs/t2"]).await;
    let url = format!("/api/v1/triggers/{}", ids[0]);
    let mut events = admin_events(&h).await;
    let mut buf = String::new();

    // Renamed within its directory.
    let before = snapshot(&h).await.revision;
    let (status, t) = patch(&h, &url, json!({"path": "/logs/renamed"})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["path"], "/logs/renamed");
    assert_eq!(t["name"], "renamed");
    assert_eq!(t["directory"], "logs");
    assert_eq!(t["id"], ids[0]);
    let event = next_config_event(&mut events, &mut buf)
        .await
        .expect("an event for the rename within 1 s");
    assert_eq!(
        (
            event.team.as_str(),
            event.object,
            event.action,
            event.name.as_str()
        ),
        ("main", Object::Trigger, Action::Renamed, "/logs/renamed")
    );
    assert_eq!(event.revision, before + 1);
    assert_eq!(snapshot(&h).await.revision, before + 1);

    // Moved to another directory, with another change in the same call.
    let (status, t) = patch(&h, &url, json!({"path": "/archive/t1", "mode": 0o600})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["path"], "/archive/t1");
    assert_eq!(t["directory"], "archive");
    assert_eq!(t["mode"], 0o600);
    let event = next_config_event(&mut events, &mut buf)
        .await
        .expect("an event for the move within 1 s");
    assert_eq!(
        (event.action, event.name.as_str()),
        (Action::Renamed, "/archive/t1")
    );
    let (_, dirs) = h.get("/api/v1/directories", &h.admin_token).await;
    let n_triggers = |name: &str| {
        dirs.as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["n_triggers"].clone())
    };
    assert_eq!(n_triggers("archive"), Some(json!(1)), "{dirs}");
    assert_eq!(n_triggers("logs"), Some(json!(1)), "{dirs}");
    let (_, got) = h.get(&url, &h.admin_token).await;
    assert_eq!(got["path"], "/archive/t1");

    // The same path again is no rename: an `updated` event.
    let (status, t) = patch(&h, &url, json!({"path": "/archive/t1"})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let event = next_config_event(&mut events, &mut buf).await.unwrap();
    assert_eq!(
        (event.action, event.name.as_str()),
        (Action::Updated, "/archive/t1")
    );

    refused_renames_change_nothing(&h, &url, ids[1]).await;
}

/// Renames to a taken path, a missing or foreign directory, or a bad path change nothing.
async fn refused_renames_change_nothing(h: &Harness, url: &str, other_id: i64) {
    // A taken path: 409, and nothing changes (not even the other fields of the call).
    let before = snapshot(h).await.revision;
    let answer = patch(h, url, json!({"path": "/logs/t2", "mode": 0o644})).await;
    assert_error_says(&answer, 409, "Conflict", "/logs/t2");
    // A directory the team does not have: 422, saying so.
    let answer = patch(h, url, json!({"path": "/nowhere/t1"})).await;
    assert_error_says(&answer, 422, "Unprocessable", "no directory /nowhere");
    for bad in ["logs/t1", "/logs", "/logs/a/b", "/../t1", "/logs/.."] {
        assert_error(
            &patch(h, url, json!({"path": bad})).await,
            422,
            "Unprocessable",
        );
    }
    let (_, got) = h.get(url, &h.admin_token).await;
    assert_eq!(
        (got["path"].clone(), got["mode"].clone()),
        (json!("/archive/t1"), json!(0o600))
    );
    assert_eq!(snapshot(h).await.revision, before);
    let (_, t2) = h
        .get(&format!("/api/v1/triggers/{}", other_id), &h.admin_token)
        .await;
    assert_eq!(t2["path"], "/logs/t2");
    // Another team's directory is not the caller's.
    let (status, body) = h
        .post("/api/v1/teams", &h.admin_token, json!({"name": "other"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other = h.login("other", "admin", &h.admin.secret).await;
    let (status, body) = h
        .post("/api/v1/directories", &other, json!({"path": "/elsewhere"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let answer = patch(h, url, json!({"path": "/elsewhere/t1"})).await;
    assert_error(&answer, 422, "Unprocessable");
}

/// `batch_lines`: 1000 unless given, 1 to 100000 on create and on update, kept by other
/// changes.
async fn trigger_batch_lines(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let ids = triggers_in(&h, &["/logs"], &["/logs/plain"]).await;
    let (_, t) = h.get(&format!("/api/v1/triggers/{}", ids[0]), admin).await;
    assert_eq!(t["batch_lines"], 1000, "{t}");
    let create = |name: &str, batch_lines: Value| {
        json!({"path": format!("/logs/{name}"), "plugin": "command/command", "service": "svc",
            "split": "lines", "batch_lines": batch_lines})
    };
    for (name, n) in [("one", 1), ("most", 100_000)] {
        let (status, t) = h
            .post("/api/v1/triggers", admin, create(name, json!(n)))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        assert_eq!(t["batch_lines"], n);
    }
    let (_, t) = h
        .post("/api/v1/triggers", admin, create("null", Value::Null))
        .await;
    assert_eq!(t["batch_lines"], 1000, "{t}");
    for n in [0, 100_001] {
        let answer = h
            .post("/api/v1/triggers", admin, create("bad", json!(n)))
            .await;
        assert_error(&answer, 422, "Unprocessable");
    }
    for bad in [json!(-1), json!(1.5), json!("10"), json!(u64::MAX)] {
        let answer = h.post("/api/v1/triggers", admin, create("bad", bad)).await;
        assert_error(&answer, 400, "BadRequest");
    }

    let url = format!("/api/v1/triggers/{}", ids[0]);
    let (status, t) = patch(&h, &url, json!({"batch_lines": 1})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["batch_lines"], 1);
    let (_, t) = patch(&h, &url, json!({"mode": 0o600})).await;
    assert_eq!(t["batch_lines"], 1, "another change keeps it");
    for n in [0, 100_001] {
        assert_error(
            &patch(&h, &url, json!({"batch_lines": n})).await,
            422,
            "Unprocessable",
        );
    }
    let (_, t) = h.get(&url, admin).await;
    assert_eq!(t["batch_lines"], 1);
    let (_, list) = h.get("/api/v1/triggers", admin).await;
    let all: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["batch_lines"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        all,
        [("most", 100_000), ("null", 1000), ("one", 1), ("plain", 1)]
    );
}

/// Counting hits changes no configuration: no revision, no event, the same `updated`.
async fn hits_are_not_configuration(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let ids = triggers_in(&h, &["/logs"], &["/logs/t1"]).await;
    let url = format!("/api/v1/triggers/{}", ids[0]);
    // A recognisable `updated`, so that any write of it shows.
    h.execute_sql("UPDATE triggers SET updated = 1").await;
    let (_, before_view) = h.get(&url, admin).await;
    assert_eq!(before_view["updated"], "1970-01-01T00:00:00.001Z");
    let mut events = admin_events(&h).await;
    let mut buf = String::new();
    let before = snapshot(&h).await.revision;
    for count in [1, 7, 0] {
        let (status, t) = h
            .post(&format!("{url}/hits"), admin, json!({"count": count}))
            .await;
        assert_eq!(status, StatusCode::OK, "{t}");
    }
    let (_, t) = h.get(&url, admin).await;
    assert_eq!(t["hits"], 8);
    assert_eq!(t["updated"], before_view["updated"]);
    assert_eq!(snapshot(&h).await.revision, before);
    // The next event is the next configuration change's, not a hit's.
    h.post("/api/v1/directories", admin, json!({"path": "/next"}))
        .await;
    let event = next_config_event(&mut events, &mut buf).await.unwrap();
    assert_eq!(
        (event.object, event.name.as_str()),
        (Object::Directory, "/next")
    );
    assert_eq!(event.revision, before + 1);
}

/// A trigger bound to a service its team cannot reach is refused (422), on create and on
/// update.
async fn trigger_service_must_exist(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let ids = triggers_in(&h, &["/logs"], &["/logs/t1"]).await;
    let create = |service: &str| json!({"path": "/logs/t2", "plugin": "command/command", "service": service});
    // Another team's service that is not public is out of reach too.
    let (status, body) = h
        .post("/api/v1/teams", admin, json!({"name": "other"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let other = h.login("other", "admin", &h.admin.secret).await;
    let (status, body) = h
        .post("/api/v1/services", &other, json!({"name": "private"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for missing in ["ghost", "other/private", "nosuchteam/svc"] {
        let says = format!("no service {missing}");
        let answer = h.post("/api/v1/triggers", admin, create(missing)).await;
        assert_error_says(&answer, 422, "Unprocessable", &says);
        let url = format!("/api/v1/triggers/{}", ids[0]);
        let answer = patch(&h, &url, json!({"service": missing})).await;
        assert_error_says(&answer, 422, "Unprocessable", &says);
        assert_eq!(h.get(&url, admin).await.1["service"], "svc");
    }
    let (status, t) = h.post("/api/v1/triggers", admin, create("svc")).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
}

async fn put(h: &Harness, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::PUT, path, Some(token), Some(body)).await
}

async fn delete(h: &Harness, path: &str, token: &str) -> (StatusCode, Value) {
    h.call(Method::DELETE, path, Some(token), None).await
}

/// Makes user `identity` (secret `secret`) as a member of `team`, through the admin.
async fn new_user(h: &Harness, team: &str, identity: &str, secret: &str) {
    let url = format!("/api/v1/teams/{team}/members");
    let body = json!({"identity": identity, "secret": secret});
    let answer = h.post(&url, &h.admin_token, body).await;
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);
}

fn identities(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["team"].as_str().unwrap(),
                i["identity"].as_str().unwrap()
            )
        })
        .collect()
}

/// Invitations: an admin invites an existing user, who accepts or declines; admins list and
/// withdraw them; nothing of them reaches plain members or other teams.
/// Invitations (a transaction that reads, then writes) made while other writes commit
/// (worker-state reports from the broker) all succeed: on SQLite a deferred transaction
/// would fail with "database is locked", a 500, when a write lands between its read and its
/// write (seen as a flake of the constraints test).
async fn invitations_made_while_others_write_never_fail(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    assert_eq!(
        h.post("/api/v1/teams", admin, json!({"name": "side"}))
            .await
            .0,
        StatusCode::CREATED
    );
    for i in 0..20 {
        new_user(&h, "side", &format!("inv{i}"), "inv-secret-1").await;
    }
    let token = h.broker_token();
    let report = json!({"workers": [], "full": true});
    let calls = (0..40).map(|i| {
        let (path, auth, body) = if i % 2 == 0 {
            (
                "/api/v1/teams/main/invitations".to_string(),
                admin.clone(),
                json!({"identity": format!("inv{}", i / 2)}),
            )
        } else {
            (
                "/api/v1/broker/report".to_string(),
                token.clone(),
                report.clone(),
            )
        };
        let h = &h;
        async move {
            let answer = h.post(&path, &auth, body).await;
            (path, answer)
        }
    });
    for (path, (status, body)) in futures::future::join_all(calls).await {
        assert!(status.is_success(), "{path}: {status} {body}");
    }
}

async fn invitations(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    // `side` holds the users who are not (yet) members of `main`.
    assert_eq!(
        h.post("/api/v1/teams", admin, json!({"name": "side"}))
            .await
            .0,
        StatusCode::CREATED
    );
    new_user(&h, "main", "carol", "carol-secret").await;
    for who in ["bob", "dave", "erin"] {
        new_user(&h, "side", who, &format!("{who}-secret")).await;
    }
    let carol = h.login("main", "carol", "carol-secret").await;
    let bob = h.login("side", "bob", "bob-secret").await;
    let dave = h.login("side", "dave", "dave-secret").await;

    let view = invite_bob_to_main(&h, &carol).await;

    others_learn_nothing_of_mains_invitations(&h, &carol, &dave).await;

    // The invited user sees it, from any team they act in.
    let (status, mine) = h.get("/api/v1/invitations", &bob).await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine, json!([view]));

    // Withdrawn by the admin: gone for both.
    let gone = delete(&h, "/api/v1/teams/main/invitations/bob", admin).await;
    assert_eq!(gone.0, StatusCode::NO_CONTENT, "{}", gone.1);
    assert_error(
        &delete(&h, "/api/v1/teams/main/invitations/bob", admin).await,
        404,
        "NotFound",
    );
    assert_eq!(h.get("/api/v1/invitations", &bob).await.1, json!([]));

    invitation_declined_then_accepted(&h, &bob).await;

    invitations_go_with_their_team_or_user(&h, &dave).await;
}

/// The refusals of an invitation, then main invites bob as an admin; returns the invitation.
async fn invite_bob_to_main(h: &Harness, carol: &str) -> Value {
    let admin = &h.admin_token;
    // A plain member may neither invite nor see or withdraw the team's invitations.
    let url = "/api/v1/teams/main/invitations";
    assert_error(
        &h.post(url, carol, json!({"identity": "bob"})).await,
        403,
        "Forbidden",
    );
    assert_error(&h.get(url, carol).await, 403, "Forbidden");
    // Refusals: no such user, already a member, unknown field, bad name.
    assert_error_says(
        &h.post(url, admin, json!({"identity": "ghost"})).await,
        422,
        "Unprocessable",
        "user ghost does not exist",
    );
    assert_error_says(
        &h.post(url, admin, json!({"identity": "carol"})).await,
        409,
        "Conflict",
        "already a member",
    );
    assert_error(
        &h.post(url, admin, json!({"identity": "bob", "secret": "x"}))
            .await,
        400,
        "BadRequest",
    );
    assert_error(
        &h.post(url, admin, json!({"identity": "a b"})).await,
        422,
        "Unprocessable",
    );
    let (status, view) = h
        .post(url, admin, json!({"identity": "bob", "role": "admin"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(view["team"], "main");
    assert_eq!(view["identity"], "bob");
    assert_eq!(view["role"], "admin");
    assert_eq!(view["invited_by"], "admin");
    assert!(view["created"].as_str().unwrap().ends_with('Z'), "{view}");
    assert_error_says(
        &h.post(url, admin, json!({"identity": "bob"})).await,
        409,
        "Conflict",
        "invitation",
    );
    let (status, list) = h.get(url, admin).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(identities(&list), ["main/bob"]);
    assert_eq!(list[0], view);
    assert_error(
        &delete(h, "/api/v1/teams/main/invitations/bob", carol).await,
        403,
        "Forbidden",
    );
    view
}

/// Another team's admin, plain members and outsiders learn nothing about main's invitations.
async fn others_learn_nothing_of_mains_invitations(h: &Harness, carol: &str, dave: &str) {
    let url = "/api/v1/teams/main/invitations";
    // Another team's admin learns nothing about main's invitations.
    assert_eq!(
        h.post("/api/v1/teams", dave, json!({"name": "teamb"}))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_error(&h.get(url, dave).await, 404, "NotFound");
    assert_error(
        &h.post(url, dave, json!({"identity": "erin"})).await,
        404,
        "NotFound",
    );
    assert_error(
        &delete(h, "/api/v1/teams/main/invitations/bob", dave).await,
        404,
        "NotFound",
    );
    let (status, list) = h.get("/api/v1/teams/teamb/invitations", dave).await;
    assert_eq!((status, list), (StatusCode::OK, json!([])));
    // Nor do plain members or outsiders through their own lists.
    assert_eq!(h.get("/api/v1/invitations", carol).await.1, json!([]));
    assert_eq!(h.get("/api/v1/invitations", dave).await.1, json!([]));
    assert_error(
        &h.call(
            Method::POST,
            "/api/v1/invitations/main/accept",
            Some(dave),
            None,
        )
        .await,
        404,
        "NotFound",
    );
}

/// bob declines an invitation, then accepts another: a member with the invited role.
async fn invitation_declined_then_accepted(h: &Harness, bob: &str) {
    let admin = &h.admin_token;
    let url = "/api/v1/teams/main/invitations";
    // Declined by the user: gone, and they did not join.
    assert_eq!(
        h.post(url, admin, json!({"identity": "bob"})).await.0,
        StatusCode::CREATED
    );
    let declined = delete(h, "/api/v1/invitations/main", bob).await;
    assert_eq!(declined.0, StatusCode::NO_CONTENT, "{}", declined.1);
    assert_error(
        &delete(h, "/api/v1/invitations/main", bob).await,
        404,
        "NotFound",
    );
    assert_eq!(h.get(url, admin).await.1, json!([]));
    let accept = |token: String| async move {
        h.call(
            Method::POST,
            "/api/v1/invitations/main/accept",
            Some(&token),
            None,
        )
        .await
    };
    assert_error(&accept(bob.to_string()).await, 404, "NotFound");

    // Accepted: a member with the invited role, a new revision, in the broker's snapshot.
    assert_eq!(
        h.post(url, admin, json!({"identity": "bob", "role": "admin"}))
            .await
            .0,
        StatusCode::CREATED
    );
    let broker = h.broker_token();
    let before = h.get("/api/v1/broker/snapshot", &broker).await.1["revision"]
        .as_u64()
        .unwrap();
    let (status, team) = accept(bob.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{team}");
    assert_eq!(team["name"], "main");
    assert_eq!(team["role"], "admin");
    let snapshot = h.get("/api/v1/broker/snapshot", &broker).await.1;
    assert!(
        snapshot["revision"].as_u64().unwrap() > before,
        "{snapshot}"
    );
    assert!(snapshot["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["team"] == "main" && m["identity"] == "bob"));
    let members = h.get("/api/v1/teams/main/members", admin).await.1;
    assert!(members
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["identity"] == "bob" && m["role"] == "admin"));
    assert_eq!(h.get(url, admin).await.1, json!([]));
    assert_eq!(h.get("/api/v1/invitations", bob).await.1, json!([]));
    h.login("main", "bob", "bob-secret").await;
    assert_error(&accept(bob.to_string()).await, 404, "NotFound");
}

/// Deleting the team, or the user, removes their invitations.
async fn invitations_go_with_their_team_or_user(h: &Harness, dave: &str) {
    let admin = &h.admin_token;
    let url = "/api/v1/teams/main/invitations";
    // Deleting the team, or the user, removes their invitations.
    let b_url = "/api/v1/teams/teamb/invitations";
    assert_eq!(
        h.post(b_url, dave, json!({"identity": "erin"})).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.post(url, admin, json!({"identity": "erin"})).await.0,
        StatusCode::CREATED
    );
    let erin = h.login("side", "erin", "erin-secret").await;
    assert_eq!(
        identities(&h.get("/api/v1/invitations", &erin).await.1),
        ["main/erin", "teamb/erin"]
    );
    assert_eq!(
        delete(h, "/api/v1/teams/teamb", dave).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        identities(&h.get("/api/v1/invitations", &erin).await.1),
        ["main/erin"]
    );
    h.execute_sql("DELETE FROM users WHERE identity = 'erin'")
        .await;
    assert_eq!(h.get(url, admin).await.1, json!([]));
}

/// Accepting checks the team's `max_users` then, as adding a member does; a refused accept
/// keeps the invitation.
async fn invitation_accept_respects_quota(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    assert_eq!(
        h.post("/api/v1/teams", admin, json!({"name": "side"}))
            .await
            .0,
        StatusCode::CREATED
    );
    new_user(&h, "main", "carol", "carol-secret").await;
    new_user(&h, "side", "bob", "bob-secret").await;
    let bob = h.login("side", "bob", "bob-secret").await;
    let quota = |n: i64| json!({"max_users": n});
    // carol is counted, the operator is not.
    let set = put(&h, "/api/v1/teams/main/quota", admin, quota(1)).await;
    assert_eq!(set.0, StatusCode::OK, "{}", set.1);
    // Inviting is allowed at the limit; joining is not.
    let (status, body) = h
        .post(
            "/api/v1/teams/main/invitations",
            admin,
            json!({"identity": "bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let accept = h
        .call(
            Method::POST,
            "/api/v1/invitations/main/accept",
            Some(&bob),
            None,
        )
        .await;
    assert_error(&accept, 403, "QuotaExceeded");
    assert_eq!(accept.1["message"], "team main allows 1 users");
    assert_eq!(
        identities(&h.get("/api/v1/invitations", &bob).await.1),
        ["main/bob"]
    );
    let set = put(&h, "/api/v1/teams/main/quota", admin, quota(2)).await;
    assert_eq!(set.0, StatusCode::OK, "{}", set.1);
    let (status, team) = h
        .call(
            Method::POST,
            "/api/v1/invitations/main/accept",
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{team}");
    assert_eq!(team["role"], "member");
    let used = h.get("/api/v1/teams/main/quota", admin).await.1;
    assert_eq!(used["used"]["users"], 2, "{used}");
}

/// A user changes their own secret: the old one no longer logs in, the new one does, and
/// every JWT issued before the change is refused (by the API here; by the broker through the
/// snapshot's `sgen`).
async fn secret_change(backend: Backend) {
    let h = Harness::start(backend).await;
    new_user(&h, "main", "carol", "old-secret").await;
    let carol = h.login("main", "carol", "old-secret").await;
    let url = "/api/v1/users/carol/secret";
    let change = |current: &str, new: &str| json!({"current": current, "new": new});
    // Only the user themself.
    assert_error_says(
        &put(&h, url, &h.admin_token, change(&h.admin.secret, "x")).await,
        403,
        "Forbidden",
        "only carol",
    );
    assert_error(
        &put(
            &h,
            "/api/v1/users/admin/secret",
            &carol,
            change("old-secret", "x"),
        )
        .await,
        403,
        "Forbidden",
    );
    assert_error_says(
        &put(&h, url, &carol, change("wrong", "new-secret")).await,
        403,
        "Forbidden",
        "current secret",
    );
    assert_error(
        &put(&h, url, &carol, change("old-secret", "")).await,
        422,
        "Unprocessable",
    );
    assert_error(
        &put(&h, url, &carol, change("old-secret", &"x".repeat(1025))).await,
        422,
        "Unprocessable",
    );
    assert_error(
        &put(&h, url, &carol, json!({"current": "old-secret"})).await,
        400,
        "BadRequest",
    );
    // Nothing changed so far.
    let still = h.get("/api/v1/teams", &carol).await;
    assert_eq!(still.0, StatusCode::OK, "{}", still.1);

    let (status, answer) = put(&h, url, &carol, change("old-secret", "new-secret")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["identity"], "carol");
    assert_eq!(answer["team"], "main");
    assert_eq!(answer["role"], "member");
    let fresh = answer["token"].as_str().unwrap().to_string();
    assert_eq!(h.get("/api/v1/teams", &fresh).await.0, StatusCode::OK);
    // The token from before the change is refused, with a reason.
    assert_error_says(
        &h.get("/api/v1/teams", &carol).await,
        401,
        "Unauthorized",
        "secret has changed",
    );
    let old_login = h
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            Some(json!({"team": "main", "identity": "carol", "secret": "old-secret"})),
        )
        .await;
    assert_error(&old_login, 401, "Unauthorized");
    let relogged = h.login("main", "carol", "new-secret").await;
    assert_eq!(h.get("/api/v1/teams", &relogged).await.0, StatusCode::OK);
    // The broker learns the new generation from its snapshot.
    let snapshot = h.get("/api/v1/broker/snapshot", &h.broker_token()).await.1;
    let entry = snapshot["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["identity"] == "carol")
        .cloned()
        .unwrap();
    assert_eq!(entry["sgen"], 1, "{entry}");
    // The old secret no longer proves anything, here either.
    assert_error(
        &put(&h, url, &relogged, change("old-secret", "third")).await,
        403,
        "Forbidden",
    );
}

/// A trigger may be created with neither plugin nor service (both `""`), and given them
/// later; a change never sets them empty.
async fn triggers_created_before_configured(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let ids = triggers_in(&h, &["/d"], &[]).await;
    assert!(ids.is_empty());
    let (status, t) = h
        .post("/api/v1/triggers", admin, json!({"path": "/d/bare"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(
        (t["plugin"].as_str(), t["service"].as_str()),
        (Some(""), Some(""))
    );
    let url = format!("/api/v1/triggers/{}", t["id"]);
    for empty in [json!({"plugin": ""}), json!({"service": ""})] {
        assert_error(&patch(&h, &url, empty).await, 422, "Unprocessable");
    }
    assert_error(
        &patch(&h, &url, json!({"service": "ghost"})).await,
        422,
        "Unprocessable",
    );
    let (status, t) = patch(&h, &url, json!({"plugin": "command/command"})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(
        (t["plugin"].as_str(), t["service"].as_str()),
        (Some("command/command"), Some(""))
    );
    let (status, t) = patch(&h, &url, json!({"service": "svc"})).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["service"], "svc");
    // One of the two alone is fine too; a given one is still checked.
    let (status, t) = h
        .post(
            "/api/v1/triggers",
            admin,
            json!({"path": "/d/half", "service": "svc"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["plugin"], "");
    assert_error(
        &h.post(
            "/api/v1/triggers",
            admin,
            json!({"path": "/d/bad", "plugin": ""}),
        )
        .await,
        422,
        "Unprocessable",
    );
    assert_error(
        &h.post(
            "/api/v1/triggers",
            admin,
            json!({"path": "/d/bad", "service": "ghost"}),
        )
        .await,
        422,
        "Unprocessable",
    );
}

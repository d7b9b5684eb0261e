//! Nested directories, on SQLite and on PostgreSQL: made at any depth up to the bound (with
//! their parents on request), moved with everything in them (ids kept), and removed only
//! when empty; a name in a directory is a trigger or a directory, never both.

mod common;

use common::{assert_error, Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

on_both_backends!(nested_directories, moving_a_directory_moves_its_triggers);

async fn mkdir(h: &Harness, path: &str, parents: bool) -> (StatusCode, Value) {
    let body = json!({"path": path, "parents": parents});
    h.post("/api/v1/directories", &h.admin_token, body).await
}

/// `DELETE /api/v1/directories/{path}` (`path` as in a URL) as the admin.
async fn rmdir(h: &Harness, path: &str) -> (StatusCode, Value) {
    let url = format!("/api/v1/directories/{path}");
    h.call(Method::DELETE, &url, Some(&h.admin_token), None)
        .await
}

/// The team's directories: path → (id, n_triggers, n_directories).
async fn dirs(h: &Harness) -> Vec<(String, i64, i64, i64)> {
    let (status, list) = h.get("/api/v1/directories", &h.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let field = |d: &Value, k: &str| d[k].as_i64().unwrap();
    let row = |d: &Value| {
        let path = d["path"].as_str().unwrap().to_string();
        (
            path,
            field(d, "id"),
            field(d, "n_triggers"),
            field(d, "n_directories"),
        )
    };
    list.as_array().unwrap().iter().map(row).collect()
}

fn levels(n: usize) -> String {
    (0..n).map(|i| format!("/l{i}")).collect()
}

async fn nested_directories(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin_token.clone();
    // A parent must exist, unless `parents` asks for it.
    assert_error(
        &mkdir(&h, "/weatherstation/rpi", false).await,
        422,
        "Unprocessable",
    );
    let (status, d) = mkdir(&h, "/weatherstation/rpi", true).await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    assert_eq!(
        (d["path"].as_str(), d["name"].as_str()),
        (Some("/weatherstation/rpi"), Some("rpi"))
    );
    let listed = dirs(&h).await;
    let paths: Vec<&str> = listed.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(paths, ["/weatherstation", "/weatherstation/rpi"]);
    assert_eq!(listed[0].3, 1, "/weatherstation holds one directory");
    assert_error(
        &mkdir(&h, "weatherstation/rpi", true).await,
        409,
        "Conflict",
    );
    // 16 levels, and no more.
    assert_eq!(mkdir(&h, &levels(16), true).await.0, StatusCode::CREATED);
    let deep = mkdir(&h, &levels(17), true).await;
    assert_error(&deep, 422, "Unprocessable");
    assert!(
        deep.1["message"]
            .as_str()
            .unwrap()
            .contains("deeper than 16"),
        "{}",
        deep.1
    );

    // A trigger in a nested directory; its path is taken for directories, and back.
    h.post("/api/v1/services", &admin, json!({"name": "svc"}))
        .await;
    let trigger =
        json!({"path": "/weatherstation/rpi/station1", "plugin": "echo", "service": "svc"});
    let (status, t) = h.post("/api/v1/triggers", &admin, trigger).await;
    assert_eq!(status, StatusCode::CREATED, "{t}");
    assert_eq!(t["directory"], "weatherstation/rpi");
    assert_error(
        &mkdir(&h, "/weatherstation/rpi/station1", false).await,
        409,
        "Conflict",
    );
    let clash = json!({"path": "/weatherstation/rpi", "plugin": "echo", "service": "svc"});
    assert_error(
        &h.post("/api/v1/triggers", &admin, clash).await,
        409,
        "Conflict",
    );

    // rmdir: refused while anything is in it, and for a path that is none.
    for path in ["weatherstation", "weatherstation%2Frpi"] {
        assert_error(&rmdir(&h, path).await, 409, "Conflict");
    }
    let deepest = levels(16).trim_start_matches('/').replace('/', "%2F");
    assert_eq!(rmdir(&h, &deepest).await.0, StatusCode::NO_CONTENT);
    assert_error(&rmdir(&h, &deepest).await, 404, "NotFound");
    assert_error(&rmdir(&h, "a%2F%2Fb").await, 400, "BadRequest");
}

/// `PATCH /api/v1/directories/{from}` (`from` as in a URL) to `to`, as `token`.
async fn mv(h: &Harness, from: &str, token: &str, to: &str) -> (StatusCode, Value) {
    let url = format!("/api/v1/directories/{from}");
    let body = Some(json!({"path": to}));
    h.call(Method::PATCH, &url, Some(token), body).await
}

async fn moving_a_directory_moves_its_triggers(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = h.admin_token.clone();
    mkdir(&h, "/a/b/c", true).await;
    mkdir(&h, "/ab", false).await;
    h.post("/api/v1/services", &admin, json!({"name": "svc"}))
        .await;
    let body = json!({"path": "/a/b/t", "plugin": "echo", "service": "svc"});
    let (_, t) = h.post("/api/v1/triggers", &admin, body).await;
    let trigger_path = || async {
        let url = format!("/api/v1/triggers/{}", t["id"]);
        h.get(&url, &admin).await.1["path"].clone()
    };
    let before = dirs(&h).await;
    let id_of =
        |list: &[(String, i64, i64, i64)], p: &str| list.iter().find(|d| d.0 == p).map(|d| d.1);

    // `/a` → `/x`: everything under it moves, ids kept; `/ab` (a name that starts alike) stays.
    let moved = mv(&h, "a", &admin, "/x").await;
    assert_eq!(moved.0, StatusCode::OK, "{}", moved.1);
    assert_eq!(moved.1["id"].as_i64(), id_of(&before, "/a"));
    let after = dirs(&h).await;
    let paths: Vec<&str> = after.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(paths, ["/ab", "/x", "/x/b", "/x/b/c"]);
    assert_eq!(id_of(&after, "/x/b/c"), id_of(&before, "/a/b/c"));
    assert_eq!(trigger_path().await, "/x/b/t");

    // Refused: into itself, under a parent that is not there, onto a taken path, too deep
    // (`/x/b/c` under 14 levels would be 17).
    mkdir(&h, &levels(14), true).await;
    let too_deep = format!("{}/x", levels(14));
    let tries = [
        ("x", "/x/b/y", 422, "Unprocessable"),
        ("x", "/nope/x", 422, "Unprocessable"),
        ("x%2Fb", "/ab", 409, "Conflict"),
        ("x%2Fb%2Fc", "/x/b/t", 409, "Conflict"),
        ("nope", "/y", 404, "NotFound"),
        ("x", too_deep.as_str(), 422, "Unprocessable"),
    ];
    for (from, to, status, code) in tries {
        assert_error(&mv(&h, from, &admin, to).await, status, code);
    }
    // A member may not move another member's triggers with their directory; an admin may.
    let member = h.member("carol").await;
    assert_error(&mv(&h, "x", &member, "/ab/x").await, 403, "Forbidden");
    let answer = mv(&h, "x%2Fb%2Fc", &member, "/c").await;
    assert_eq!(answer.0, StatusCode::OK, "an empty directory: {}", answer.1);
    assert_eq!(mv(&h, "x", &admin, "/ab/x").await.0, StatusCode::OK);
    assert_eq!(trigger_path().await, "/ab/x/b/t");
}

//! Job history: records from the broker route, listed and shown per team, filtered and
//! paged, redacted, pruned after the retention; on SQLite and PostgreSQL.

mod common;

use common::{assert_error, Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

on_both_backends!(
    broker_records_are_listed_and_shown,
    filters_and_paging,
    team_isolation,
    private_jobs_are_their_callers_alone,
    zstd_batches_are_taken_within_the_limit,
    retention_deletes_old_jobs,
    secret_looking_args_are_redacted,
    records_and_worker_reports_written_at_once_never_fail,
    a_fleet_sized_record_is_stored_whole_and_in_order,
    jobs_stored_before_workers_moved_into_the_job_row_keep_them,
    trigger_counts_are_the_latest_per_source_summed_per_minute_and_pruned,
);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn worker(name: &str, outcome: &str, exit_code: Option<i32>, output: &str) -> Value {
    json!({"worker": name, "outcome": outcome, "exit_code": exit_code, "duration_ms": 12,
           "output": output, "truncated": false})
}

fn record(key: &str, team: &str, service: &str, started: u64, workers: Vec<Value>) -> Value {
    json!({"key": key, "team": team, "identity": "admin", "service": service,
           "algorithm": "mirror", "plugin": "command/command", "command": ["uptime"],
           "args": [["host", "web01"]], "started_unix_ms": started, "duration_ms": 40,
           "workers": workers})
}

async fn broker_records_are_listed_and_shown(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    // Only the broker may deliver.
    assert_error(
        &h.post("/api/v1/broker/jobs", admin, json!({"jobs": []}))
            .await,
        401,
        "Unauthorized",
    );
    let started = now_ms();
    let rec = record(
        "k1",
        "main",
        "dc1",
        started,
        vec![
            worker("web01", "ok", Some(0), "up 3 days\n"),
            worker("web02", "failed", Some(2), "E: broken\n"),
            worker("web03", "timed_out", None, ""),
        ],
    );
    let answer = h.deliver_jobs(vec![rec.clone()]).await;
    assert_eq!(answer, json!({"stored": 1, "skipped": 0}));
    // Delivered again (a lost answer): stored once.
    h.deliver_jobs(vec![rec]).await;
    // A second part of the same record adds its other workers.
    h.deliver_jobs(vec![record(
        "k1",
        "main",
        "dc1",
        started,
        vec![worker("web04", "ok", Some(0), "")],
    )])
    .await;
    // A record of a team that does not exist is skipped.
    let answer = h
        .deliver_jobs(vec![record("k2", "nosuchteam", "x", started, vec![])])
        .await;
    assert_eq!(answer["skipped"], 1);

    let (status, page) = h.get("/api/v1/jobs", admin).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{page}");
    let job = &jobs[0];
    assert_eq!(job["service"], "dc1");
    assert_eq!(job["status"], "failed");
    assert_eq!(job["workers"], 4);
    assert_eq!(job["ok"], 2);
    assert_eq!(job["command"], json!(["uptime"]));
    assert_eq!(job["args"], json!([{"key": "host", "value": "web01"}]));
    assert_eq!(job["started_unix_ms"], started);
    assert!(page["next_cursor"].is_null());

    let id = job["id"].as_i64().unwrap();
    let (status, shown) = h.get(&format!("/api/v1/jobs/{id}"), admin).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let outcomes: Vec<(String, String, Value)> = shown["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["worker"].as_str().unwrap().to_string(),
                w["outcome"].as_str().unwrap().to_string(),
                w["exit_code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("web01".into(), "ok".into(), json!(0)),
            ("web02".into(), "failed".into(), json!(2)),
            ("web03".into(), "timed_out".into(), Value::Null),
            ("web04".into(), "ok".into(), json!(0)),
        ]
    );
    assert_eq!(shown["outcomes"][1]["output"], "E: broken\n");
    assert_error(&h.get("/api/v1/jobs/999999", admin).await, 404, "NotFound");
    assert_error(&h.get("/api/v1/jobs/abc", admin).await, 404, "NotFound");
}

async fn filters_and_paging(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let t0 = now_ms() - 100_000;
    let mut jobs = Vec::new();
    for i in 0..7u64 {
        let (service, outcome) = if i % 2 == 0 {
            ("a", "ok")
        } else {
            ("b", "failed")
        };
        let code = if outcome == "ok" { 0 } else { 1 };
        jobs.push(record(
            &format!("k{i}"),
            "main",
            service,
            t0 + i * 1000,
            vec![worker("w", outcome, Some(code), "")],
        ));
    }
    h.deliver_jobs(jobs).await;
    let ids = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["service"].as_str().unwrap().to_string() + j["status"].as_str().unwrap())
            .collect()
    };
    let (_, page) = h.get("/api/v1/jobs?service=a", admin).await;
    assert_eq!(ids(&page), vec!["aok"; 4]);
    let (_, page) = h.get("/api/v1/jobs?status=failed", admin).await;
    assert_eq!(ids(&page), vec!["bfailed"; 3]);
    let (_, page) = h.get("/api/v1/jobs?service=a&status=failed", admin).await;
    assert_eq!(ids(&page).len(), 0);
    // Time range: started in [t0+2s, t0+5s).
    let at = |ms: u64| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    let (status, page) = h
        .get(
            &format!(
                "/api/v1/jobs?since={}&until={}",
                at(t0 + 2000),
                at(t0 + 5000)
            ),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let started: Vec<u64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["started_unix_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(started, vec![t0 + 4000, t0 + 3000, t0 + 2000]);
    paging_by_cursor_and_offset(&h, t0).await;
    // Bad parameters are 400s.
    for bad in [
        "status=nonsense",
        "since=yesterday",
        "limit=0",
        "limit=501",
        "cursor=x",
        "cursor=5&offset=1",
        "unknown=1",
    ] {
        assert_error(
            &h.get(&format!("/api/v1/jobs?{bad}"), admin).await,
            400,
            "BadRequest",
        );
    }
}

/// Paging with a cursor (newest first, every job once) and with an offset.
async fn paging_by_cursor_and_offset(h: &Harness, t0: u64) {
    let admin = &h.admin_token;
    // Paging with a cursor: newest first, every job once.
    let mut seen = Vec::new();
    let mut url = "/api/v1/jobs?limit=3".to_string();
    loop {
        let (status, page) = h.get(&url, admin).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["started_unix_ms"].as_u64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/api/v1/jobs?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..7).rev().map(|i| t0 + i * 1000).collect::<Vec<_>>()
    );
    // Paging with an offset.
    let (_, page) = h.get("/api/v1/jobs?limit=2&offset=5", admin).await;
    let started: Vec<u64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["started_unix_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(started, vec![t0 + 1000, t0]);
}

async fn team_isolation(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, body) = h
        .post("/api/v1/teams", admin, json!({"name": "teamb"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = h
        .post(
            "/api/v1/teams/teamb/members",
            admin,
            json!({"identity": "bob", "secret": "bobsecret", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let bob = h.login("teamb", "bob", "bobsecret").await;
    // Both are every member's of their team (the default would keep them from bob anyway).
    let mut a1 = record(
        "a1",
        "main",
        "secretsvc",
        now_ms(),
        vec![worker("w", "ok", Some(0), "x")],
    );
    a1["readers"] = json!("team");
    let mut b1 = record(
        "b1",
        "teamb",
        "bsvc",
        now_ms(),
        vec![worker("w", "ok", Some(0), "y")],
    );
    b1["readers"] = json!("team");
    h.deliver_jobs(vec![a1, b1]).await;
    let (_, page) = h.get("/api/v1/jobs", &bob).await;
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{page}");
    assert_eq!(jobs[0]["service"], "bsvc");
    let (_, page) = h.get("/api/v1/jobs", admin).await;
    let main_jobs = page["jobs"].as_array().unwrap();
    assert_eq!(main_jobs.len(), 1, "{page}");
    let main_id = main_jobs[0]["id"].as_i64().unwrap();
    // bob cannot see team main's job by its id: 404, as if it did not exist.
    assert_error(
        &h.get(&format!("/api/v1/jobs/{main_id}"), &bob).await,
        404,
        "NotFound",
    );
    // A key of team main's record, reported again for teamb, does not extend it.
    h.deliver_jobs(vec![record(
        "a1",
        "teamb",
        "secretsvc",
        now_ms(),
        vec![worker("v", "ok", Some(0), "")],
    )])
    .await;
    let (_, shown) = h.get(&format!("/api/v1/jobs/{main_id}"), admin).await;
    assert_eq!(shown["outcomes"].as_array().unwrap().len(), 1, "{shown}");
    // Without a token: 401.
    assert_eq!(
        h.call(Method::GET, "/api/v1/jobs", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// A job through a `local` service or worker is its caller's alone: another member of the
/// same team (even an admin) neither lists it nor reads it by id; the team's jobs of a
/// service whose history is `team` stay visible to every member.
async fn private_jobs_are_their_callers_alone(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let (status, body) = h
        .post(
            "/api/v1/teams/main/members",
            admin,
            json!({"identity": "carol", "secret": "carolsecret", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let carol = h.login("main", "carol", "carolsecret").await;
    let mut private = record(
        "p1",
        "main",
        "carols-box",
        now_ms(),
        vec![worker("w", "ok", Some(0), "carol's output")],
    );
    private["identity"] = json!("carol");
    private["readers"] = json!("sender");
    let mut shared = record(
        "s1",
        "main",
        "dc1",
        now_ms(),
        vec![worker("w", "ok", Some(0), "")],
    );
    shared["readers"] = json!("team");
    h.deliver_jobs(vec![private, shared]).await;

    let services = |page: &Value| -> Vec<String> {
        page["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["service"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, page) = h.get("/api/v1/jobs", &carol).await;
    assert_eq!(services(&page), ["dc1", "carols-box"], "{page}");
    let private_id = page["jobs"][1]["id"].as_i64().unwrap();
    let (status, shown) = h.get(&format!("/api/v1/jobs/{private_id}"), &carol).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["outcomes"][0]["output"], "carol's output");

    let (_, page) = h.get("/api/v1/jobs", admin).await;
    assert_eq!(services(&page), ["dc1"], "{page}");
    let (_, page) = h.get("/api/v1/jobs?service=carols-box", admin).await;
    assert_eq!(services(&page), Vec::<String>::new(), "{page}");
    assert_error(
        &h.get(&format!("/api/v1/jobs/{private_id}"), admin).await,
        404,
        "NotFound",
    );
}

/// The broker sends its batches `Content-Encoding: zstd`: stored as a plain one is. A body
/// that is not zstd, one whose frame does not state its size or states more than the route
/// takes, and another encoding are refused, and nothing is stored.
async fn zstd_batches_are_taken_within_the_limit(backend: Backend) {
    let h = Harness::start(backend).await;
    let post = |body: Vec<u8>, encoding: &'static str| {
        let req = h
            .http
            .post(h.url("/api/v1/broker/jobs"))
            .bearer_auth(h.broker_token())
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let batch = json!({"jobs": [record("z1", "main", "zsvc", now_ms(),
        vec![worker("w", "ok", Some(0), &"line\n".repeat(1000))])]});
    let text = serde_json::to_vec(&batch).unwrap();
    let packed = zstd::bulk::compress(&text, 1).unwrap();
    assert!(packed.len() * 10 < text.len());
    let (status, body) = post(packed, "zstd").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stored"], 1, "{body}");
    let (_, page) = h.get("/api/v1/jobs?service=zsvc", &h.admin_token).await;
    let id = page["jobs"][0]["id"].as_i64().unwrap();
    let (_, job) = h.get(&format!("/api/v1/jobs/{id}"), &h.admin_token).await;
    assert_eq!(job["outcomes"][0]["output"], "line\n".repeat(1000));

    let (status, body) = post(text.clone(), "zstd").await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );
    // A frame without its size (streamed), and one stating more than 16 MiB.
    let mut streamed = Vec::new();
    {
        let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 1).unwrap();
        std::io::Write::write_all(&mut enc, &text).unwrap();
        enc.finish().unwrap();
    }
    let (status, body) = post(streamed, "zstd").await;
    assert_eq!(status.as_u16(), 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not state its size"),
        "{body}"
    );
    let bomb = zstd::bulk::compress(&vec![b' '; 17 * 1024 * 1024], 3).unwrap();
    assert!(bomb.len() < 64 * 1024);
    let (status, body) = post(bomb, "zstd").await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (413, Some("PayloadTooLarge")),
        "{body}"
    );
    let (status, body) = post(text, "gzip").await;
    assert_eq!(status.as_u16(), 400, "{body}");
    let (_, page) = h.get("/api/v1/jobs", &h.admin_token).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
}

async fn retention_deletes_old_jobs(backend: Backend) {
    let h = Harness::start_configured(backend, |s| {
        s.job_retention = Duration::from_secs(3600);
    })
    .await;
    let admin = &h.admin_token;
    let now = now_ms();
    h.deliver_jobs(vec![
        record(
            "old",
            "main",
            "s",
            now - 2 * 3600 * 1000,
            vec![worker("w", "ok", Some(0), "")],
        ),
        record(
            "new",
            "main",
            "s",
            now - 60 * 1000,
            vec![worker("w", "ok", Some(0), "")],
        ),
    ])
    .await;
    let (_, page) = h.get("/api/v1/jobs", admin).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(h.plane.prune_jobs().await.unwrap(), 1);
    let (_, page) = h.get("/api/v1/jobs", admin).await;
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["started_unix_ms"], now - 60 * 1000);
    // The old job's workers went with it.
    assert_eq!(h.plane.prune_jobs().await.unwrap(), 0);
}

async fn secret_looking_args_are_redacted(backend: Backend) {
    let h = Harness::start(backend).await;
    let mut rec = record("r", "main", "s", now_ms(), vec![]);
    rec["args"] = json!([
        ["host", "web01"],
        ["password", "hunter2"],
        ["API_KEY", "abc"],
        ["db_token", "t"],
        ["client_secret", "s"]
    ]);
    h.deliver_jobs(vec![rec]).await;
    let (_, page) = h.get("/api/v1/jobs", &h.admin_token).await;
    assert_eq!(
        page["jobs"][0]["args"],
        json!([
            {"key": "host", "value": "web01"},
            {"key": "password", "value": "***"},
            {"key": "API_KEY", "value": "***"},
            {"key": "db_token", "value": "***"},
            {"key": "client_secret", "value": "***"}
        ])
    );
    let text = serde_json::to_string(&page).unwrap();
    assert!(!text.contains("hunter2"));
}

/// The broker delivers job records while it reports worker states: on SQLite both write,
/// and a record's transaction (which reads before it writes) once failed with "database is
/// locked" (a 500) when a report committed between its read and its write.
async fn records_and_worker_reports_written_at_once_never_fail(backend: Backend) {
    let h = Harness::start(backend).await;
    let token = h.broker_token();
    let report = json!({"workers": [], "full": true});
    let calls = (0..40).map(|i| {
        let (path, body) = if i % 2 == 0 {
            let key = format!("k{i}");
            let workers = vec![worker("w1", "ok", Some(0), "fine")];
            (
                "/api/v1/broker/jobs",
                json!({"jobs": [record(&key, "main", "dc1", now_ms(), workers)]}),
            )
        } else {
            ("/api/v1/broker/report", report.clone())
        };
        let token = token.clone();
        let h = &h;
        async move { (path, h.post(path, &token, body).await) }
    });
    for (path, (status, body)) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

/// A record of 1,200 workers (several multi-row inserts), then a second part of it with 300
/// more and 5 repeated: every worker once, in the order they were delivered.
async fn a_fleet_sized_record_is_stored_whole_and_in_order(backend: Backend) {
    let h = Harness::start(backend).await;
    let admin = &h.admin_token;
    let names = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .map(|i| {
                worker(
                    &format!("w{i:04}"),
                    if i % 7 == 0 { "failed" } else { "ok" },
                    Some(0),
                    "x",
                )
            })
            .collect()
    };
    h.deliver_jobs(vec![record("big", "main", "dc1", now_ms(), names(0, 1200))])
        .await;
    let mut again = names(1195, 1500);
    again.truncate(305);
    h.deliver_jobs(vec![record("big", "main", "dc1", now_ms(), again)])
        .await;
    let (_, page) = h.get("/api/v1/jobs", admin).await;
    let id = page["jobs"][0]["id"].as_i64().unwrap();
    assert_eq!(page["jobs"][0]["workers"], 1500, "{page}");
    let (_, shown) = h.get(&format!("/api/v1/jobs/{id}"), admin).await;
    let workers: Vec<&str> = shown["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..1500).map(|i| format!("w{i:04}")).collect();
    assert_eq!(workers, want);
}

/// A database at migration 6 (a row per worker in `job_workers`) with a job in it: migration
/// 7 moves each job's workers into its row, in their order, every field kept, and drops the
/// old table.
async fn jobs_stored_before_workers_moved_into_the_job_row_keep_them(backend: Backend) {
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let (_old, until_6) = migrations_until_6(dialect).await;
    let data = tempfile::tempdir().unwrap();
    let (url, pg_db) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", data.path().join("old.db").display()),
            None,
        ),
        Backend::Postgres => {
            let db = common::create_pg_database().await;
            (format!("postgres://postgres@127.0.0.1:5432/{db}"), Some(db))
        }
    };
    let statements = [
        "INSERT INTO teams (name, created, updated) VALUES ('old', 1, 1)",
        "INSERT INTO jobs (team_id, report_key, identity, service, algorithm, plugin, command, \
         args, started, duration_ms, status, n_workers, n_ok) VALUES ((SELECT id FROM teams), \
         'k1', 'alice', 'dc1', 'mirror', 'apt-upgrade', '[]', '[]', 5, 40, 'failed', 3, 1)",
        // Inserted out of order: `position` is the order.
        "INSERT INTO job_workers VALUES ((SELECT id FROM jobs), 2, 'web03', 'no_response', \
         NULL, 7, '', FALSE)",
        "INSERT INTO job_workers VALUES ((SELECT id FROM jobs), 0, 'web01', 'ok', 0, 12, \
         'line \"1\"\n2 upgraded\n', TRUE)",
        "INSERT INTO job_workers VALUES ((SELECT id FROM jobs), 1, 'web02', 'failed', 100, 9, \
         'E: dpkg was interrupted\n', FALSE)",
    ];
    // The same steps on either pool type: to 6, the rows, `open` (which migrates to 7),
    // then what 7 left.
    macro_rules! migrate_and_read {
        ($connect:expr, $reconnect:expr) => {{
            let pool = $connect;
            until_6.run(&pool).await.unwrap();
            for s in statements {
                sqlx::query(s).execute(&pool).await.unwrap();
            }
            pool.close().await;
            let mut settings = controlplane::ControlSettings::new(data.path().join("data"));
            settings.database_url = Some(url.clone());
            drop(controlplane::ControlPlane::open(settings).await.unwrap());
            let pool = $reconnect;
            let gone = sqlx::query("SELECT 1 FROM job_workers")
                .execute(&pool)
                .await;
            assert!(gone.is_err(), "job_workers is dropped");
            let workers: String = sqlx::query_scalar("SELECT workers FROM jobs")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            workers
        }};
    }
    let workers = match backend {
        Backend::Sqlite => {
            let opts = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
                .unwrap()
                .create_if_missing(true);
            migrate_and_read!(
                sqlx::SqlitePool::connect_with(opts).await.unwrap(),
                sqlx::SqlitePool::connect(&url).await.unwrap()
            )
        }
        Backend::Postgres => migrate_and_read!(
            sqlx::PgPool::connect(&url).await.unwrap(),
            sqlx::PgPool::connect(&url).await.unwrap()
        ),
    };
    if let Some(db) = pg_db {
        common::drop_pg_database(db);
    }
    assert_the_moved_workers(&workers);
}

/// The migrations up to 6, as they were applied before 7 existed (in the returned directory).
async fn migrations_until_6(dialect: &str) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    // The migrations up to 6, as they were applied before 7 existed.
    let old = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.as_str() < "0007" {
            std::fs::copy(&path, old.path().join(&name)).unwrap();
        }
    }
    let until_6 = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    (old, until_6)
}

/// The workers migration 7 left in the job's row: in their order, every field kept.
fn assert_the_moved_workers(workers: &str) {
    let workers: Vec<proto::job::JobWorker> = serde_json::from_str(workers).unwrap();
    let w = |worker: &str, outcome, exit_code, duration_ms, output: &str, truncated| {
        proto::job::JobWorker {
            worker: worker.into(),
            outcome,
            exit_code,
            duration_ms,
            output: output.into(),
            truncated,
        }
    };
    use proto::job::JobOutcome::*;
    assert_eq!(
        workers,
        [
            w("web01", Ok, Some(0), 12, "line \"1\"\n2 upgraded\n", true),
            w(
                "web02",
                Failed,
                Some(100),
                9,
                "E: dpkg was interrupted\n",
                false
            ),
            w("web03", NoResponse, None, 7, "", false),
        ]
    );
}

/// The scheduling policy of each thread of this process named `name` (Linux: `/proc`).
fn policies_of_threads(name: &str) -> Vec<i32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let tid: i32 = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        // SAFETY: a query of a thread of this process.
        policies.push(unsafe { libc::sched_getscheduler(tid) });
    }
    policies
}

/// Batches are prepared on the `job-store` thread, scheduled idle; the rest of the control
/// plane (its HTTP threads, which run the transaction) keeps its normal policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_records_are_prepared_by_an_idle_priority_thread() {
    let h = Harness::start(Backend::Sqlite).await;
    let answer = h
        .deliver_jobs(vec![record(
            "n1",
            "main",
            "dc1",
            now_ms(),
            vec![worker("w", "ok", Some(0), "")],
        )])
        .await;
    assert_eq!(answer["stored"], 1, "{answer}");
    let store = policies_of_threads("job-store");
    assert!(!store.is_empty(), "no job-store thread");
    assert!(store.iter().all(|p| *p == libc::SCHED_IDLE), "{store:?}");
    let http = policies_of_threads("tokio-runtime-w");
    assert!(http.iter().all(|p| *p == libc::SCHED_OTHER), "{http:?}");
}

/// A trigger's counts: each source's latest report of a minute stands (a report delivered
/// again or superseded changes nothing), the minutes sum their sources, newest first; the
/// trigger's failures are its jobs; a member who does not read the admin's jobs sees none of
/// it; the retention prunes old minutes.
async fn trigger_counts_are_the_latest_per_source_summed_per_minute_and_pruned(backend: Backend) {
    let h = Harness::start_configured(backend, |s| {
        s.job_retention = Duration::from_secs(3600);
    })
    .await;
    let admin = &h.admin_token;
    let now = now_ms();
    let minute = now - now % 60_000;
    let count = |source: &str, minute: u64, ok: u64, failed: u64| {
        json!({"source": source, "team": "main", "identity": "admin", "service": "ship",
               "trigger": "/logs/a", "minute_unix_ms": minute, "readers": "sender_and_admins",
               "counts": {"ok": ok, "failed": failed, "timed_out": 0, "lost": 0, "cancelled": 0}})
    };
    let mut failure = record(
        "f1",
        "main",
        "ship",
        now,
        vec![worker("w", "failed", Some(3), "E\n")],
    );
    failure["trigger"] = json!("/logs/a");
    let token = h.broker_token();
    let deliver = |jobs: Vec<Value>, triggers: Vec<Value>| {
        h.post(
            "/api/v1/broker/jobs",
            &token,
            json!({"jobs": jobs, "triggers": triggers}),
        )
    };
    let (status, body) = deliver(
        vec![failure, record("other", "main", "ship", now, vec![])],
        vec![count("b-0", minute, 3, 1), count("b-1", minute, 2, 0)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // b-0's later report of the same minute replaces its first; an old minute; another
    // team's (none such) is left out.
    let mut gone = count("b-0", minute, 1, 0);
    gone["team"] = json!("nosuchteam");
    let old = minute - 2 * 3600 * 1000;
    let (status, _) = deliver(
        vec![],
        vec![count("b-0", minute, 5, 1), count("b-0", old, 7, 0), gone],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, page) = h.get("/api/v1/jobs?trigger=/logs/a", admin).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let minutes: Vec<(u64, u64, u64)> = page["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let n = |k: &str| m[k].as_u64().unwrap();
            (n("minute_unix_ms"), n("ok"), n("failed"))
        })
        .collect();
    assert_eq!(minutes, [(minute, 7, 1), (old, 7, 0)], "{page}");
    let jobs = page["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{page}");
    assert_eq!(
        (&jobs[0]["trigger"], &jobs[0]["status"]),
        (&json!("/logs/a"), &json!("failed"))
    );
    // `since` bounds the minutes too; without `trigger`, no minutes.
    let since = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(minute - 1000),
    );
    let (_, page) = h
        .get(
            &format!("/api/v1/jobs?trigger=/logs/a&since={since}"),
            admin,
        )
        .await;
    assert_eq!(page["minutes"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = h.get("/api/v1/jobs", admin).await;
    assert_eq!(page["minutes"], json!([]), "{page}");
    // A member reads neither the admin's counts nor their failures.
    let carol = h.member("carol").await;
    let (_, page) = h.get("/api/v1/jobs?trigger=/logs/a", &carol).await;
    assert_eq!(
        (&page["minutes"], &page["jobs"]),
        (&json!([]), &json!([])),
        "{page}"
    );
    // The retention prunes the old minute with the jobs.
    h.plane.prune_jobs().await.unwrap();
    let (_, page) = h.get("/api/v1/jobs?trigger=/logs/a", admin).await;
    assert_eq!(page["minutes"].as_array().unwrap().len(), 1, "{page}");
}

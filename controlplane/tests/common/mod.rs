//! The API test harness: a real control plane on 127.0.0.1:0, on SQLite (temp data dir) or
//! PostgreSQL (a fresh `tfs_<random>` database per test, dropped afterwards).

#![allow(dead_code)]

use controlplane::{ControlPlane, ControlSettings, FirstAdmin};
use rand::RngCore;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// The PostgreSQL server the suite uses (trust auth); `scripts/test` makes sure it runs.
pub const PG_MAINTENANCE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Request bodies larger than this are refused in the tests' control planes.
pub const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub data: tempfile::TempDir,
    pub plane: ControlPlane,
    pub admin: FirstAdmin,
    pub admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    pg_db: Option<String>,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub async fn create_pg_database() -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(PG_MAINTENANCE)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 is required for the PostgreSQL variant (scripts/test starts it)");
    let name = format!("tfs_{}", random_hex(8));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    name
}

pub fn drop_pg_database(name: String) {
    // Drop runs outside any runtime's async context: use a thread with its own runtime.
    let done = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect(PG_MAINTENANCE).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        })
    });
    let _ = done.join();
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Harness::start_with(backend, None).await
    }

    pub async fn start_with(backend: Backend, broker_addr: Option<String>) -> Harness {
        let brokers = broker_addr.map(client::BrokerList::one);
        Harness::start_configured(backend, |settings| settings.brokers = brokers).await
    }

    /// A control plane whose settings `configure` changes last.
    pub async fn start_configured(
        backend: Backend,
        configure: impl FnOnce(&mut ControlSettings),
    ) -> Harness {
        let data = tempfile::tempdir().expect("temp dir");
        let pg_db = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(create_pg_database().await),
        };
        let mut settings = ControlSettings::new(data.path().join("data"));
        settings.database_url = pg_db
            .as_ref()
            .map(|db| format!("postgres://postgres@127.0.0.1:5432/{db}"));
        settings.max_body_bytes = MAX_BODY;
        configure(&mut settings);
        let plane = ControlPlane::open(settings)
            .await
            .expect("open control plane");
        let admin = plane
            .bootstrap()
            .await
            .expect("bootstrap")
            .expect("first admin on an empty store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = plane.clone();
        let served = tokio::spawn(async move {
            serving
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let mut h = Harness {
            base: format!("http://{addr}"),
            http,
            data,
            plane,
            admin,
            admin_token: String::new(),
            stop: Some(stop),
            served: Some(served),
            pg_db,
        };
        let admin = h.admin.clone();
        h.admin_token = h.login(&admin.team, &admin.identity, &admin.secret).await;
        h
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Any call; returns the status and the JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn login(&self, team: &str, identity: &str, secret: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/login",
                None,
                Some(serde_json::json!({"team": team, "identity": identity, "secret": secret})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {team}/{identity}: {body}");
        body["token"].as_str().expect("token").to_string()
    }

    /// Creates user `identity` (secret `<identity>-secret`) as a member of `main` through
    /// the admin; returns their token.
    pub async fn member(&self, identity: &str) -> String {
        let secret = format!("{identity}-secret");
        let (status, body) = self
            .post(
                "/api/v1/teams/main/members",
                &self.admin_token,
                serde_json::json!({"identity": identity, "secret": secret}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login("main", identity, &secret).await
    }

    /// Delivers job records as the broker does (`POST /api/v1/broker/jobs`), which must
    /// answer 200; returns its answer.
    pub async fn deliver_jobs(&self, jobs: Vec<Value>) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/broker/jobs",
                &self.broker_token(),
                serde_json::json!({ "jobs": jobs }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub fn broker_token(&self) -> String {
        self.plane.broker_token().to_string()
    }

    /// Runs one statement on the store behind the API's back (e.g. to plant a bad row).
    pub async fn execute_sql(&self, sql: &str) {
        use sqlx::Connection;
        match &self.pg_db {
            Some(db) => {
                let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
            None => {
                let path = self.data.path().join("data/triggerfs.db");
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
            }
        }
    }

    /// Runs statements in order on one connection to the store.
    pub async fn execute_sqls(&self, statements: &[String]) {
        use sqlx::Connection;
        match &self.pg_db {
            Some(db) => {
                let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.expect(sql);
                }
            }
            None => {
                let path = self.data.path().join("data/triggerfs.db");
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("connect");
                for sql in statements {
                    sqlx::query(sql).execute(&mut conn).await.expect(sql);
                }
            }
        }
    }

    pub fn jwt_key(&self) -> Vec<u8> {
        let hex = std::fs::read_to_string(self.data.path().join("data/jwt.key")).unwrap();
        let hex = hex.trim();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.abort();
        }
        if let Some(db) = self.pg_db.take() {
            drop_pg_database(db);
        }
    }
}

/// Asserts an error answer: status and stable code, with a message.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(answer.0.as_u16(), status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
    assert!(answer.1["message"].is_string(), "{}", answer.1);
}

/// Runs each listed async test function on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

//! The control plane as the fs uses it: login (and again before the JWT expires), the
//! tree's lists, the changes `mkdir`/`rmdir`/`mv`/`chmod` make, batched hit counts, and the
//! SSE stream the tree follows.

use crate::tree::{DirectoryView, TriggerView};
use crate::FsError;
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Log in again when the token has less than this left.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// One API call's limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the fs logs in as.
#[derive(Debug, Clone)]
pub struct Login {
    /// Control plane URL.
    pub url: String,
    /// Team.
    pub team: String,
    /// User identity.
    pub identity: String,
    /// The user's secret.
    pub secret: String,
}

/// A JWT and when it expires (seconds since the epoch; 0: unknown).
#[derive(Debug, Clone, Default)]
struct Token {
    jwt: String,
    exp: u64,
}

/// The control plane, logged in.
#[derive(Debug)]
pub struct Api {
    http: reqwest::Client,
    login: Login,
    token: Mutex<Token>,
}

/// An error answer of the API.
#[derive(Debug, Deserialize)]
struct ErrorAnswer {
    code: String,
    message: String,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Api {
    /// Logs in.
    pub async fn login(login: Login) -> Result<Api, FsError> {
        let http = tls::http_client()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| FsError::Http(e.to_string()))?;
        let api = Api {
            http,
            login,
            token: Mutex::new(Token::default()),
        };
        api.jwt().await?;
        Ok(api)
    }

    /// A valid JWT: the current one, or a fresh login when it is about to expire.
    pub async fn jwt(&self) -> Result<String, FsError> {
        let mut token = self.token.lock().await;
        if token.jwt.is_empty()
            || (token.exp != 0 && token.exp <= now_s() + REFRESH_BEFORE.as_secs())
        {
            let jwt = client::login::login(
                &self.login.url,
                &self.login.team,
                &self.login.identity,
                &self.login.secret,
            )
            .await
            .map_err(|e| FsError::Login(e.to_string()))?;
            *token = Token {
                exp: client::login::token_expiry(&jwt),
                jwt,
            };
        }
        Ok(token.jwt.clone())
    }

    /// The user the fs is logged in as.
    pub fn identity(&self) -> &str {
        &self.login.identity
    }

    /// Forgets the token (it was refused): the next call logs in again.
    pub async fn forget_token(&self) {
        *self.token.lock().await = Token::default();
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.login.url.trim_end_matches('/'))
    }

    /// One call; a 401 logs in again and retries once.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, FsError> {
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), self.endpoint(path))
                .bearer_auth(self.jwt().await?);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let resp = req.send().await.map_err(|e| FsError::Http(e.to_string()))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.forget_token().await;
                continue;
            }
            let (code, message) = match resp.json::<ErrorAnswer>().await {
                Ok(e) => (e.code, e.message),
                Err(_) => (status.to_string(), String::new()),
            };
            return Err(FsError::Api {
                status: status.as_u16(),
                code,
                message,
            });
        }
        Err(FsError::Login(
            "the control plane refused a fresh token".into(),
        ))
    }

    /// The team's directories and triggers.
    pub async fn lists(&self) -> Result<(Vec<DirectoryView>, Vec<TriggerView>), FsError> {
        let get = |path| self.call(reqwest::Method::GET, path, None);
        let dirs = get("directories").await?.json().await;
        let dirs = dirs.map_err(|e| FsError::Http(e.to_string()))?;
        let triggers = get("triggers").await?.json().await;
        let triggers = triggers.map_err(|e| FsError::Http(e.to_string()))?;
        Ok((dirs, triggers))
    }

    /// `mkdir /name`.
    pub async fn mkdir(&self, name: &str) -> Result<(), FsError> {
        let body = serde_json::json!({ "path": format!("/{name}") });
        self.call(reqwest::Method::POST, "directories", Some(body))
            .await
            .map(drop)
    }

    /// `rmdir /name` (the API refuses one that holds triggers).
    pub async fn rmdir(&self, name: &str) -> Result<(), FsError> {
        self.call(
            reqwest::Method::DELETE,
            &format!("directories/{name}"),
            None,
        )
        .await
        .map(drop)
    }

    /// Changes a trigger: `{"path": ..}` (mv) or `{"mode": ..}` (chmod).
    pub async fn patch_trigger(&self, id: i64, body: serde_json::Value) -> Result<(), FsError> {
        self.call(
            reqwest::Method::PATCH,
            &format!("triggers/{id}"),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Adds `count` runs to a trigger's hits.
    pub async fn add_hits(&self, id: i64, count: u32) -> Result<(), FsError> {
        let body = serde_json::json!({ "count": count });
        self.call(
            reqwest::Method::POST,
            &format!("triggers/{id}/hits"),
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Opens the SSE stream of configuration changes.
    pub async fn events(&self) -> Result<reqwest::Response, FsError> {
        // No overall timeout: the stream stays open (keep-alives every 15 s).
        let resp = tls::http_client()
            .build()
            .map_err(|e| FsError::Http(e.to_string()))?
            .get(self.endpoint("events"))
            .bearer_auth(self.jwt().await?)
            .send()
            .await
            .map_err(|e| FsError::Http(e.to_string()))?;
        if !resp.status().is_success() {
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                self.forget_token().await;
            }
            return Err(FsError::Api {
                status: resp.status().as_u16(),
                code: resp.status().to_string(),
                message: "the events stream was refused".into(),
            });
        }
        Ok(resp)
    }
}

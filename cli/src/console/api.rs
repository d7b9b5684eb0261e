//! The control plane as the console uses it: log in (again when the JWT expires), call a
//! route, turn an error answer into one line.

use reqwest::Method;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;

/// One API call's limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// A cached JWT with less than this left is not used.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// How long a login refused for its rate waits before its one retry.
const LOGIN_BACKOFF: Duration = Duration::from_secs(3);
/// How long TAB completion reuses a list of names.
const NAMES_FRESH: Duration = Duration::from_secs(2);

/// Who the console logs in as: the fs module's login, the same four fields.
pub use fs::control::Login;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The control plane answered with an error.
    #[error("{message} ({code})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable code (`NotFound`, `Forbidden`, ...).
        code: String,
        /// Its message.
        message: String,
    },
    /// The control plane could not be reached, or its answer could not be read.
    #[error("cannot reach the control plane at {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// The control plane, logged in.
pub struct Api {
    /// The runtime calls (and `request`) run on.
    pub rt: Arc<Runtime>,
    http: reqwest::Client,
    /// Who we are.
    pub login: RefCell<Login>,
    token: RefCell<String>,
    /// Where the JWT is kept between runs (mode 0600), so that scripts calling `-c` in a
    /// loop do not log in (argon2, rate-limited) every time.
    cache: Option<PathBuf>,
    names: RefCell<HashMap<String, (Instant, Vec<String>)>>,
}

impl Api {
    /// Logs in.
    pub fn login(
        rt: Arc<Runtime>,
        login: Login,
        cache_dir: Option<&Path>,
    ) -> Result<Api, ApiError> {
        let http = tls::http_client()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| ApiError::Unreachable {
                url: login.url.clone(),
                message: e.to_string(),
            })?;
        let cache = cache_dir.map(|dir| dir.join(cache_name(&login)));
        let cached = cache
            .as_deref()
            .and_then(|path| read_cache(path, &login))
            .filter(|jwt| client::login::token_expiry(jwt) > now_s() + REFRESH_BEFORE.as_secs());
        let api = Api {
            rt,
            http,
            login: RefCell::new(login),
            token: RefCell::new(cached.clone().unwrap_or_default()),
            cache,
            names: RefCell::new(HashMap::new()),
        };
        if cached.is_none() {
            api.relogin()?;
        }
        Ok(api)
    }

    /// After `set password`: the new secret, and the JWT the change answered with.
    pub fn changed_secret(&self, secret: String, token: &str) {
        self.login.borrow_mut().secret = secret;
        *self.token.borrow_mut() = token.to_string();
        if let Some(path) = &self.cache {
            write_cache(path, &self.login.borrow(), token);
        }
    }

    /// The current JWT (for the broker).
    pub fn token(&self) -> String {
        self.token.borrow().clone()
    }

    fn relogin(&self) -> Result<(), ApiError> {
        let login = self.login.borrow().clone();
        let body = serde_json::json!({
            "team": login.team, "identity": login.identity, "secret": login.secret,
        });
        let answer = match self.raw(Method::POST, "/login", Some(&body), None) {
            // A burst of logins (a script's loop) waits its turn rather than failing.
            Err(ApiError::Refused { status: 429, .. }) => {
                std::thread::sleep(LOGIN_BACKOFF);
                self.raw(Method::POST, "/login", Some(&body), None)?
            }
            other => other?,
        };
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(path) = &self.cache {
            write_cache(path, &login, &token);
        }
        *self.token.borrow_mut() = token;
        Ok(())
    }

    fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let url = self.login.borrow().url.trim_end_matches('/').to_string();
        let unreachable = |e: reqwest::Error| ApiError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        };
        let mut req = self.http.request(method, format!("{url}/api/v1{path}"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        self.rt.block_on(async {
            let resp = req.send().await.map_err(unreachable)?;
            let status = resp.status();
            let bytes = resp.bytes().await.map_err(unreachable)?;
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes).map_err(|e| ApiError::Unreachable {
                    url: url.clone(),
                    message: format!("an answer that is not JSON: {e}"),
                });
            }
            let error: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_string);
            Err(ApiError::Refused {
                status: status.as_u16(),
                code: text("code").unwrap_or_else(|| status.to_string()),
                message: text("message").unwrap_or_else(|| "no details".to_string()),
            })
        })
    }

    /// Calls `method path` with `body`; logs in again once if the JWT expired.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
        let token = self.token();
        match self.raw(method.clone(), path, body.as_ref(), Some(&token)) {
            // Expired, or refused (a cached JWT of a changed secret): log in once more.
            Err(ApiError::Refused { code, .. })
                if code == "TokenExpired" || code == "Unauthorized" =>
            {
                self.relogin()?;
                let token = self.token();
                self.raw(method, path, body.as_ref(), Some(&token))
            }
            other => other,
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, path, None)
    }

    /// Forgets the names TAB completes, after a change.
    pub fn forget_names(&self) {
        self.names.borrow_mut().clear();
    }

    /// The names TAB completes for `list` (`/workers`, ...): `field` of each item, fetched
    /// at most every couple of seconds. Errors complete nothing.
    pub fn names(&self, list: &str, field: &str) -> Vec<String> {
        if let Some((at, names)) = self.names.borrow().get(list) {
            if at.elapsed() < NAMES_FRESH {
                return names.clone();
            }
        }
        let names: Vec<String> = self
            .get(list)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.get(field).and_then(Value::as_str).map(str::to_string))
            .collect();
        self.names
            .borrow_mut()
            .insert(list.to_string(), (Instant::now(), names.clone()));
        names
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One cache file per control plane, team and identity.
fn cache_name(login: &Login) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&login.url, &login.team, &login.identity).hash(&mut h);
    format!("cli-token-{:016x}", h.finish())
}

fn read_cache(path: &Path, login: &Login) -> Option<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (field("url") == login.url
        && field("team") == login.team
        && field("identity") == login.identity)
        .then(|| field("token"))
}

/// Best effort: without a cache the next run logs in again.
fn write_cache(path: &Path, login: &Login, token: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let body = serde_json::json!({
        "url": login.url, "team": login.team, "identity": login.identity, "token": token,
    });
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(body.to_string().as_bytes()));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

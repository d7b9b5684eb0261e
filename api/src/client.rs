//! [`Api`]: the one client of the control plane's `/api/v1`. It logs in (again when the
//! JWT has less than a minute left, and once more on a 401 answer), keeps the JWT in memory
//! and, when asked, in a 0600 file between runs, fails over between several base URLs, and
//! turns every answer into a typed value or an [`ApiError`].
//!
//! Paths are under `/api/v1`: `client.get::<T>("/workers")` calls `<url>/api/v1/workers`.

use crate::errors::{ErrorBody, ErrorCode};
use crate::login::{LoginRequest, LoginResponse};
use futures_lite::{Stream, StreamExt};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use eventsource_stream::Event as ServerEvent;

/// The control plane's default address (the original product's API port).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// One call's limit unless the builder or [`Api::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// A JWT with less than this left is replaced by a fresh login before it is used: a call
/// (or a broker connection) made with it must not expire on the way.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// How long a login refused for its rate (429) waits before its one retry: a burst of
/// logins (a script's loop) waits its turn rather than failing.
const LOGIN_BACKOFF: Duration = Duration::from_secs(3);

/// Who logs in, where.
#[derive(Clone)]
pub struct Login {
    /// The control plane's base URL, or several separated by commas to fail over between.
    pub url: String,
    /// Team.
    pub team: String,
    /// User identity.
    pub identity: String,
    /// The user's secret.
    pub secret: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("url", &self.url)
            .field("team", &self.team)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// The base URLs in [`Login::url`].
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(str::to_string).collect()
    }
}

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The control plane answered with an error.
    #[error("{message} ({})", code_text(*.status, *.code))]
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable code (`NotFound`, `Forbidden`, ...); `None` for an answer without the
        /// JSON error body (a proxy's 502, say).
        code: Option<ErrorCode>,
        /// Its message.
        message: String,
    },
    /// No base URL answered.
    #[error("cannot reach the control plane at {url}: {cause}")]
    Unreachable {
        /// The URL tried last.
        url: String,
        /// Why, with the chain of causes.
        cause: String,
    },
    /// The answer is not what the route answers.
    #[error("the control plane at {url} answered what cannot be read: {cause}")]
    Undecodable {
        /// The URL called.
        url: String,
        /// Why.
        cause: String,
    },
    /// A request body could not be encoded as JSON.
    #[error("a request body cannot be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    /// The client has neither credentials nor a token.
    #[error("not logged in: no credentials and no token")]
    NoCredentials,
}

impl ApiError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A refusal's code as its message shows it: the stable code, or the HTTP status's text.
pub fn code_text(status: u16, code: Option<ErrorCode>) -> String {
    match code {
        Some(code) => code.to_string(),
        None => StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string()),
    }
}

/// The token cache file: the JWT, and whose it is.
#[derive(Serialize, Deserialize)]
struct CachedToken {
    url: String,
    team: String,
    identity: String,
    token: String,
}

/// Team, identity and secret (the secret changes with `set password`).
struct Credentials {
    team: String,
    identity: String,
    secret: Mutex<String>,
}

/// What every copy of one client shares.
struct Shared {
    http: reqwest::Client,
    /// Without trailing `/`.
    urls: Vec<String>,
    /// The index in `urls` tried first: the one that answered last.
    preferred: AtomicUsize,
    credentials: Option<Credentials>,
    token: Mutex<String>,
    /// One login at a time: calls that find the JWT stale wait for the login under way.
    login_gate: tokio::sync::Mutex<()>,
    cache: Option<PathBuf>,
}

/// The control plane's API. Cheap to clone; clones share the JWT and the failover state.
#[derive(Clone)]
pub struct Api {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// How an [`Api`] is made: [`Api::builder`].
pub struct ApiBuilder {
    urls: Vec<String>,
    credentials: Option<(String, String, String)>,
    token: Option<String>,
    cache_dir: Option<PathBuf>,
    timeout: Duration,
}

impl ApiBuilder {
    /// Logs in as `identity` of `team` (at the first call, and again when the JWT expires).
    pub fn login(mut self, team: &str, identity: &str, secret: &str) -> Self {
        self.credentials = Some((team.into(), identity.into(), secret.into()));
        self
    }

    /// Presents this JWT (without credentials it is never replaced).
    pub fn token(mut self, jwt: impl Into<String>) -> Self {
        self.token = Some(jwt.into());
        self
    }

    /// Keeps the JWT between runs in a 0600 file in `dir` (one per URL, team and identity),
    /// so that a script calling the console in a loop does not log in every time.
    pub fn token_cache(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_path_buf());
        self
    }

    /// Each call's limit (and each connection attempt's).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client; makes no call.
    pub fn build(self) -> Result<Api, ApiError> {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let joined = urls.join(",");
        let unusable = |cause: String| ApiError::Unreachable {
            url: joined.clone(),
            cause,
        };
        if urls.is_empty() {
            return Err(unusable("no control plane URL given".into()));
        }
        let http = tls::http_client()
            .connect_timeout(self.timeout)
            .build()
            .map_err(|e| unusable(tls::error_chain(&e)))?;
        let credentials = self
            .credentials
            .map(|(team, identity, secret)| Credentials {
                team,
                identity,
                secret: Mutex::new(secret),
            });
        let cache = match (&self.cache_dir, &credentials) {
            (Some(dir), Some(c)) => Some(dir.join(cache_name(&joined, c))),
            _ => None,
        };
        let cached = cache
            .as_deref()
            .zip(credentials.as_ref())
            .and_then(|(path, c)| read_cache(path, &joined, c));
        Ok(Api {
            shared: Arc::new(Shared {
                http,
                urls,
                preferred: AtomicUsize::new(0),
                credentials,
                token: Mutex::new(self.token.or(cached).unwrap_or_default()),
                login_gate: tokio::sync::Mutex::new(()),
                cache,
            }),
            timeout: self.timeout,
        })
    }
}

/// One answer: the URL that gave it, its status and body.
struct Answer {
    url: String,
    status: StatusCode,
    body: bytes::Bytes,
}

/// A server-sent event stream ([`Api::events`]).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, ApiError>> + Send>>;

impl Api {
    /// A client of the control plane at `urls` (tried in order, failing over between them).
    pub fn builder<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> ApiBuilder {
        ApiBuilder {
            urls: urls.into_iter().map(Into::into).collect(),
            credentials: None,
            token: None,
            cache_dir: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Logs in as `login` says, now.
    pub async fn sign_in(login: &Login) -> Result<Api, ApiError> {
        let client = Api::builder(login.urls())
            .login(&login.team, &login.identity, &login.secret)
            .build()?;
        client.jwt().await?;
        Ok(client)
    }

    /// The same client (JWT, failover state) with another limit per call.
    pub fn with_timeout(&self, timeout: Duration) -> Api {
        Api {
            shared: self.shared.clone(),
            timeout,
        }
    }

    /// The base URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.shared.urls
    }

    /// The current JWT, as it is (no login).
    pub fn token(&self) -> Option<String> {
        let token = lock(&self.shared.token);
        (!token.is_empty()).then(|| token.clone())
    }

    /// A JWT to present: the current one, or a fresh login's when it has less than a minute
    /// left (or was forgotten). Without credentials, the token the client was given.
    pub async fn jwt(&self) -> Result<String, ApiError> {
        let Some(credentials) = &self.shared.credentials else {
            return self.token().ok_or(ApiError::NoCredentials);
        };
        let _one_login = self.shared.login_gate.lock().await;
        if let Some(token) = self.token().filter(|t| fresh(t)) {
            return Ok(token);
        }
        let secret = lock(&credentials.secret).clone();
        let token = self
            .request_token(&credentials.team, &credentials.identity, &secret)
            .await?;
        self.keep(token.clone());
        Ok(token)
    }

    /// Forgets the JWT (something refused it): the next call logs in again. A client without
    /// credentials keeps it: it could not get another.
    pub fn forget_token(&self) {
        if self.shared.credentials.is_some() {
            lock(&self.shared.token).clear();
        }
    }

    /// After `set password`: the new secret, and the JWT the change answered with.
    pub fn changed_secret(&self, secret: String, token: String) {
        if let Some(credentials) = &self.shared.credentials {
            *lock(&credentials.secret) = secret;
        }
        self.keep(token);
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.request(Method::GET, path, None::<&()>).await
    }

    /// `POST path` with `body`.
    pub async fn post<B, T>(&self, path: &str, body: &B) -> Result<T, ApiError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `PATCH path` with `body`.
    pub async fn patch<B, T>(&self, path: &str, body: &B) -> Result<T, ApiError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.request(Method::PATCH, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.request(Method::DELETE, path, None::<&()>).await
    }

    /// `method path` with an optional JSON body; the answer decoded as `T` (an empty answer
    /// as JSON `null`: `()`, `Option` and `IgnoredAny` take it).
    pub async fn request<B, T>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(ApiError::Encode)?;
        let answer = self.authorized(&method, path, body.as_deref()).await?;
        decode(answer)
    }

    /// `method path` with `body` as it is (sent as JSON): the status and body of the answer,
    /// whatever they are. For tests that send what a well-behaved client would not.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(StatusCode, bytes::Bytes), ApiError> {
        let answer = self.authorized(&method, path, body).await?;
        Ok((answer.status, answer.body))
    }

    /// `GET path` as a stream of server-sent events. The stream has no time limit (the
    /// server sends keep-alives); a 401 logs in again once.
    pub async fn events(&self, path: &str) -> Result<EventStream, ApiError> {
        use eventsource_stream::Eventsource;
        let get = |bearer: Option<String>| async move {
            self.send(&Method::GET, path, None, bearer.as_deref(), None)
                .await
        };
        let (mut url, mut resp) = get(self.bearer().await?).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && self.shared.credentials.is_some() {
            self.forget_token();
            (url, resp) = get(self.bearer().await?).await?;
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.bytes().await.unwrap_or_default();
            return Err(refusal(status, &body));
        }
        let stream = resp.bytes_stream().eventsource().map(move |event| {
            event.map_err(|e| ApiError::Unreachable {
                url: url.clone(),
                cause: e.to_string(),
            })
        });
        Ok(Box::pin(stream))
    }

    /// Logs in: the JWT, kept nowhere. A login refused for its rate is tried once more.
    async fn request_token(
        &self,
        team: &str,
        identity: &str,
        secret: &str,
    ) -> Result<String, ApiError> {
        let body = serde_json::to_vec(&LoginRequest {
            team: team.to_string(),
            identity: identity.to_string(),
            secret: secret.to_string(),
        })
        .map_err(ApiError::Encode)?;
        let login = || async {
            let answer = self.exchange(&Method::POST, "login", Some(&body), None);
            decode::<LoginResponse>(answer.await?)
        };
        let answer = match login().await {
            Err(ApiError::Refused { status: 429, .. }) => {
                tokio::time::sleep(LOGIN_BACKOFF).await;
                login().await?
            }
            other => other?,
        };
        Ok(answer.token)
    }

    /// Keeps `token` as the current JWT, and in the cache file when there is one.
    fn keep(&self, token: String) {
        if let (Some(path), Some(c)) = (&self.shared.cache, &self.shared.credentials) {
            let entry = CachedToken {
                url: self.shared.urls.join(","),
                team: c.team.clone(),
                identity: c.identity.clone(),
                token: token.clone(),
            };
            write_cache(path, &entry);
        }
        *lock(&self.shared.token) = token;
    }

    /// The JWT to send, if any.
    async fn bearer(&self) -> Result<Option<String>, ApiError> {
        match &self.shared.credentials {
            Some(_) => self.jwt().await.map(Some),
            None => Ok(self.token()),
        }
    }

    /// One call with the JWT; on a 401, a fresh login and the call once more.
    async fn authorized(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, ApiError> {
        let answer = self
            .exchange(method, path, body, self.bearer().await?.as_deref())
            .await?;
        if answer.status != StatusCode::UNAUTHORIZED || self.shared.credentials.is_none() {
            return Ok(answer);
        }
        self.forget_token();
        let bearer = self.bearer().await?;
        self.exchange(method, path, body, bearer.as_deref()).await
    }

    /// One call, its answer read whole.
    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        bearer: Option<&str>,
    ) -> Result<Answer, ApiError> {
        let timeout = Some(self.timeout);
        let (url, resp) = self.send(method, path, body, bearer, timeout).await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ApiError::Unreachable {
            url: url.clone(),
            cause: tls::error_chain(&e),
        })?;
        Ok(Answer { url, status, body })
    }

    /// Sends to each base URL in turn from the preferred one, until one answers with other
    /// than 502/503 (or it is the last); a connection refused or timed out tries the next.
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        bearer: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<(String, reqwest::Response), ApiError> {
        let urls = &self.shared.urls;
        let first = self.shared.preferred.load(Ordering::Relaxed);
        let mut k = 0;
        loop {
            let idx = (first + k) % urls.len();
            let url = format!("{}/api/v1/{}", urls[idx], path.trim_start_matches('/'));
            let mut req = self.shared.http.request(method.clone(), &url);
            if let Some(timeout) = timeout {
                req = req.timeout(timeout);
            }
            if let Some(bearer) = bearer {
                req = req.bearer_auth(bearer);
            }
            if let Some(body) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec());
            }
            k += 1;
            let last = k == urls.len();
            match req.send().await {
                Ok(resp) if !last && is_unavailable(resp.status()) => {}
                Ok(resp) => {
                    self.shared.preferred.store(idx, Ordering::Relaxed);
                    return Ok((url, resp));
                }
                Err(e) if !last && e.is_connect() => {}
                Err(e) => {
                    let cause = tls::error_chain(&e);
                    return Err(ApiError::Unreachable { url, cause });
                }
            }
        }
    }
}

fn is_unavailable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// An answer as `T`, or its refusal.
fn decode<T: DeserializeOwned>(answer: Answer) -> Result<T, ApiError> {
    if !answer.status.is_success() {
        return Err(refusal(answer.status, &answer.body));
    }
    let json: &[u8] = if answer.body.is_empty() {
        b"null"
    } else {
        &answer.body
    };
    serde_json::from_slice(json).map_err(|e| ApiError::Undecodable {
        url: answer.url,
        cause: e.to_string(),
    })
}

/// An error answer as [`ApiError::Refused`]; one without the JSON body gets its status.
fn refusal(status: StatusCode, body: &[u8]) -> ApiError {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (Some(e.code), e.message),
        Err(_) => (None, "no details".to_string()),
    };
    ApiError::Refused {
        status: status.as_u16(),
        code,
        message,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `jwt` has more than [`REFRESH_BEFORE`] left (or no expiry).
fn fresh(jwt: &str) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match token_expiry(jwt) {
        0 => true,
        exp => exp > now + REFRESH_BEFORE.as_secs(),
    }
}

/// The `exp` claim of a JWT (seconds since the Unix epoch), read without verifying it: only
/// to know when to log in again; 0 when it has none.
pub fn token_expiry(jwt: &str) -> u64 {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Claims {
        exp: u64,
    }
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
        .map_or(0, |c| c.exp)
}

/// One cache file per control plane, team and identity.
fn cache_name(url: &str, c: &Credentials) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (url, &c.team, &c.identity).hash(&mut h);
    format!("cli-token-{:016x}", h.finish())
}

/// The cached JWT, when it is this login's and has more than a minute left.
fn read_cache(path: &Path, url: &str, c: &Credentials) -> Option<String> {
    let entry: CachedToken = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (entry.url == url && entry.team == c.team && entry.identity == c.identity)
        .then_some(entry.token)
        .filter(|t| fresh(t))
}

/// Best effort: without a cache the next run logs in again.
fn write_cache(path: &Path, entry: &CachedToken) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let Ok(body) = serde_json::to_vec(entry) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&body));
    if written.is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests;

//! The web view: server-rendered pages of the fleet, services, jobs and schedules, and
//! requests run from the browser with their output streaming in (`runs`), at `/` beside the
//! API. Its style and script are embedded in the binary (`assets/`): no CDN, no other server.
//!
//! It is not a second API: every page calls the `/api/v1` handlers themselves, as the
//! logged-in user, so it shows exactly what the API shows them (another team's or another
//! member's object is a 404, as there).
//!
//! Sessions: logging in (the API's login, same identities, secrets and guards) sets cookie
//! [`SESSION_COOKIE`], the JWT itself (`HttpOnly; SameSite=Strict`, `Secure` under TLS).
//! Every request but GET and HEAD must carry a CSRF token ([`csrf_guard`]): for a session,
//! an HMAC of its JWT under the control plane's key; for the login form, the value of a
//! pre-login cookie (double submit).

mod html;
mod pages;
pub(crate) mod runs;

use crate::auth::{AuthUser, PeerAddr};
use crate::credentials::same_secret;
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Form;
use hmac::{Hmac, Mac};
use html::{esc, Section, Viewer};
use serde::Deserialize;

/// The session cookie: the user's JWT.
pub(crate) const SESSION_COOKIE: &str = "triggerfs_session";
/// The login form's double-submit cookie.
const LOGIN_COOKIE: &str = "triggerfs_login";
/// The form field (or header, for scripts) that carries the CSRF token.
const CSRF_FIELD: &str = "csrf";
const CSRF_HEADER: &str = "x-csrf-token";
/// The largest form the view posts (a request's payload included): read whole to find its
/// token.
const MAX_FORM: usize = 1024 * 1024;

/// Every (method, path) the view serves, for tests and readers; the changes among them
/// (POST) are refused without the CSRF token.
pub const WEB_ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/assets/app.css"),
    ("GET", "/assets/app.js"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/fleet"),
    ("GET", "/services"),
    ("GET", "/services/{name}"),
    ("POST", "/services/{name}/run"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{id}"),
    ("GET", "/jobs/{id}/workers/{worker}"),
    ("GET", "/runs/{id}"),
    ("GET", "/runs/{id}/events"),
    ("GET", "/runs/{id}/workers/{worker}"),
    ("GET", "/schedules"),
];

/// The view's routes (merged into the API's router, under its limits and layers).
pub(crate) fn router(state: AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(|| async { Redirect::to("/fleet") }))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/fleet", get(pages::fleet))
        .route("/services", get(pages::services))
        .route("/services/{name}", get(pages::service))
        .route("/services/{name}/run", post(runs::start))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/workers/{worker}", get(pages::job_output))
        .route("/runs/{id}", get(runs::page))
        .route("/runs/{id}/events", get(runs::events))
        .route("/runs/{id}/workers/{worker}", get(runs::output))
        .route("/schedules", get(pages::schedules))
        .layer(axum::middleware::from_fn_with_state(state, csrf_guard))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=300"),
            ),
        ],
        text,
    )
        .into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The session's JWT, when the request carries the session cookie.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

/// The CSRF token of session `jwt`: HMAC-SHA256 under the control plane's JWT key, so it
/// is stateless, changes with each login, and cannot be made without the key.
fn csrf_of(state: &AppState, jwt: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(state.jwt.secret_hex.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"triggerfs web csrf\n");
    mac.update(jwt.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A cookie header value with the view's attributes: `HttpOnly; SameSite=Strict; Path=/`,
/// `Secure` when the control plane serves TLS; `max_age` seconds (0: remove it).
fn set_cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.settings.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let text =
        format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// Why a page was not shown.
#[derive(Debug)]
pub(crate) enum WebError {
    /// No session, or it no longer holds: to the login page, then back.
    Login { back: String },
    /// The API's answer (404 for what the user may not see, as there).
    Api(ApiError),
    /// A change without its CSRF token.
    Csrf,
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> WebError {
        WebError::Api(e)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::Login { back } => {
                Redirect::to(&format!("/login?next={}", html::seg(&back))).into_response()
            }
            WebError::Csrf => error_page(
                StatusCode::FORBIDDEN,
                "this change came without its CSRF token (reload the page and try again)",
            ),
            WebError::Api(e) => {
                let (status, _) = e.status_code();
                if status.is_server_error() {
                    // Logged by the API's own rendering; the page says no more than it.
                    let _ = e.into_response();
                    return error_page(status, "the control plane could not answer");
                }
                error_page(status, &e.to_string())
            }
        }
    }
}

fn error_page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<h1>{} {}</h1>{}<p><a href=\"/\">Back to the fleet</a></p>",
        status.as_u16(),
        esc(status.canonical_reason().unwrap_or("")),
        html::message("error", text)
    );
    (
        status,
        html_response(html::page("Error", Section::Fleet, None, &body)),
    )
        .into_response()
}

/// The policy of every page: its own script, style and streams only (style attributes
/// draw the bars), never framed, forms posted here only.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self'; \
    frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

fn html_response(text: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        text,
    )
        .into_response()
}

/// A logged-in user of the view: the API's [`AuthUser`] of the session cookie, and the
/// CSRF token of that session.
pub(crate) struct WebUser {
    pub(crate) user: AuthUser,
    pub(crate) csrf: String,
}

impl WebUser {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            identity: &self.user.identity,
            team: &self.user.team,
            csrf: &self.csrf,
        }
    }

    /// A page drawn for this user.
    pub(crate) fn page(&self, title: &str, section: Section, body: &str) -> Response {
        html_response(html::page(title, section, Some(&self.viewer()), body))
    }
}

impl axum::extract::FromRequestParts<AppState> for WebUser {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, WebError> {
        // Back to the page after logging in (a change is not repeated: to the fleet).
        let back = match parts.method {
            Method::GET | Method::HEAD => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            _ => "/fleet",
        }
        .to_string();
        let Some(token) = session_token(&parts.headers) else {
            return Err(WebError::Login { back });
        };
        match AuthUser::from_token(state, token.to_string()).await {
            Ok(user) => Ok(WebUser {
                csrf: csrf_of(state, &user.token),
                user,
            }),
            Err(ApiError::Unauthorized(_) | ApiError::TokenExpired) => {
                Err(WebError::Login { back })
            }
            Err(e) => Err(WebError::Api(e)),
        }
    }
}

/// Middleware: every request but GET and HEAD must carry the CSRF token, in the
/// `x-csrf-token` header or the form's `csrf` field: the HMAC of the session cookie's JWT,
/// or for `POST /login` the value of the pre-login cookie. Refused with 403 otherwise,
/// before any handler runs.
async fn csrf_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let expected = if req.uri().path() == "/login" {
        cookie(req.headers(), LOGIN_COOKIE).map(str::to_string)
    } else {
        session_token(req.headers()).map(|jwt| csrf_of(&state, jwt))
    };
    let Some(expected) = expected else {
        return WebError::Csrf.into_response();
    };
    let header_token = req
        .headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
        return ApiError::PayloadTooLarge(MAX_FORM).into_response();
    };
    let given = header_token.or_else(|| {
        form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == CSRF_FIELD)
            .map(|(_, v)| v.into_owned())
    });
    match given {
        Some(given) if same_secret(&given, &expected) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        _ => WebError::Csrf.into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// Where to go after logging in: a path of this site only (never `//host` or a URL).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_string(),
        _ => "/fleet".to_string(),
    }
}

/// The login form, with its double-submit cookie.
async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    login_form(
        &state,
        &headers,
        q.next.as_deref(),
        "",
        None,
        StatusCode::OK,
    )
}

/// The login form; its nonce is the request's login cookie when it has one (two login tabs
/// share it), else a new one.
fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    next: Option<&str>,
    team: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let nonce = cookie(headers, LOGIN_COOKIE)
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| crate::random_hex(16), str::to_string);
    let body = format!(
        "<h1>Log in</h1>{}<form class=login method=post action=\"/login\">\
         <input type=hidden name=csrf value=\"{nonce}\">\
         <input type=hidden name=next value=\"{}\">\
         <label>Team <input name=team required value=\"{}\"></label>\
         <label>Identity <input name=identity required autocomplete=username></label>\
         <label>Secret <input name=secret type=password required \
         autocomplete=current-password></label><button>Log in</button></form>",
        error.map(|e| html::message("error", e)).unwrap_or_default(),
        esc(&local_path(next)),
        esc(if team.is_empty() { "main" } else { team }),
    );
    let mut response = html_response(html::page("Log in", Section::Login, None, &body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &nonce, 3600),
    );
    response
}

#[derive(Deserialize)]
struct LoginForm {
    team: String,
    identity: String,
    secret: String,
    next: Option<String>,
}

/// Logs in through the API's own login (its guards and answers), then sets the session.
async fn login(
    State(state): State<AppState>,
    peer: PeerAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let request = api::login::LoginRequest {
        team: form.team.clone(),
        identity: form.identity,
        secret: form.secret,
    };
    match crate::routes::login::login(State(state.clone()), peer, Json(request)).await {
        Ok(Json(answer)) => {
            let ttl = state.settings.jwt_ttl.as_secs().max(1);
            let mut response = Redirect::to(&local_path(form.next.as_deref())).into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(&state, SESSION_COOKIE, &answer.token, ttl),
            );
            headers.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, "", 0));
            response
        }
        Err(e) => {
            let (status, _) = e.status_code();
            login_form(
                &state,
                &headers,
                form.next.as_deref(),
                &form.team,
                Some(&e.to_string()),
                status,
            )
        }
    }
}

/// Ends the session (the cookie removed; the JWT itself ends at its expiry, as the API's).
async fn logout(State(state): State<AppState>) -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; triggerfs_session=tok; b=2"),
        );
        assert_eq!(session_token(&headers), Some("tok"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path(Some("/jobs?x=1")), "/jobs?x=1");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", ""] {
            assert_eq!(local_path(Some(bad)), "/fleet", "{bad}");
        }
        assert_eq!(local_path(None), "/fleet");
    }
}

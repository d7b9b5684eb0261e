//! The web view's defences: every change it serves is refused without its CSRF token; the
//! session cookie is `HttpOnly; SameSite=Strict` (and `Secure` under TLS) and opens no door
//! to `/api/v1`.

mod common;

use common::{Backend, Harness};
use controlplane::{ControlPlane, ControlSettings, WEB_ROUTES};
use reqwest::{Method, StatusCode};
use std::time::Duration;
use tower::ServiceExt;

/// A client that does not follow redirects (a login answers 303 with its cookie).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The value of cookie `name` in a response's `Set-Cookie` headers, and the whole header.
fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<(String, String)> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..].split(';').next().unwrap().to_string();
            (value, v.to_string())
        })
}

/// The login form's double-submit nonce (its cookie).
async fn login_nonce(h: &Harness, http: &reqwest::Client) -> String {
    let page = http.get(h.url("/login")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let (nonce, header) = set_cookie(page.headers(), "triggerfs_login").expect("login cookie");
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Strict"),
        "{header}"
    );
    let text = page.text().await.unwrap();
    assert!(text.contains(&nonce), "the form carries the cookie's value");
    nonce
}

/// Logs the admin in through the form; the session cookie's value and header.
async fn web_login(h: &Harness, http: &reqwest::Client) -> (String, String) {
    let nonce = login_nonce(h, http).await;
    let a = &h.admin;
    let form = [
        ("team", a.team.as_str()),
        ("identity", a.identity.as_str()),
        ("secret", a.secret.as_str()),
        ("csrf", nonce.as_str()),
    ];
    let answer = http
        .post(h.url("/login"))
        .header("cookie", format!("triggerfs_login={nonce}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    set_cookie(answer.headers(), "triggerfs_session").expect("session cookie")
}

/// The CSRF token a page gives its forms (`<meta name=csrf content="...">`).
async fn page_csrf(h: &Harness, http: &reqwest::Client, session: &str) -> String {
    let page = http
        .get(h.url("/fleet"))
        .header("cookie", format!("triggerfs_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let text = page.text().await.unwrap();
    let start = text.find("<meta name=csrf content=\"").expect("csrf meta") + 25;
    text[start..start + 64].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_without_the_csrf_token_is_refused() {
    let h = Harness::start(Backend::Sqlite).await;
    let http = browser();
    let a = &h.admin;

    // The login form: without the nonce, with another one, or without its cookie: 403.
    let nonce = login_nonce(&h, &http).await;
    let creds = [
        ("team", a.team.as_str()),
        ("identity", a.identity.as_str()),
        ("secret", a.secret.as_str()),
    ];
    for (cookie, field) in [
        (Some(nonce.as_str()), None),
        (Some(nonce.as_str()), Some("0123")),
        (None, Some(nonce.as_str())),
    ] {
        let mut form: Vec<(&str, &str)> = creds.to_vec();
        form.extend(field.map(|f| ("csrf", f)));
        let mut req = http.post(h.url("/login")).form(&form);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("triggerfs_login={c}"));
        }
        let answer = req.send().await.unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::FORBIDDEN,
            "{cookie:?} {field:?}"
        );
        assert!(set_cookie(answer.headers(), "triggerfs_session").is_none());
    }

    let (session, header) = web_login(&h, &http).await;
    assert!(header.contains("HttpOnly"), "{header}");
    assert!(header.contains("SameSite=Strict"), "{header}");
    assert!(header.contains("Path=/"), "{header}");
    assert!(!header.contains("Secure"), "plain HTTP: {header}");
    let csrf = page_csrf(&h, &http, &session).await;
    let cookie = format!("triggerfs_session={session}");

    // Every change the view serves, and every other method on every path: refused without
    // the token, with a wrong one, or with the token in a form that lacks the cookie.
    let path = |p: &str| {
        p.replace("{name}", "fleet")
            .replace("{id}", "1")
            .replace("{worker}", "w1")
    };
    let mut n_changes = 0;
    for (method, route) in WEB_ROUTES {
        let url = h.url(&path(route));
        for m in ["POST", "PUT", "PATCH", "DELETE"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            for token in [None, Some("0".repeat(64))] {
                let mut req = http.request(m.clone(), &url).header("cookie", &cookie);
                if let Some(t) = &token {
                    req = req
                        .header("x-csrf-token", t)
                        .form(&[("csrf", t), ("plugin", &"command".to_string())]);
                }
                let status = req.send().await.unwrap().status();
                assert!(
                    status == StatusCode::FORBIDDEN || status == StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {route} with token {token:?}: {status}"
                );
                if *method == m.as_str() {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{m} {route}");
                }
            }
            if *method == m.as_str() {
                n_changes += 1;
                // The right token without the session cookie is no better.
                let status = http
                    .request(m.clone(), &url)
                    .form(&[("csrf", &csrf)])
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, StatusCode::FORBIDDEN, "{m} {route} without cookie");
            }
        }
    }
    assert!(n_changes >= 3, "login, logout and run are changes");

    // With the token, a change goes through: logging out.
    let out = http
        .post(h.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let (cleared, header) = set_cookie(out.headers(), "triggerfs_session").unwrap();
    assert!(
        cleared.is_empty() && header.contains("Max-Age=0"),
        "{header}"
    );

    // The cookie is no credential for the API (which needs no CSRF token for that reason).
    for (m, p) in [("GET", "/api/v1/workers"), ("POST", "/api/v1/services")] {
        let status = http
            .request(Method::from_bytes(m.as_bytes()).unwrap(), h.url(p))
            .header("cookie", &cookie)
            .header("content-type", "application/json")
            .body(r#"{"name":"x"}"#)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_under_tls() {
    let dir = tempfile::tempdir().unwrap();
    tls::install_provider();
    let files = tls::dev_files(dir.path(), &["127.0.0.1".to_string()]).unwrap();
    let mut settings = ControlSettings::new(dir.path().join("data"));
    settings.tls = Some(tls::server_config(&files.cert, &files.key, None).unwrap());
    let plane = ControlPlane::open(settings).await.unwrap();
    let admin = plane.bootstrap().await.unwrap().unwrap();
    let router = plane.router();
    let call = |req: axum::http::Request<axum::body::Body>| router.clone().oneshot(req);

    let page = call(
        axum::http::Request::get("/login")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let login_cookie = page.headers()[axum::http::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(login_cookie.ends_with("; Secure"), "{login_cookie}");
    let nonce = login_cookie
        .strip_prefix("triggerfs_login=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let form = serde_urlencoded::to_string([
        ("team", &admin.team),
        ("identity", &admin.identity),
        ("secret", &admin.secret),
        ("csrf", &nonce),
    ])
    .unwrap();
    let answer = call(
        axum::http::Request::post("/login")
            .header("cookie", format!("triggerfs_login={nonce}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(form))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);
    let session = answer
        .headers()
        .get_all(axum::http::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("triggerfs_session="))
        .expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(
            session.split("; ").any(|a| a == attribute),
            "{attribute} in {session}"
        );
    }
}

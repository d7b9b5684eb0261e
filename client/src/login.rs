//! Logging in to the control plane: team, identity and secret for a JWT.
//!
//! The JWT is what a client presents to the broker in its `Hello`.

use crate::ClientError;
use serde::Deserialize;
use std::time::Duration;

/// The control plane's default address (the original product's API port).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
}

#[derive(Deserialize)]
struct ApiError {
    code: String,
    message: String,
}

/// `POST <url>/api/v1/login`; returns the JWT.
pub async fn login(
    url: &str,
    team: &str,
    identity: &str,
    secret: &str,
) -> Result<String, ClientError> {
    let endpoint = format!("{}/api/v1/login", url.trim_end_matches('/'));
    let unreachable = |e: reqwest::Error| ClientError::ControlPlane {
        url: url.to_string(),
        message: tls::error_chain(&e),
    };
    let resp = tls::http_client()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(unreachable)?
        .post(&endpoint)
        .json(&serde_json::json!({ "team": team, "identity": identity, "secret": secret }))
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    if status.is_success() {
        let answer: LoginAnswer = resp.json().await.map_err(unreachable)?;
        return Ok(answer.token);
    }
    let (code, message) = match resp.json::<ApiError>().await {
        Ok(e) => (e.code, e.message),
        Err(_) => (status.to_string(), "no details".to_string()),
    };
    Err(ClientError::Login { code, message })
}

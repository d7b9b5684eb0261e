//! Logging in to the control plane: team, identity and secret for a JWT.
//!
//! The JWT is what a client presents to the broker in its `Hello`.

use crate::ClientError;
use serde::Deserialize;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn reads_the_expiry_of_a_jwt() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"hp","exp":1900000000}"#);
        assert_eq!(token_expiry(&format!("h.{payload}.s")), 1_900_000_000);
        assert_eq!(token_expiry("garbage"), 0);
        assert_eq!(token_expiry("a.!!.c"), 0);
    }
}

//! Logging in to the control plane: team, identity and secret for a JWT, through the one
//! control plane client ([`api::Api`]).
//!
//! The JWT is what a client presents to the broker in its `Hello`.

use crate::ClientError;
use api::client::ApiError;
use api::Api;
use std::time::Duration;

pub use api::client::{token_expiry, DEFAULT_URL};

/// The login's limit: a control plane that does not answer in this time is unreachable.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `POST <url>/api/v1/login` (`url` may list several base URLs, comma-separated, to fail
/// over between); returns the JWT.
pub async fn login(
    url: &str,
    team: &str,
    identity: &str,
    secret: &str,
) -> Result<String, ClientError> {
    let api = Api::builder(url.split(','))
        .login(team, identity, secret)
        .timeout(LOGIN_TIMEOUT)
        .build();
    let jwt = match api {
        Ok(api) => api.jwt().await,
        Err(e) => Err(e),
    };
    jwt.map_err(|e| match e {
        ApiError::Refused {
            status,
            code,
            message,
        } => ClientError::Login {
            status,
            code,
            message,
        },
        ApiError::Unreachable { cause, .. } => ClientError::ControlPlane {
            url: url.to_string(),
            message: cause,
        },
        e => ClientError::ControlPlane {
            url: url.to_string(),
            message: e.to_string(),
        },
    })
}

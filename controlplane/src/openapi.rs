//! The OpenAPI document's frame: info, security schemes, and the answers every route shares.
//!
//! The paths come from the handlers' `#[utoipa::path]` attributes, collected by the router as
//! it registers them, so the document cannot drift from what is served; the schemas are the
//! `api` crate's types (feature `openapi`), whose fields name constrained schemas built from
//! the constants the server checks with (`proto::openapi`, `api::schema`). [`layer_responses`]
//! adds the answers that come from the layers every route shares (credentials, JSON, path,
//! body size).

use api::schema::{JobId, TriggerId};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi};

/// The document's fixed parts (and the schemas no type names for the derive to find: path
/// parameters', and `JobRecord`'s generic workers').
#[derive(OpenApi)]
#[openapi(
    info(title = "triggerFS control plane", description = "Teams, users, workers, services, directories, triggers, quotas; the broker's feed; the HTTP gateway."),
    modifiers(&Security),
    components(schemas(api::ErrorBody, TriggerId, JobId, proto::openapi::NodeId, api::broker::JobWorker))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "broker_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Adds to every operation the answers of the layers all routes share, where the route does
/// not state them itself: 401 where it needs a credential (the `AuthUser`, `BrokerAuth` and
/// `EventsCaller` extractors), 400 where it reads a JSON body (`crate::extract::Json`) or path
/// parameters (`crate::extract::Path`), and 413 everywhere (`crate::extract::buffer_body`
/// reads every body before routing).
pub(crate) fn layer_responses(doc: &mut utoipa::openapi::OpenApi) {
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations: [&mut Option<Operation>; 5] = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ];
        for op in operations.into_iter().flatten() {
            let mut add = |status: &str, description: &str| {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(error(description)));
            };
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                add(
                    "401",
                    "No credential, a bad one, or a JWT past its expiry (`TokenExpired`), or \
                     the user is no longer a member of the token's team.",
                );
            }
            let has_body = op.request_body.is_some();
            let has_path = op
                .parameters
                .iter()
                .flatten()
                .any(|p| p.parameter_in == ParameterIn::Path);
            if has_body || has_path {
                add(
                    "400",
                    "Malformed: JSON that does not parse, a wrong type, a missing or unknown \
                     field, a NUL character, or a path parameter that is not text.",
                );
            }
            add(
                "413",
                "The request body is larger than the limit (1 MiB unless configured).",
            );
            add(
                "408",
                "`RequestTimeout`: the request body did not arrive within its deadline \
                 (`--http-body-timeout`, 10 s unless configured, plus 1 s per 64 KiB of it); \
                 the connection is closed.",
            );
            add(
                "503",
                "`ServiceUnavailable`: too many requests without valid credentials at once \
                 (`--http-max-unauthenticated`), or too many connections; retry after \
                 `Retry-After`.",
            );
        }
    }
}

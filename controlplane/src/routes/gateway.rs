//! The HTTP gateway: `POST /api/v1/services/{name}/requests` runs a request through the
//! broker as the caller (their own JWT) and streams its events back as they arrive:
//! server-sent events for `Accept: text/event-stream`, JSON lines otherwise.

use super::triggers::{check_args, ArgMap};
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::openapi::{text, PluginName, ServiceRef, Text, Timeout};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use client::{Client, ClientError, ClientEvent, RequestHandle, RequestSpec};
use futures::stream::{self, Stream};
use proto::{Credential, ErrorKind, TextEnum};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Schema};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

/// How long connecting to the broker may take before the gateway answers 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most command words one request may carry.
const MAX_COMMAND_WORDS: usize = 1024;

/// The command: one string (handed to the plugin as one word) or several words.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CommandWords {
    /// One word, e.g. `"uptime"`.
    One(String),
    /// Several words.
    Many(Vec<String>),
}

impl utoipa::PartialSchema for CommandWords {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(text("One word, e.g. `uptime`."))
            .item(
                ArrayBuilder::new()
                    .items(text("A word."))
                    .max_items(Some(MAX_COMMAND_WORDS))
                    .description(Some("At most 1024 words.")),
            )
            .description(Some(
                "The command: one string (handed to the plugin as one word) or several words.",
            ))
            .into()
    }
}

impl ToSchema for CommandWords {}

/// A count of workers or a share of them: `10`, `"10"` or `"10%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ShareText {
    /// A count.
    Count(u32),
    /// `"10"` or `"10%"`.
    Text(String),
}

/// What a share's text must be, as the document states it: a count of at most 9 digits,
/// or a percentage from 0% to 100%.
const SHARE_PATTERN: &str = "^([0-9]{1,9}|[0-9]{1,2}%|100%)$";

impl ShareText {
    fn parse(&self, field: &str) -> Result<proto::Share, ApiError> {
        match self {
            ShareText::Count(n) => Ok(proto::Share::Count(*n)),
            ShareText::Text(t) => {
                let (digits, percent) = match t.strip_suffix('%') {
                    Some(d) => (d, true),
                    None => (t.as_str(), false),
                };
                let max_digits = if percent { 3 } else { 9 };
                let plain = !digits.is_empty()
                    && digits.len() <= max_digits
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (!percent || digits.len() < 3 || digits == "100");
                if !plain {
                    return Err(ApiError::Unprocessable(format!(
                        "{field}: `{t}` is not a count or a percentage (e.g. 10 or 10%)"
                    )));
                }
                t.parse()
                    .map_err(|e: String| ApiError::Unprocessable(format!("{field}: {e}")))
            }
        }
    }
}

impl utoipa::PartialSchema for ShareText {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(u32::MAX)),
            )
            .item(
                text("A count (`\"10\"`) or a percentage of the request's workers (`\"10%\"`).")
                    .pattern(Some(SHARE_PATTERN)),
            )
            .description(Some(
                "A count of workers, or a percentage of them: `10`, `\"10%\"`.",
            ))
            .into()
    }
}

impl ToSchema for ShareText {}

/// A request to run through the broker.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayRequest {
    /// Plugin, e.g. `command/command`.
    #[schema(value_type = PluginName)]
    pub plugin: String,
    /// Command text or words.
    pub command: Option<CommandWords>,
    /// Plugin arguments (at most 256, as a trigger's: 422 past a bound).
    #[schema(value_type = Option<ArgMap>)]
    pub args: Option<BTreeMap<String, String>>,
    /// Payload (text).
    #[schema(value_type = Option<Text>)]
    pub payload: Option<String>,
    /// Timeout as text (`"10s"`); absent: the service's.
    #[schema(value_type = Option<Timeout>)]
    pub timeout: Option<String>,
    /// `false`: fire-and-forget (only `queued` comes back). Default `true`.
    pub wait: Option<bool>,
    /// Mirror: workers at once (overrides the service's batch).
    pub batch: Option<ShareText>,
    /// Mirror, serial: start no new worker once more than this many failed (the rest are
    /// `skipped`, the summary says `stopped`).
    pub max_failures: Option<ShareText>,
    /// Mirror, serial: the request ends once this many workers exited 0.
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub quorum: Option<u32>,
    /// With `quorum`: cancel the workers still running when it is reached (without one,
    /// nothing to cancel: ignored).
    pub quorum_cancel: Option<bool>,
    /// Mirror, serial: the whole request ends this long after it started (`"10m"`).
    #[schema(value_type = Option<Timeout>)]
    pub deadline: Option<String>,
    /// Only these workers of the service (a name that is not one of them is refused).
    #[schema(value_type = Option<crate::openapi::WorkerList>)]
    pub only: Option<Vec<String>>,
}

impl GatewayRequest {
    /// The fan-out options of the body.
    fn fleet(&self) -> Result<proto::Fleet, ApiError> {
        if self.quorum == Some(0) {
            return Err(ApiError::Unprocessable("quorum: must be at least 1".into()));
        }
        let only = self.only.clone().unwrap_or_default();
        for (i, name) in only.iter().enumerate() {
            super::check_name("worker", name)?;
            if only[..i].contains(name) {
                return Err(ApiError::Unprocessable(format!(
                    "only: {name} is named twice"
                )));
            }
        }
        let deadline_ms = super::parse_timeout(self.deadline.as_deref(), None)
            .map_err(|_| {
                ApiError::Unprocessable(format!(
                    "deadline `{}` is not a duration of at most 7d such as `10m`",
                    self.deadline.as_deref().unwrap_or_default()
                ))
            })?
            .map(|ms| ms.unsigned_abs())
            .unwrap_or(0);
        Ok(proto::Fleet {
            batch: self.batch.as_ref().map(|b| b.parse("batch")).transpose()?,
            max_failures: (self.max_failures.as_ref())
                .map(|m| m.parse("max_failures"))
                .transpose()?,
            quorum: self.quorum.unwrap_or(0),
            quorum_cancel: self.quorum_cancel.unwrap_or(false),
            deadline_ms,
            only,
        })
    }
}

/// JSON of one event, as both the SSE `data` and an NDJSON line.
fn event_json(event: &ClientEvent) -> Value {
    match event {
        ClientEvent::Routed {
            algorithm,
            n_workers,
        } => json!({"event": "routed", "algorithm": algorithm, "workers": n_workers}),
        ClientEvent::Queued { n_workers } => json!({"event": "queued", "workers": n_workers}),
        ClientEvent::Accepted { worker } => json!({"event": "accepted", "worker": worker}),
        ClientEvent::Output {
            worker,
            seq,
            stream,
            data,
        } => json!({
            "event": "output",
            "worker": worker,
            "seq": seq,
            "stream": stream.as_str(),
            "line": String::from_utf8_lossy(data),
        }),
        ClientEvent::Done { worker, exit_code } => {
            json!({"event": "done", "worker": worker, "exit_code": exit_code})
        }
        ClientEvent::Failed {
            worker,
            kind,
            message,
        } => {
            json!({"event": "failed", "worker": worker, "kind": kind.to_string(), "message": message})
        }
        ClientEvent::Summary(s) => json!({
            "event": "summary",
            "workers": s.workers,
            "ok": s.ok,
            "failed": s.failed,
            "timed_out": s.timed_out,
            "lost": s.lost,
            "offline": s.offline,
            "skipped": s.skipped,
            "no_response": s.no_response,
            "detached": s.detached,
            "stopped": s.stopped,
            "quorum_met": s.quorum_met,
        }),
        ClientEvent::Error { kind, message } => {
            json!({"event": "error", "kind": kind.to_string(), "message": message})
        }
        ClientEvent::Disconnected => json!({
            "event": "error",
            "kind": "Disconnected",
            "message": "the connection to the broker is gone",
        }),
    }
}

fn event_name(event: &ClientEvent) -> &'static str {
    match event {
        ClientEvent::Routed { .. } => "routed",
        ClientEvent::Queued { .. } => "queued",
        ClientEvent::Accepted { .. } => "accepted",
        ClientEvent::Output { .. } => "output",
        ClientEvent::Done { .. } => "done",
        ClientEvent::Failed { .. } => "failed",
        ClientEvent::Summary(_) => "summary",
        ClientEvent::Error { .. } | ClientEvent::Disconnected => "error",
    }
}

/// The request's events until the final one, starting with `first` (already read). The
/// client lives in the stream so that the connection stays open while the body is being
/// sent; dropping the stream (the HTTP client went away) drops the handle, which cancels the
/// request at the broker.
fn client_events(
    first: ClientEvent,
    client: Client,
    handle: RequestHandle,
) -> impl Stream<Item = ClientEvent> {
    let rest = (!first.is_final()).then_some((client, handle));
    let rest = stream::unfold(rest, |state| async move {
        let (client, mut handle) = state?;
        let event = handle.next().await.unwrap_or(ClientEvent::Disconnected);
        let next = if event.is_final() {
            None
        } else {
            Some((client, handle))
        };
        Some((event, next))
    });
    futures::StreamExt::chain(stream::iter([first]), rest)
}

/// A refusal that came before anything was streamed (the request's first event), as an HTTP
/// error, so that `curl -f` and other HTTP clients see it in the status. `None`: the first
/// event starts the stream.
fn refusal(first: &ClientEvent) -> Option<ApiError> {
    let (kind, message) = match first {
        ClientEvent::Error { kind, message } => (*kind, message),
        ClientEvent::Disconnected => {
            return Some(ApiError::ServiceUnavailable(
                "the broker closed the connection before answering".into(),
            ))
        }
        _ => return None,
    };
    let text = format!("{kind}: {message}");
    Some(match kind {
        ErrorKind::NoSuchService | ErrorKind::PluginNotFound => ApiError::NotFound(text),
        ErrorKind::Forbidden => ApiError::Forbidden(text),
        ErrorKind::Unauthorized | ErrorKind::Revoked => ApiError::Unauthorized(text),
        ErrorKind::QuotaExceeded => ApiError::QuotaReached(text),
        ErrorKind::BadRequest | ErrorKind::Malformed | ErrorKind::TooLarge => {
            ApiError::BadRequest(text)
        }
        _ => ApiError::ServiceUnavailable(text),
    })
}

fn connect_error(e: ClientError, addr: &str) -> ApiError {
    match e {
        ClientError::Refused {
            kind: ErrorKind::Unauthorized,
            reason,
        } => ApiError::Unauthorized(format!("the broker refused the token: {reason}")),
        ClientError::Refused { kind, reason } => ApiError::ServiceUnavailable(format!(
            "the broker refused the connection: {kind}: {reason}"
        )),
        other => {
            tracing::warn!(%addr, error = %other, "gateway cannot reach the broker");
            ApiError::ServiceUnavailable(format!("the broker at {addr} is not reachable"))
        }
    }
}

/// Runs a request on a service (`name` or `team%2Fname`) and streams its events.
#[utoipa::path(post, path = "/api/v1/services/{name}/requests", tag = "gateway",
    security(("jwt" = [])), params(("name" = ServiceRef, Path, description = "Service, worker identity, or team/service (URL-encoded)")),
    request_body = GatewayRequest,
    responses((status = 200, description = "`application/x-ndjson` (one JSON object per event), or `text/event-stream` when asked for in Accept; events: routed, queued, accepted, output, done, failed, summary, error",
        content_type = "application/x-ndjson"),
        (status = 400, description = "The broker refused the request as invalid (`BadRequest`), before anything ran", body = ErrorBody),
        (status = 401, description = "No, a bad or an expired JWT, or the broker refused it", body = ErrorBody),
        (status = 403, description = "The caller may not use this service (`Forbidden`), or the team's quota does not allow the request (`QuotaExceeded`)", body = ErrorBody),
        (status = 404, description = "No such service (`NoSuchService`) or plugin (`PluginNotFound`) as the broker sees it", body = ErrorBody),
        (status = 422, description = "A service or plugin name that breaks its rule, too many command words, too many or too long args, or a bad timeout", body = ErrorBody),
        (status = 503, description = "No broker is configured, it cannot be reached, or no worker of the service is online (`NoWorkersOnline`); errors after the stream began stay in the stream", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn run_request(
    State(state): State<AppState>,
    user: AuthUser,
    Path(service): Path<String>,
    headers: HeaderMap,
    Json(req): Json<GatewayRequest>,
) -> Result<Response, ApiError> {
    proto::names::check_service_ref(&service)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    proto::names::check_plugin(&req.plugin).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let fleet = req.fleet()?;
    let command = match req.command {
        None => Vec::new(),
        Some(CommandWords::One(text)) if text.is_empty() => Vec::new(),
        Some(CommandWords::One(text)) => vec![text],
        Some(CommandWords::Many(words)) => words,
    };
    if command.len() > MAX_COMMAND_WORDS {
        return Err(ApiError::Unprocessable(format!(
            "more than {MAX_COMMAND_WORDS} command words"
        )));
    }
    check_args(&req.args)?;
    let timeout = super::parse_timeout(req.timeout.as_deref(), None)?
        .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    let spec = RequestSpec {
        fleet,
        service,
        plugin: req.plugin,
        command,
        args: req.args.unwrap_or_default().into_iter().collect(),
        payload: req.payload.unwrap_or_default().into_bytes(),
        timeout,
        wait: req.wait.unwrap_or(true),
        key: None,
    };
    let Some(addr) = state.settings.broker_addr.clone() else {
        return Err(ApiError::ServiceUnavailable(
            "this control plane has no broker address: the gateway is off".into(),
        ));
    };
    let credential = Credential::Jwt {
        token: user.token.clone(),
    };
    let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(&addr, credential))
        .await
        .map_err(|_| ApiError::ServiceUnavailable(format!("the broker at {addr} did not answer")))?
        .map_err(|e| connect_error(e, &addr))?;
    let mut handle = client
        .request(spec)
        .await
        .map_err(|e| connect_error(e, &addr))?;
    // The first event comes at once (`routed` is held back at most a few milliseconds):
    // a refusal is answered with its HTTP status instead of a 200 stream.
    let first = handle.next().await.unwrap_or(ClientEvent::Disconnected);
    if let Some(e) = refusal(&first) {
        return Err(e);
    }
    let events = client_events(first, client, handle);
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        let sse = futures::StreamExt::map(events, |e| {
            Ok::<_, Infallible>(
                Event::default()
                    .event(event_name(&e))
                    .data(event_json(&e).to_string()),
            )
        });
        return Ok(Sse::new(sse)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let lines = futures::StreamExt::map(events, |e| {
        let mut line = event_json(&e).to_string();
        line.push('\n');
        Ok::<_, Infallible>(line)
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Algorithm, Stream as OutStream, Summary};

    #[test]
    fn refusals_before_the_stream_are_http_statuses() {
        for (kind, status, code) in [
            (ErrorKind::NoSuchService, 404, "NotFound"),
            (ErrorKind::PluginNotFound, 404, "NotFound"),
            (ErrorKind::NoWorkersOnline, 503, "ServiceUnavailable"),
            (ErrorKind::Forbidden, 403, "Forbidden"),
            (ErrorKind::QuotaExceeded, 403, "QuotaExceeded"),
            (ErrorKind::BadRequest, 400, "BadRequest"),
            (ErrorKind::Unauthorized, 401, "Unauthorized"),
        ] {
            let event = ClientEvent::Error {
                kind,
                message: "m".into(),
            };
            let (got, got_code) = refusal(&event).expect("a refusal").status_code();
            assert_eq!((got.as_u16(), got_code), (status, code), "{kind}");
        }
        assert!(refusal(&ClientEvent::Disconnected).is_some());
        // Anything else starts the stream (200).
        assert!(refusal(&ClientEvent::Queued { n_workers: 1 }).is_none());
        let routed = ClientEvent::Routed {
            algorithm: Algorithm::Mirror,
            n_workers: 1,
        };
        assert!(refusal(&routed).is_none());
    }

    /// The body's fan-out options become the request's `Fleet`; bad ones are 422.
    #[test]
    fn fleet_options_of_the_body() {
        let body = |v: Value| serde_json::from_value::<GatewayRequest>(v).unwrap();
        let fleet = body(
            json!({"plugin": "command", "batch": 10, "max_failures": "5%",
            "quorum": 3, "quorum_cancel": true, "deadline": "10m", "only": ["w1"]}),
        )
        .fleet()
        .unwrap();
        assert_eq!(
            fleet,
            proto::Fleet {
                batch: Some(proto::Share::Count(10)),
                max_failures: Some(proto::Share::Percent(5)),
                quorum: 3,
                quorum_cancel: true,
                deadline_ms: 600_000,
                only: vec!["w1".into()],
            }
        );
        assert_eq!(
            body(json!({"plugin": "p"})).fleet().unwrap(),
            proto::Fleet::default()
        );
        for bad in [
            json!({"plugin": "p", "batch": "ten"}),
            json!({"plugin": "p", "quorum": 0}),
            json!({"plugin": "p", "deadline": "soon"}),
        ] {
            assert!(body(bad.clone()).fleet().is_err(), "{bad}");
        }
    }

    #[test]
    fn event_shapes() {
        let check = |e: ClientEvent, name: &str, want: Value| {
            assert_eq!(event_name(&e), name);
            assert_eq!(event_json(&e), want);
        };
        check(
            ClientEvent::Output {
                worker: "w1".into(),
                seq: 0,
                stream: OutStream::Stdout,
                data: b"hi".to_vec(),
            },
            "output",
            json!({"event":"output","worker":"w1","seq":0,"stream":"stdout","line":"hi"}),
        );
        check(
            ClientEvent::Done {
                worker: "w1".into(),
                exit_code: 0,
            },
            "done",
            json!({"event":"done","worker":"w1","exit_code":0}),
        );
        check(
            ClientEvent::Routed {
                algorithm: Algorithm::Mirror,
                n_workers: 2,
            },
            "routed",
            json!({"event":"routed","algorithm":"mirror","workers":2}),
        );
        check(
            ClientEvent::Summary(Summary {
                workers: 5,
                ok: 5,
                ..Default::default()
            }),
            "summary",
            json!({"event":"summary","workers":5,"ok":5,"failed":0,"timed_out":0,"lost":0,
                "offline":0,"skipped":0,"no_response":0,"detached":0,"stopped":false,"quorum_met":false}),
        );
        check(
            ClientEvent::Error {
                kind: ErrorKind::NoSuchService,
                message: "no".into(),
            },
            "error",
            json!({"event":"error","kind":"NoSuchService","message":"no"}),
        );
    }
}

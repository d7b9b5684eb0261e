//! The HTTP gateway: `POST /api/v1/services/{name}/requests` runs a request through the
//! broker as the caller (their own JWT) and streams its events back as they arrive:
//! server-sent events for `Accept: text/event-stream`, JSON lines otherwise.

use crate::auth::AuthUser;
use crate::checks::{check_args, check_name, timeout_ms};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;
use api::gateway::{
    GatewayError, GatewayEvent, GatewayRequest, RequestError, ShareText, MAX_COMMAND_WORDS,
};
use api::ErrorBody;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use client::{Client, ClientError, ClientEvent, RequestHandle, RequestSpec};
use futures::stream::{self, Stream};
use proto::openapi::ServiceRef;
use proto::{Credential, ErrorKind};
use std::convert::Infallible;
use std::time::Duration;

/// How long connecting to the broker may take before the gateway answers 503.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The share in `field`, or 422.
fn share(field: &str, text: &Option<ShareText>) -> Result<Option<proto::Share>, ApiError> {
    let share = text.as_ref().map(ShareText::share).transpose();
    share.map_err(|e| ApiError::Unprocessable(format!("{field}: {e}")))
}

/// The fan-out options of a request's body.
fn fleet(req: &GatewayRequest) -> Result<proto::Fleet, ApiError> {
    if req.quorum == Some(0) {
        return Err(ApiError::Unprocessable("quorum: must be at least 1".into()));
    }
    let only = req.only.clone().unwrap_or_default();
    for (i, name) in only.iter().enumerate() {
        check_name("worker", name)?;
        if only[..i].contains(name) {
            return Err(ApiError::Unprocessable(format!(
                "only: {name} is named twice"
            )));
        }
    }
    let deadline = req.deadline.as_ref().map(|d| {
        d.ms().map_err(|_| {
            ApiError::Unprocessable(format!(
                "deadline `{d}` is not a duration of at most 7d such as `10m`"
            ))
        })
    });
    Ok(proto::Fleet {
        batch: share("batch", &req.batch)?,
        max_failures: share("max_failures", &req.max_failures)?,
        quorum: req.quorum.unwrap_or(0),
        quorum_cancel: req.quorum_cancel.unwrap_or(false),
        deadline_ms: deadline.transpose()?.unwrap_or(0),
        only,
    })
}

/// The JSON text of an event, its keys in order (as the README shows them).
fn event_text(event: &GatewayEvent) -> String {
    serde_json::to_value(event).map_or_else(|_| String::new(), |v| v.to_string())
}

/// One event of the request as the gateway streams it (SSE `data`, or an NDJSON line).
pub(crate) fn gateway_event(event: ClientEvent) -> GatewayEvent {
    match event {
        ClientEvent::Routed {
            algorithm,
            n_workers,
        } => GatewayEvent::Routed {
            algorithm,
            workers: n_workers,
        },
        ClientEvent::Queued { n_workers } => GatewayEvent::Queued { workers: n_workers },
        ClientEvent::Accepted { worker } => GatewayEvent::Accepted { worker },
        ClientEvent::Output {
            worker,
            seq,
            stream,
            data,
        } => GatewayEvent::Output {
            worker,
            seq,
            stream,
            line: String::from_utf8_lossy(&data).into_owned(),
        },
        ClientEvent::Done { worker, exit_code } => GatewayEvent::Done { worker, exit_code },
        ClientEvent::Failed {
            worker,
            kind,
            message,
        } => GatewayEvent::Failed {
            worker,
            kind,
            message,
        },
        ClientEvent::Summary(s) => GatewayEvent::Summary(s),
        // The connection to the broker node was lost: as the gateway has always said it.
        ClientEvent::Error {
            kind: ErrorKind::BrokerLost,
            ..
        } => GatewayEvent::Error {
            kind: RequestError::Gateway(GatewayError::Disconnected),
            message: "the connection to the broker is gone".into(),
        },
        ClientEvent::Error { kind, message } => GatewayEvent::Error {
            kind: RequestError::Broker(kind),
            message,
        },
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
        let event = handle.next().await.unwrap_or_else(lost);
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
        ClientEvent::Error {
            kind: ErrorKind::BrokerLost,
            ..
        } => {
            return Some(ApiError::ServiceUnavailable(
                "the broker closed the connection before answering".into(),
            ))
        }
        ClientEvent::Error { kind, message } => (*kind, message),
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

/// The final event of a stream that ended without one (it cannot: the handle's last event is
/// final), as the lost connection it would be.
fn lost() -> ClientEvent {
    ClientEvent::Error {
        kind: ErrorKind::BrokerLost,
        message: "the connection to the broker is gone".into(),
    }
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

/// The request a gateway body describes for `service`, checked (422 for what breaks a rule).
pub(crate) fn request_spec(service: String, req: GatewayRequest) -> Result<RequestSpec, ApiError> {
    proto::names::check_service_ref(&service)
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    proto::names::check_plugin(&req.plugin).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let fleet = fleet(&req)?;
    let command = req.command.map(|c| c.into_words()).unwrap_or_default();
    if command.len() > MAX_COMMAND_WORDS {
        return Err(ApiError::Unprocessable(format!(
            "more than {MAX_COMMAND_WORDS} command words"
        )));
    }
    check_args(&req.args)?;
    let timeout =
        timeout_ms(req.timeout.as_ref(), None)?.map(|ms| Duration::from_millis(ms.unsigned_abs()));
    Ok(RequestSpec {
        fleet,
        service,
        plugin: req.plugin,
        command,
        args: req.args.unwrap_or_default().into_iter().collect(),
        payload: req.payload.unwrap_or_default().into_bytes(),
        timeout,
        wait: req.wait.unwrap_or(true),
        key: None,
        tag: None,
        trigger: None,
    })
}

fn client_addr(state: &AppState) -> String {
    state
        .settings
        .brokers
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// A connection to one of the brokers with JWT `token` (503 when there is no broker address
/// or none answers, 401 when it refuses the token).
pub(crate) async fn connect(state: &AppState, token: String) -> Result<Client, ApiError> {
    let Some(brokers) = state.settings.brokers.as_ref() else {
        return Err(ApiError::ServiceUnavailable(
            "this control plane has no broker address: the gateway is off".into(),
        ));
    };
    let addr = brokers.to_string();
    let credential = Credential::Jwt { token };
    tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(brokers, credential))
        .await
        .map_err(|_| ApiError::ServiceUnavailable(format!("the broker at {addr} did not answer")))?
        .map_err(|e| connect_error(e, &addr))
}

/// Sends `spec` through the broker as the holder of JWT `token`: its events, until the final
/// one, as they arrive (the stream holds the connection; dropping it cancels the request).
/// The first event comes at once (`routed` is held back at most a few milliseconds): a
/// refusal is an error here, with its HTTP status, instead of the start of a stream.
pub(crate) async fn send(
    state: &AppState,
    token: String,
    spec: RequestSpec,
) -> Result<impl Stream<Item = ClientEvent> + Send + 'static, ApiError> {
    let client = connect(state, token).await?;
    let mut handle = client
        .request(spec)
        .await
        .map_err(|e| connect_error(e, &client_addr(state)))?;
    let first = handle.next().await.unwrap_or_else(lost);
    if let Some(e) = refusal(&first) {
        return Err(e);
    }
    Ok(client_events(first, client, handle))
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
    let spec = request_spec(service, req)?;
    let events = send(&state, user.token.clone(), spec).await?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if wants_sse {
        let sse = futures::StreamExt::map(events, |e| {
            let e = gateway_event(e);
            Ok::<_, Infallible>(Event::default().event(e.name()).data(event_text(&e)))
        });
        return Ok(Sse::new(sse)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let lines = futures::StreamExt::map(events, |e| {
        let mut line = event_text(&gateway_event(e));
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
    use proto::{Algorithm, Stream as OutStream, Summary, TextEnum};
    use serde_json::{json, Value};

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
            assert_eq!((got.as_u16(), got_code.as_str()), (status, code), "{kind}");
        }
        assert!(refusal(&lost()).is_some());
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
        let got = body(
            json!({"plugin": "command", "batch": 10, "max_failures": "5%",
            "quorum": 3, "quorum_cancel": true, "deadline": "10m", "only": ["w1"]}),
        );
        assert_eq!(
            fleet(&got).unwrap(),
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
            fleet(&body(json!({"plugin": "p"}))).unwrap(),
            proto::Fleet::default()
        );
        for bad in [
            json!({"plugin": "p", "batch": "ten"}),
            json!({"plugin": "p", "quorum": 0}),
            json!({"plugin": "p", "deadline": "soon"}),
        ] {
            assert!(fleet(&body(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_shapes() {
        let check = |e: ClientEvent, name: &str, want: Value| {
            let e = gateway_event(e);
            assert_eq!(e.name(), name);
            assert_eq!(event_text(&e), want.to_string());
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
        check(
            lost(),
            "error",
            json!({"event":"error","kind":"Disconnected",
                "message":"the connection to the broker is gone"}),
        );
    }
}

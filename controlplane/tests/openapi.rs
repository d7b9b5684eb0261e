//! Acceptance 5 of issue 3, as a property test against the served OpenAPI document: every
//! documented route answers, and malformed JSON, missing fields, wrong types, oversized
//! bodies and absurd path parameters get 4xx JSON errors (`code`, `message`), never a 5xx,
//! with and without credentials. The document must list exactly the routes served, and every
//! 4xx a route answered among its responses.

mod common;

use common::{Backend, Harness, MAX_BODY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

on_both_backends!(every_documented_route_survives_bad_input);

/// What a request body may be, for one case.
#[derive(Clone)]
enum Body {
    None,
    Raw(&'static str),
    Json(Value),
    Oversized,
}

fn describe(body: &Body) -> String {
    match body {
        Body::None => "no body".into(),
        Body::Raw(text) => format!("raw {text:?}"),
        Body::Json(v) => v.to_string(),
        Body::Oversized => format!("a body over {MAX_BODY} bytes"),
    }
}

/// The property names of an operation's request body schema (following one `$ref`).
fn body_properties(doc: &Value, op: &Value) -> Option<Vec<String>> {
    let schema = op.pointer("/requestBody/content/application~1json/schema")?;
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(r.strip_prefix('#')?)?,
        None => schema,
    };
    Some(
        schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default(),
    )
}

async fn every_documented_route_survives_bad_input(backend: Backend) {
    let h = Harness::start(backend).await;
    let (status, doc) = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    the_document_lists_the_routes_served(&doc);

    let long_name = "n".repeat(300);
    let params: Vec<&str> = vec![
        "999999999999",
        "%2e%2e",
        &long_name,
        "%C3%BCn%C3%AF%E2%9C%93",
        "-1",
        "a%00b",
        "%2F",
    ];
    let tokens: Vec<(&str, Option<String>)> = vec![
        ("no credentials", None),
        ("admin JWT", Some(h.admin_token.clone())),
        ("broker token", Some(h.broker_token())),
    ];
    let mut n_requests = 0;
    let mut answered: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let bodies = bad_bodies(&doc, op);
            for (url_path, must_match) in &concrete_paths(path, &params) {
                for body in &bodies {
                    for (who, token) in &tokens {
                        let what = format!("{method} {url_path} with {} ({who})", describe(body));
                        let status =
                            send_bad(&h, &method, url_path, *must_match, body, token, &what).await;
                        n_requests += 1;
                        if let Some(status) = status {
                            answered
                                .entry((method.to_string(), path.clone()))
                                .or_default()
                                .insert(status);
                        }
                    }
                }
            }
        }
    }
    assert!(n_requests > 1000, "only {n_requests} requests");
    // Every 4xx a route answered is among its documented responses.
    let mut undocumented = Vec::new();
    for ((method, path), statuses) in &answered {
        let responses = &doc["paths"][path][method.to_lowercase()]["responses"];
        for status in statuses {
            if responses.get(status.to_string()).is_none() {
                undocumented.push(format!("{method} {path} answered {status}"));
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "answers missing from the document:\n{}",
        undocumented.join("\n")
    );
    // Unknown routes and methods are JSON errors too.
    let answer = h
        .call(Method::GET, "/api/v1/nothing-here", None, None)
        .await;
    common::assert_error(&answer, 404, "NotFound");
    let answer = h.call(Method::PUT, "/api/v1/login", None, None).await;
    common::assert_error(&answer, 405, "MethodNotAllowed");
}

/// The document lists exactly the routes the router serves.
fn the_document_lists_the_routes_served(doc: &Value) {
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().unwrap() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = controlplane::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    assert_eq!(
        served.len(),
        controlplane::ROUTES.len(),
        "ROUTES has duplicates"
    );
}

/// The bodies an operation is tried with: none, oversized and, where it takes a body,
/// malformed JSON and each property of a wrong type.
fn bad_bodies(doc: &Value, op: &Value) -> Vec<Body> {
    let mut bodies = vec![Body::None, Body::Oversized];
    if let Some(props) = body_properties(doc, op) {
        bodies.push(Body::Raw("{\"unterminated\": "));
        bodies.push(Body::Raw("not json at all"));
        bodies.push(Body::Json(json!({})));
        bodies.push(Body::Json(json!([1, 2])));
        for p in &props {
            bodies.push(Body::Json(json!({ p: [[1]] })));
            bodies.push(Body::Json(json!({ p: true })));
            bodies.push(Body::Json(json!({ p: {"nested": -1e300} })));
        }
        // Every property wrong at once.
        let all: serde_json::Map<String, Value> =
            props.iter().map(|p| (p.clone(), json!([[1]]))).collect();
        bodies.push(Body::Json(Value::Object(all)));
    }
    bodies
}

/// The paths to request for a documented path: each absurd parameter in every `{…}`, and
/// whether the path must reach the route.
fn concrete_paths(path: &str, params: &[&str]) -> Vec<(String, bool)> {
    if path.contains('{') {
        params
            .iter()
            .map(|v| {
                let mut out = String::new();
                let mut rest = path;
                while let Some(start) = rest.find('{') {
                    let end = rest[start..].find('}').unwrap() + start;
                    out.push_str(&rest[..start]);
                    out.push_str(v);
                    rest = &rest[end + 1..];
                }
                out.push_str(rest);
                // `%2e%2e` is a `..` segment to URL parsers, `%2F` may split one:
                // those may legitimately miss the route.
                (out, *v == "999999999999" || *v == "-1")
            })
            .collect()
    } else {
        vec![(path.to_string(), true)]
    }
}

/// Sends one malformed request: never a 5xx, a 4xx is a JSON error; returns the 4xx the
/// route answered (`None`: a success, a live stream, or another route's answer).
/// `must_match`: the path must reach the route (its parameters cannot make another of it).
async fn send_bad(
    h: &Harness,
    method: &Method,
    url_path: &str,
    must_match: bool,
    body: &Body,
    token: &Option<String>,
    what: &str,
) -> Option<u16> {
    let mut req = h.http.request(method.clone(), h.url(url_path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req = match body {
        Body::None => req,
        Body::Raw(text) => req
            .header("content-type", "application/json")
            .body(text.to_string()),
        Body::Json(v) => req.json(v),
        Body::Oversized => req.json(&json!({ "pad": "x".repeat(MAX_BODY + 1) })),
    };
    let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status();
    assert!(!status.is_server_error(), "{what}: {status}");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if content_type.starts_with("text/event-stream") {
        // A live stream (the events endpoint with good credentials).
        assert!(status.is_success(), "{what}");
        return None;
    }
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return None;
    }
    assert!(status.is_client_error(), "{what}: {status}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{what}: {status}: not JSON: {text:?}"));
    assert!(body["code"].is_string(), "{what}: {body}");
    assert!(body["message"].is_string(), "{what}: {body}");
    // A `..` segment may land on another route, which may not serve the
    // method (`/api/v1/teams/../invitations` is `/api/v1/invitations`).
    let missed = (body["code"] == "NotFound" && body["message"] == "no such route")
        || body["code"] == "MethodNotAllowed";
    if must_match {
        assert!(!missed, "{what}: documented route not served");
    }
    (!missed).then_some(status.as_u16())
}

//! The served OpenAPI document states what the server accepts, on both backends.
//!
//! For every field of every request (body properties, nested ones, path parameters) the test
//! sends values at each boundary the document states and just past it: `maxLength` and one
//! character more (in ASCII and in `é`), `minLength` and one less, `minimum`/`maximum` and one
//! beyond, strings the `pattern` accepts and strings it refuses, every `enum` text and unknown
//! ones, optional fields left out or `null`, required ones left out, an unknown field. A
//! field the document leaves unconstrained gets a long string of awkward characters, which the
//! server must then accept: a route that forgets to state a limit fails here.
//!
//! Whether a request is valid is decided by a small JSON Schema validator over the served
//! document (not by the test's own idea of the rules). A valid request must succeed (2xx; the
//! gateway, which has no broker here, must get as far as saying so: 503); an invalid one must
//! get a 4xx, never a 5xx. What a schema cannot say (that a named worker exists, that a name is
//! free) each route's fixture arranges before the request, so that only the value's form
//! decides. Every 4xx a route answered must be among its documented responses.

mod common;

use common::{Backend, Harness};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

on_both_backends!(documented_constraints_are_the_servers);

/// The secret of every user the fixtures create.
const SECRET: &str = "fixture-secret";

/// Strings every string field is tried with: names and not-quite-names, paths, durations and
/// not-quite-durations, characters a name may not have.
const POOL: &[&str] = &[
    "a",
    "Z9",
    "A-Z_0.9",
    "-x",
    "_",
    "x.",
    ".x",
    "..x",
    "...",
    ".",
    "..",
    "",
    " ",
    "a b",
    "a/b",
    "/a",
    "a/",
    "/a/b",
    "a//b",
    "a/b/c",
    "/a/b/c",
    "//a/b",
    "/a/..",
    "../x",
    "é",
    "aé",
    "a\u{0}b",
    "a\nb",
    "a%2Fb",
    "a\\b",
    "command/command",
    "team1/svc",
    "10s",
    "0s",
    "1500ms",
    "168h",
    "169h",
    "7d",
    "8d",
    "10080m",
    "10081m",
    "604800s",
    "604801s",
    "604800000ms",
    "604800001ms",
    "1h 30m",
    "6d 23h 59m 59s 999ms",
    "167h 59m",
    "168h 0m",
    "7d 1ms",
    "1h30m",
    " 10s",
    "10s ",
    "10 s",
    "10sec",
    "01s",
    "1h 60m",
    "-1s",
    "1.5s",
    "soon",
    "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d80",
    "0B5F6C2E-8F2A-4C1E-9D3B-2A7E4F1C6D80",
    "10.0.0.11:5555",
    "tls://node-1.cell:5555",
    "[::1]:5555",
    "h:65536",
];

/// A broker node's id (the node routes' path parameter).
const NODE: &str = "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d80";

/// The operation under test.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Op {
    method: String,
    path: String,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// A subset of JSON Schema 2020-12, enough for what utoipa writes.
struct Validator<'d> {
    doc: &'d Value,
    regexes: RefCell<HashMap<String, regex::Regex>>,
}

impl<'d> Validator<'d> {
    fn deref(&self, mut schema: &'d Value) -> &'d Value {
        while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            schema = self
                .doc
                .pointer(r.strip_prefix('#').expect("a local $ref"))
                .unwrap_or_else(|| panic!("dangling {r}"));
        }
        schema
    }

    fn matches(&self, pattern: &str, text: &str) -> bool {
        let mut cache = self.regexes.borrow_mut();
        let re = cache.entry(pattern.to_string()).or_insert_with(|| {
            regex::Regex::new(pattern).unwrap_or_else(|e| panic!("pattern {pattern}: {e}"))
        });
        re.is_match(text)
    }

    fn valid(&self, schema: &'d Value, v: &Value) -> bool {
        let s = self.deref(schema);
        self.valid_combined(s, v)
            && valid_type_and_enum(s, v)
            && match v {
                Value::String(text) => self.valid_string(s, text),
                Value::Number(_) => valid_number(s, v),
                Value::Array(items) => self.valid_array(s, items),
                Value::Object(map) => self.valid_object(s, map),
                Value::Null | Value::Bool(_) => true,
            }
    }

    /// `oneOf` (exactly one), `anyOf` and `allOf`.
    fn valid_combined(&self, s: &'d Value, v: &Value) -> bool {
        if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
            if alts.iter().filter(|a| !self.valid(a, v)).count() != alts.len() - 1 {
                return false;
            }
        }
        if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
            if !alts.iter().any(|a| self.valid(a, v)) {
                return false;
            }
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            if !all.iter().all(|a| self.valid(a, v)) {
                return false;
            }
        }
        true
    }

    fn valid_string(&self, s: &'d Value, text: &str) -> bool {
        let len = text.chars().count();
        if size(s, "minLength").is_some_and(|m| len < m)
            || size(s, "maxLength").is_some_and(|m| len > m)
        {
            return false;
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if !self.matches(p, text) {
                return false;
            }
        }
        true
    }

    fn valid_array(&self, s: &'d Value, items: &[Value]) -> bool {
        if size(s, "minItems").is_some_and(|m| items.len() < m)
            || size(s, "maxItems").is_some_and(|m| items.len() > m)
        {
            return false;
        }
        if s.get("uniqueItems") == Some(&Value::Bool(true))
            && items
                .iter()
                .enumerate()
                .any(|(i, x)| items[..i].contains(x))
        {
            return false;
        }
        if let Some(item) = s.get("items") {
            if !items.iter().all(|x| self.valid(item, x)) {
                return false;
            }
        }
        true
    }

    fn valid_object(&self, s: &'d Value, map: &Map<String, Value>) -> bool {
        if size(s, "maxProperties").is_some_and(|m| map.len() > m) {
            return false;
        }
        let props = s.get("properties").and_then(Value::as_object);
        for required in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !map.contains_key(required.as_str().unwrap()) {
                return false;
            }
        }
        for (k, x) in map {
            if let Some(names) = s.get("propertyNames") {
                if !self.valid(names, &Value::String(k.clone())) {
                    return false;
                }
            }
            match props.and_then(|p| p.get(k)) {
                Some(ps) => {
                    if !self.valid(ps, x) {
                        return false;
                    }
                }
                None => match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => return false,
                    Some(Value::Bool(true)) | None => {}
                    Some(extra) => {
                        if !self.valid(extra, x) {
                            return false;
                        }
                    }
                },
            }
        }
        true
    }
}

/// `type` and `enum`.
fn valid_type_and_enum(s: &Value, v: &Value) -> bool {
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => panic!("type {t}"),
        };
        if !types.iter().any(|t| is_type(v, t)) {
            return false;
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return false;
        }
    }
    true
}

fn valid_number(s: &Value, v: &Value) -> bool {
    use std::cmp::Ordering::{Greater, Less};
    !(s.get("minimum").is_some_and(|m| compare(v, m) == Less)
        || s.get("maximum").is_some_and(|m| compare(v, m) == Greater))
}

/// A size bound of a schema (`maxLength`, `minItems`, …).
fn size(s: &Value, key: &str) -> Option<usize> {
    s.get(key).and_then(Value::as_u64).map(|n| n as usize)
}

/// Compares two JSON numbers, exactly where both are 64-bit integers (a float would round
/// 2^63 - 1 up to 2^63).
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    let exact = |v: &Value| {
        v.as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from))
            .or_else(|| {
                let f = v.as_f64()?;
                (f.fract() == 0.0 && f.abs() < 1e30).then_some(f as i128)
            })
    };
    match (exact(a), exact(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => a.as_f64().unwrap().total_cmp(&b.as_f64().unwrap()),
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("type {other}"),
    }
}

/// A JSON integer from an i128: exact while it fits 64 bits, a float beyond.
fn int(n: i128) -> Value {
    if let Ok(n) = i64::try_from(n) {
        json!(n)
    } else if let Ok(n) = u64::try_from(n) {
        json!(n)
    } else {
        json!(n as f64)
    }
}

/// An integer bound of a schema, exactly.
fn bound(s: &Value, key: &str) -> Option<i128> {
    let v = s.get(key)?;
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

/// `base` lengthened to `len` characters by repeating a character of each of its runs of
/// letters and digits, as evenly as possible (so `/a/b` becomes `/aaa…/bbb…`).
fn stretch(base: &str, len: usize) -> Option<String> {
    let chars: Vec<char> = base.chars().collect();
    let missing = len.checked_sub(chars.len())?;
    let runs: Vec<usize> = (0..chars.len())
        .filter(|&i| {
            chars[i].is_ascii_alphanumeric() && (i == 0 || !chars[i - 1].is_ascii_alphanumeric())
        })
        .collect();
    if runs.is_empty() {
        return None;
    }
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if let Some(k) = runs.iter().position(|&r| r == i) {
            let extra = missing / runs.len() + usize::from(k < missing % runs.len());
            out.extend(std::iter::repeat_n(*c, extra));
        }
        out.push(*c);
    }
    Some(out)
}

/// Values to try for a schema: its boundaries and just past them, and the pool.
fn candidates(v: &Validator, schema: &Value) -> Vec<Value> {
    let s = v.deref(schema);
    let mut out = Vec::new();
    for key in ["oneOf", "anyOf"] {
        for alt in s.get(key).and_then(Value::as_array).into_iter().flatten() {
            out.extend(candidates(v, alt));
        }
    }
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.contains(&"null") {
        out.push(Value::Null);
    }
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        out.extend(values.iter().cloned());
        let first = values[0].as_str().unwrap_or_default();
        out.extend([json!("nonsense"), json!(""), json!(first.to_uppercase())]);
    } else if types.contains(&"string") {
        out.extend(strings(v, s).into_iter().map(Value::String));
    } else if types.contains(&"integer") || types.contains(&"number") {
        for key in ["minimum", "maximum"] {
            if let Some(b) = bound(s, key) {
                out.extend([int(b - 1), int(b), int(b + 1)]);
            }
        }
        out.extend([
            json!(0),
            json!(1),
            json!(-1),
            json!(1.5),
            json!(i64::MAX),
            json!(u64::MAX),
            json!("1"),
        ]);
    } else if types.contains(&"boolean") {
        out.extend([json!(true), json!(false), json!("true")]);
    } else if types.contains(&"array") {
        out.extend(array_candidates(v, s));
    } else if types.contains(&"object") && s.get("properties").is_none() {
        out.extend(map_candidates(v, s));
    }
    let mut seen = BTreeSet::new();
    out.retain(|x| seen.insert(x.to_string()));
    out
}

/// Candidates for an array: empty, not one, too long, its items' picks alone and paired, and
/// around its `maxItems`.
fn array_candidates(v: &Validator, s: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let items = s.get("items").expect("items");
    let pick = picks(v, items);
    let good = pick
        .iter()
        .filter(|x| v.valid(items, x))
        .cloned()
        .collect::<Vec<_>>();
    out.push(json!([]));
    out.push(json!("not a list"));
    // A list longer than any limit the server has, of the first valid item.
    if let Some(x) = good.first() {
        out.push(Value::Array(vec![x.clone(); 1100]));
    }
    for x in &pick {
        out.push(json!([x]));
    }
    if good.len() >= 2 {
        out.push(json!([good[0], good[1]]));
    }
    if let Some(x) = good.first() {
        out.push(json!([x, x]));
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            let words = |n: u64| (0..n).map(|i| json!(format!("w{i}"))).collect::<Vec<_>>();
            out.push(Value::Array(words(max)));
            out.push(Value::Array(words(max + 1)));
        }
    }
    out
}

/// Candidates for a map (an object without properties): sizes around its limits, its key and
/// value schemas.
fn map_candidates(v: &Validator, s: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    out.push(json!({}));
    out.push(json!("not an object"));
    // More entries than any limit the server has.
    out.push(Value::Object(
        (0..300).map(|i| (format!("k{i}"), json!("v"))).collect(),
    ));
    if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
        let map = |n: u64| {
            (0..n)
                .map(|i| (format!("k{i}"), json!("v")))
                .collect::<Map<_, _>>()
        };
        out.push(Value::Object(map(max)));
        out.push(Value::Object(map(max + 1)));
    }
    if let Some(names) = s.get("propertyNames") {
        for k in picks(v, names)
            .into_iter()
            .filter_map(|k| k.as_str().map(str::to_string))
        {
            out.push(json!({ k: "v" }));
        }
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(_)) | None => out.push(json!({"k": "v"})),
        Some(values) => {
            for x in picks(v, values) {
                out.push(json!({ "k": x }));
            }
        }
    }
    out
}

/// A few of a schema's candidates: the valid ones and the invalid ones nearest the bounds.
fn picks(v: &Validator, schema: &Value) -> Vec<Value> {
    let all = candidates(v, schema);
    let len = |x: &Value| x.as_str().map_or(0, |s| s.chars().count());
    let (mut good, mut bad): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|x| v.valid(schema, x));
    good.sort_by_key(|x| std::cmp::Reverse(len(x)));
    bad.sort_by_key(|x| std::cmp::Reverse(len(x)));
    let mut out: Vec<Value> = good.iter().take(2).cloned().collect();
    out.extend(good.iter().rev().take(1).cloned());
    out.extend(bad.iter().take(2).cloned());
    out.extend(bad.iter().filter(|x| len(x) < 10).take(2).cloned());
    out
}

fn strings(v: &Validator, s: &Value) -> Vec<String> {
    let mut out: Vec<String> = POOL.iter().map(|p| p.to_string()).collect();
    // Unconstrained text must be accepted whatever it holds.
    // (5000 characters: more than any limit the server has.)
    out.push("é a/..\\%x\t\u{1F600}".repeat(455));
    let valid_bases: Vec<&str> = POOL
        .iter()
        .copied()
        .filter(|p| v.valid(s, &json!(p)))
        .take(6)
        .collect();
    let mut lengths = Vec::new();
    if let Some(max) = size(s, "maxLength") {
        lengths.extend([max, max + 1]);
    }
    if let Some(min) = size(s, "minLength").filter(|m| *m > 0) {
        lengths.extend([min - 1, min]);
    }
    for len in lengths {
        out.push("a".repeat(len));
        out.push("é".repeat(len));
        for base in &valid_bases {
            out.extend(stretch(base, len));
        }
    }
    // One string per kind: valid or not, which characters, how it starts and ends, and its
    // length where it is near a bound (the rest only says the same again).
    let bounds: Vec<usize> = [size(s, "minLength"), size(s, "maxLength")]
        .into_iter()
        .flatten()
        .collect();
    let class = |c: char| match c {
        'a'..='z' => 0,
        'A'..='Z' => 1,
        '0'..='9' => 2,
        '.' => 3,
        '_' => 4,
        '-' => 5,
        '/' => 6,
        ' ' => 7,
        '\0'..='\x1f' => 8,
        c if c.is_ascii() => 9,
        _ => 10,
    };
    let mut kinds = BTreeSet::new();
    out.retain(|text| {
        let len = text.chars().count();
        let near = len <= 3 || bounds.iter().any(|b| len + 1 >= *b && len <= b + 1);
        kinds.insert((
            v.valid(s, &json!(text)),
            text.chars().fold(0u32, |m, c| m | 1 << class(c)),
            text.chars().next().map(class),
            text.chars().last().map(class),
            if near { len } else { usize::from(len > 200) },
        ))
    });
    out
}

/// Every field of a request body: its JSON pointer and schema, nested objects and the objects
/// of arrays included (at index 0).
fn body_fields<'d>(
    v: &Validator<'d>,
    schema: &'d Value,
    at: &str,
    out: &mut Vec<(String, &'d Value)>,
) {
    let mut s = v.deref(schema);
    if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
        let not_null: Vec<&Value> = alts
            .iter()
            .filter(|a| a.get("type") != Some(&json!("null")))
            .collect();
        if not_null.len() == 1 {
            s = v.deref(not_null[0]);
        }
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, ps) in props {
            let here = format!("{at}/{k}");
            out.push((here.clone(), ps));
            body_fields(v, ps, &here, out);
        }
    } else if let Some(items) = s.get("items") {
        if v.deref(items).get("properties").is_some() {
            body_fields(v, items, &format!("{at}/0"), out);
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn set(body: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = body
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the body"));
    match (parent, value) {
        (Value::Object(map), Some(x)) => {
            map.insert(key.to_string(), x);
        }
        (Value::Object(map), None) => {
            map.remove(key);
        }
        (Value::Array(items), Some(x)) => items[key.parse::<usize>().unwrap()] = x,
        (Value::Array(items), None) => {
            items.remove(key.parse::<usize>().unwrap());
        }
        (other, _) => panic!("{pointer} in {other}"),
    }
}

/// Who sends a request.
enum Who {
    Nobody,
    Operator(String),
    Broker,
}

/// The fixtures' world: a fresh team per field, owned by the operator, and helpers that make
/// sure an object exists.
struct World<'h> {
    h: &'h Harness,
    backend: Backend,
    key: Vec<u8>,
    n: usize,
    team: String,
    token: String,
    trigger: Option<i64>,
    /// The operation under test moves a job's id rather than a trigger's.
    moving_job: bool,
    /// Why the fixture could not make what the request refers to, if it could not: said
    /// beside the request's refusal.
    fixture_note: Option<String>,
}

impl<'h> World<'h> {
    /// The world of a harness, before its first team.
    fn new(h: &'h Harness, backend: Backend) -> World<'h> {
        World {
            h,
            backend,
            key: h.jwt_key(),
            n: 0,
            team: String::new(),
            token: String::new(),
            trigger: None,
            moving_job: false,
            fixture_note: None,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.n += 1;
        format!("{prefix}{}", self.n)
    }

    /// A JWT of the operator for `team`.
    fn mint(&self, team: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = proto::control::Claims {
            sub: self.h.admin.identity.clone(),
            // The operator is the store's first user.
            uid: 1,
            sgen: 0,
            team: team.into(),
            role: proto::control::TeamRole::Admin,
            iat: now,
            exp: now + 3600,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.key),
        )
        .unwrap()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.h.call(method, path, Some(token), body).await
    }

    /// A fresh team for the next field.
    async fn new_team(&mut self) {
        let team = self.fresh("g");
        let answer = self
            .call(
                Method::POST,
                "/api/v1/teams",
                &self.h.admin_token,
                Some(json!({"name": team})),
            )
            .await;
        assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.1);
        self.token = self.mint(&team);
        self.team = team;
        self.trigger = None;
    }

    async fn ensure_team(&self, name: &str) {
        self.call(
            Method::POST,
            "/api/v1/teams",
            &self.h.admin_token,
            Some(json!({"name": name})),
        )
        .await;
    }

    /// Makes `identity` a member of `team`: a new user (secret `SECRET`) through the API, a
    /// user who exists already in the store (the API adds them only when they accept an
    /// invitation, which would take their login).
    async fn ensure_member(&self, team: &str, identity: &Value) -> (StatusCode, Value) {
        let path = format!("/api/v1/teams/{}/members", encode(team));
        let body = json!({"identity": identity, "secret": SECRET});
        let answer = self
            .call(Method::POST, &path, &self.mint(team), Some(body))
            .await;
        let plain = |i: &&str| {
            i.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if let (StatusCode::UNPROCESSABLE_ENTITY, Some(text)) =
            (answer.0, identity.as_str().filter(plain))
        {
            self.h
                .execute_sql(&format!(
                    "INSERT INTO members (team_id, user_id, role, created) \
                     SELECT t.id, u.id, 'member', 0 FROM teams t, users u \
                     WHERE t.name = {} AND u.identity = {} ON CONFLICT DO NOTHING",
                    sql_text(team),
                    sql_text(text)
                ))
                .await;
        }
        answer
    }

    /// Deletes user `identity` from the store, if it is a plain name and not the operator's,
    /// so that a case can create it anew.
    async fn forget_user(&self, identity: &Value) {
        let plain = |i: &&str| {
            *i != "admin"
                && i.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if let Some(identity) = identity.as_str().filter(plain) {
            self.h
                .execute_sql(&format!(
                    "DELETE FROM users WHERE identity = {}",
                    sql_text(identity)
                ))
                .await;
        }
    }

    /// Invites `identity` to `team` (whose admin the operator is).
    async fn invite(&self, team: &str, identity: &Value) -> (StatusCode, Value) {
        let path = format!("/api/v1/teams/{}/invitations", encode(team));
        let body = json!({"identity": identity});
        self.call(Method::POST, &path, &self.mint(team), Some(body))
            .await
    }

    async fn ensure_worker(&self, identity: &Value) {
        self.call(
            Method::POST,
            "/api/v1/workers",
            &self.token,
            Some(json!({"identity": identity})),
        )
        .await;
    }

    async fn ensure_service(&self, reference: &Value) {
        let Some(reference) = reference.as_str() else {
            return;
        };
        match reference.split_once('/') {
            Some((team, name)) => {
                self.ensure_team(team).await;
                let body = json!({"name": name, "visibility": "public"});
                self.call(
                    Method::POST,
                    "/api/v1/services",
                    &self.mint(team),
                    Some(body),
                )
                .await;
            }
            None => {
                self.call(
                    Method::POST,
                    "/api/v1/services",
                    &self.token,
                    Some(json!({"name": reference})),
                )
                .await;
            }
        }
    }

    /// Makes directory `dir` (`a/b`, with its parents) exist, removing a trigger that has
    /// its path or one of its parents' (a name in a directory is one or the other).
    async fn ensure_directory(&self, dir: &str) {
        let dir = dir.strip_prefix('/').unwrap_or(dir);
        if !path_like(dir) {
            return;
        }
        let mut at = String::new();
        for name in dir.split('/') {
            at = if at.is_empty() {
                name.into()
            } else {
                format!("{at}/{name}")
            };
            self.sql(&[self.drop_trigger(&at)]).await;
        }
        let body = json!({"path": format!("/{dir}"), "parents": true});
        self.call(Method::POST, "/api/v1/directories", &self.token, Some(body))
            .await;
    }

    /// The statement that removes the trigger of path `/{path}` in the world's team.
    fn drop_trigger(&self, path: &str) -> String {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        format!(
            "DELETE FROM triggers WHERE id IN (SELECT t.id FROM triggers t JOIN directories d \
             ON d.id = t.directory_id JOIN teams g ON g.id = d.team_id WHERE g.name = {} \
             AND d.name = {} AND t.name = {})",
            sql_text(&self.team),
            sql_text(dir),
            sql_text(name)
        )
    }

    /// Removes whatever has path `path` in the world's team: a trigger, or a directory with
    /// everything in it.
    async fn clear_path(&self, path: &str) {
        let path = path.strip_prefix('/').unwrap_or(path);
        if !path_like(path) {
            return;
        }
        let team = format!(
            "(SELECT id FROM teams WHERE name = {})",
            sql_text(&self.team)
        );
        let under = sql_text(&format!("{path}/"));
        let subtree = format!(
            "team_id = {team} AND (name = {} OR substr(name, 1, length({under})) = {under})",
            sql_text(path)
        );
        self.sql(&[
            self.drop_trigger(path),
            format!(
                "DELETE FROM triggers WHERE directory_id IN \
                 (SELECT id FROM directories WHERE {subtree})"
            ),
            format!("DELETE FROM directories WHERE {subtree}"),
        ])
        .await;
    }

    /// Makes a new directory's or a moved one's path `path` free, and its parent exist.
    async fn free_path(&self, path: &Value) {
        let Some(path) = path.as_str() else { return };
        let path = path.strip_prefix('/').unwrap_or(path);
        self.clear_path(path).await;
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.ensure_directory(parent).await;
        }
    }

    async fn new_trigger(&mut self) -> i64 {
        let (dir, service) = (self.fresh("d"), self.fresh("s"));
        self.ensure_directory(&dir).await;
        self.ensure_service(&json!(service)).await;
        let body =
            json!({"path": format!("/{dir}/t"), "plugin": "command/command", "service": service});
        let (status, t) = self
            .call(Method::POST, "/api/v1/triggers", &self.token, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        t["id"].as_i64().unwrap()
    }

    /// The group's trigger, made when there is none (a case may have deleted it).
    async fn trigger(&mut self) -> i64 {
        if let Some(id) = self.trigger {
            let path = format!("/api/v1/triggers/{id}");
            if self.call(Method::GET, &path, &self.token, None).await.0 == StatusCode::OK {
                return id;
            }
        }
        let id = self.new_trigger().await;
        self.trigger = Some(id);
        id
    }

    /// A job of the group's team, without workers (so that its id may be moved), made by the
    /// broker route.
    async fn job(&mut self) -> i64 {
        let key = self.fresh("job");
        let body = json!({"jobs": [{
            "key": key, "team": self.team, "identity": "u", "service": "s",
            "algorithm": "mirror", "plugin": "p", "duration_ms": 1,
            // Now: the retention task must not take it away.
            "started_unix_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
        }]});
        let token = self.h.broker_token();
        let (status, answer) = self
            .call(Method::POST, "/api/v1/broker/jobs", &token, Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, page) = self
            .call(Method::GET, "/api/v1/jobs?limit=1", &self.token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["jobs"][0]["id"].as_i64().expect("a job id")
    }

    async fn sql(&self, statements: &[String]) {
        self.h.execute_sqls(statements).await;
    }
}

/// The parameters and body of a request that succeeds, with fresh names.
async fn baseline(w: &mut World<'_>, op: &Op) -> (BTreeMap<String, String>, Option<Value>) {
    let mut path = BTreeMap::new();
    let mut param = |name: &str, value: String| {
        path.insert(name.to_string(), value);
    };
    let route = (op.method.as_str(), op.path.as_str());
    let body = match people_baseline(w, route, &mut param) {
        Some(body) => body,
        None => config_baseline(w, route, &mut param)
            .await
            .unwrap_or_else(|| {
                panic!("{op} takes input but has no fixture in tests/constraints.rs")
            }),
    };
    (path, body)
}

/// `baseline` for teams, members, invitations, users and logins (`None`: another route).
fn people_baseline(
    w: &mut World<'_>,
    route: (&str, &str),
    param: &mut impl FnMut(&str, String),
) -> Option<Option<Value>> {
    Some(match route {
        ("POST", "/api/v1/login") => {
            Some(json!({"team": w.team, "identity": w.fresh("u"), "secret": SECRET}))
        }
        ("POST", "/api/v1/teams") => Some(json!({"name": w.fresh("t")})),
        ("DELETE", "/api/v1/teams/{team}") => {
            param("team", w.fresh("t"));
            None
        }
        ("GET", "/api/v1/teams/{team}")
        | ("GET", "/api/v1/teams/{team}/members")
        | ("GET", "/api/v1/teams/{team}/quota") => {
            param("team", w.team.clone());
            None
        }
        ("PUT", "/api/v1/teams/{team}/quota") => {
            param("team", w.team.clone());
            Some(json!({}))
        }
        ("POST", "/api/v1/teams/{team}/members") => {
            param("team", w.team.clone());
            Some(json!({"identity": w.fresh("u"), "secret": SECRET}))
        }
        ("GET", "/api/v1/teams/{team}/invitations") => {
            param("team", w.team.clone());
            None
        }
        ("POST", "/api/v1/teams/{team}/invitations") => {
            param("team", w.team.clone());
            Some(json!({"identity": w.fresh("u")}))
        }
        ("DELETE", "/api/v1/teams/{team}/invitations/{identity}") => {
            param("team", w.team.clone());
            param("identity", w.fresh("u"));
            None
        }
        ("POST", "/api/v1/invitations/{team}/accept")
        | ("DELETE", "/api/v1/invitations/{team}") => {
            param("team", w.fresh("t"));
            None
        }
        ("PUT", "/api/v1/users/{identity}/secret") => {
            param("identity", w.fresh("u"));
            Some(json!({"current": SECRET, "new": "another-secret"}))
        }
        ("PATCH", "/api/v1/teams/{team}/members/{identity}") => {
            param("team", w.team.clone());
            param("identity", w.fresh("u"));
            Some(json!({"role": "member"}))
        }
        ("DELETE", "/api/v1/teams/{team}/members/{identity}") => {
            param("team", w.team.clone());
            param("identity", w.fresh("u"));
            None
        }
        ("GET", "/api/v1/users/{identity}") => {
            param("identity", w.fresh("u"));
            None
        }
        ("PATCH", "/api/v1/users/{identity}") => {
            param("identity", w.fresh("u"));
            Some(json!({"max_teams": 1}))
        }
        _ => return None,
    })
}

/// `baseline` for workers, services, directories, triggers, jobs and the broker's routes.
async fn config_baseline(
    w: &mut World<'_>,
    route: (&str, &str),
    param: &mut impl FnMut(&str, String),
) -> Option<Option<Value>> {
    Some(match route {
        ("POST", "/api/v1/workers") => Some(json!({"identity": w.fresh("w")})),
        ("GET", "/api/v1/workers/{identity}")
        | ("DELETE", "/api/v1/workers/{identity}")
        | ("POST", "/api/v1/workers/{identity}/regenerate") => {
            param("identity", w.fresh("w"));
            None
        }
        ("PATCH", "/api/v1/workers/{identity}") => {
            param("identity", w.fresh("w"));
            Some(json!({}))
        }
        ("POST", "/api/v1/services") => Some(json!({"name": w.fresh("s")})),
        ("GET", "/api/v1/services/{name}") | ("DELETE", "/api/v1/services/{name}") => {
            param("name", w.fresh("s"));
            None
        }
        ("PATCH", "/api/v1/services/{name}") => {
            param("name", w.fresh("s"));
            Some(json!({}))
        }
        ("POST", "/api/v1/services/{name}/workers") => {
            param("name", w.fresh("s"));
            Some(json!({"identity": w.fresh("w")}))
        }
        ("DELETE", "/api/v1/services/{name}/workers/{identity}") => {
            param("name", w.fresh("s"));
            param("identity", w.fresh("w"));
            None
        }
        ("POST", "/api/v1/services/{name}/requests") => {
            param("name", w.fresh("s"));
            Some(json!({"plugin": "command/command"}))
        }
        ("POST", "/api/v1/directories") => Some(json!({"path": format!("/{}", w.fresh("d"))})),
        ("DELETE", "/api/v1/directories/{path}") => {
            param("path", w.fresh("d"));
            None
        }
        ("PATCH", "/api/v1/directories/{path}") => {
            param("path", w.fresh("d"));
            Some(json!({"path": format!("/{}", w.fresh("d"))}))
        }
        ("POST", "/api/v1/triggers") => {
            let (dir, service) = (w.fresh("d"), w.fresh("s"));
            Some(
                json!({"path": format!("/{dir}/t"), "plugin": "command/command", "service": service}),
            )
        }
        ("GET", "/api/v1/triggers/{id}") | ("DELETE", "/api/v1/triggers/{id}") => {
            param("id", w.trigger().await.to_string());
            None
        }
        ("PATCH", "/api/v1/triggers/{id}") | ("POST", "/api/v1/triggers/{id}/hits") => {
            param("id", w.trigger().await.to_string());
            Some(json!({}))
        }
        ("PUT", "/api/v1/broker/nodes/{node}") => {
            param("node", NODE.into());
            Some(
                json!({"advertise": "10.0.0.11:5555", "started_unix_ms": 1, "clients": 0,
                "workers": 0}),
            )
        }
        ("DELETE", "/api/v1/broker/nodes/{node}") => {
            param("node", NODE.into());
            None
        }
        ("POST", "/api/v1/broker/report") => Some(json!({"workers": [
            {"team": w.team, "identity": "w", "state": "ONLINE", "at_unix_ms": 1}
        ]})),
        ("POST", "/api/v1/broker/jobs") => Some(json!({"jobs": [{
            "key": w.fresh("k"), "team": w.team, "identity": "u", "service": "s",
            "algorithm": "mirror", "plugin": "p", "started_unix_ms": 1, "duration_ms": 1,
            "workers": [{"worker": "w", "outcome": "ok", "exit_code": 0, "duration_ms": 1}]
        }], "triggers": [{
            "source": "b-0", "team": w.team, "identity": "u", "service": "s", "trigger": "/t",
            "minute_unix_ms": 60000, "counts": {"ok": 1, "failed": 0, "timed_out": 0, "lost": 0,
            "cancelled": 0}
        }]})),
        ("GET", "/api/v1/jobs/{id}") => {
            param("id", w.job().await.to_string());
            None
        }
        ("POST", "/api/v1/schedules") => Some(json!({"name": w.fresh("sc"), "service": "s",
            "request": {"plugin": "command/command"}, "timetable": {"every": "1h"}})),
        ("GET", "/api/v1/schedules/{name}")
        | ("DELETE", "/api/v1/schedules/{name}")
        | ("POST", "/api/v1/schedules/{name}/run")
        | ("POST", "/api/v1/schedules/{name}/resume") => {
            param("name", w.fresh("sc"));
            None
        }
        ("POST", "/api/v1/schedules/{name}/pause") => {
            param("name", w.fresh("sc"));
            Some(json!({}))
        }
        _ => return None,
    })
}

/// Makes the world hold what the request refers to, so that only the form of its values
/// decides; returns who sends it.
async fn prepare(
    w: &mut World<'_>,
    op: &Op,
    path: &BTreeMap<String, String>,
    body: &Option<Value>,
) -> Who {
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let team = path.get("team").cloned().unwrap_or_else(|| w.team.clone());
    if team != w.team {
        w.ensure_team(&team).await;
    }
    let route = (op.method.as_str(), op.path.as_str());
    if let Some(who) = prepare_people(w, route, &team, path, &field).await {
        return who;
    }
    if let Some(who) = prepare_config(w, route, path, &field).await {
        return who;
    }
    Who::Operator(w.token.clone())
}

/// `prepare` for teams, members, invitations, users and logins; `Some` names the sender
/// where it is not the operator.
async fn prepare_people(
    w: &mut World<'_>,
    route: (&str, &str),
    team: &str,
    path: &BTreeMap<String, String>,
    field: impl Fn(&str) -> Value,
) -> Option<Who> {
    match route {
        ("POST", "/api/v1/login") => {
            let team = field("team").as_str().unwrap_or_default().to_string();
            if team != w.team {
                w.ensure_team(&team).await;
            }
            let path = format!("/api/v1/teams/{}/members", encode(&team));
            let body = json!({"identity": field("identity"), "secret": field("secret")});
            w.call(Method::POST, &path, &w.mint(&team), Some(body))
                .await;
            return Some(Who::Nobody);
        }
        ("POST", "/api/v1/teams") => {
            if let Some(name) = field("name").as_str() {
                let path = format!("/api/v1/teams/{}", encode(name));
                w.call(Method::DELETE, &path, &w.h.admin_token, None).await;
            }
        }
        // A new user's identity must be free (an existing user joins through an
        // invitation): an earlier case may have made one of this value.
        ("POST", "/api/v1/teams/{team}/members") => w.forget_user(&field("identity")).await,
        ("PATCH", "/api/v1/teams/{team}/members/{identity}")
        | ("DELETE", "/api/v1/teams/{team}/members/{identity}") => {
            w.ensure_member(team, &json!(path["identity"])).await;
        }
        // Only an existing user may be invited.
        ("POST", "/api/v1/teams/{team}/invitations") => {
            w.ensure_member("scratch", &field("identity")).await;
        }
        ("DELETE", "/api/v1/teams/{team}/invitations/{identity}") => {
            let identity = json!(path["identity"]);
            let made = w.ensure_member("scratch", &identity).await;
            // A member cannot be invited: an earlier fixture may have made this value a
            // member of `team` (seen once: the invitation was then never made, and the
            // DELETE answered 404).
            let member = format!(
                "/api/v1/teams/{}/members/{}",
                encode(team),
                encode(&path["identity"])
            );
            let removed = w.call(Method::DELETE, &member, &w.mint(team), None).await;
            let invited = w.invite(team, &identity).await;
            if invited.0 != StatusCode::CREATED {
                // Said beside a refusal of a valid case (the DELETE's 404 alone hid why).
                w.fixture_note = Some(format!(
                    "inviting {identity} to {team:?}: {} {}; making the user: {} {}; removing them from the team: {} {}",
                    invited.0, invited.1, made.0, made.1, removed.0, removed.1
                ));
            }
        }
        // The caller is a user of the group's team invited to `team` (the operator is a
        // member of every team the fixtures make, so cannot be invited).
        ("POST", "/api/v1/invitations/{team}/accept")
        | ("DELETE", "/api/v1/invitations/{team}") => {
            let invitee = w.fresh("i");
            w.ensure_member(&w.team, &json!(invitee)).await;
            w.invite(team, &json!(invitee)).await;
            return Some(Who::Operator(w.h.login(&w.team, &invitee, SECRET).await));
        }
        // The caller is the user themself, whose secret is `current`.
        ("PUT", "/api/v1/users/{identity}/secret") => {
            let identity = &path["identity"];
            // Made anew below with the secret `current` (an earlier case may have made it).
            w.forget_user(&json!(identity)).await;
            let current = field("current");
            let url = format!("/api/v1/teams/{}/members", encode(&w.team));
            let body = json!({"identity": identity, "secret": current});
            w.call(Method::POST, &url, &w.token, Some(body)).await;
            let login = json!({"team": w.team, "identity": identity, "secret": current});
            let (status, answer) =
                w.h.call(Method::POST, "/api/v1/login", None, Some(login))
                    .await;
            if status == StatusCode::OK {
                return Some(Who::Operator(answer["token"].as_str().unwrap().to_string()));
            }
        }
        ("GET", "/api/v1/users/{identity}") | ("PATCH", "/api/v1/users/{identity}") => {
            w.ensure_member("scratch", &json!(path["identity"])).await;
        }
        _ => {}
    }
    None
}

/// `prepare` for workers, services, directories, triggers and the broker's routes.
async fn prepare_config(
    w: &mut World<'_>,
    route: (&str, &str),
    path: &BTreeMap<String, String>,
    field: impl Fn(&str) -> Value,
) -> Option<Who> {
    match route {
        ("GET", "/api/v1/workers/{identity}")
        | ("PATCH", "/api/v1/workers/{identity}")
        | ("DELETE", "/api/v1/workers/{identity}")
        | ("POST", "/api/v1/workers/{identity}/regenerate") => {
            w.ensure_worker(&json!(path["identity"])).await;
            // A worker's new owner must be a member of the team.
            if field("owner").is_string() {
                w.ensure_member(&w.team, &field("owner")).await;
            }
        }
        ("POST", "/api/v1/services") | ("PATCH", "/api/v1/services/{name}") => {
            for identity in field("workers").as_array().into_iter().flatten() {
                w.ensure_worker(identity).await;
            }
            if let Some(name) = path.get("name") {
                w.ensure_service(&json!(name)).await;
            }
        }
        ("GET", "/api/v1/services/{name}") | ("DELETE", "/api/v1/services/{name}") => {
            w.ensure_service(&json!(path["name"])).await;
        }
        ("GET", "/api/v1/schedules/{name}")
        | ("DELETE", "/api/v1/schedules/{name}")
        | ("POST", "/api/v1/schedules/{name}/run")
        | ("POST", "/api/v1/schedules/{name}/pause")
        | ("POST", "/api/v1/schedules/{name}/resume") => {
            // A schedule that runs `allow`: a run asked for while another is still
            // trying to reach the (absent) broker is not refused.
            let body = json!({"name": path["name"], "service": "s", "concurrency": "allow",
                "request": {"plugin": "command/command"}, "timetable": {"every": "1h"}});
            w.call(Method::POST, "/api/v1/schedules", &w.token, Some(body))
                .await;
        }
        ("POST", "/api/v1/services/{name}/workers") => {
            w.ensure_service(&json!(path["name"])).await;
            w.ensure_worker(&field("identity")).await;
        }
        ("DELETE", "/api/v1/services/{name}/workers/{identity}") => {
            let (name, identity) = (&path["name"], &path["identity"]);
            w.ensure_service(&json!(name)).await;
            w.ensure_worker(&json!(identity)).await;
            let url = format!("/api/v1/services/{}/workers", encode(name));
            w.call(
                Method::POST,
                &url,
                &w.token,
                Some(json!({"identity": identity})),
            )
            .await;
        }
        ("POST", "/api/v1/directories") => w.free_path(&field("path")).await,
        ("DELETE", "/api/v1/directories/{path}") => {
            w.clear_path(&path["path"]).await;
            w.ensure_directory(&path["path"]).await;
        }
        ("PATCH", "/api/v1/directories/{path}") => {
            w.clear_path(&path["path"]).await;
            w.ensure_directory(&path["path"]).await;
            w.free_path(&field("path")).await;
        }
        ("POST", "/api/v1/triggers") | ("PATCH", "/api/v1/triggers/{id}") => {
            // The trigger a PATCH changes, out of the way of what is cleared for its new path
            // (an earlier case may have moved it there).
            if let (Some(id), "PATCH") = (w.trigger, route.0) {
                w.ensure_directory("park").await;
                let url = format!("/api/v1/triggers/{id}");
                let body = json!({"path": "/park/t"});
                w.call(Method::PATCH, &url, &w.token, Some(body)).await;
            }
            if let Some(path) = field("path").as_str() {
                // Its directory, and no directory where the trigger goes.
                w.clear_path(path).await;
                if let Some((dir, _)) = path.strip_prefix('/').and_then(|p| p.rsplit_once('/')) {
                    w.ensure_directory(dir).await;
                }
            }
            w.ensure_service(&field("service")).await;
        }
        ("POST", "/api/v1/broker/report") => {
            // A report of a node: the node is in the cell.
            if let Some(node) = field("node").as_str() {
                let body = json!({"advertise": "10.0.0.11:5555", "started_unix_ms": 1,
                    "clients": 0, "workers": 0});
                let url = format!("/api/v1/broker/nodes/{}", encode(node));
                let token = w.h.broker_token();
                w.call(Method::PUT, &url, &token, Some(body)).await;
            }
            return Some(Who::Broker);
        }
        ("POST", "/api/v1/broker/jobs")
        | ("PUT", "/api/v1/broker/nodes/{node}")
        | ("DELETE", "/api/v1/broker/nodes/{node}") => return Some(Who::Broker),
        _ => {}
    }
    None
}

/// Moves trigger `from` to id `to` (the schema allows any id from 1 to 2^63-1; the fixture
/// cannot choose the ids it creates) and back.
async fn move_trigger(w: &World<'_>, from: &str, to: &str) {
    let table = if w.moving_job { "jobs" } else { "triggers" };
    // Only ids a row can have (a document that allows others is caught by the request).
    if from == to || from.parse::<i64>().is_err() || to.parse::<i64>().is_err() {
        return;
    }
    let mut statements = vec![
        format!("DELETE FROM {table} WHERE id = {to}"),
        format!("UPDATE {table} SET id = {to} WHERE id = {from}"),
    ];
    if matches!(w.backend, Backend::Sqlite) {
        // AUTOINCREMENT must not carry on from 2^63 - 1.
        statements.push(format!(
            "UPDATE sqlite_sequence SET seq = (SELECT COALESCE(MAX(id), 0) FROM {table} \
                 WHERE id < 1000000000) WHERE name = '{table}'"
        ));
    }
    w.sql(&statements).await;
}

/// One request to try: where the tried value goes, and the value (`None`: left out).
struct Case {
    what: String,
    param: Option<(String, String)>,
    body: Option<(String, Option<Value>)>,
}

async fn documented_constraints_are_the_servers(backend: Backend) {
    let h = Harness::start_configured(backend, |settings| {
        // Logins are part of what is tried; the limiter and the lockout are not.
        settings.login_limits.identity_burst = 100_000;
        settings.login_limits.address_burst = 100_000;
        settings.login_limits.lockout_after = 100_000;
    })
    .await;
    let (status, doc) = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let v = Validator {
        doc: &doc,
        regexes: RefCell::new(HashMap::new()),
    };
    let mut w = World::new(&h, backend);
    w.ensure_team("scratch").await;

    let mut failures: Vec<String> = Vec::new();
    let mut seen: BTreeMap<Op, BTreeSet<u16>> = BTreeMap::new();
    let mut n_requests = 0;
    let mut fields_checked = 0;
    for (path_template, item) in doc["paths"].as_object().unwrap() {
        for (method, op_doc) in item.as_object().unwrap() {
            let op = Op {
                method: method.to_uppercase(),
                path: path_template.clone(),
            };
            let params = path_params(op_doc);
            let body_schema = op_doc.pointer("/requestBody/content/application~1json/schema");
            if params.is_empty() && body_schema.is_none() {
                continue;
            }
            for (field, cases) in groups_of_cases(&v, &params, body_schema) {
                w.new_team().await;
                let (mut valid_cases, mut accepted) = (0, 0);
                // A required object whose schema offers no value of its own (its fields are
                // tried one by one, or it is a choice of such objects) is only left out.
                let only_left_out = cases.len() == 1;
                for case in cases {
                    let (valid, status, answer) =
                        send_case(&mut w, &v, &op, &params, body_schema, &case).await;
                    n_requests += 1;
                    seen.entry(op.clone()).or_default().insert(status.as_u16());
                    let gateway_got_through = status == StatusCode::SERVICE_UNAVAILABLE
                        && answer["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("gateway is off"));
                    let what = format!(
                        "{op} with {}: {status} {}",
                        case.what,
                        clip(&answer.to_string())
                    );
                    if valid {
                        valid_cases += 1;
                        if status.is_success() || gateway_got_through {
                            accepted += 1;
                        } else {
                            let note = w
                                .fixture_note
                                .take()
                                .map(|n| format!(" (the fixture: {n})"))
                                .unwrap_or_default();
                            failures.push(format!("valid by the document, refused: {what}{note}"));
                        }
                    } else if !status.is_client_error() {
                        failures.push(format!("invalid by the document, not a 4xx: {what}"));
                    }
                }
                fields_checked += 1;
                // Each field was tried with values the document allows (an unknown field may
                // have none), and some got through: the fixture works.
                let expected = valid_cases > 0 || (field != "an unknown field" && !only_left_out);
                if accepted == 0 && expected {
                    failures.push(format!("{op} {field}: no valid value was accepted"));
                }
            }
        }
    }

    failures.extend(undocumented_4xx(&doc, &seen));
    assert!(
        failures.is_empty(),
        "{} disagreements between the document and the server ({n_requests} requests); the first ones:\n{}",
        failures.len(),
        failures.iter().take(150).cloned().collect::<Vec<_>>().join("\n")
    );
    println!("{n_requests} requests over {fields_checked} fields");
    assert!(fields_checked > 60, "only {fields_checked} fields");
    assert!(n_requests > 2000, "only {n_requests} requests");
}

/// The path parameters of an operation: name and schema.
fn path_params(op_doc: &Value) -> Vec<(String, &Value)> {
    op_doc["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "path")
        .map(|p| (p["name"].as_str().unwrap().to_string(), &p["schema"]))
        .collect()
}

/// The cases of an operation, grouped by the field they try: each path parameter's and body
/// field's candidates, a body field left out, and an unknown field.
fn groups_of_cases<'d>(
    v: &Validator<'d>,
    params: &[(String, &'d Value)],
    body_schema: Option<&'d Value>,
) -> Vec<(String, Vec<Case>)> {
    let mut fields: Vec<(String, &Value)> = Vec::new();
    if let Some(schema) = body_schema {
        body_fields(v, schema, "", &mut fields);
    }
    // Every field gets its own cases; each case a fresh baseline.
    let mut groups: Vec<(String, Vec<Case>)> = Vec::new();
    for (name, schema) in params {
        let mut cases = Vec::new();
        let mut texts = BTreeSet::new();
        for x in candidates(v, schema) {
            let text = match &x {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            // A URL cannot carry an empty, `.` or `..` segment as such.
            if matches!(text.as_str(), "" | "." | "..") || !texts.insert(text.clone()) {
                continue;
            }
            cases.push(Case {
                what: format!("path {{{name}}} = {:?}", clip(&text)),
                param: Some((name.clone(), text)),
                body: None,
            });
        }
        groups.push((format!("{{{name}}}"), cases));
    }
    for (pointer, schema) in &fields {
        let mut cases = vec![Case {
            what: format!("{pointer} left out"),
            param: None,
            body: Some((pointer.clone(), None)),
        }];
        for x in candidates(v, schema) {
            cases.push(Case {
                what: format!("{pointer} = {}", clip(&x.to_string())),
                param: None,
                body: Some((pointer.clone(), Some(x))),
            });
        }
        groups.push((pointer.clone(), cases));
    }
    if body_schema.is_some() {
        groups.push((
            "an unknown field".into(),
            vec![Case {
                what: "an unknown field".into(),
                param: None,
                body: Some(("/zz_unknown".into(), Some(json!(1)))),
            }],
        ));
    }
    groups
}

/// Sends one case on a fresh baseline, its fixture prepared; returns whether the document
/// calls it valid, and the answer.
async fn send_case<'d>(
    w: &mut World<'_>,
    v: &Validator<'d>,
    op: &Op,
    params: &[(String, &'d Value)],
    body_schema: Option<&'d Value>,
    case: &Case,
) -> (bool, StatusCode, Value) {
    let h = w.h;
    let (mut path_values, mut body) = baseline(w, op).await;
    let baseline_id = path_values.get("id").cloned();
    w.moving_job = op.path.starts_with("/api/v1/jobs/");
    if let Some((name, text)) = &case.param {
        path_values.insert(name.clone(), text.clone());
    }
    if let (Some((pointer, x)), Some(b)) = (&case.body, body.as_mut()) {
        set(b, pointer, x.clone());
    }
    // Valid or not, by the document alone.
    let mut valid = body_schema.is_none_or(|s| v.valid(s, body.as_ref().unwrap()));
    for (name, schema) in params {
        let text = &path_values[name];
        let as_json = if v.deref(schema)["type"] == "integer" {
            text.parse::<i128>().map(int).unwrap_or(json!(text))
        } else {
            json!(text)
        };
        valid &= v.valid(schema, &as_json);
    }
    w.fixture_note = None;
    let who = prepare(w, op, &path_values, &body).await;
    if let (Some(from), Some(to)) = (&baseline_id, path_values.get("id")) {
        if valid {
            move_trigger(w, from, to).await;
        }
    }
    let mut url = op.path.clone();
    for (name, text) in &path_values {
        url = url.replace(&format!("{{{name}}}"), &encode(text));
    }
    let mut req = h.http.request(
        Method::from_bytes(op.method.as_bytes()).unwrap(),
        h.url(&url),
    );
    req = match &who {
        Who::Nobody => req,
        Who::Operator(token) => req.bearer_auth(token),
        Who::Broker => req.bearer_auth(h.broker_token()),
    };
    if let Some(b) = &body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{op} {}: {e}", case.what));
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if let (Some(from), Some(to)) = (&baseline_id, path_values.get("id")) {
        if valid {
            move_trigger(w, to, from).await;
        }
    }
    (valid, status, answer)
}

/// Every 4xx a route answered that its documented responses do not list.
fn undocumented_4xx(doc: &Value, seen: &BTreeMap<Op, BTreeSet<u16>>) -> Vec<String> {
    let mut failures = Vec::new();
    for (op, statuses) in seen {
        let responses = &doc["paths"][&op.path][op.method.to_lowercase()]["responses"];
        for status in statuses.iter().filter(|s| (400..500).contains(*s)) {
            if responses.get(status.to_string()).is_none() {
                failures.push(format!(
                    "{op} answered {status}, which its responses do not list"
                ));
            }
        }
    }
    failures
}

/// At most 120 characters of `text`, for messages.
fn clip(text: &str) -> String {
    let count = text.chars().count();
    if count <= 120 {
        text.to_string()
    } else {
        format!(
            "{}… ({count} characters)",
            text.chars().take(100).collect::<String>()
        )
    }
}

/// Whether `text` may be a path: only what names and paths are made of (anything else is
/// refused by the server before a fixture could matter).
fn path_like(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

/// `text` as an SQL string literal.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

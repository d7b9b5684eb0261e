//! What each command of the console does: one function per entry of
//! [`ENTRIES`](super::grammar::ENTRIES), each a few API calls and a [`Reply`].

use super::api::ApiError;
use super::grammar::{help_lines, Args, Kind, Mode, ParseError};
use super::table::{seed_time, Table};
use super::Session;
use reqwest::Method;
use serde_json::{json, Map, Value};

/// What runs a command.
pub type Handler = fn(&mut Session, &Args) -> Result<Reply, CliError>;

/// What a command came to.
#[derive(Debug)]
pub enum Reply {
    /// A table; `--json` prints the API's answer instead.
    Table(Table, Value),
    /// Lines for a person; `--json` prints the API's answer instead.
    Done(Vec<String>, Value),
    /// Nothing more to say.
    Quiet,
}

/// A command that failed: one line, and the console goes on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Not a command.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The control plane refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A value that cannot be what its place wants.
    #[error("{0}")]
    Value(String),
    /// An object named on the line that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request or the shell could not run.
    #[error("{0}")]
    Run(String),
}

pub fn path_part(text: &str) -> String {
    // Names are checked by the API; only the path's own separators need escaping.
    text.replace('%', "%25")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('#', "%23")
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

fn time(v: &Value, key: &str) -> String {
    seed_time(&text(v, key))
}

fn items(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

/// A change whose answer only `--json` shows.
fn change(s: &Session, method: Method, path: &str, body: Option<Value>) -> Result<Reply, CliError> {
    let answer = s.api.call(method, path, body)?;
    Ok(Reply::Done(Vec::new(), answer))
}

/// A deletion: nothing to show.
fn delete(s: &Session, path: &str) -> Result<Reply, CliError> {
    s.api.call(Method::DELETE, path, None)?;
    Ok(Reply::Quiet)
}

fn done(line: String, answer: Value) -> Result<Reply, CliError> {
    Ok(Reply::Done(vec![line], answer))
}

// ---------------------------------------------------------------- modes and help

pub fn configure(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    s.mode = Mode::Configure;
    Ok(Reply::Quiet)
}

pub fn exit(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    match s.mode {
        Mode::Configure => s.mode = Mode::Operational,
        Mode::Operational => s.leave = true,
    }
    Ok(Reply::Quiet)
}

pub fn quit(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    s.leave = true;
    Ok(Reply::Quiet)
}

pub fn help(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    // `-c help` lists both modes: `-c` runs any command of either.
    let modes: &[Mode] = if s.one_shot {
        &[Mode::Operational, Mode::Configure]
    } else {
        std::slice::from_ref(&s.mode)
    };
    let mut lines = Vec::new();
    for mode in modes {
        lines.push(match mode {
            Mode::Operational => "Commands (operational mode):".to_string(),
            Mode::Configure => "Commands (configure mode, after `configure`):".to_string(),
        });
        lines.extend(help_lines(*mode));
        lines.push(String::new());
    }
    lines.push(
        "? lists what may come next, TAB completes, Ctrl-C cancels the line or the request, \
         ^D leaves the mode."
            .to_string(),
    );
    Ok(Reply::Done(lines, Value::Null))
}

// ---------------------------------------------------------------- show

pub fn show_workers(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s.api.get("/workers")?;
    let mut t = Table::new(&[
        "identity",
        "description",
        "state",
        "last seen",
        "visibility",
        "owner",
        "created",
    ]);
    for w in items(&answer) {
        t.row(vec![
            text(&w, "identity"),
            text(&w, "description"),
            text(&w, "state"),
            time(&w, "last_seen"),
            text(&w, "visibility"),
            text(&w, "owner"),
            time(&w, "created"),
        ]);
    }
    Ok(Reply::Table(t, answer))
}

pub fn show_services(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s.api.get("/services")?;
    let triggers = items(&s.api.get("/triggers")?);
    let mut t = Table::new(&[
        "name",
        "description",
        "timeout",
        "algorithm",
        "triggers",
        "workers",
        "serving",
        "visibility",
        "owner",
        "created",
        "updated",
    ]);
    for v in items(&answer) {
        let name = text(&v, "name");
        let attached: Vec<String> = triggers
            .iter()
            .filter(|t| text(t, "service") == name)
            .map(|t| text(t, "name"))
            .collect();
        t.row(vec![
            name,
            text(&v, "description"),
            text(&v, "timeout"),
            text(&v, "algorithm"),
            attached.join(","),
            text(&v, "workers"),
            text(&v, "serving"),
            text(&v, "visibility"),
            text(&v, "owner"),
            time(&v, "created"),
            time(&v, "updated"),
        ]);
    }
    Ok(Reply::Table(t, answer))
}

pub fn show_triggers(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s.api.get("/triggers")?;
    let mut t = Table::new(&[
        "id",
        "name",
        "path",
        "description",
        "plugin",
        "service",
        "args",
        "split",
        "hits",
        "owner",
        "visibility",
        "created",
        "updated",
    ]);
    for v in items(&answer) {
        let args = v
            .get("args")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        t.row(vec![
            text(&v, "id"),
            text(&v, "name"),
            text(&v, "path"),
            text(&v, "description"),
            text(&v, "plugin"),
            text(&v, "service"),
            args,
            text(&v, "split"),
            text(&v, "hits"),
            text(&v, "owner"),
            text(&v, "visibility"),
            time(&v, "created"),
            time(&v, "updated"),
        ]);
    }
    Ok(Reply::Table(t, answer))
}

pub fn show_directories(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s.api.get("/directories")?;
    let mut t = Table::new(&["name", "path", "triggers", "owner", "created"]);
    for v in items(&answer) {
        t.row(vec![
            text(&v, "name"),
            text(&v, "path"),
            text(&v, "n_triggers"),
            text(&v, "owner"),
            time(&v, "created"),
        ]);
    }
    Ok(Reply::Table(t, answer))
}

pub fn show_users(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s
        .api
        .get(&format!("/teams/{}/members", path_part(&s.team())))?;
    let mut t = Table::new(&["identity", "role", "operator", "joined"]);
    for v in items(&answer) {
        t.row(vec![
            text(&v, "identity"),
            text(&v, "role"),
            text(&v, "operator"),
            time(&v, "joined"),
        ]);
    }
    Ok(Reply::Table(t, answer))
}

pub fn show_teams(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s.api.get("/teams")?;
    let mut t = Table::new(&["name", "role", "created", "updated"]);
    for v in items(&answer) {
        t.row(vec![
            text(&v, "name"),
            text(&v, "role"),
            time(&v, "created"),
            time(&v, "updated"),
        ]);
    }
    Ok(Reply::Table(t, answer))
}

pub fn show_quota(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer = s
        .api
        .get(&format!("/teams/{}/quota", path_part(&s.team())))?;
    let mut t = Table::new(&["objects", "used", "limit"]);
    let limit = |key: &str| match answer.get(key) {
        Some(Value::Null) | None => "unlimited".to_string(),
        Some(v) => v.to_string(),
    };
    for (objects, key) in [
        ("workers", "max_workers"),
        ("services", "max_services"),
        ("triggers", "max_triggers"),
        ("users", "max_users"),
    ] {
        let used = answer
            .get("used")
            .map(|u| text(u, objects))
            .unwrap_or_default();
        t.row(vec![objects.to_string(), used, limit(key)]);
    }
    let public = if answer.get("public_services") == Some(&Value::Bool(true)) {
        "allowed"
    } else {
        "not allowed"
    };
    t.row(vec!["public services".into(), String::new(), public.into()]);
    Ok(Reply::Table(t, answer))
}

pub fn show_invitations(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let mine = s.api.get("/invitations")?;
    // Only an admin may read the team's; a member's table is theirs alone.
    let sent = match s
        .api
        .get(&format!("/teams/{}/invitations", path_part(&s.team())))
    {
        Ok(v) => v,
        Err(ApiError::Refused { status: 403, .. }) => Value::Array(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut t = Table::new(&["team", "identity", "role", "invited by", "created"]);
    for v in items(&mine).iter().chain(items(&sent).iter()) {
        t.row(vec![
            text(v, "team"),
            text(v, "identity"),
            text(v, "role"),
            text(v, "invited_by"),
            time(v, "created"),
        ]);
    }
    Ok(Reply::Table(t, json!({ "received": mine, "sent": sent })))
}

// ---------------------------------------------------------------- workers

fn token_lines(s: &Session, answer: &Value, what: &str) -> Vec<String> {
    let identity = text(answer, "identity");
    vec![
        format!(
            "{what} Its token is shown only now: put it into triggerfs.toml on the server \
             that runs the worker:"
        ),
        String::new(),
        format!("[workers.{}.{identity}]", s.team()),
        format!("token = \"{}\"", text(answer, "token")),
        String::new(),
        format!("and start it there with: triggerfs worker --identity {identity}"),
    ]
}

pub fn create_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let answer = s.api.call(
        Method::POST,
        "/workers",
        Some(json!({ "identity": a.get(Kind::Name) })),
    )?;
    let what = format!("Worker {} created.", a.get(Kind::Name));
    Ok(Reply::Done(token_lines(s, &answer, &what), answer))
}

fn patch_worker(s: &mut Session, a: &Args, body: Value) -> Result<Reply, CliError> {
    let worker = a.get(Kind::Worker);
    change(
        s,
        Method::PATCH,
        &format!("/workers/{}", path_part(worker)),
        Some(body),
    )
}

pub fn worker_description(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_worker(s, a, json!({ "description": a.get(Kind::Rest) }))
}

pub fn worker_visibility(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_worker(s, a, json!({ "visibility": choice(a, Kind::Visibility)? }))
}

pub fn worker_regenerate(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let worker = a.get(Kind::Worker);
    let answer = s.api.call(
        Method::POST,
        &format!("/workers/{}/regenerate", path_part(worker)),
        None,
    )?;
    let what = format!("Worker {worker} has a new token; the old one is refused from now on.");
    Ok(Reply::Done(token_lines(s, &answer, &what), answer))
}

pub fn delete_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let worker = a.get(Kind::Worker);
    s.api.call(
        Method::DELETE,
        &format!("/workers/{}", path_part(worker)),
        None,
    )?;
    Ok(Reply::Quiet)
}

// ---------------------------------------------------------------- services

fn choice(a: &Args, kind: Kind) -> Result<&str, CliError> {
    let value = a.get(kind);
    if kind.choices().contains(&value) {
        Ok(value)
    } else {
        Err(CliError::Value(format!(
            "`{value}` is not a valid {}: expected {}",
            kind.label(),
            kind.choices().join(", ")
        )))
    }
}

fn number(a: &Args, kind: Kind) -> Result<u64, CliError> {
    let value = a.get(kind);
    value
        .parse::<u64>()
        .map_err(|_| CliError::Value(format!("`{value}` is not a whole number")))
}

fn boolean(a: &Args) -> Result<bool, CliError> {
    Ok(choice(a, Kind::Bool)? == "true")
}

/// A duration as people type it (`10s`, `1m30s`, `1h`), in milliseconds for the API.
fn duration_ms(a: &Args) -> Result<u64, CliError> {
    let value = a.get(Kind::Duration);
    humantime::parse_duration(value)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            CliError::Value(format!(
                "`{value}` is not a duration such as 10s, 1m30s or 1h"
            ))
        })
}

pub fn create_service(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    change(
        s,
        Method::POST,
        "/services",
        Some(json!({ "name": a.get(Kind::Name) })),
    )
}

fn patch_service(s: &mut Session, a: &Args, body: Value) -> Result<Reply, CliError> {
    let service = a.get(Kind::Service);
    change(
        s,
        Method::PATCH,
        &format!("/services/{}", path_part(service)),
        Some(body),
    )
}

pub fn service_description(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "description": a.get(Kind::Rest) }))
}

pub fn service_algorithm(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "algorithm": choice(a, Kind::Algorithm)? }))
}

pub fn service_timeout(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "timeout_ms": duration_ms(a)? }))
}

pub fn service_visibility(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "visibility": choice(a, Kind::Visibility)? }))
}

pub fn service_history(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "history": choice(a, Kind::History)? }))
}

pub fn service_batch(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "batch": number(a, Kind::Number)? }))
}

pub fn service_stop_on_failure(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "stop_on_failure": boolean(a)? }))
}

pub fn service_retry(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_service(s, a, json!({ "retry": boolean(a)? }))
}

pub fn service_add_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let service = a.get(Kind::Service);
    let answer = s.api.call(
        Method::POST,
        &format!("/services/{}/workers", path_part(service)),
        Some(json!({ "identity": a.get(Kind::Worker) })),
    )?;
    // The seed's notice, true to how this broker works: no worker needs to announce again.
    let workers = text(&answer, "workers").replace(',', ", ");
    let serving = text(&answer, "serving").replace(',', ", ");
    let online = if serving.is_empty() {
        "none yet".to_string()
    } else {
        serving
    };
    let line = format!(
        "Notice: service {service} ({}) is now served by {workers}; online now: {online}. \
         The broker routes to a bound worker as soon as it is online: nothing needs to \
         reannounce.",
        text(&answer, "algorithm")
    );
    done(line, answer)
}

pub fn service_remove_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let service = a.get(Kind::Service);
    change(
        s,
        Method::DELETE,
        &format!(
            "/services/{}/workers/{}",
            path_part(service),
            path_part(a.get(Kind::Worker))
        ),
        None,
    )
}

pub fn delete_service(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let service = a.get(Kind::Service);
    s.api.call(
        Method::DELETE,
        &format!("/services/{}", path_part(service)),
        None,
    )?;
    Ok(Reply::Quiet)
}

// ---------------------------------------------------------------- directories, triggers

pub fn create_directory(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let name = a.get(Kind::Name).trim_start_matches('/');
    change(
        s,
        Method::POST,
        "/directories",
        Some(json!({ "path": format!("/{name}") })),
    )
}

pub fn delete_directory(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let name = a.get(Kind::Directory).trim_start_matches('/');
    s.api.call(
        Method::DELETE,
        &format!("/directories/{}", path_part(name)),
        None,
    )?;
    Ok(Reply::Quiet)
}

/// The trigger a line names: `/directory/name`, or a name that only one trigger has.
fn trigger(s: &Session, a: &Args) -> Result<Value, CliError> {
    let wanted = a.get(Kind::Trigger);
    let all = items(&s.api.get("/triggers")?);
    let key = if wanted.contains('/') { "path" } else { "name" };
    let found: Vec<&Value> = all.iter().filter(|t| text(t, key) == wanted).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::NotFound(format!(
            "no trigger {wanted} in team {} (show triggers lists them)",
            s.team()
        ))),
        many => Err(CliError::Value(format!(
            "{} triggers are named {wanted}: give its path ({})",
            many.len(),
            many.iter()
                .map(|t| text(t, "path"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn patch_trigger(s: &mut Session, a: &Args, body: Value) -> Result<Reply, CliError> {
    let id = text(&trigger(s, a)?, "id");
    change(s, Method::PATCH, &format!("/triggers/{id}"), Some(body))
}

pub fn create_trigger(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    change(
        s,
        Method::POST,
        "/triggers",
        Some(json!({ "path": a.get(Kind::Path) })),
    )
}

pub fn trigger_plugin(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "plugin": a.get(Kind::Plugin) }))
}

pub fn trigger_service(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "service": a.get(Kind::Service) }))
}

fn trigger_args(t: &Value) -> Map<String, Value> {
    t.get("args")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

pub fn trigger_arg(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let pair = a.get(Kind::KeyValue);
    let (key, value) = crate::client_cmd::parse_key_value(pair).map_err(CliError::Value)?;
    let t = trigger(s, a)?;
    let mut args = trigger_args(&t);
    args.insert(key, Value::String(value));
    change(
        s,
        Method::PATCH,
        &format!("/triggers/{}", text(&t, "id")),
        Some(json!({ "args": args })),
    )
}

pub fn trigger_delete_arg(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let key = a.get(Kind::Key);
    let t = trigger(s, a)?;
    let mut args = trigger_args(&t);
    if args.remove(key).is_none() {
        return Err(CliError::NotFound(format!(
            "trigger {} has no argument {key}",
            text(&t, "path")
        )));
    }
    change(
        s,
        Method::PATCH,
        &format!("/triggers/{}", text(&t, "id")),
        Some(json!({ "args": args })),
    )
}

pub fn trigger_split(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "split": choice(a, Kind::Split)? }))
}

pub fn trigger_batch_lines(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "batch_lines": number(a, Kind::Number)? }))
}

pub fn trigger_timeout(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "timeout_ms": duration_ms(a)? }))
}

pub fn trigger_mode(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let text = a.get(Kind::FileMode);
    let mode = u32::from_str_radix(text, 8)
        .map_err(|_| CliError::Value(format!("`{text}` is not an octal mode such as 644")))?;
    patch_trigger(s, a, json!({ "mode": mode }))
}

pub fn trigger_description(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "description": a.get(Kind::Rest) }))
}

pub fn trigger_visibility(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "visibility": choice(a, Kind::Visibility)? }))
}

pub fn trigger_rename(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    patch_trigger(s, a, json!({ "path": a.get(Kind::Path) }))
}

pub fn delete_trigger(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let id = text(&trigger(s, a)?, "id");
    delete(s, &format!("/triggers/{id}"))
}

// ---------------------------------------------------------------- users, teams, invitations

fn members_path(s: &Session) -> String {
    format!("/teams/{}/members", path_part(&s.team()))
}

pub fn create_user(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    change(
        s,
        Method::POST,
        &members_path(s),
        Some(json!({ "identity": a.get(Kind::Name), "secret": a.get(Kind::Text) })),
    )
}

pub fn user_role(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!("{}/{}", members_path(s), path_part(a.get(Kind::Member)));
    change(
        s,
        Method::PATCH,
        &path,
        Some(json!({ "role": choice(a, Kind::Role)? })),
    )
}

pub fn delete_user(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!("{}/{}", members_path(s), path_part(a.get(Kind::Member)));
    delete(s, &path)
}

pub fn invite(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let identity = a.get(Kind::Identity);
    let mut body = json!({ "identity": identity });
    if let Some(role) = a.option("role").first() {
        if !Kind::Role.choices().contains(role) {
            return Err(CliError::Value(format!(
                "`{role}` is not a role: expected admin or member"
            )));
        }
        body["role"] = json!(role);
    }
    let path = format!("/teams/{}/invitations", path_part(&s.team()));
    let answer = s.api.call(Method::POST, &path, Some(body))?;
    let line = format!(
        "Invited {identity} into team {}: they join with `accept {}` in their console.",
        s.team(),
        s.team()
    );
    done(line, answer)
}

pub fn withdraw(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!(
        "/teams/{}/invitations/{}",
        path_part(&s.team()),
        path_part(a.get(Kind::Invited))
    );
    delete(s, &path)
}

pub fn accept(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let team = a.get(Kind::Invitation);
    let answer = s.api.call(
        Method::POST,
        &format!("/invitations/{}/accept", path_part(team)),
        None,
    )?;
    let line = format!(
        "You joined team {team}. Log in to it with team = \"{team}\" in [main] of \
         triggerfs.toml (or --team {team})."
    );
    done(line, answer)
}

pub fn decline(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let team = a.get(Kind::Invitation);
    s.api.call(
        Method::DELETE,
        &format!("/invitations/{}", path_part(team)),
        None,
    )?;
    Ok(Reply::Quiet)
}

pub fn create_team(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    change(
        s,
        Method::POST,
        "/teams",
        Some(json!({ "name": a.get(Kind::Name) })),
    )
}

pub fn delete_team(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let team = a.get(Kind::Team);
    delete(s, &format!("/teams/{}", path_part(team)))
}

fn quota_path(s: &Session) -> String {
    format!("/teams/{}/quota", path_part(&s.team()))
}

pub fn quota_preset(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let preset = choice(a, Kind::Preset)?;
    change(
        s,
        Method::PUT,
        &quota_path(s),
        Some(json!({ "preset": preset })),
    )
}

pub fn quota_field(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let field = choice(a, Kind::QuotaField)?;
    let value = match a.get(Kind::Limit) {
        "unlimited" => Value::Null,
        text => json!(text.parse::<u64>().map_err(|_| CliError::Value(format!(
            "`{text}` is not a whole number or unlimited"
        )))?),
    };
    // A PUT sets every limit: start from the current ones.
    let current = s.api.get(&quota_path(s))?;
    let mut body = Map::new();
    for key in Kind::QuotaField.choices() {
        body.insert(
            (*key).to_string(),
            current.get(*key).cloned().unwrap_or(Value::Null),
        );
    }
    body.insert(
        "public_services".into(),
        current
            .get("public_services")
            .cloned()
            .unwrap_or(Value::Bool(false)),
    );
    body.insert(field.to_string(), value);
    change(s, Method::PUT, &quota_path(s), Some(Value::Object(body)))
}

pub fn password(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let (current, new) = s.ask_secrets()?;
    let identity = s.api.login.borrow().identity.clone();
    let answer = s.api.call(
        Method::PUT,
        &format!("/users/{}/secret", path_part(&identity)),
        Some(json!({ "current": current, "new": new })),
    )?;
    // Every JWT issued before the change is refused from now on: this is the new one.
    s.api.changed_secret(new, &text(&answer, "token"));
    done(
        "Secret changed; tokens issued before are refused from now on. Put the new secret \
         into secret of [main] in triggerfs.toml."
            .to_string(),
        Value::Null,
    )
}

// ---------------------------------------------------------------- request, file

pub fn request(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    s.request(a)
}

pub fn file(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    s.file_shell()
}

//! What each command of the console does: one function per entry of
//! [`ENTRIES`](super::grammar::ENTRIES), each a few API calls and a [`Reply`].

use super::grammar::{help_lines, Args, Kind, Mode, ParseError};
use super::table::{seed_time, Table};
use super::Session;
use api::brokers::BrokerNodeView;
use api::client::ApiError;
use api::directories::{CreateDirectory, DirectoryView, UpdateDirectory};
use api::gateway::{CommandWords, GatewayRequest, ShareText};
use api::invitations::{CreateInvitation, InvitationView};
use api::login::LoginResponse;
use api::schedules::{
    Concurrency, CreateSchedule, Cron, Every, PauseSchedule, RunView, ScheduleView, Timetable,
};
use api::services::{BindWorker, CreateService, ServiceView, UpdateService};
use api::teams::{AddMember, CreateTeam, MemberView, Preset, QuotaRequest, QuotaView, TeamView};
use api::teams::{Role, UpdateMember};
use api::triggers::{CreateTrigger, TriggerView, UpdateTrigger};
use api::users::ChangeSecret;
use api::workers::{CreateWorker, UpdateWorker, WorkerView, WorkerWithToken};
use api::Timeout;
use reqwest::Method;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;
use serde_json::Value;
use std::str::FromStr;

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

/// `answer` as `--json` prints it: the API's JSON.
fn json_of<T: Serialize>(answer: &T) -> Result<Value, CliError> {
    serde_json::to_value(answer).map_err(|e| CliError::Run(format!("cannot print the answer: {e}")))
}

/// A table, or with `--json` the answer it shows.
pub(super) fn table<T: Serialize>(table: Table, answer: &T) -> Result<Reply, CliError> {
    Ok(Reply::Table(table, json_of(answer)?))
}

/// A change whose answer (a `T`) only `--json` shows.
fn change<B, T>(
    s: &Session,
    method: Method,
    path: &str,
    body: Option<&B>,
) -> Result<Reply, CliError>
where
    B: Serialize,
    T: DeserializeOwned + Serialize,
{
    let answer: T = s.api.call(method, path, body)?;
    Ok(Reply::Done(Vec::new(), json_of(&answer)?))
}

/// A deletion: nothing to show.
fn delete(s: &Session, path: &str) -> Result<Reply, CliError> {
    let _: IgnoredAny = s.api.call(Method::DELETE, path, None::<&()>)?;
    Ok(Reply::Quiet)
}

pub(super) fn done<T: Serialize>(line: String, answer: &T) -> Result<Reply, CliError> {
    Ok(Reply::Done(vec![line], json_of(answer)?))
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
    let answer: Vec<WorkerView> = s.api.get("/workers")?;
    let mut t = Table::new(&[
        "identity",
        "description",
        "state",
        "last seen",
        "nodes",
        "visibility",
        "owner",
        "created",
    ]);
    for w in &answer {
        t.row(vec![
            w.identity.clone(),
            w.description.clone(),
            w.state.to_string(),
            seed_time(w.last_seen.as_deref().unwrap_or("")),
            w.nodes.to_string(),
            w.visibility.to_string(),
            w.owner.clone(),
            seed_time(&w.created),
        ]);
    }
    table(t, &answer)
}

pub fn show_services(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<ServiceView> = s.api.get("/services")?;
    let triggers: Vec<TriggerView> = s.api.get("/triggers")?;
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
    for v in &answer {
        let attached: Vec<&str> = triggers
            .iter()
            .filter(|t| t.service == v.name)
            .map(|t| t.name.as_str())
            .collect();
        t.row(vec![
            v.name.clone(),
            v.description.clone(),
            v.timeout.as_ref().map_or("", Timeout::as_str).to_string(),
            v.algorithm.to_string(),
            attached.join(","),
            v.workers.join(","),
            v.serving.join(","),
            v.visibility.to_string(),
            v.owner.clone(),
            seed_time(&v.created),
            seed_time(&v.updated),
        ]);
    }
    table(t, &answer)
}

pub fn show_triggers(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<TriggerView> = s.api.get("/triggers")?;
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
    for v in &answer {
        let args: Vec<String> = v.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.row(vec![
            v.id.to_string(),
            v.name.clone(),
            v.path.clone(),
            v.description.clone(),
            v.plugin.clone(),
            v.service.clone(),
            args.join(","),
            v.split.to_string(),
            v.hits.to_string(),
            v.owner.clone(),
            v.visibility.to_string(),
            seed_time(&v.created),
            seed_time(&v.updated),
        ]);
    }
    table(t, &answer)
}

pub fn show_directories(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<DirectoryView> = s.api.get("/directories")?;
    let mut t = Table::new(&[
        "path",
        "name",
        "triggers",
        "directories",
        "owner",
        "created",
    ]);
    for v in &answer {
        t.row(vec![
            v.path.clone(),
            v.name.clone(),
            v.n_triggers.to_string(),
            v.n_directories.to_string(),
            v.owner.clone(),
            seed_time(&v.created),
        ]);
    }
    table(t, &answer)
}

pub fn show_users(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<MemberView> = s.api.get(&members_path(s))?;
    let mut t = Table::new(&["identity", "role", "operator", "joined"]);
    for v in &answer {
        t.row(vec![
            v.identity.clone(),
            v.role.to_string(),
            v.operator.to_string(),
            seed_time(&v.joined),
        ]);
    }
    table(t, &answer)
}

pub fn show_teams(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<TeamView> = s.api.get("/teams")?;
    let mut t = Table::new(&["name", "role", "created", "updated"]);
    for v in &answer {
        t.row(vec![
            v.name.clone(),
            v.role.to_string(),
            seed_time(&v.created),
            seed_time(&v.updated),
        ]);
    }
    table(t, &answer)
}

/// A limit as shown: the number, or `unlimited`.
pub(super) fn limit_text(limit: Option<i64>) -> String {
    limit.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// A tier as shown: the preset, or `custom` for limits of a team's own.
pub(super) fn tier_text(tier: Option<Preset>) -> String {
    tier.map_or_else(|| "custom".to_string(), |t| t.to_string())
}

pub fn show_quota(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: QuotaView = s.api.get(&quota_path(s))?;
    let (limits, used) = (&answer.limits, &answer.used);
    let mut t = Table::new(&["objects", "used", "limit"]);
    for (objects, used, limit) in [
        ("workers", used.workers, limits.max_workers),
        ("services", used.services, limits.max_services),
        ("triggers", used.triggers, limits.max_triggers),
        ("users", used.users, limits.max_users),
    ] {
        t.row(vec![
            objects.to_string(),
            used.to_string(),
            limit_text(limit),
        ]);
    }
    let teams = limit_text(limits.max_teams);
    t.row(vec!["teams per admin".into(), String::new(), teams]);
    let public = if limits.public_services {
        "allowed"
    } else {
        "not allowed"
    };
    t.row(vec!["public services".into(), String::new(), public.into()]);
    t.row(vec!["tier".into(), String::new(), tier_text(answer.tier)]);
    table(t, &answer)
}

/// `show invitations --json`: the invitations to the caller, and the team's.
#[derive(Serialize)]
struct Invitations {
    received: Vec<InvitationView>,
    sent: Vec<InvitationView>,
}

pub fn show_invitations(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let received: Vec<InvitationView> = s.api.get("/invitations")?;
    // Only an admin may read the team's; a member's table is theirs alone.
    let sent = match s.api.get(&invitations_path(s)) {
        Ok(sent) => sent,
        Err(ApiError::Refused { status: 403, .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut t = Table::new(&["team", "identity", "role", "invited by", "created"]);
    for v in received.iter().chain(&sent) {
        t.row(vec![
            v.team.clone(),
            v.identity.clone(),
            v.role.to_string(),
            v.invited_by.clone(),
            seed_time(&v.created),
        ]);
    }
    table(t, &Invitations { received, sent })
}

// ---------------------------------------------------------------- workers

fn token_lines(s: &Session, answer: &WorkerWithToken, what: &str) -> Vec<String> {
    let identity = &answer.worker.identity;
    vec![
        format!(
            "{what} Its token is shown only now: put it into triggerfs.toml on the server \
             that runs the worker:"
        ),
        String::new(),
        format!("[workers.{}.{identity}]", s.team()),
        format!("token = \"{}\"", answer.token),
        String::new(),
        format!("and start it there with: triggerfs worker --identity {identity}"),
    ]
}

pub fn create_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let body = CreateWorker {
        identity: a.get(Kind::Name).to_string(),
        ..CreateWorker::default()
    };
    let answer: WorkerWithToken = s.api.call(Method::POST, "/workers", Some(&body))?;
    let what = format!("Worker {} created.", a.get(Kind::Name));
    Ok(Reply::Done(
        token_lines(s, &answer, &what),
        json_of(&answer)?,
    ))
}

fn patch_worker(s: &mut Session, a: &Args, body: UpdateWorker) -> Result<Reply, CliError> {
    let path = format!("/workers/{}", path_part(a.get(Kind::Worker)));
    change::<_, WorkerView>(s, Method::PATCH, &path, Some(&body))
}

/// Commands that change one field of an object, the others staying: each `name: field =
/// value;` runs `patch` with `Change { field: Some(value(args)?) }`.
macro_rules! change_fields {
    ($patch:ident($Change:ident): $($name:ident: $field:ident = $value:expr;)*) => {
        $(pub fn $name(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
            let change = $Change {
                $field: Some($value(a)?),
                ..$Change::default()
            };
            $patch(s, a, change)
        })*
    };
}

/// The text of `kind`, as it is.
fn text(kind: Kind) -> impl Fn(&Args) -> Result<String, CliError> {
    move |a| Ok(a.get(kind).to_string())
}

change_fields! { patch_worker(UpdateWorker):
    worker_description: description = text(Kind::Rest);
    worker_visibility: visibility = |a| pick(a, Kind::Visibility);
}

pub fn worker_regenerate(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let worker = a.get(Kind::Worker);
    let path = format!("/workers/{}/regenerate", path_part(worker));
    let answer: WorkerWithToken = s.api.call(Method::POST, &path, None::<&()>)?;
    let what = format!("Worker {worker} has a new token; the old one is refused from now on.");
    Ok(Reply::Done(
        token_lines(s, &answer, &what),
        json_of(&answer)?,
    ))
}

pub fn delete_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    delete(s, &format!("/workers/{}", path_part(a.get(Kind::Worker))))
}

// ---------------------------------------------------------------- services

/// The value of `kind`, one of its choices, as the type the API takes.
fn pick<T: FromStr>(a: &Args, kind: Kind) -> Result<T, CliError> {
    let value = a.get(kind);
    match value.parse() {
        Ok(parsed) if kind.choices().contains(&value) => Ok(parsed),
        _ => Err(CliError::Value(format!(
            "`{value}` is not a valid {}: expected {}",
            kind.label(),
            kind.choices().join(", ")
        ))),
    }
}

fn number<T: FromStr>(a: &Args, kind: Kind) -> Result<T, CliError> {
    let value = a.get(kind);
    value
        .parse()
        .map_err(|_| CliError::Value(format!("`{value}` is not a whole number")))
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
    let body = CreateService {
        name: a.get(Kind::Name).to_string(),
        ..CreateService::default()
    };
    change::<_, ServiceView>(s, Method::POST, "/services", Some(&body))
}

fn patch_service(s: &mut Session, a: &Args, body: UpdateService) -> Result<Reply, CliError> {
    let path = format!("/services/{}", path_part(a.get(Kind::Service)));
    change::<_, ServiceView>(s, Method::PATCH, &path, Some(&body))
}

change_fields! { patch_service(UpdateService):
    service_description: description = text(Kind::Rest);
    service_algorithm: algorithm = |a| pick(a, Kind::Algorithm);
    service_timeout: timeout_ms = duration_ms;
    service_visibility: visibility = |a| pick(a, Kind::Visibility);
    service_history: history = |a| pick(a, Kind::History);
    service_batch: batch = |a| number(a, Kind::Number);
    service_stop_on_failure: stop_on_failure = |a| pick(a, Kind::Bool);
    service_retry: retry = |a| pick(a, Kind::Bool);
}

pub fn service_add_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let service = a.get(Kind::Service);
    let body = BindWorker {
        identity: a.get(Kind::Worker).to_string(),
    };
    let path = format!("/services/{}/workers", path_part(service));
    let answer: ServiceView = s.api.call(Method::POST, &path, Some(&body))?;
    // The seed's notice, true to how this broker works: no worker needs to announce again.
    let online = if answer.serving.is_empty() {
        "none yet".to_string()
    } else {
        answer.serving.join(", ")
    };
    let line = format!(
        "Notice: service {service} ({}) is now served by {}; online now: {online}. \
         The broker routes to a bound worker as soon as it is online: nothing needs to \
         reannounce.",
        answer.algorithm,
        answer.workers.join(", ")
    );
    done(line, &answer)
}

pub fn service_remove_worker(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!(
        "/services/{}/workers/{}",
        path_part(a.get(Kind::Service)),
        path_part(a.get(Kind::Worker))
    );
    change::<(), ServiceView>(s, Method::DELETE, &path, None)
}

pub fn delete_service(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    delete(s, &format!("/services/{}", path_part(a.get(Kind::Service))))
}

// ---------------------------------------------------------------- directories, triggers

/// `set directory /a/b`: made with the directories above it that are missing (`mkdir -p`).
pub fn create_directory(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = a.get(Kind::DirPath).trim_start_matches('/');
    let body = CreateDirectory {
        path: format!("/{path}"),
        parents: Some(true),
    };
    change::<_, DirectoryView>(s, Method::POST, "/directories", Some(&body))
}

pub fn rename_directory(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let from = a.get(Kind::Directory).trim_start_matches('/');
    let body = UpdateDirectory {
        path: format!("/{}", a.get(Kind::DirPath).trim_start_matches('/')),
    };
    let url = format!("/directories/{}", path_part(from));
    change::<_, DirectoryView>(s, Method::PATCH, &url, Some(&body))
}

pub fn delete_directory(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = a.get(Kind::Directory).trim_start_matches('/');
    delete(s, &format!("/directories/{}", path_part(path)))
}

/// The trigger a line names: `/directory/name`, or a name that only one trigger has.
fn trigger(s: &Session, a: &Args) -> Result<TriggerView, CliError> {
    let wanted = a.get(Kind::Trigger);
    let all: Vec<TriggerView> = s.api.get("/triggers")?;
    let by_path = wanted.contains('/');
    let mut found: Vec<TriggerView> = all
        .into_iter()
        .filter(|t| if by_path { &t.path } else { &t.name } == wanted)
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CliError::NotFound(format!(
            "no trigger {wanted} in team {} (show triggers lists them)",
            s.team()
        ))),
        many => Err(CliError::Value(format!(
            "{many} triggers are named {wanted}: give its path ({})",
            found
                .iter()
                .map(|t| t.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn patch_trigger_id(s: &mut Session, id: i64, body: UpdateTrigger) -> Result<Reply, CliError> {
    change::<_, TriggerView>(s, Method::PATCH, &format!("/triggers/{id}"), Some(&body))
}

fn patch_trigger(s: &mut Session, a: &Args, body: UpdateTrigger) -> Result<Reply, CliError> {
    let id = trigger(s, a)?.id;
    patch_trigger_id(s, id, body)
}

/// A file mode as people type it (`644`).
fn file_mode(a: &Args) -> Result<u32, CliError> {
    let text = a.get(Kind::FileMode);
    u32::from_str_radix(text, 8)
        .map_err(|_| CliError::Value(format!("`{text}` is not an octal mode such as 644")))
}

change_fields! { patch_trigger(UpdateTrigger):
    trigger_plugin: plugin = text(Kind::Plugin);
    trigger_service: service = text(Kind::Service);
    trigger_split: split = |a| pick(a, Kind::Split);
    trigger_batch_lines: batch_lines = |a| number(a, Kind::Number);
    trigger_timeout: timeout_ms = duration_ms;
    trigger_mode: mode = file_mode;
    trigger_description: description = text(Kind::Rest);
    trigger_visibility: visibility = |a| pick(a, Kind::Visibility);
    trigger_rename: path = text(Kind::Path);
}

pub fn create_trigger(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let body = CreateTrigger {
        path: a.get(Kind::Path).to_string(),
        ..CreateTrigger::default()
    };
    change::<_, TriggerView>(s, Method::POST, "/triggers", Some(&body))
}

pub fn trigger_arg(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let pair = a.get(Kind::KeyValue);
    let (key, value) = crate::client_cmd::parse_key_value(pair).map_err(CliError::Value)?;
    let t = trigger(s, a)?;
    let mut args = t.args;
    args.insert(key, value);
    let body = UpdateTrigger {
        args: Some(args),
        ..UpdateTrigger::default()
    };
    patch_trigger_id(s, t.id, body)
}

pub fn trigger_delete_arg(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let key = a.get(Kind::Key);
    let t = trigger(s, a)?;
    let mut args = t.args;
    if args.remove(key).is_none() {
        return Err(CliError::NotFound(format!(
            "trigger {} has no argument {key}",
            t.path
        )));
    }
    let body = UpdateTrigger {
        args: Some(args),
        ..UpdateTrigger::default()
    };
    patch_trigger_id(s, t.id, body)
}

pub fn delete_trigger(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let id = trigger(s, a)?.id;
    delete(s, &format!("/triggers/{id}"))
}

// ---------------------------------------------------------------- users, teams, invitations

fn members_path(s: &Session) -> String {
    format!("/teams/{}/members", path_part(&s.team()))
}

fn invitations_path(s: &Session) -> String {
    format!("/teams/{}/invitations", path_part(&s.team()))
}

fn quota_path(s: &Session) -> String {
    format!("/teams/{}/quota", path_part(&s.team()))
}

pub fn create_user(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let body = AddMember {
        identity: a.get(Kind::Name).to_string(),
        secret: a.get(Kind::Text).to_string(),
        role: None,
    };
    change::<_, MemberView>(s, Method::POST, &members_path(s), Some(&body))
}

pub fn user_role(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!("{}/{}", members_path(s), path_part(a.get(Kind::Member)));
    let body = UpdateMember {
        role: pick(a, Kind::Role)?,
    };
    change::<_, MemberView>(s, Method::PATCH, &path, Some(&body))
}

pub fn delete_user(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!("{}/{}", members_path(s), path_part(a.get(Kind::Member)));
    delete(s, &path)
}

pub fn invite(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let identity = a.get(Kind::Identity);
    let role = a.option("role").first().map(|role| {
        role.parse::<Role>().map_err(|_| {
            CliError::Value(format!("`{role}` is not a role: expected admin or member"))
        })
    });
    let body = CreateInvitation {
        identity: identity.to_string(),
        role: role.transpose()?,
    };
    let answer: InvitationView = s
        .api
        .call(Method::POST, &invitations_path(s), Some(&body))?;
    let line = format!(
        "Invited {identity} into team {}: they join with `accept {}` in their console.",
        s.team(),
        s.team()
    );
    done(line, &answer)
}

pub fn withdraw(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let path = format!(
        "{}/{}",
        invitations_path(s),
        path_part(a.get(Kind::Invited))
    );
    delete(s, &path)
}

pub fn accept(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let team = a.get(Kind::Invitation);
    let path = format!("/invitations/{}/accept", path_part(team));
    let answer: TeamView = s.api.call(Method::POST, &path, None::<&()>)?;
    let line = format!(
        "You joined team {team}. Log in to it with team = \"{team}\" in [main] of \
         triggerfs.toml (or --team {team})."
    );
    done(line, &answer)
}

pub fn decline(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    delete(
        s,
        &format!("/invitations/{}", path_part(a.get(Kind::Invitation))),
    )
}

pub fn create_team(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let body = CreateTeam {
        name: a.get(Kind::Name).to_string(),
    };
    change::<_, TeamView>(s, Method::POST, "/teams", Some(&body))
}

pub fn delete_team(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    delete(s, &format!("/teams/{}", path_part(a.get(Kind::Team))))
}

pub fn quota_preset(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    set_preset(s, &quota_path(s), a)
}

pub fn quota_field(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    set_limit(s, &quota_path(s), a)
}

/// Gives the team whose quota is at `path` the limits of the preset on the line.
pub(super) fn set_preset(s: &Session, path: &str, a: &Args) -> Result<Reply, CliError> {
    let body = QuotaRequest {
        preset: Some(pick(a, Kind::Preset)?),
        ..QuotaRequest::default()
    };
    change::<_, QuotaView>(s, Method::PUT, path, Some(&body))
}

/// Sets the one limit on the line of the team whose quota is at `path`.
pub(super) fn set_limit(s: &Session, path: &str, a: &Args) -> Result<Reply, CliError> {
    let field: String = pick(a, Kind::QuotaField)?;
    let value = limit(a.get(Kind::Limit))?;
    // A PUT sets every limit: start from the current ones.
    let current = s.api.get::<QuotaView>(path)?.limits;
    let mut body = QuotaRequest {
        preset: None,
        max_workers: current.max_workers,
        max_services: current.max_services,
        max_triggers: current.max_triggers,
        max_users: current.max_users,
        max_teams: current.max_teams,
        public_services: Some(current.public_services),
    };
    // `pick` let only the five fields through.
    let slot = match field.as_str() {
        "max_workers" => &mut body.max_workers,
        "max_services" => &mut body.max_services,
        "max_triggers" => &mut body.max_triggers,
        "max_teams" => &mut body.max_teams,
        _ => &mut body.max_users,
    };
    *slot = value;
    change::<_, QuotaView>(s, Method::PUT, path, Some(&body))
}

/// A limit as typed: a whole number, or `unlimited` (`None`).
pub(super) fn limit(text: &str) -> Result<Option<i64>, CliError> {
    match text {
        "unlimited" => Ok(None),
        text => text
            .parse::<u64>()
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| CliError::Value(format!("`{text}` is not a whole number or unlimited"))),
    }
}

pub fn password(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let (current, new) = s.ask_secrets()?;
    let identity = s.api.login.borrow().identity.clone();
    let path = format!("/users/{}/secret", path_part(&identity));
    let body = ChangeSecret {
        current,
        new: new.clone(),
    };
    let answer: LoginResponse = s.api.call(Method::PUT, &path, Some(&body))?;
    // Every JWT issued before the change is refused from now on: this is the new one.
    s.api.changed_secret(new, answer.token);
    done(
        "Secret changed; tokens issued before are refused from now on. Put the new secret \
         into secret of [main] in triggerfs.toml."
            .to_string(),
        &(),
    )
}

// ---------------------------------------------------------------- request, file

pub fn request(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    s.request(a)
}

pub fn file(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    s.file_shell()
}

// ---------------------------------------------------------------- schedules

pub fn show_brokers(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<BrokerNodeView> = s.api.get("/brokers")?;
    let now = crate::cluster_cmd::unix_ms_now();
    Ok(Reply::Done(
        crate::cluster_cmd::status_table(&answer, now),
        json_of(&answer)?,
    ))
}

pub fn show_schedules(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<ScheduleView> = s.api.get("/schedules")?;
    Ok(Reply::Done(
        crate::schedules_cmd::list_table(&answer),
        json_of(&answer)?,
    ))
}

/// A duration option as the API writes it (`1m30s` becomes `1m 30s`).
fn duration_option(a: &Args, keyword: &str) -> Result<Option<Timeout>, CliError> {
    let Some(text) = a.option(keyword).first().copied() else {
        return Ok(None);
    };
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| Timeout::from_ms(u64::try_from(d.as_millis()).ok()?))
        .map(Some)
        .ok_or_else(|| CliError::Value(format!("`{text}` is not a duration such as 10s or 1m")))
}

pub fn create_schedule(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let args = a
        .option("args")
        .iter()
        .map(|kv| crate::client_cmd::parse_key_value(kv))
        .collect::<Result<std::collections::BTreeMap<_, _>, _>>()
        .map_err(CliError::Value)?;
    let first = |keyword: &str| a.option(keyword).first().map(|t| t.to_string());
    let concurrency = match first("concurrency") {
        Some(text) => Some(
            text.parse::<Concurrency>()
                .map_err(|e| CliError::Value(e.to_string()))?,
        ),
        None => None,
    };
    let body = CreateSchedule {
        name: a.get(Kind::Name).to_string(),
        service: a.get(Kind::Service).to_string(),
        request: GatewayRequest {
            plugin: a.get(Kind::Plugin).to_string(),
            command: Some(CommandWords::One(a.get(Kind::Rest).to_string())),
            args: (!args.is_empty()).then_some(args),
            timeout: duration_option(a, "timeout")?,
            batch: first("batch").map(ShareText::Text),
            max_failures: first("max-failures").map(ShareText::Text),
            deadline: duration_option(a, "deadline")?,
            ..GatewayRequest::default()
        },
        timetable: match (duration_option(a, "every")?, first("cron")) {
            (Some(every), None) => Timetable::Every(Every {
                every,
                jitter: duration_option(a, "jitter")?,
            }),
            (None, Some(cron)) => Timetable::Cron(Cron {
                cron,
                time_zone: first("time-zone"),
            }),
            _ => return Err(CliError::Value("give either every or cron".into())),
        },
        concurrency,
        starting_deadline: duration_option(a, "starting-deadline")?,
        visibility: match first("visibility") {
            Some(v) => Some(
                v.parse()
                    .map_err(|e: proto::UnknownText| CliError::Value(e.to_string()))?,
            ),
            None => None,
        },
        description: None,
        paused: None,
    };
    change::<_, ScheduleView>(s, Method::POST, "/schedules", Some(&body))
}

fn schedule_path(a: &Args, then: &str) -> String {
    format!("/schedules/{}{then}", path_part(a.get(Kind::Schedule)))
}

pub fn schedule_pause(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let body = PauseSchedule::default();
    change::<_, ScheduleView>(s, Method::POST, &schedule_path(a, "/pause"), Some(&body))
}

pub fn schedule_resume(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    change::<_, ScheduleView>(s, Method::POST, &schedule_path(a, "/resume"), None::<&()>)
}

pub fn run_schedule(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let run: RunView = s
        .api
        .call(Method::POST, &schedule_path(a, "/run"), None::<&()>)?;
    let line = format!(
        "{}: run started at {}",
        a.get(Kind::Schedule),
        run.started_at
    );
    done(line, &run)
}

pub fn delete_schedule(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    delete(s, &schedule_path(a, ""))
}

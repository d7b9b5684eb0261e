//! The operator's commands: every team's tier and limits, and every user's team allowance,
//! whether or not the operator is in the team. The control plane refuses them to anyone else
//! (403), so they are offered to everyone and fail there.

use super::commands::{done, limit_text, path_part, set_limit, set_preset, table};
use super::commands::{tier_text, CliError, Reply};
use super::grammar::{Args, Kind};
use super::table::Table;
use super::Session;
use api::teams::QuotaView;
use api::users::{AllowanceFrom, UpdateUser, UserView};
use reqwest::Method;

/// `used/limit`, as the operator's table shows a count and its limit.
fn of(used: i64, limit: Option<i64>) -> String {
    format!("{used}/{}", limit_text(limit))
}

pub fn show_all_teams(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<QuotaView> = s.api.get("/quotas")?;
    let mut t = Table::new(&[
        "team", "tier", "workers", "services", "triggers", "users", "teams", "public",
    ]);
    for v in &answer {
        let (l, u) = (&v.limits, &v.used);
        t.row(vec![
            v.team.clone(),
            tier_text(v.tier),
            of(u.workers, l.max_workers),
            of(u.services, l.max_services),
            of(u.triggers, l.max_triggers),
            of(u.users, l.max_users),
            limit_text(l.max_teams),
            if l.public_services { "yes" } else { "no" }.to_string(),
        ]);
    }
    table(t, &answer)
}

pub fn show_all_users(s: &mut Session, _: &Args) -> Result<Reply, CliError> {
    let answer: Vec<UserView> = s.api.get("/users")?;
    let mut t = Table::new(&["identity", "operator", "created teams", "max teams", "from"]);
    for v in &answer {
        t.row(vec![
            v.identity.clone(),
            v.operator.to_string(),
            v.teams_created.to_string(),
            limit_text(v.max_teams),
            v.max_teams_from.to_string(),
        ]);
    }
    table(t, &answer)
}

fn quota_path(a: &Args) -> String {
    format!("/teams/{}/quota", path_part(a.get(Kind::AnyTeam)))
}

pub fn team_preset(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    set_preset(s, &quota_path(a), a)
}

pub fn team_limit(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    set_limit(s, &quota_path(a), a)
}

pub fn user_max_teams(s: &mut Session, a: &Args) -> Result<Reply, CliError> {
    let max_teams = match a.get(Kind::Allowance) {
        "tier" => None,
        text => Some(
            text.parse::<u64>()
                .ok()
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| {
                    CliError::Value(format!("`{text}` is not a whole number or tier"))
                })?,
        ),
    };
    let identity = a.get(Kind::Account);
    let path = format!("/users/{}", path_part(identity));
    let body = UpdateUser { max_teams };
    let answer: UserView = s.api.call(Method::PATCH, &path, Some(&body))?;
    let from = match answer.max_teams_from {
        AllowanceFrom::Operator => "an operator",
        AllowanceFrom::User => "their own allowance",
        AllowanceFrom::Tier => "the tiers of the teams they administer",
    };
    let line = format!(
        "{identity} may create {} teams ({from}); created so far: {}.",
        limit_text(answer.max_teams),
        answer.teams_created
    );
    done(line, &answer)
}

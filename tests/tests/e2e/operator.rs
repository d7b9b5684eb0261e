//! Issue 28, point 5: the installation's operator administers tiers, through the real binary.
//! The operator (the first admin) lists every team with its tier and limits, sets another
//! team's tier and limits without being in it, and sets a user's team allowance; a tier
//! raises the allowance of the team's admins; a plain admin is refused on another team (and
//! on the operator's routes), and an operator joins a full team to help.

use anyhow::{ensure, Context, Result};
use api::teams::{Preset, QuotaView};
use api::users::{AllowanceFrom, UserView};
use serde_json::{json, Value};
use std::time::Duration;
use tests::*;

/// A control plane, its operator logged in, and user alice (a plain member of the
/// install's team) who created team `twilio` (free tier).
struct Install {
    control: Control,
    operator: Api,
    alice: Api,
}

impl Install {
    async fn start(db: Db) -> Result<Install> {
        let control = Control::start_on(&format!("127.0.0.1:{}", free_port()), db)?;
        let (team, identity, secret) = control.admin.clone();
        let operator = Api::login(&control.url, &team, &identity, &secret).await?;
        let alice = operator
            .new_member(&team, "alice", "alice-secret-28")
            .await?;
        alice
            .ok("POST", "/api/v1/teams", json!({"name": "twilio"}))
            .await?;
        Ok(Install {
            control,
            operator,
            alice,
        })
    }

    /// `triggerfs cli -c LINE` as the operator: (exit code, stdout, stderr).
    fn console(&self, line: &str) -> Result<(i32, String, String)> {
        let (team, identity, secret) = &self.control.admin;
        let env = [
            ("TRIGGERFS_URL", self.control.url.as_str()),
            ("TRIGGERFS_TEAM", team.as_str()),
            ("TRIGGERFS_IDENTITY", identity.as_str()),
            ("TRIGGERFS_SECRET", secret.as_str()),
        ];
        run_cli_env(&["cli", "-c", line], &env, Duration::from_secs(30))
    }

    /// The console line must succeed; its stdout.
    fn console_ok(&self, line: &str) -> Result<String> {
        let (code, out, err) = self.console(line)?;
        ensure!(code == 0, "`{line}` exited {code}: {out}{err}");
        Ok(out)
    }
}

/// A team's quota as `api` reads it.
async fn quota(api: &Api, team: &str) -> Result<QuotaView> {
    let body = api
        .ok("GET", &format!("/api/v1/teams/{team}/quota"), Value::Null)
        .await?;
    serde_json::from_value(body.clone()).with_context(|| body.to_string())
}

/// A user as the operator reads them.
async fn user(operator: &Api, identity: &str) -> Result<UserView> {
    let body = operator
        .ok("GET", &format!("/api/v1/users/{identity}"), Value::Null)
        .await?;
    serde_json::from_value(body.clone()).with_context(|| body.to_string())
}

/// `api` creates team `name`: the status and the error code, if any.
async fn create_team(api: &Api, name: &str) -> Result<(u16, Value)> {
    let (status, body) = api
        .call("POST", "/api/v1/teams", json!({ "name": name }))
        .await?;
    Ok((status.as_u16(), body["code"].clone()))
}

async fn operator_sets_another_teams_tier_and_limits(db: Db) -> Result<()> {
    let i = Install::start(db).await?;
    // Every team with its tier, though the operator is not in twilio.
    let all = i.operator.ok("GET", "/api/v1/quotas", Value::Null).await?;
    let all: Vec<QuotaView> = serde_json::from_value(all)?;
    let tiers: Vec<(&str, Option<Preset>)> =
        all.iter().map(|q| (q.team.as_str(), q.tier)).collect();
    ensure!(
        tiers
            == [
                ("main", Some(Preset::Unlimited)),
                ("twilio", Some(Preset::Free))
            ],
        "{tiers:?}"
    );
    // A free team's admin may create one team: twilio is hers.
    ensure!(create_team(&i.alice, "second").await? == (403, json!("QuotaExceeded")));
    // The operator gives twilio the advanced tier: its admin may now create 2 teams.
    let set = i
        .operator
        .ok(
            "PUT",
            "/api/v1/teams/twilio/quota",
            json!({"preset": "advanced"}),
        )
        .await?;
    let set: QuotaView = serde_json::from_value(set)?;
    ensure!(set.tier == Some(Preset::Advanced) && set.limits.max_teams == Some(2));
    let alice: UserView = user(&i.operator, "alice").await?;
    ensure!(
        alice.max_teams == Some(2) && alice.max_teams_from == AllowanceFrom::Tier,
        "{alice:?}"
    );
    ensure!(create_team(&i.alice, "second").await?.0 == 201);
    ensure!(create_team(&i.alice, "third").await? == (403, json!("QuotaExceeded")));
    // Limits of its own: a tier no more; its members see them.
    let limits = json!({"max_workers": 7, "max_services": 3, "max_triggers": 9,
        "max_users": 4, "max_teams": 3, "public_services": false});
    i.operator
        .ok("PUT", "/api/v1/teams/twilio/quota", limits)
        .await?;
    let seen: QuotaView = quota(&i.alice, "twilio").await?;
    ensure!(seen.tier.is_none(), "{seen:?}");
    ensure!(seen.limits.max_workers == Some(7) && seen.limits.max_users == Some(4));
    ensure!(create_team(&i.alice, "third").await?.0 == 201);
    // A team that does not exist is 404 to the operator too.
    let (status, _) = i
        .operator
        .call(
            "PUT",
            "/api/v1/teams/nosuch/quota",
            json!({"preset": "free"}),
        )
        .await?;
    ensure!(status == 404, "{status}");
    // Each change is logged with who made it and what.
    let log = i.control.proc.stderr();
    ensure!(
        log.lines()
            .any(|l| l.contains("operator set a team's quota")
                && l.contains("operator=admin")
                && l.contains("team=twilio")
                && l.contains("tier=\"advanced\"")),
        "no log line of the change in:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sets_another_teams_tier_and_limits_on_sqlite() -> Result<()> {
    operator_sets_another_teams_tier_and_limits(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sets_another_teams_tier_and_limits_on_postgres() -> Result<()> {
    operator_sets_another_teams_tier_and_limits(Db::Postgres).await
}

/// Through the console: every team in an aligned table, another team's tier, and a user's
/// allowance, which the user then uses up; `tier` gives the tier back the say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_administers_tiers_and_allowances_in_the_console() -> Result<()> {
    let i = Install::start(Db::Sqlite).await?;
    i.console_ok("set teams twilio quota preset basic")?;
    i.console_ok("set teams twilio quota max_workers 40")?;
    let out = i.console_ok("show teams all")?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() >= 5 && lines[0].contains("team") && lines[0].contains("tier"),
        "{out}"
    );
    let twilio = lines
        .iter()
        .find(|l| l.contains("twilio"))
        .context(out.clone())?;
    ensure!(
        twilio.contains("custom") && twilio.contains("0/40") && twilio.contains("0/5"),
        "{out}"
    );
    // Aligned: every row's `|` at the header's places.
    let bars = |l: &str| l.match_indices('|').map(|(at, _)| at).collect::<Vec<_>>();
    ensure!(bars(twilio) == bars(lines[0]), "{out}");
    // alice may create 3 teams: 2 more.
    let out = i.console_ok("set users alice max-teams 3")?;
    ensure!(out.contains("alice may create 3 teams"), "{out}");
    for name in ["t2", "t3"] {
        ensure!(create_team(&i.alice, name).await?.0 == 201, "{name}");
    }
    ensure!(create_team(&i.alice, "t4").await? == (403, json!("QuotaExceeded")));
    let out = i.console_ok("show users all")?;
    let row = out
        .lines()
        .find(|l| l.contains("alice"))
        .context(out.clone())?;
    ensure!(row.contains("user") && row.contains('3'), "{out}");
    // Back to the tier: basic allows 1, and she has created 3.
    i.console_ok("set users alice max-teams tier")?;
    let alice: UserView = user(&i.operator, "alice").await?;
    ensure!(
        alice.max_teams == Some(1) && alice.max_teams_from == AllowanceFrom::Tier,
        "{alice:?}"
    );
    // A non-operator is refused in the console as in the API, with one line.
    let env = [
        ("TRIGGERFS_URL", i.control.url.as_str()),
        ("TRIGGERFS_TEAM", "main"),
        ("TRIGGERFS_IDENTITY", "alice"),
        ("TRIGGERFS_SECRET", "alice-secret-28"),
    ];
    let (code, out, err) = run_cli_env(
        &["cli", "-c", "set teams twilio quota preset unlimited"],
        &env,
        Duration::from_secs(30),
    )?;
    ensure!(code == 1 && err.contains("operator"), "{code} {out} {err}");
    Ok(())
}

async fn a_plain_admin_is_refused_on_another_team(db: Db) -> Result<()> {
    let i = Install::start(db).await?;
    let (team, ..) = i.control.admin.clone();
    let bob = i.operator.new_member(&team, "bob", "bob-secret-28").await?;
    bob.ok("POST", "/api/v1/teams", json!({"name": "beta"}))
        .await?;
    // alice, admin of twilio, on bob's team and on the operator's routes.
    let refused = [
        ("GET", "/api/v1/teams/beta/quota", Value::Null, 404),
        (
            "PUT",
            "/api/v1/teams/beta/quota",
            json!({"preset": "unlimited"}),
            403,
        ),
        (
            "PUT",
            "/api/v1/teams/nosuch/quota",
            json!({"preset": "unlimited"}),
            403,
        ),
        (
            "PUT",
            "/api/v1/teams/twilio/quota",
            json!({"preset": "unlimited"}),
            403,
        ),
        ("GET", "/api/v1/quotas", Value::Null, 403),
        ("GET", "/api/v1/users", Value::Null, 403),
        ("GET", "/api/v1/users/bob", Value::Null, 403),
        ("PATCH", "/api/v1/users/bob", json!({"max_teams": 9}), 403),
        ("PATCH", "/api/v1/users/alice", json!({"max_teams": 9}), 403),
    ];
    for (method, path, body, want) in refused {
        let (status, answer) = i.alice.call(method, path, body).await?;
        ensure!(status == want, "{method} {path}: {status} {answer}");
        ensure!(
            !answer.to_string().contains("beta") || path.contains("beta"),
            "{answer}"
        );
    }
    // Nothing changed.
    let beta: QuotaView = quota(&i.operator, "beta").await?;
    ensure!(beta.tier == Some(Preset::Free), "{beta:?}");
    ensure!(create_team(&i.alice, "more").await? == (403, json!("QuotaExceeded")));
    // Her own team's quota she reads, as before.
    let own: QuotaView = quota(&i.alice, "twilio").await?;
    ensure!(own.tier == Some(Preset::Free));
    operator_joins_a_full_team(&i, &bob).await
}

/// beta (free: 2 users) is full with bob and carol; bob invites the operator, who joins to
/// help, and is not counted among its users.
async fn operator_joins_a_full_team(i: &Install, bob: &Api) -> Result<()> {
    bob.new_member("beta", "carol", "carol-secret-28").await?;
    let (status, body) = bob
        .call(
            "POST",
            "/api/v1/teams/beta/members",
            json!({"identity": "dan", "secret": "dan-secret-28"}),
        )
        .await?;
    ensure!(
        status == 403 && body["code"] == "QuotaExceeded",
        "{status} {body}"
    );
    bob.ok(
        "POST",
        "/api/v1/teams/beta/invitations",
        json!({"identity": "admin"}),
    )
    .await?;
    i.operator
        .ok("POST", "/api/v1/invitations/beta/accept", Value::Null)
        .await?;
    let beta: QuotaView = quota(bob, "beta").await?;
    ensure!(beta.used.users == 2, "{beta:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_admin_is_refused_on_another_team_on_sqlite() -> Result<()> {
    a_plain_admin_is_refused_on_another_team(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_admin_is_refused_on_another_team_on_postgres() -> Result<()> {
    a_plain_admin_is_refused_on_another_team(Db::Postgres).await
}

//! Issue 25, finding 8 ("Also:"), through the real binary: the job history of a `team`
//! service is read by its sender and the team's admins (a plain member reads none of the
//! secrets planted in 27 usual forms), and by every member once the service's `history` is
//! `team`, redacted; the install's team cannot be deleted, so `up` starts again after an
//! operator made another team.

use anyhow::{ensure, Context, Result};
use client::RequestSpec;
use serde_json::{json, Value};
use std::time::Duration;
use tests::*;

/// A secret's placeholder in [`FORMS`].
const S: &str = "{S}";

/// Secrets in their usual forms: the command (one word, as a shell line) and the arguments.
/// The `echo` plugin answers the command line, so each command's secret is in the output too.
const FORMS: &[(&str, &[(&str, &str)])] = &[
    ("sshpass -p {S} ssh root@h uptime", &[]),
    ("sshpass -p{S} ssh h uptime", &[]),
    ("mysql -uroot -p{S} app", &[]),
    ("mysql --password {S} app", &[]),
    ("mysql --password={S} app", &[]),
    ("curl -u deploy:{S} https://h/x", &[]),
    ("curl --user deploy:{S} https://h/x", &[]),
    ("curl -H 'Authorization: Bearer {S}' https://h/x", &[]),
    ("curl -H 'X-Api-Key: {S}' https://h/x", &[]),
    ("git clone https://deploy:{S}@git.example/r.git", &[]),
    ("git clone https://{S}@git.example/r.git", &[]),
    ("aws configure set aws_secret_access_key {S}", &[]),
    ("PGPASSWORD={S} psql -h db", &[]),
    ("export API_TOKEN={S}", &[]),
    ("psql postgres://app:{S}@db/app", &[]),
    (
        "kubectl create secret generic x --from-literal=password={S}",
        &[],
    ),
    ("curl https://h/hook?token={S}", &[]),
    ("deploy --api-key {S} now", &[]),
    ("run", &[("db_pw", S)]),
    ("run", &[("pass", S)]),
    ("run", &[("dsn", "postgres://u:{S}@db/app")]),
    ("run", &[("password", S)]),
    ("run", &[("api_key", S)]),
    ("run", &[("repo", "https://u:{S}@h/r.git")]),
    ("run", &[("header", "Authorization: Bearer {S}")]),
    ("run", &[("url", "jdbc:mysql://h/db?user=u&password={S}")]),
    // In a form of its own in the command, but also an argument's: the output repeats it.
    ("connect {S}", &[("token", S)]),
];

/// The secret of form `i` of round `round`.
fn secret(round: usize, i: usize) -> String {
    format!("Zq{round}x{i:02}Secr3tW")
}

fn request(round: usize, i: usize) -> RequestSpec {
    let (command, args) = FORMS[i];
    let s = secret(round, i);
    RequestSpec {
        service: "svc".into(),
        plugin: "echo".into(),
        command: vec![command.replace(S, &s)],
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.replace(S, &s)))
            .chain([("form".to_string(), format!("{round}-{i}"))])
            .collect(),
        timeout: Some(Duration::from_secs(30)),
        ..RequestSpec::default()
    }
}

/// The jobs `api` lists (up to 500), newest first.
async fn jobs(api: &Api) -> Result<Vec<Value>> {
    let page = api.ok("GET", "/api/v1/jobs?limit=500", Value::Null).await?;
    Ok(page["jobs"].as_array().context("jobs")?.clone())
}

/// The ids of round `round`'s jobs, by form, once `reader` lists them all (each request
/// carries argument `form` = `ROUND-FORM`, which is no secret).
async fn round_ids(reader: &Api, round: usize) -> Result<Vec<i64>> {
    let find = |listed: &[Value]| -> Option<Vec<i64>> {
        (0..FORMS.len())
            .map(|i| {
                let marker = json!({"key": "form", "value": format!("{round}-{i}")});
                listed
                    .iter()
                    .find(|j| j["args"].as_array().is_some_and(|a| a.contains(&marker)))
                    .and_then(|j| j["id"].as_i64())
            })
            .collect()
    };
    wait_until(
        Duration::from_secs(30),
        "every job of the round listed",
        || async {
            jobs(reader)
                .await
                .is_ok_and(|listed| find(&listed).is_some())
        },
    )
    .await?;
    find(&jobs(reader).await?).context("the round's jobs")
}

async fn job_history_is_its_senders_and_admins(db: Db) -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start_on(&broker_addr, db)?;
    let (team, admin, secret_) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret_).await?;
    let token = api.new_worker("ew").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "svc", "visibility": "team", "workers": ["ew"]}),
    )
    .await?;
    let carol = api.new_member(&team, "carol", "carol-secret-1").await?;
    let dave = api.new_member(&team, "dave", "dave-secret-1").await?;
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let _worker = start_worker(
        broker_addr.parse()?,
        "ew",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    let c = connect_jwt(&broker_addr, dave.token().as_deref().unwrap()).await?;
    wait_until(Duration::from_secs(20), "svc answers", || async {
        match c.request(request(9, 0)).await {
            Ok(h) => h.collect().await.summary.is_some_and(|s| s.ok == 1),
            Err(_) => false,
        }
    })
    .await?;

    round_0_is_the_senders_and_admins(&c, &api, &carol, &dave).await?;

    // Round 1: the service says `team`; every member reads its new jobs, still redacted.
    api.ok("PATCH", "/api/v1/services/svc", json!({"history": "team"}))
        .await?;
    let shown = api.ok("GET", "/api/v1/services/svc", Value::Null).await?;
    ensure!(shown["history"] == "team", "{shown}");
    // The broker follows the change within a moment: a request made after it is a team job.
    wait_until(Duration::from_secs(20), "a team job", || async {
        if let Ok(h) = c.request(request(8, 0)).await {
            h.collect().await;
        }
        jobs(&carol).await.is_ok_and(|j| !j.is_empty())
    })
    .await?;
    for i in 0..FORMS.len() {
        c.request(request(1, i)).await?.collect().await;
    }
    let ids = round_ids(&carol, 1).await?;
    for (i, id) in ids.iter().enumerate() {
        let body = carol
            .ok("GET", &format!("/api/v1/jobs/{id}"), Value::Null)
            .await?;
        ensure!(
            !body.to_string().contains(&secret(1, i)),
            "form {:?} is not redacted: {body}",
            FORMS[i].0
        );
        ensure!(
            body["outcomes"][0]["outcome"] == "ok",
            "form {:?}: {body}",
            FORMS[i].0
        );
    }
    // Round 0 stays its sender's and the admins'.
    let (status, _) = carol
        .call(
            "GET",
            &format!("/api/v1/jobs/{}", round_ids(&dave, 0).await?[0]),
            Value::Null,
        )
        .await?;
    ensure!(status == 404, "{status}");
    Ok(())
}

/// Round 0: the service's history is the default (`sender`): a plain member lists and reads
/// none of another's jobs; the sender and an admin read them, redacted.
async fn round_0_is_the_senders_and_admins(
    c: &client::Client,
    api: &Api,
    carol: &Api,
    dave: &Api,
) -> Result<()> {
    // Round 0: the service's history is the default (`sender`).
    for i in 0..FORMS.len() {
        c.request(request(0, i)).await?.collect().await;
    }
    let ids = round_ids(dave, 0).await?;
    let carols = jobs(carol).await?;
    let leaked: Vec<String> = (0..FORMS.len())
        .filter(|i| {
            Value::from(carols.clone())
                .to_string()
                .contains(&secret(0, *i))
        })
        .map(|i| FORMS[i].0.to_string())
        .collect();
    ensure!(
        carols.is_empty(),
        "a plain member lists {} jobs of another member (secrets readable in {} forms: {leaked:?})",
        carols.len(),
        leaked.len()
    );
    for (i, id) in ids.iter().enumerate() {
        let path = format!("/api/v1/jobs/{id}");
        let (status, body) = carol.call("GET", &path, Value::Null).await?;
        ensure!(
            status == 404,
            "form {:?}: a plain member reads job {id}: {status} {body}",
            FORMS[i].0
        );
        for (who, reader) in [("the sender", dave), ("an admin", api)] {
            let (status, body) = reader.call("GET", &path, Value::Null).await?;
            ensure!(status == 200, "{who} reads job {id}: {status} {body}");
            ensure!(
                !body.to_string().contains(&secret(0, i)),
                "{who} reads the secret of form {:?}: {body}",
                FORMS[i].0
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_history_is_its_senders_and_admins_on_sqlite() -> Result<()> {
    job_history_is_its_senders_and_admins(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_history_is_its_senders_and_admins_on_postgres() -> Result<()> {
    job_history_is_its_senders_and_admins(Db::Postgres).await
}

/// The operator makes another team and tries to delete `main`: refused, so `up` on the same
/// data dir starts again (it logs in to `main` with the credentials it wrote).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_again_after_the_operator_made_another_team() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut up = Up::start(&data)?;
    let api = Api::login(&up.url, &up.team, &up.identity, &up.secret).await?;
    api.ok("POST", "/api/v1/teams", json!({"name": "teamb"}))
        .await?;
    let (status, body) = api
        .call("DELETE", &format!("/api/v1/teams/{}", up.team), Value::Null)
        .await?;
    ensure!(
        status == 409 && body["code"] == "Conflict",
        "deleting the install's team `{}`: {status} {body}",
        up.team
    );
    up.proc.kill();
    let _again = Up::restart(&data, &[])?;
    Ok(())
}

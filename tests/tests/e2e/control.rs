//! The control plane drives the broker: logins, worker tokens, team isolation, live
//! configuration, the HTTP gateway, metrics, and `triggerfs up`.

use anyhow::{Context, Result};
use client::{ClientError, RequestSpec};
use proto::control::Claims;
use proto::{Credential, ErrorKind, Frame};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tests::*;

fn spec(service: &str, command: &str) -> RequestSpec {
    RequestSpec {
        service: service.into(),
        plugin: "command".into(),
        command: vec![command.into()],
        timeout: Some(Duration::from_secs(10)),
        ..RequestSpec::default()
    }
}

fn mint(key: &[u8], team: &str, sub: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = Claims {
        uid: 1,
        sgen: 0,
        sub: sub.into(),
        team: team.into(),
        role: proto::control::TeamRole::Admin,
        iat: (now - 3600) as u64,
        exp: (now + exp_offset) as u64,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

/// Sends a worker Hello with this token and returns the broker's answer.
async fn worker_hello(addr: &str, team: &str, identity: &str, token: &str) -> Result<Frame> {
    let (mut r, mut w) = client::connection::connect(addr).await?;
    w.write_frame(&Frame::Hello(proto::Hello {
        protocol_version: proto::PROTOCOL_VERSION,
        role: proto::Role::Worker,
        credential: Credential::Worker {
            team: team.into(),
            identity: identity.into(),
            token: token.into(),
        },
    }))
    .await?;
    Ok(tokio::time::timeout(Duration::from_secs(10), r.read_frame()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_authenticates_isolates_and_reconfigures_the_broker() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;

    let token = worker_and_services(&api).await?;

    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let worker = start_worker(
        broker_addr.parse()?,
        "w1",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;

    the_admins_client_is_served(&control, &broker_addr, &worker).await?;

    wrong_credentials_are_refused(&control, &broker_addr).await?;

    team_b_calls_only_the_public_service(&control, &api, &broker_addr).await?;

    // A service created over the API is routable within a second, without a restart.
    let admin_client = connect_jwt(&broker_addr, api.token().as_deref().unwrap()).await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "late", "algorithm": "serial", "visibility": "team", "workers": ["w1"]}),
    )
    .await?;
    let created_at = Instant::now();
    loop {
        let o = admin_client
            .request(spec("late", "echo late"))
            .await?
            .collect()
            .await;
        if o.exit_status() == 0 {
            break;
        }
        assert!(
            created_at.elapsed() < Duration::from_secs(1),
            "not routable after {:?}: {:?}",
            created_at.elapsed(),
            o.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The worker shows ONLINE in the control plane.
    api.wait_worker_state("w1", "ONLINE", Duration::from_secs(5))
        .await?;
    Ok(())
}

/// A worker, a team service bound to it, a public service; returns the worker's token.
async fn worker_and_services(api: &Api) -> Result<String> {
    // A worker, a team service bound to it, a public service.
    let created = api
        .ok("POST", "/api/v1/workers", json!({"identity": "w1"}))
        .await?;
    let token = created["token"]
        .as_str()
        .context("token shown at creation")?
        .to_string();
    let listed = api
        .ok("GET", "/api/v1/workers/w1", serde_json::Value::Null)
        .await?;
    assert!(
        listed.get("token").is_none_or(|t| t.is_null()),
        "token shown again: {listed}"
    );
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "svc", "algorithm": "roundrobin", "visibility": "team", "workers": ["w1"]}),
    )
    .await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "pub", "algorithm": "mirror", "visibility": "public", "workers": ["w1"]}),
    )
    .await?;
    Ok(token)
}

/// The admin's real client, logging in with team, identity and secret, is served by `worker`.
async fn the_admins_client_is_served(
    control: &Control,
    broker_addr: &str,
    worker: &Proc,
) -> Result<()> {
    let (team, admin, secret) = control.admin.clone();
    // The admin's real client, logging in with team, identity and secret.
    let run = |service: String| {
        let (url, broker, team, admin, secret) = (
            control.url.clone(),
            broker_addr.to_string(),
            team.clone(),
            admin.clone(),
            secret.clone(),
        );
        move || {
            run_cli(
                &[
                    "client",
                    "--url",
                    &url,
                    "--broker",
                    &broker,
                    "--team",
                    &team,
                    "--identity",
                    &admin,
                    "--secret",
                    &secret,
                    "--service",
                    &service,
                    "--plugin",
                    "command",
                    "--command",
                    "echo via $TRIGGERFS_WORKER",
                ],
                Duration::from_secs(20),
            )
        }
    };
    let mut served = false;
    for _ in 0..100 {
        let (code, out, _) = run("svc".into())()?;
        if code == 0 {
            assert!(out.contains("[command@w1] via w1"), "{out}");
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the worker never served; worker log:\n{}",
        worker.stderr()
    );
    Ok(())
}

/// A wrong worker token, an expired JWT and one signed with another key are refused.
async fn wrong_credentials_are_refused(control: &Control, broker_addr: &str) -> Result<()> {
    let (team, admin, _) = control.admin.clone();
    // A wrong worker token is refused, with a clear reason.
    match worker_hello(broker_addr, &team, "w1", "not-the-token").await? {
        Frame::Refused { kind, reason } => {
            assert_eq!(kind, ErrorKind::Unauthorized);
            assert!(reason.contains("wrong token"), "{reason}");
        }
        other => panic!("wrong token admitted: {other:?}"),
    }

    // An expired JWT and one signed with another key are refused.
    let key = control.jwt_key()?;
    match connect_jwt(broker_addr, &mint(&key, &team, &admin, -120)).await {
        Err(ClientError::Refused { kind, reason }) => {
            assert_eq!(kind, ErrorKind::Unauthorized);
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("expired token: {other:?}"),
    }
    match connect_jwt(
        broker_addr,
        &mint(b"another key entirely", &team, &admin, 3600),
    )
    .await
    {
        Err(ClientError::Refused { kind, .. }) => assert_eq!(kind, ErrorKind::Unauthorized),
        other => panic!("foreign key: {other:?}"),
    }
    Ok(())
}

/// Team B: a member may not call team A's team service, but may call its public one.
async fn team_b_calls_only_the_public_service(
    control: &Control,
    api: &Api,
    broker_addr: &str,
) -> Result<()> {
    let team = &control.admin.0;
    // Team B: a member may not call team A's team service, but may call its public one.
    api.ok("POST", "/api/v1/teams", json!({"name": "teamb"}))
        .await?;
    api.ok(
        "POST",
        "/api/v1/teams/teamb/members",
        json!({"identity": "bob", "secret": "bobs-secret-123", "role": "member"}),
    )
    .await?;
    let bob = Api::login(&control.url, "teamb", "bob", "bobs-secret-123").await?;
    let bob_client = connect_jwt(broker_addr, bob.token().as_deref().unwrap()).await?;
    let denied = bob_client
        .request(spec(&format!("{team}/svc"), "echo hi"))
        .await?
        .collect()
        .await;
    let err = denied.error.expect("refused");
    assert_eq!(err.kind, ErrorKind::Forbidden, "{}", err.message);
    assert!(err.message.contains("svc"), "{}", err.message);
    let public = bob_client
        .request(spec(&format!("{team}/pub"), "echo public"))
        .await?
        .collect()
        .await;
    assert_eq!(public.exit_status(), 0, "{public:?}");
    assert_eq!(public.workers[0].output[0].line, "public");
    // Bob's team does not see team A's names unqualified.
    let other = bob_client.request(spec("svc", "x")).await?.collect().await;
    assert_eq!(other.error.map(|e| e.kind), Some(ErrorKind::NoSuchService));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_streams_mirror_output_to_curl_and_broker_metrics_count() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let mut tokens = Vec::new();
    for id in ["g1", "g2"] {
        tokens.push(api.new_worker(id).await?);
    }
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "fleet", "algorithm": "mirror", "visibility": "team", "workers": ["g1", "g2"]}),
    )
    .await?;
    let (_broker, lines) =
        start_controlled_broker(&control, port, &["--metrics-listen", "127.0.0.1:0"])?;
    let metrics_url = line_value(&lines, "metrics on ").context("metrics line")?;
    let plugins = Plugins::core()?;
    let _w1 = start_worker(
        broker_addr.parse()?,
        "g1",
        &plugins,
        &["--team", &team, "--token", &tokens[0]],
    )?;
    let _w2 = start_worker(
        broker_addr.parse()?,
        "g2",
        &plugins,
        &["--team", &team, "--token", &tokens[1]],
    )?;
    let c = connect_jwt(&broker_addr, api.token().as_deref().unwrap()).await?;
    wait_until(Duration::from_secs(20), "both workers", || async {
        match c.request(spec("fleet", "true")).await {
            Ok(h) => h.collect().await.summary.is_some_and(|s| s.ok == 2),
            Err(_) => false,
        }
    })
    .await?;

    let body = json!({"plugin": "command", "command": "echo one; sleep 0.2; echo two from $TRIGGERFS_WORKER", "timeout": "10s"});
    let events = gateway_events(
        &control.url,
        api.token().as_deref().unwrap(),
        "fleet",
        &body,
    )?;
    let text = format!("{events:?}");
    for id in ["g1", "g2"] {
        assert!(
            events.iter().any(|e| e["event"] == "output"
                && e["worker"] == id
                && e["line"] == format!("two from {id}")),
            "{id} output missing: {text}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "done" && e["worker"] == id && e["exit_code"] == 0),
            "{id} done missing: {text}"
        );
    }
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary", "{text}");
    assert_eq!(last["ok"], 2, "{text}");

    // The broker's metrics count the requests by service and outcome.
    let metrics = reqwest::get(&metrics_url).await?.text().await?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("triggerfs_broker_requests_total")
                && l.contains(&format!("service=\"{team}/fleet\""))
                && l.contains("outcome=\"ok\"")
        })
        .with_context(|| format!("no request counter in:\n{metrics}"))?;
    let count: f64 = line.rsplit(' ').next().unwrap().parse()?;
    assert!(count >= 2.0, "{line}");
    assert!(metrics.contains("triggerfs_broker_request_duration_seconds_bucket"));
    assert!(metrics.contains("triggerfs_broker_connected{role=\"worker\""));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_on_an_empty_data_dir_then_client_with_the_printed_credentials() -> Result<()> {
    let data = tempfile::tempdir()?;
    let Up {
        proc: up,
        broker,
        url,
        team,
        identity,
        secret,
    } = Up::start(data.path())?;
    let config = data.path().join("triggerfs.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config)?.permissions().mode() & 0o777,
        0o600
    );

    // With the printed credentials as flags…
    let (code, out, err) = run_cli(
        &[
            "client",
            "--url",
            &url,
            "--broker",
            &broker,
            "--team",
            &team,
            "--identity",
            &identity,
            "--secret",
            &secret,
            "--service",
            "demo",
            "--plugin",
            "command",
            "--command",
            "uptime",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(code, 0, "{out}\n{err}\n{}", up.stderr());
    assert!(
        out.contains("[command@local]") && out.contains("load average"),
        "{out}"
    );
    // …and with the config file `up` wrote.
    let (code, out, err) = run_cli(
        &[
            "--config",
            config.to_str().unwrap(),
            "client",
            "--service",
            "demo",
            "--plugin",
            "command",
            "--command",
            "echo from config",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("[command@local] from config"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_keeps_serving_while_the_control_plane_restarts() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("r1").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "before", "visibility": "team", "workers": ["r1"]}),
    )
    .await?;
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let _w = start_worker(
        broker_addr.parse()?,
        "r1",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    let c = connect_jwt(&broker_addr, api.token().as_deref().unwrap()).await?;
    let served = |service: &'static str| {
        let c = c.clone();
        async move {
            match c.request(spec(service, "echo ok")).await {
                Ok(h) => h.collect().await.exit_status() == 0,
                Err(_) => false,
            }
        }
    };
    wait_until(Duration::from_secs(20), "service before", || {
        served("before")
    })
    .await?;

    // The control plane goes away: the broker keeps its last configuration.
    let control = {
        let mut control = control;
        control.proc.kill();
        assert!(
            served("before").await,
            "the broker stopped serving without its control plane"
        );
        control
    };
    // It comes back (same data, same address): changes flow again, without a broker restart.
    let control = control.restart(&broker_addr)?;
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "after", "visibility": "team", "workers": ["r1"]}),
    )
    .await?;
    wait_until(Duration::from_secs(10), "service after", || served("after")).await?;
    Ok(())
}

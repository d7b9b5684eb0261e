//! TLS on both planes: the broker (`--tls-cert`, `--tls-key`, `--tls-client-ca`), the REST
//! API (the same flags, checked with curl), a broker that follows its control plane over
//! `https://`, and `triggerfs up --tls` whose client config works as written.
//!
//! Each client runs as its own `triggerfs` process: the trust (`--ca`) is the process's.

use anyhow::{Context, Result};
use std::process::Command;
use std::time::Duration;
use tests::{read_until_listening, run_cli, run_cli_env, wait_until, Broker, Plugins, Proc, Up};

/// A CA, the server certificate it signed, a second (wrong) CA, and a client CA with a
/// worker certificate signed by it and one signed by the wrong CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text);
        let ca = tls::Ca::new("test CA")?;
        let server = ca.issue(&["localhost".into(), "127.0.0.1".into()])?;
        write("ca.pem", &ca.cert_pem())?;
        write("server.pem", &server.cert_pem)?;
        write("server.key", &server.key_pem)?;
        let wrong = tls::Ca::new("wrong CA")?;
        write("wrong.pem", &wrong.cert_pem())?;
        let clients = tls::Ca::new("worker CA")?;
        write("clients.pem", &clients.cert_pem())?;
        let worker = clients.issue(&["w1".into()])?;
        write("worker.pem", &worker.cert_pem)?;
        write("worker.key", &worker.key_pem)?;
        let stranger = wrong.issue(&["w3".into()])?;
        write("stranger.pem", &stranger.cert_pem)?;
        write("stranger.key", &stranger.key_pem)?;
        Ok(Pki { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// `triggerfs GLOBAL.. client [--broker BROKER] --service SERVICE --plugin echo --command hi`.
fn echo(global: &[&str], broker: Option<&str>, service: &str) -> Result<(i32, String, String)> {
    let mut args = global.to_vec();
    args.push("client");
    if let Some(broker) = broker {
        args.extend(["--broker", broker]);
    }
    args.extend([
        "--service",
        service,
        "--plugin",
        "echo",
        "--command",
        "hi",
        "--timeout",
        "5s",
    ]);
    run_cli(&args, Duration::from_secs(20))
}

#[tokio::test]
async fn the_broker_speaks_tls_only_to_clients_that_trust_it_and_workers_with_certificates(
) -> Result<()> {
    let pki = Pki::new()?;
    let (cert, key, clients) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("clients.pem"),
    );
    let broker = Broker::start_with(
        "127.0.0.1:0",
        "",
        2,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &clients,
        ],
    )?;
    let tls_addr = format!("tls://{}", broker.addr);
    let plugins = Plugins::core()?;
    let ca = pki.path("ca.pem");
    let (wcert, wkey) = (pki.path("worker.pem"), pki.path("worker.key"));

    // A worker with a certificate signed by --tls-client-ca, over TLS.
    let worker_args = ["--tls-cert", wcert.as_str(), "--tls-key", wkey.as_str()];
    let _w1 = start_worker_tls(&tls_addr, "w1", &plugins, &ca, &worker_args)?;
    // A request through the TLS broker to it.
    wait_until(Duration::from_secs(20), "w1 answers over TLS", || async {
        matches!(echo(&["--ca", &ca], Some(&tls_addr), "w1"), Ok((0, out, _)) if out.contains("hi"))
    })
    .await?;

    // A plaintext client: a typed refusal at once, no hang.
    let plain = broker.addr.to_string();
    let (code, _out, err) = echo(&[], Some(&plain), "w1")?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("requires TLS"), "{err}");
    let (code, _out, err) = echo(&[], Some(&format!("tcp://{plain}")), "w1")?;
    assert!(code != 0 && err.contains("requires TLS"), "{err}");

    // A client that trusts another CA, or none but the web's.
    let (code, _out, err) = echo(&["--ca", &pki.path("wrong.pem")], Some(&tls_addr), "w1")?;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let (code, _out, err) = echo(&[], Some(&tls_addr), "w1")?;
    assert_eq!(code, 3, "{err}");

    // A worker without a client certificate is refused, with a reason that says so.
    let w2 = start_worker_tls(&tls_addr, "w2", &plugins, &ca, &[])?;
    wait_until(Duration::from_secs(20), "w2 refused", || async {
        w2.stderr().contains("client certificate")
    })
    .await
    .with_context(|| w2.stderr())?;
    // A worker whose certificate another CA signed fails its TLS handshake.
    let (scert, skey) = (pki.path("stranger.pem"), pki.path("stranger.key"));
    let stranger_args = ["--tls-cert", scert.as_str(), "--tls-key", skey.as_str()];
    let w3 = start_worker_tls(&tls_addr, "w3", &plugins, &ca, &stranger_args)?;
    wait_until(Duration::from_secs(20), "w3 refused", || async {
        w3.stderr().contains("cannot reach broker")
    })
    .await
    .with_context(|| w3.stderr())?;
    for service in ["w2", "w3"] {
        let (code, out, err) = echo(&["--ca", &ca], Some(&tls_addr), service)?;
        assert_ne!(code, 0, "{service} is not served: {out}{err}");
    }
    Ok(())
}

fn start_worker_tls(
    broker: &str,
    identity: &str,
    plugins: &Plugins,
    ca: &str,
    extra: &[&str],
) -> Result<Proc> {
    let mut command = Command::new(tests::bin());
    command
        .args([
            "--ca",
            ca,
            "worker",
            "--identity",
            identity,
            "--broker",
            broker,
        ])
        .arg("--pluginspath")
        .arg(plugins.path())
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("TRIGGERFS_CONFIG");
    let (proc, _stdout) = Proc::start(&format!("worker {identity}"), command)?;
    Ok(proc)
}

/// `curl -fsS --cacert CA URL [-H authorization] -d BODY`: the answer's body.
fn curl_body(ca: &str, url: &str, token: Option<&str>, body: &serde_json::Value) -> Result<String> {
    let mut command = Command::new("curl");
    command.args(["-fsSN", "--max-time", "20", "--cacert", ca, url]);
    command.args([
        "-H",
        "content-type: application/json",
        "-d",
        &body.to_string(),
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    let out = command.output().context("curl")?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `curl -sS [--cacert CA] URL`: (exit code, HTTP status).
fn curl(ca: Option<&str>, url: &str) -> Result<(i32, String)> {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]);
    if let Some(ca) = ca {
        command.args(["--cacert", ca]);
    }
    let out = command.arg(url).output().context("curl")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[tokio::test]
async fn the_api_speaks_https_and_a_broker_follows_it_over_https() -> Result<()> {
    let pki = Pki::new()?;
    let data = tempfile::tempdir()?;
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let (control, mut stdout) = Proc::spawn(
        "control",
        &[
            "control",
            "--data",
            data.path().to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    )?;
    let (_lines, addr) = read_until_listening(&control, &mut stdout)?;
    let ca = pki.path("ca.pem");
    let url = format!("https://{addr}");
    let doc = format!("{url}/api/v1/openapi.json");

    assert_eq!(curl(Some(&ca), &doc)?, (0, "200".to_string()));
    let (code, status) = curl(None, &format!("http://{addr}/api/v1/openapi.json"))?;
    assert!(
        code != 0 && status != "200",
        "plain HTTP to the TLS port: {code} {status}"
    );
    let (code, _) = curl(Some(&pki.path("wrong.pem")), &doc)?;
    assert_eq!(code, 60, "curl: the wrong CA is a certificate problem");

    // The broker's feed over https:// with --ca: it starts only once it has a snapshot.
    let token_file = data.path().join("broker.token");
    let (broker, mut bout) = Proc::spawn(
        "broker",
        &[
            "--ca",
            &ca,
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--control",
            &url,
            "--broker-token-file",
            token_file.to_str().unwrap(),
        ],
    )?;
    read_until_listening(&broker, &mut bout)?;
    Ok(())
}

#[tokio::test]
async fn up_with_tls_writes_a_client_config_that_works_as_is() -> Result<()> {
    let data = tempfile::tempdir()?;
    let up = Up::start_with(data.path(), &["--tls"])?;
    assert!(up.url.starts_with("https://"), "{}", up.url);
    let config = data.path().join("triggerfs.toml");
    let text = std::fs::read_to_string(&config)?;
    assert!(text.contains("broker = \"tls://"), "{text}");
    assert!(text.contains("url = \"https://"), "{text}");
    assert!(text.contains("ca = "), "{text}");
    let (code, out, err) = echo(&["--config", config.to_str().unwrap()], None, "demo")?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("hi"), "{out}");
    // The API over https with the development CA, and its HTTP gateway, which reaches the
    // broker over tls:// with the trust `up` set for itself.
    let ca = data.path().join("tls").join("ca.pem");
    let ca = ca.to_str().unwrap();
    let login = serde_json::json!({"team": up.team, "identity": up.identity, "secret": up.secret});
    let answer = curl_body(ca, &format!("{}/api/v1/login", up.url), None, &login)?;
    let token: serde_json::Value = serde_json::from_str(&answer).context(answer)?;
    let token = token["token"].as_str().context("a token")?;
    let body = serde_json::json!({"plugin": "echo", "command": "via the gateway"});
    let url = format!("{}/api/v1/services/demo/requests", up.url);
    let stream = curl_body(ca, &url, Some(token), &body)?;
    assert!(
        stream.contains("via the gateway") && stream.contains(r#""event":"done""#),
        "{stream}"
    );
    // The console with the same config: the API over https, a request over tls://.
    let xdg = data.path().join("xdg");
    let xdg = xdg.to_str().unwrap();
    for (line, want) in [
        ("show workers", "ONLINE"),
        (
            "request demo echo command over the console",
            "[echo@local] over the console",
        ),
    ] {
        let (code, out, err) = run_cli_env(
            &["--config", config.to_str().unwrap(), "cli", "-c", line],
            &[("XDG_DATA_HOME", xdg)],
            Duration::from_secs(20),
        )?;
        assert_eq!(code, 0, "{line}: {out}{err}");
        assert!(out.contains(want), "{line}: {out}{err}");
    }
    drop(up);

    // Plaintext on an address other than loopback is refused without --insecure-plaintext.
    let other = tempfile::tempdir()?;
    let (code, _out, err) = run_cli(
        &[
            "up",
            "--data",
            other.path().to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
            "--api-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(20),
    )?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--insecure-plaintext"), "{err}");
    Ok(())
}

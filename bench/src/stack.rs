//! A control plane and brokers that follow it, as processes (`triggerfs control`,
//! `triggerfs broker --control`), and the API calls that set them up: shared by `bench fs`,
//! `bench soak` and `bench fanout --control`.

use crate::proc::{command, drain, Spawned};
use anyhow::{bail, Context};
use api::Api;
use futures::{StreamExt, TryStreamExt};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One API call's limit: a bench's calls are small, but its machine is busy.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// `POST /workers`.
#[derive(Serialize)]
struct NewWorker<'a> {
    identity: &'a str,
}

/// Its answer (the fields the bench uses).
#[derive(Deserialize)]
struct WorkerCreated {
    token: String,
}

/// `POST /services`.
#[derive(Serialize)]
struct NewService<'a> {
    name: &'a str,
    algorithm: &'a str,
    workers: Vec<&'a str>,
}

/// `GET /services/{name}` (the fields the bench uses).
#[derive(Deserialize)]
struct ServiceView {
    serving: Vec<IgnoredAny>,
}

/// `GET /workers/{identity}` (the fields the bench uses).
#[derive(Deserialize)]
struct WorkerView {
    state: WorkerState,
}

/// A worker's state as the broker reports it.
#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum WorkerState {
    Online,
    Disconnected,
}

/// Creates worker `identity`; its token.
pub(crate) async fn new_worker(api: &Api, identity: &str) -> anyhow::Result<String> {
    let created: WorkerCreated = api.post("/workers", &NewWorker { identity }).await?;
    Ok(created.token)
}

/// Creates `n` workers `<prefix><i>` and a service `name` of `algorithm` bound to them all
/// (a few calls at a time); the workers' identities and tokens, in order.
pub(crate) async fn new_fleet(
    api: &Api,
    prefix: &str,
    n: usize,
    name: &str,
    algorithm: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let ids: Vec<(String, String)> = futures::stream::iter(0..n)
        .map(|i| async move {
            let identity = format!("{prefix}{i}");
            let token = new_worker(api, &identity).await?;
            anyhow::Ok((identity, token))
        })
        .buffered(8)
        .try_collect()
        .await?;
    new_service(api, name, algorithm, &ids).await?;
    Ok(ids)
}

/// Creates a service `name` of `algorithm` bound to the workers of `ids` (identity, token).
pub(crate) async fn new_service(
    api: &Api,
    name: &str,
    algorithm: &str,
    ids: &[(String, String)],
) -> anyhow::Result<()> {
    let workers = ids.iter().map(|(id, _)| id.as_str()).collect();
    let service = NewService {
        name,
        algorithm,
        workers,
    };
    let _: IgnoredAny = api.post("/services", &service).await?;
    Ok(())
}

/// How many of `service`'s bound workers the control plane sees online.
pub(crate) async fn serving(api: &Api, service: &str) -> anyhow::Result<usize> {
    let s: ServiceView = api.get(&format!("/services/{service}")).await?;
    Ok(s.serving.len())
}

/// Whether the control plane sees worker `identity` online.
pub(crate) async fn online(api: &Api, identity: &str) -> anyhow::Result<bool> {
    let w: WorkerView = api.get(&format!("/workers/{identity}")).await?;
    Ok(w.state == WorkerState::Online)
}

/// A `triggerfs control` process on SQLite in `data`.
pub(crate) struct Control {
    pub proc: Spawned,
    /// `http://ADDR`.
    pub url: String,
    pub data: PathBuf,
    /// The first admin's secret (team `main`, identity `admin`).
    pub secret: String,
    /// The `--broker` its gateway uses.
    broker: String,
}

impl Control {
    /// Starts a control plane on a fresh `data` dir; returns it and the API logged in as the
    /// first admin (team `main`).
    pub(crate) async fn start(
        bin: &Path,
        data: &Path,
        broker: &str,
    ) -> anyhow::Result<(Control, Api)> {
        let (proc, url, secret) = spawn_control(bin, data, "127.0.0.1:0", broker).await?;
        let secret = secret.context("the control plane printed no first admin")?;
        let api = Api::builder([url.as_str()])
            .login("main", "admin", &secret)
            .timeout(API_TIMEOUT)
            .build()?;
        api.jwt()
            .await
            .context("cannot log in to the control plane")?;
        let control = Control {
            proc,
            url,
            data: data.to_path_buf(),
            secret,
            broker: broker.to_string(),
        };
        Ok((control, api))
    }

    /// SIGKILLs the control plane and starts it again on the same address and data dir.
    /// Call from the bench's main thread (see `proc::command`).
    pub(crate) async fn restart(&mut self, bin: &Path) -> anyhow::Result<()> {
        self.proc.kill().await;
        let listen = self.url.trim_start_matches("http://").to_string();
        let (proc, _, _) = spawn_control(bin, &self.data, &listen, &self.broker).await?;
        self.proc = proc;
        Ok(())
    }

    /// The broker token file in its data dir.
    pub(crate) fn broker_token_file(&self) -> PathBuf {
        self.data.join("broker.token")
    }

    /// Starts `triggerfs broker --control` on `listen` with `extra` flags (a node of a cell:
    /// `--advertise ADDR`).
    pub(crate) async fn broker(
        &self,
        bin: &Path,
        listen: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Spawned, String)> {
        let token_file = self.broker_token_file().display().to_string();
        let mut args = vec![
            "broker",
            "--listen",
            listen,
            "--control",
            &self.url,
            "--broker-token-file",
            &token_file,
        ];
        args.extend_from_slice(extra);
        Spawned::listening("broker", command(bin, args)).await
    }
}

/// Starts `triggerfs control` and reads its stdout up to `listening on`: the URL, and the
/// first admin's secret when it made one.
async fn spawn_control(
    bin: &Path,
    data: &Path,
    listen: &str,
    broker: &str,
) -> anyhow::Result<(Spawned, String, Option<String>)> {
    let data = data.display().to_string();
    let cmd = command(
        bin,
        [
            "control",
            "--data",
            &data,
            "--api-listen",
            listen,
            "--broker",
            broker,
        ],
    );
    let (mut proc, lines) = Spawned::start("control", cmd)?;
    let mut lines = lines.context("child stdout is piped")?;
    let mut secret = None;
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(s) = line.trim().strip_prefix("secret:") {
                secret = Some(s.trim().to_string());
            }
            if let Some(addr) = line.strip_prefix("listening on ") {
                return anyhow::Ok(Some(format!("http://{}", addr.trim())));
            }
        }
        anyhow::Ok(None)
    };
    let url = match tokio::time::timeout(crate::proc::READY_DEADLINE, read).await {
        Ok(Ok(Some(url))) => url,
        Ok(Err(e)) => return Err(e),
        _ => {
            proc.kill().await;
            bail!("the control plane did not print `listening on`")
        }
    };
    drain(lines);
    Ok((proc, url, secret))
}

/// A free port on 127.0.0.1 (bound and released: another process may take it meanwhile, which
/// on a test machine does not happen in practice).
pub(crate) fn free_addr() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

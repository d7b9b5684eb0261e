//! Hosts of their own in network namespaces, for the cell's acceptance tests (issue 27): a
//! broker node can be cut off from the control planes by a link going down while its
//! clients still reach it, and every process has an address of its own, so that fixed ports
//! (`:8080`, `:5555`) are the same on every host, as in a real cell.
//!
//! Layout of one [`Net`] (a test's), in the root namespace:
//! - two bridges, the **control** network (`10.231.S.0/24`) and the **data** network
//!   (`10.232.S.0/24`), each with the root namespace's address `.1` on it, so that the test
//!   process (its API calls, its clients, its fs) reaches every host;
//! - per host, a namespace with a veth pair into each network it needs: control planes on
//!   the control network, broker nodes on both, workers and clients on the data network. The
//!   host's side is named `ctl` or `data` in its namespace; its address is `.10 + n` for the
//!   `n`th host;
//! - PostgreSQL listens on 127.0.0.1:5432 in the root namespace, which no namespace reaches:
//!   [`Net::postgres`] makes a database for the test and starts a TCP proxy (tokio, in the
//!   test process) on the control network's root address, forwarding to it.
//!
//! Names start with `tfn`, then the test process's pid (5 base-36 digits) and a counter of
//! its own (2 digits): interface names stay within the kernel's 15 bytes, and [`Net::new`]
//! removes what a dead test process left (its namespaces, their processes, its links, its
//! PostgreSQL databases) before it makes its own. `S` is a slot claimed across test processes
//! by a lock on a file, like [`crate::free_port`]'s ports, so that concurrent tests never
//! share a subnet.
//!
//! Dropping the [`Net`] (also when the test panics) kills every process in its namespaces,
//! deletes the namespaces, veths and bridges, stops the proxy and drops the databases.
//!
//! It needs root (CI runs as root): [`Net::new`] fails, loudly, without it.

use crate::{bin, line_value, read_until_listening, remember_secret, Control, PgDb, Proc};
use anyhow::{bail, ensure, Context, Result};
use std::io::BufReader;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ChildStdout, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What every name this module makes starts with.
const PREFIX: &str = "tfn";

/// Subnet slots: `10.231.S.0/24` and `10.232.S.0/24` for `S` below this.
const SLOTS: u8 = 250;

/// A host's address is `.FIRST_HOST + n`.
const FIRST_HOST: u8 = 10;

/// The most hosts one [`Net`] holds (addresses up to `.250`).
const MAX_HOSTS: usize = 240;

/// The port a control plane listens on in its namespace.
pub const API_PORT: u16 = 8080;

/// The port a broker node listens on in its namespace.
pub const BROKER_PORT: u16 = 5555;

/// One of the two networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Control planes, the brokers' control side, PostgreSQL's proxy.
    Control,
    /// Brokers' data side, workers, clients.
    Data,
}

impl Network {
    fn octet(self) -> u8 {
        match self {
            Network::Control => 231,
            Network::Data => 232,
        }
    }

    /// The host side's interface name, in its namespace.
    fn inside(self) -> &'static str {
        match self {
            Network::Control => "ctl",
            Network::Data => "data",
        }
    }

    fn letter(self) -> char {
        match self {
            Network::Control => 'c',
            Network::Data => 'd',
        }
    }
}

/// A host: a namespace and its addresses.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the test (`cp1`, `node2`, …).
    pub name: String,
    /// Its namespace (`ip netns exec NS …`).
    pub ns: String,
    /// Its address on the control network, when it is on it.
    pub control: Option<Ipv4Addr>,
    /// Its address on the data network, when it is on it.
    pub data: Option<Ipv4Addr>,
    /// The root side of its veth into the control network.
    control_link: Option<String>,
    /// The root side of its veth into the data network.
    data_link: Option<String>,
}

impl Host {
    /// Its address on the control network; an error when it is not on it.
    pub fn control_ip(&self) -> Result<Ipv4Addr> {
        self.control
            .with_context(|| format!("{} is not on the control network", self.name))
    }

    /// Its address on the data network; an error when it is not on it.
    pub fn data_ip(&self) -> Result<Ipv4Addr> {
        self.data
            .with_context(|| format!("{} is not on the data network", self.name))
    }

    /// `http://<control address>:8080`: a control plane's URL as brokers and the test use it.
    pub fn api_url(&self) -> Result<String> {
        Ok(format!("http://{}:{API_PORT}", self.control_ip()?))
    }

    /// `<data address>:5555`: a broker node's address as workers and clients use it.
    pub fn node_addr(&self) -> Result<SocketAddr> {
        Ok(SocketAddr::from((self.data_ip()?, BROKER_PORT)))
    }
}

/// What a [`Net`] made, to undo.
#[derive(Default)]
struct Made {
    namespaces: Vec<String>,
    links: Vec<String>,
    hosts: usize,
}

/// A test's networks and hosts; dropping it removes them all (see the module's documentation).
pub struct Net {
    prefix: String,
    slot: u8,
    made: Mutex<Made>,
    proxy: Mutex<Option<PgProxy>>,
    databases: Mutex<Vec<PgDb>>,
    /// The lock that holds the slot; released last.
    _claim: std::fs::File,
}

/// Runs `ip ARGS`; its stderr in the error.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip ARGS`'s stdout, empty when it fails.
fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `n` in base 36, `width` digits (the low ones when it needs more).
fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for at in (0..width).rev() {
        out[at] = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("ASCII digits")
}

/// The pid a name of this module carries, if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?.get(..5)?;
    u32::from_str_radix(digits, 36).ok()
}

/// The pids of the processes in namespace `ns`.
fn namespace_pids(ns: &str) -> Vec<i32> {
    ip_output(&["netns", "pids", ns])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills every process in `ns` (waiting up to 5 s for them to go) and deletes it.
fn remove_namespace(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = namespace_pids(ns);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid `ip netns pids` listed in a namespace of ours.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = ip(&["netns", "delete", ns]);
}

/// Removes the namespaces and links whose test process is gone.
fn sweep_leftovers() {
    let dead = |name: &str| {
        owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for line in ip_output(&["netns", "list"]).lines() {
        // "NAME" or "NAME (id: 3)"
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name) {
            eprintln!("netns: removing namespace {name}, left by a dead test");
            remove_namespace(name);
        }
    }
    for line in ip_output(&["-o", "link", "show"]).lines() {
        // "12: NAME@if11: <...>" or "12: NAME: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if dead(name) {
            eprintln!("netns: removing link {name}, left by a dead test");
            let _ = ip(&["link", "delete", name]);
        }
    }
}

/// Drops the PostgreSQL databases ([`PgDb`]'s `tfs_e2e_<pid>_<nanos>`) whose test process is
/// gone (killed before its drops ran).
fn sweep_databases() {
    // As the harness's `psql` connects: the server on 127.0.0.1, as `postgres`.
    const SERVER: [&str; 6] = ["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"];
    let Ok(out) = Command::new("psql")
        .args(SERVER)
        .arg("-Atc")
        .arg("SELECT datname FROM pg_database WHERE datname LIKE 'tfs_e2e_%'")
        .output()
    else {
        return;
    };
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let pid = name
            .strip_prefix("tfs_e2e_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        let safe = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if safe && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: dropping database {name}, left by a dead test");
            let _ = Command::new("psql")
                .args(SERVER)
                .arg("-qc")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .output();
        }
    }
}

/// Claims a subnet slot no other test process holds and no interface of the machine uses.
fn claim_slot() -> Result<(u8, std::fs::File)> {
    let dir = std::env::temp_dir().join("triggerfs-test-netns");
    std::fs::create_dir_all(&dir).context("a directory for subnet claims")?;
    let in_use = ip_output(&["-o", "-4", "addr", "show"]);
    let start = (std::process::id() % u32::from(SLOTS)) as u8;
    for i in 0..SLOTS {
        let slot = ((u16::from(start) + u16::from(i)) % u16::from(SLOTS)) as u8;
        let Ok(claim) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("slot-{slot}")))
        else {
            continue;
        };
        if claim.try_lock().is_err() {
            continue;
        }
        let taken = [Network::Control, Network::Data]
            .iter()
            .any(|n| in_use.contains(&format!(" 10.{}.{slot}.", n.octet())));
        if !taken {
            return Ok((slot, claim));
        }
    }
    bail!("no free subnet slot for the network-namespace tests")
}

impl Net {
    /// Checks that this runs as root, removes what dead test processes left, and makes the
    /// two bridges.
    pub fn new() -> Result<Net> {
        // SAFETY: geteuid(2) has no preconditions.
        let uid = unsafe { libc::geteuid() };
        ensure!(
            uid == 0,
            "the network-namespace tests need root (network namespaces, bridges, veths): \
             `id -u` is {uid}. CI runs them as root; run the suite as root (sudo -E \
             scripts/test) to run them"
        );
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        sweep_leftovers();
        sweep_databases();
        let (slot, claim) = claim_slot()?;
        let prefix = format!(
            "{PREFIX}{}{}",
            base36(u64::from(std::process::id()), 5),
            base36(COUNTER.fetch_add(1, Ordering::Relaxed) as u64, 2)
        );
        let net = Net {
            prefix,
            slot,
            made: Mutex::new(Made::default()),
            proxy: Mutex::new(None),
            databases: Mutex::new(Vec::new()),
            _claim: claim,
        };
        for network in [Network::Control, Network::Data] {
            let bridge = net.bridge(network);
            net.made.lock().unwrap().links.push(bridge.clone());
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            let addr = format!("{}/24", net.root_ip(network));
            ip(&["addr", "add", &addr, "dev", &bridge])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        Ok(net)
    }

    fn bridge(&self, network: Network) -> String {
        format!("{}b{}", self.prefix, network.letter())
    }

    /// The root namespace's address on `network` (the test process's, and the proxy's).
    pub fn root_ip(&self, network: Network) -> Ipv4Addr {
        Ipv4Addr::new(10, network.octet(), self.slot, 1)
    }

    /// A new host `name` (letters, digits, `-`) on `networks`.
    pub fn host(&self, name: &str, networks: &[Network]) -> Result<Host> {
        let n = {
            let mut made = self.made.lock().unwrap();
            ensure!(made.hosts < MAX_HOSTS, "more than {MAX_HOSTS} hosts");
            made.hosts += 1;
            made.hosts - 1
        };
        let ns = format!("{}-{name}", self.prefix);
        self.made.lock().unwrap().namespaces.push(ns.clone());
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let mut host = Host {
            name: name.to_string(),
            ns: ns.clone(),
            control: None,
            data: None,
            control_link: None,
            data_link: None,
        };
        for &network in networks {
            let link = format!("{}{}{}", self.prefix, base36(n as u64, 2), network.letter());
            self.made.lock().unwrap().links.push(link.clone());
            let inside = network.inside();
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", inside, "netns", &ns,
            ])?;
            ip(&["link", "set", &link, "master", &self.bridge(network), "up"])?;
            let addr = Ipv4Addr::new(10, network.octet(), self.slot, FIRST_HOST + n as u8);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                inside,
            ])?;
            ip(&["-n", &ns, "link", "set", inside, "up"])?;
            match network {
                Network::Control => {
                    host.control = Some(addr);
                    host.control_link = Some(link);
                }
                Network::Data => {
                    host.data = Some(addr);
                    host.data_link = Some(link);
                }
            }
        }
        Ok(host)
    }

    fn link(host: &Host, network: Network) -> Result<&str> {
        match network {
            Network::Control => host.control_link.as_deref(),
            Network::Data => host.data_link.as_deref(),
        }
        .with_context(|| format!("{} is not on the {network:?} network", host.name))
    }

    /// Cuts `host` off `network`: the root side of its veth goes down (the switch port
    /// fails), so its packets vanish, as in a partition, rather than being refused.
    pub fn cut(&self, host: &Host, network: Network) -> Result<()> {
        ip(&["link", "set", Net::link(host, network)?, "down"])
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, host: &Host, network: Network) -> Result<()> {
        ip(&["link", "set", Net::link(host, network)?, "up"])
    }

    /// `program` to run in `host`'s namespace (`ip netns exec NS program`).
    pub fn command(&self, host: &Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &host.ns]).arg(program);
        command
    }

    /// Starts `triggerfs ARGS` in `host`'s namespace, as [`Proc::spawn`] does on the
    /// machine (`ip netns exec` execs it: the pid is the binary's).
    pub fn spawn(
        &self,
        host: &Host,
        name: &str,
        args: &[&str],
    ) -> Result<(Proc, BufReader<ChildStdout>)> {
        let mut command = self.command(host, bin());
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("TRIGGERFS_CONFIG");
        Proc::start(&format!("{name} ({})", host.name), command)
    }

    /// A fresh PostgreSQL database for this test (dropped with the [`Net`]), and its URL as
    /// the namespaces reach it: through the proxy on the control network.
    pub fn postgres(&self) -> Result<String> {
        let port = {
            let mut proxy = self.proxy.lock().unwrap();
            if proxy.is_none() {
                *proxy = Some(PgProxy::start(self.root_ip(Network::Control))?);
            }
            proxy.as_ref().map(|p| p.port).unwrap_or_default()
        };
        let db = PgDb::create()?;
        let url = format!(
            "postgres://postgres@{}:{port}/{}",
            self.root_ip(Network::Control),
            db.name
        );
        self.databases.lock().unwrap().push(db);
        Ok(url)
    }

    /// Starts `triggerfs control` on `host` (`:8080`) on `database_url`, its gateway sending
    /// through `broker`. The first on a database prints the first admin; a replica takes
    /// `first`'s. `pg` is `None`: the database is the [`Net`]'s.
    pub fn control(
        &self,
        host: &Host,
        database_url: &str,
        broker: &str,
        first: Option<&Control>,
        extra: &[&str],
    ) -> Result<Control> {
        let data = tempfile::tempdir()?;
        let listen = format!("{}:{API_PORT}", host.control_ip()?);
        let mut args = vec![
            "control",
            "--data",
            data.path()
                .to_str()
                .context("a UTF-8 temporary directory")?,
            "--api-listen",
            &listen,
            "--broker",
            broker,
            "--database-url",
            database_url,
        ];
        args.extend_from_slice(extra);
        let (proc, mut stdout) = self.spawn(host, "control", &args)?;
        let (lines, _) = read_until_listening(&proc, &mut stdout)?;
        let admin = match first {
            Some(first) => first.admin.clone(),
            None => {
                let created = line_value(&lines, "created team `")
                    .with_context(|| format!("no first admin in {lines:?}"))?;
                // "main` and admin `admin`"
                let mut words = created.split('`');
                let team = words.next().unwrap_or_default().to_string();
                let identity = words.nth(1).unwrap_or_default().to_string();
                let secret = line_value(&lines, "secret:").context("no secret line")?;
                remember_secret(&secret);
                (team, identity, secret)
            }
        };
        Ok(Control {
            proc,
            url: host.api_url()?,
            admin,
            data,
            pg: None,
        })
    }

    /// Starts `triggerfs broker` on `host`, listening on `0.0.0.0:5555` (both networks),
    /// following `control_urls` (comma-separated) with the broker token in `token_file`.
    /// Returns once it listens.
    pub fn broker(
        &self,
        host: &Host,
        control_urls: &str,
        token_file: &Path,
        extra: &[&str],
    ) -> Result<Proc> {
        let listen = format!("0.0.0.0:{BROKER_PORT}");
        // Three brokers and the rest on two cores: no shard spins or is pinned.
        let spin = ["--spin", "0s"];
        let extra = [&spin[..], extra].concat();
        let args = crate::broker_following_args(&listen, control_urls, token_file, &extra)?;
        let (proc, mut stdout) = self.spawn(host, "broker", &args)?;
        read_until_listening(&proc, &mut stdout)?;
        // Keep reading what it prints, so that it never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Ok(proc)
    }

    /// Starts `triggerfs worker` on `host`: `identity` of `team` with `token`, connecting to
    /// `broker` (one address or several, comma-separated), with the plugins in `plugins`.
    #[allow(clippy::too_many_arguments)]
    pub fn worker(
        &self,
        host: &Host,
        broker: &str,
        team: &str,
        identity: &str,
        token: &str,
        plugins: &Path,
        extra: &[&str],
    ) -> Result<Proc> {
        let mut args = vec![
            "worker",
            "--identity",
            identity,
            "--team",
            team,
            "--token",
            token,
            "--broker",
            broker,
            "--pluginspath",
            plugins.to_str().context("a UTF-8 plugins path")?,
        ];
        args.extend_from_slice(extra);
        let (proc, _stdout) = self.spawn(host, &format!("worker {identity}"), &args)?;
        Ok(proc)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in &made.namespaces {
            remove_namespace(ns);
        }
        // Deleting a namespace deleted its veths' peers with it; the bridges are left.
        for link in made.links.iter().rev() {
            if !ip_output(&["-o", "link", "show", "dev", link]).is_empty() {
                let _ = ip(&["link", "delete", link]);
            }
        }
        drop(self.proxy.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// A TCP proxy from the control network to PostgreSQL on 127.0.0.1:5432, on a tokio runtime
/// of its own (a test's runtime may be busy or blocked in a synchronous start).
struct PgProxy {
    runtime: Option<tokio::runtime::Runtime>,
    port: u16,
}

impl PgProxy {
    fn start(ip: Ipv4Addr) -> Result<PgProxy> {
        let listener = std::net::TcpListener::bind((ip, 0)).context("the PostgreSQL proxy")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-proxy")
            .enable_all()
            .build()?;
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(PgProxy {
            runtime: Some(runtime),
            port,
        })
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        // Not `drop(runtime)`: that blocks, which panics inside a test's runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The process connected to broker port [`BROKER_PORT`] as `pid` (in the root namespace):
/// the addresses it is connected to, from `ss`.
pub fn broker_peers(pid: u32) -> Vec<SocketAddr> {
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let owner = format!("pid={pid},");
    out.lines()
        .filter(|l| l.contains(&owner))
        .filter_map(|l| {
            // Recv-Q Send-Q Local Peer Process (no State column with `state established`)
            let peer: SocketAddr = l.split_whitespace().nth(3)?.parse().ok()?;
            (peer.port() == BROKER_PORT).then_some(peer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{base36, owner_pid, PREFIX};

    #[test]
    fn names_carry_their_owner_and_fit_an_interface_name() {
        let pid = 4_194_304; // the largest pid_max
        let prefix = format!("{PREFIX}{}{}", base36(pid, 5), base36(1295, 2));
        assert_eq!(owner_pid(&prefix), Some(pid as u32));
        // The longest name made: prefix, host number (2), network letter.
        assert!(prefix.len() + 3 <= 15, "{prefix}");
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("tfn"), None);
    }
}

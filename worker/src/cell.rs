//! The worker's sessions: one per broker node, for the union of its seeds (`--broker a,b`)
//! and the nodes of the cell it learns from them (`Welcome::nodes`, `Frame::Nodes`).
//!
//! Each node's session reconnects on its own, with capped exponential backoff and jitter
//! ([`node_loop`]). A learned node that leaves the list, and is not a seed, is dropped (its
//! session and the plugins it started, as when a connection breaks). An empty list says
//! nothing (a broker outside a cell, or one that has not heard from its control plane yet)
//! and changes nothing. A learned address that resolves to a seed's is that seed: two
//! connections of one identity to one broker would supersede each other.
//!
//! Every session shares one [`session::Shared`]: the plugin slots (`--max-concurrency`), the
//! persistent instances and the idempotency window, so a keyed dispatch resent through
//! another node runs once. What runs is kept per session (`session::Active`): dispatch ids
//! are each broker's own.

use crate::session::{self, Link};
use crate::{WorkerConfig, WorkerError, INITIAL_BACKOFF};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

/// How long resolving an address to compare it with the seeds may take.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);

/// What a session tells the worker.
#[derive(Debug)]
pub(crate) enum News {
    /// The cell's nodes, as a `Welcome` or a `Nodes` frame listed them.
    Nodes(Vec<String>),
    /// The session of node `addr` stopped for good: the node refused the worker's
    /// credentials for [`crate::REFUSED_GIVE_UP`], or a newer connection of the identity
    /// superseded it.
    GaveUp {
        /// The node.
        addr: String,
        /// Why.
        error: WorkerError,
    },
}

/// The form of a node's address sessions are known by: `tcp://` and surrounding blanks off.
pub(crate) fn node_key(addr: &str) -> String {
    let addr = addr.trim();
    addr.strip_prefix("tcp://").unwrap_or(addr).to_string()
}

/// The worker's sessions, by node.
pub(crate) struct Sessions {
    config: Arc<WorkerConfig>,
    shared: session::Shared,
    /// The seeds, by [`node_key`], in the order given.
    seeds: Vec<String>,
    /// The session of each node (seeds and learned nodes); dropping one stops it.
    running: HashMap<String, AbortOnDropHandle<()>>,
    /// Nodes whose session gave up on refused credentials, and why: not started again while
    /// they are listed (a seed, for good).
    refused: HashMap<String, WorkerError>,
    /// Learned addresses found to be a seed's (or not), by resolving them once.
    aliases: HashMap<String, bool>,
    news_tx: mpsc::UnboundedSender<News>,
    news_rx: mpsc::UnboundedReceiver<News>,
}

impl Sessions {
    pub(crate) fn new(config: Arc<WorkerConfig>, shared: session::Shared) -> Sessions {
        let mut seeds: Vec<String> = Vec::new();
        for seed in config.brokers.addrs().iter().map(|b| node_key(b)) {
            if !seed.is_empty() && !seeds.contains(&seed) {
                seeds.push(seed);
            }
        }
        let (news_tx, news_rx) = mpsc::unbounded_channel();
        Sessions {
            config,
            shared,
            seeds,
            running: HashMap::new(),
            refused: HashMap::new(),
            aliases: HashMap::new(),
            news_tx,
            news_rx,
        }
    }

    /// Serves until the worker must stop: a session was superseded, or every node refused
    /// the worker's credentials. Dropping the future (or `self`) stops every session.
    pub(crate) async fn run(&mut self) -> WorkerError {
        for seed in self.seeds.clone() {
            self.start(seed);
        }
        loop {
            // `self` holds a sender: the channel never closes.
            let Some(news) = self.news_rx.recv().await else {
                return WorkerError::WriterStopped;
            };
            match news {
                News::Nodes(nodes) => self.learn(nodes).await,
                News::GaveUp { addr, error } => {
                    if self.running.remove(&addr).is_none() {
                        continue; // dropped meanwhile
                    }
                    if matches!(
                        error,
                        WorkerError::Broker {
                            kind: proto::ErrorKind::Superseded,
                            ..
                        }
                    ) {
                        return error;
                    }
                    if self.running.is_empty() {
                        return error;
                    }
                    warn!(broker = %addr, %error, "this node refuses the worker; serving through the others");
                    self.refused.insert(addr, error);
                }
            }
        }
    }

    fn start(&mut self, addr: String) {
        let link = Link {
            addr: addr.clone(),
            news: self.news_tx.clone(),
        };
        let task = tokio::spawn(node_loop(self.config.clone(), link, self.shared.clone()));
        self.running.insert(addr, AbortOnDropHandle::new(task));
    }

    /// Takes a new list of the cell's nodes: starts a session to each new one, drops those
    /// of learned nodes no longer listed.
    async fn learn(&mut self, nodes: Vec<String>) {
        if nodes.is_empty() {
            return;
        }
        let mut listed = BTreeSet::new();
        for node in nodes.iter().map(|n| node_key(n)) {
            if !node.is_empty() && !self.seeds.contains(&node) && !self.is_alias(&node).await {
                listed.insert(node);
            }
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .chain(self.refused.keys())
            .filter(|n| !self.seeds.contains(n) && !listed.contains(*n))
            .cloned()
            .collect();
        for node in gone {
            if self.running.remove(&node).is_some() {
                info!(broker = %node, "node left the cell; disconnecting from it");
            }
            self.refused.remove(&node);
        }
        for node in listed {
            if !self.running.contains_key(&node) && !self.refused.contains_key(&node) {
                info!(broker = %node, "node of the cell learned; connecting to it");
                self.start(node);
            }
        }
    }

    /// Whether learned address `node` is one of the seeds under another name (resolved once).
    async fn is_alias(&mut self, node: &str) -> bool {
        if let Some(&alias) = self.aliases.get(node) {
            return alias;
        }
        let mut alias = false;
        let theirs = resolve(node).await;
        if !theirs.is_empty() {
            for seed in &self.seeds {
                let same_tls = client::connection::is_tls(seed) == client::connection::is_tls(node);
                if same_tls && resolve(seed).await.iter().any(|a| theirs.contains(a)) {
                    info!(broker = %node, seed = %seed, "a node of the cell is a seed under another name");
                    alias = true;
                    break;
                }
            }
        }
        self.aliases.insert(node.to_string(), alias);
        alias
    }
}

/// The socket addresses `addr` (`host:port`, `tls://host:port`) names; none when it cannot
/// be resolved in time.
async fn resolve(addr: &str) -> Vec<SocketAddr> {
    let host_port = client::connection::broker_addr(addr).to_string();
    match tokio::time::timeout(RESOLVE_WAIT, tokio::net::lookup_host(host_port)).await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => Vec::new(),
    }
}

/// One node's session, reconnecting with backoff and jitter until it gives up (see
/// [`crate::gives_up`]), which it tells the worker.
async fn node_loop(config: Arc<WorkerConfig>, link: Link, shared: session::Shared) {
    let reconnect_max = config.reconnect_max.max(Duration::from_millis(10));
    let mut backoff = INITIAL_BACKOFF.min(reconnect_max);
    // Since when the node has refused our credentials, without a session in between.
    let mut refused_since: Option<std::time::Instant> = None;
    let broker = &link.addr;
    loop {
        let mut welcomed = false;
        let ended = session::serve(&config, &link, &shared, &mut welcomed).await;
        if welcomed {
            backoff = INITIAL_BACKOFF.min(reconnect_max);
        }
        if crate::gives_up(&config, broker, &ended, &mut refused_since) {
            let _ = link.news.send(News::GaveUp {
                addr: link.addr.clone(),
                error: ended,
            });
            return;
        }
        let delay = match &ended {
            // Do not hammer the broker; a refusal that lasts ends the loop above.
            WorkerError::Refused { kind, reason } => {
                warn!(%broker, identity = %config.identity, %kind, %reason, "broker refused the worker; retrying");
                reconnect_max
            }
            other => {
                if welcomed {
                    warn!(%broker, error = %other, "disconnected from broker");
                } else {
                    info!(%broker, error = %other, ?backoff, "cannot reach broker; retrying");
                }
                backoff
            }
        };
        backoff = (backoff * 2).min(reconnect_max);
        tokio::time::sleep(jittered(delay)).await;
    }
}

/// `delay` plus up to half of it, at random: the workers a broker lost do not all come back
/// at the same instant.
fn jittered(delay: Duration) -> Duration {
    delay + delay.mul_f64(rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn node_keys_drop_the_tcp_scheme_only() {
        assert_eq!(node_key(" tcp://10.0.0.1:5555 "), "10.0.0.1:5555");
        assert_eq!(node_key("10.0.0.1:5555"), "10.0.0.1:5555");
        assert_eq!(node_key("tls://a:1"), "tls://a:1");
    }

    #[test]
    fn jitter_adds_up_to_half() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(100));
            assert!(
                d >= Duration::from_millis(100) && d <= Duration::from_millis(150),
                "{d:?}"
            );
        }
    }
}

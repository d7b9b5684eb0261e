//! Broker addresses: the list a user gives ([`BrokerList`]: `--broker a,b` or a TOML string
//! or list) and the nodes a client knows ([`KnownNodes`]: that list plus the cell's nodes the
//! broker announced in `Welcome` and `Nodes`), and the order a client tries them in.
//!
//! What a broker announces is bounded: at most [`MAX_LEARNED_NODES`] addresses of at most
//! [`MAX_NODE_ADDR_LEN`] bytes each are kept; more, longer or malformed ones are ignored, so a
//! broker cannot grow a client's memory with its lists.

use rand::seq::SliceRandom;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::str::FromStr;

/// Nodes of a cell a client keeps from one announcement. A cell has a handful of nodes
/// (three in the design); 64 leaves room for large ones and bounds what a broker can send.
pub const MAX_LEARNED_NODES: usize = 64;

/// The longest announced address kept: `tls://`, a DNS name (at most 253 bytes) and `:port`.
pub const MAX_NODE_ADDR_LEN: usize = 270;

/// The broker addresses a user gives: `host:port`, `tcp://host:port` or `tls://host:port`,
/// in the order given. One type for the setting, whatever its source: a flag or variable
/// (`a,b`, comma-separated) or `[main] broker` (a string, comma-separated, or a TOML list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerList(Vec<String>);

/// Why a broker list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no broker address given (expected host:port, several comma-separated)")]
pub struct EmptyBrokerList;

impl BrokerList {
    /// The list of these addresses (blank ones dropped); an error when none is left.
    pub fn new<I, S>(addrs: I) -> Result<BrokerList, EmptyBrokerList>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs: Vec<String> = addrs
            .into_iter()
            .map(|a| a.as_ref().trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(EmptyBrokerList);
        }
        Ok(BrokerList(addrs))
    }

    /// One address, as given (not split at commas).
    pub fn one(addr: impl Into<String>) -> BrokerList {
        BrokerList(vec![addr.into()])
    }

    /// The addresses, in the order given.
    pub fn addrs(&self) -> &[String] {
        &self.0
    }

    /// The first address (a list is never empty).
    pub fn first(&self) -> &str {
        &self.0[0]
    }
}

impl FromStr for BrokerList {
    type Err = EmptyBrokerList;
    /// `a`, or `a,b,c`.
    fn from_str(text: &str) -> Result<BrokerList, EmptyBrokerList> {
        BrokerList::new(text.split(','))
    }
}

impl fmt::Display for BrokerList {
    /// Comma-separated, as a flag takes it: one address prints as itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl<'de> serde::Deserialize<'de> for BrokerList {
    /// `broker = "a:1"`, `broker = "a:1,b:2"` or `broker = ["a:1", "b:2"]`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BrokerList, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = BrokerList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a broker address (host:port) or a list of them")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<BrokerList, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BrokerList, A::Error> {
                let mut addrs = Vec::new();
                while let Some(addr) = seq.next_element::<String>()? {
                    addrs.push(addr);
                }
                BrokerList::new(addrs).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// Whether `addr` is a broker address worth keeping from an announcement: not too long, and
/// `host:port` (optionally `tcp://` or `tls://`) with a non-empty host and a port number.
pub fn plausible_node(addr: &str) -> bool {
    if addr.is_empty() || addr.len() > MAX_NODE_ADDR_LEN {
        return false;
    }
    let host_port = crate::connection::broker_addr(addr);
    match host_port.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains([',', ' ', '/'])
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}

/// The nodes one client knows: the addresses it was given (`seeds`), and the cell's nodes
/// its broker announced last (`learned`, bounded).
#[derive(Debug, Clone)]
pub struct KnownNodes {
    seeds: Vec<String>,
    learned: Vec<String>,
}

impl KnownNodes {
    /// Knows `seeds` only.
    pub fn new(seeds: &BrokerList) -> KnownNodes {
        KnownNodes {
            seeds: seeds.addrs().to_vec(),
            learned: Vec::new(),
        }
    }

    /// A broker's announcement (`Welcome::nodes`, `Frame::Nodes`) replaces what was learned
    /// before: its first [`MAX_LEARNED_NODES`] plausible, distinct addresses, the rest
    /// ignored. An empty list (a broker outside a cell) forgets what was learned.
    pub fn learn(&mut self, nodes: &[String]) {
        self.learned.clear();
        for node in nodes {
            if self.learned.len() == MAX_LEARNED_NODES {
                break;
            }
            if plausible_node(node) && !self.learned.contains(node) {
                self.learned.push(node.clone());
            }
        }
    }

    /// Every address known: the learned nodes, then the seeds not among them.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.learned.clone();
        for seed in &self.seeds {
            if !all.contains(seed) {
                all.push(seed.clone());
            }
        }
        all
    }

    /// The order to try after losing `lost` (or at the start, `None`): every other known
    /// node in a random order (so that the clients of a lost node spread over the others),
    /// then the lost one.
    pub fn order_after(&self, lost: Option<&str>) -> Vec<String> {
        let mut others: Vec<String> = self
            .all()
            .into_iter()
            .filter(|a| Some(a.as_str()) != lost)
            .collect();
        others.shuffle(&mut rand::thread_rng());
        if let Some(lost) = lost {
            others.push(lost.to_string());
        }
        others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> BrokerList {
        text.parse().unwrap()
    }

    #[test]
    fn a_list_parses_from_a_flag_and_prints_back() {
        assert_eq!(list("a:1").addrs(), ["a:1"]);
        assert_eq!(
            list("a:1, b:2,,tls://c:3").addrs(),
            ["a:1", "b:2", "tls://c:3"]
        );
        assert_eq!(list("a:1,b:2").to_string(), "a:1,b:2");
        assert_eq!(
            list("tcp://127.0.0.1:5555").to_string(),
            "tcp://127.0.0.1:5555"
        );
        assert_eq!("".parse::<BrokerList>(), Err(EmptyBrokerList));
        assert_eq!(" , ".parse::<BrokerList>(), Err(EmptyBrokerList));
    }

    #[test]
    fn a_list_deserializes_from_a_string_or_a_list() {
        #[derive(serde::Deserialize)]
        struct Main {
            broker: BrokerList,
        }
        let parse = |text: &str| serde_json::from_str::<Main>(text).map(|m| m.broker);
        assert_eq!(parse(r#"{"broker": "a:1"}"#).unwrap(), list("a:1"));
        assert_eq!(parse(r#"{"broker": "a:1,b:2"}"#).unwrap(), list("a:1,b:2"));
        assert_eq!(
            parse(r#"{"broker": ["a:1", "b:2"]}"#).unwrap(),
            list("a:1,b:2")
        );
        assert!(parse(r#"{"broker": []}"#).is_err());
        assert!(parse(r#"{"broker": 5555}"#).is_err());
        assert!(parse(r#"{"broker": [1]}"#).is_err());
    }

    #[test]
    fn announced_addresses_are_checked() {
        for good in ["10.0.0.1:5555", "tls://node-1.example:5555", "[::1]:5555"] {
            assert!(plausible_node(good), "{good}");
        }
        let long = format!("{}:5555", "a".repeat(MAX_NODE_ADDR_LEN));
        for bad in [
            "",
            "host",
            ":5555",
            "host:",
            "host:0",
            "host:99999",
            "a,b:1",
            &long,
        ] {
            assert!(!plausible_node(bad), "{bad}");
        }
    }

    #[test]
    fn what_is_learned_is_bounded_and_replaced() {
        let mut known = KnownNodes::new(&list("seed:1"));
        let many: Vec<String> = (0..1000).map(|i| format!("node{i}:5555")).collect();
        known.learn(&many);
        assert_eq!(known.all().len(), MAX_LEARNED_NODES + 1);
        assert_eq!(known.all()[0], "node0:5555");
        assert!(known.all().contains(&"seed:1".to_string()));
        // Duplicates and junk are not kept; a new list replaces the old one.
        let next = ["x:1", "x:1", "junk", "seed:1"].map(String::from);
        known.learn(&next);
        assert_eq!(known.all(), ["x:1", "seed:1"]);
        known.learn(&[]);
        assert_eq!(known.all(), ["seed:1"]);
    }

    #[test]
    fn the_lost_node_is_tried_last() {
        let mut known = KnownNodes::new(&list("a:1,b:2"));
        known.learn(&["c:3".to_string(), "a:1".to_string()]);
        for _ in 0..20 {
            let order = known.order_after(Some("a:1"));
            assert_eq!(order.len(), 3);
            assert_eq!(order.last().map(String::as_str), Some("a:1"));
            let mut first_two = order[..2].to_vec();
            first_two.sort();
            assert_eq!(first_two, ["b:2", "c:3"]);
        }
        let mut start = known.order_after(None);
        start.sort();
        assert_eq!(start, ["a:1", "b:2", "c:3"]);
    }
}

//! The narrow feed between the control plane and the broker, and the JWT claims.
//!
//! JSON (serde) types, shared so that neither side depends on the other's crate:
//! - `GET /api/v1/broker/snapshot` → [`BrokerSnapshot`]: everything routing and
//!   authentication need, at one revision;
//! - `GET /api/v1/events` (SSE, `event: config`) → [`ConfigEvent`]: "something changed", after
//!   which the broker fetches a new snapshot;
//! - `POST /api/v1/broker/report` ← [`BrokerReport`]: worker state flowing back;
//! - `PUT /api/v1/broker/nodes/{node}` ← [`NodeHeartbeat`] → [`NodeList`]: a broker node of a
//!   cell registers and heartbeats, and learns the cell's live nodes;
//!   `DELETE /api/v1/broker/nodes/{node}` when it stops.
//!
//! The broker authenticates to these endpoints with the broker token
//! (`Authorization: Bearer <token>`), a secret the control plane keeps in its data dir.

use crate::frame::Algorithm;
use crate::text_enum;
use serde::{Deserialize, Serialize};

/// Claims of a client's JWT (HS256, signed by the control plane).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User identity.
    pub sub: String,
    /// The user's id in the store: a token outlives neither its user nor a new user who
    /// takes the identity later.
    pub uid: i64,
    /// The user's secret generation when the token was issued: a token outlives no change
    /// of its user's secret (absent in tokens from before it existed: 0).
    #[serde(default)]
    pub sgen: i64,
    /// The team the token acts in.
    pub team: String,
    /// The user's role in that team.
    pub role: TeamRole,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Expires at (seconds since the Unix epoch).
    pub exp: u64,
}

impl Claims {
    /// Whether the token has expired at `now`: from the second `exp` on (RFC 7519: "on or
    /// after which the JWT MUST NOT be accepted"). The API and the broker both use this, so a
    /// token is refused at the same moment everywhere and its connections end then too.
    pub fn expired_at(&self, now: std::time::SystemTime) -> bool {
        now >= std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.exp)
    }
}

text_enum! {
    ("role", "lowercase")
    /// A member's role in a team: an `admin` may invite, remove and change members and delete
    /// the team, and change any object of it; a `member` only their own objects.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Role))]
    #[serde(rename_all = "lowercase")]
    pub enum TeamRole {
        /// Manages the team.
        Admin,
        /// Uses the team.
        Member,
    }
}

text_enum! {
    ("visibility", "lowercase")
    /// Who may use it: `local` (its owner), `team`, `public` (every team).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Visibility {
        /// Only the user who owns it.
        #[default]
        Local,
        /// Every member of its team.
        Team,
        /// Anyone, as `team/service`.
        Public,
    }
}

text_enum! {
    ("worker state", "UPPERCASE")
    /// Whether the worker is connected to a broker.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "UPPERCASE")]
    pub enum WorkerState {
        /// Connected to a broker.
        Online,
        /// Not connected.
        Disconnected,
    }
}

/// The most services one worker's state report may list (a worker announces a handful).
pub const MAX_ANNOUNCED: usize = 64;

/// A worker the broker may admit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerEntry {
    /// Team.
    pub team: String,
    /// Identity, unique in the team.
    pub identity: String,
    /// Hex SHA-256 of its token (`token_digest`); the token itself is never stored.
    pub token_sha256: String,
    /// The user who created it: the owner of the services it announces.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub owner: String,
    /// Who may call it by its identity, and the services it announces (ad-hoc services):
    /// `local` (its owner), `team` or `public`.
    #[serde(default = "team_visibility")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub visibility: Visibility,
}

fn team_visibility() -> Visibility {
    Visibility::Team
}

/// A member of a team, whose JWT the broker accepts for that team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberEntry {
    /// Team.
    pub team: String,
    /// User identity.
    pub identity: String,
    /// The user's id (the JWT's `uid`).
    pub uid: i64,
    /// The user's secret generation (the JWT's `sgen`): a token from before the last change
    /// of the secret is refused.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub sgen: i64,
}

/// A service as the broker routes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceEntry {
    /// Team.
    pub team: String,
    /// Name, unique in the team.
    pub name: String,
    /// Identity of the user who owns it (for `local` visibility).
    pub owner: String,
    /// How requests spread.
    pub algorithm: Algorithm,
    /// Bound worker identities, in order.
    pub workers: Vec<String>,
    /// Default timeout; 0 means the broker's default.
    pub timeout_ms: u64,
    /// Who may call it.
    pub visibility: Visibility,
    /// mirror: workers at once.
    pub batch: Option<u32>,
    /// serial: stop at the first failure.
    pub stop_on_failure: bool,
    /// roundrobin: retry after `Accepted`.
    pub retry: bool,
    /// Who reads its jobs in the history (absent: its senders and the team's admins).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub history: crate::job::JobHistory,
}

/// Everything the broker needs, at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokerSnapshot {
    /// Increases with every configuration change.
    pub revision: u64,
    /// The HS256 key that signs client JWTs (hex), for the broker to verify them.
    pub jwt_secret_hex: String,
    /// Every team name.
    pub teams: Vec<String>,
    /// Every member of every team: a JWT is accepted only for a member of its team.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub members: Vec<MemberEntry>,
    /// Every worker.
    pub workers: Vec<WorkerEntry>,
    /// Every service.
    pub services: Vec<ServiceEntry>,
}

text_enum! {
    ("object", "lowercase")
    /// What kind of object a configuration change touched.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Object {
        /// A team (its quota too).
        Team,
        /// A user: a member of the team (added, role changed, removed), or the user's own
        /// secret or limit (then the event names no team).
        User,
        /// A worker.
        Worker,
        /// A service (its bound workers too).
        Service,
        /// A directory.
        Directory,
        /// A trigger.
        Trigger,
        /// A schedule (its runs are not configuration: they emit nothing).
        Schedule,
    }
}

text_enum! {
    ("action", "lowercase")
    /// What a configuration change did to its object.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Action {
        /// It was created.
        Created,
        /// It was changed.
        Updated,
        /// It was deleted.
        Deleted,
        /// A trigger was given a new path (moved or renamed, with or without other changes):
        /// the event names the new path.
        Renamed,
    }
}

/// [`Object`] under another name for the schema derive, which reads a type named `Object` as
/// any JSON object.
#[cfg(feature = "openapi")]
type ObjectKind = Object;

/// "The configuration changed"; the SSE `data` of `event: config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigEvent {
    /// The new revision.
    pub revision: u64,
    /// The team whose objects changed; empty for a change to a user that belongs to no one
    /// team (`max_teams`, the user's secret).
    pub team: String,
    /// What kind of object changed.
    #[cfg_attr(feature = "openapi", schema(value_type = ObjectKind))]
    pub object: Object,
    /// What happened to it: `created`, `updated`, `deleted`; `renamed` for a trigger given a
    /// new path (moved or renamed, with or without other changes).
    pub action: Action,
    /// The object's name or path; after `renamed`, the new path.
    pub name: String,
}

/// One worker's state change, reported by the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerStateReport {
    /// Team (any text: a worker no team has is not updated, and not an error).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Text))]
    pub team: String,
    /// Identity (any text, as `team`).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Text))]
    pub identity: String,
    /// New state.
    pub state: WorkerState,
    /// When (milliseconds since the Unix epoch; a later time than the control plane's column
    /// holds is stored as the latest it holds).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::UnixMs))]
    pub at_unix_ms: u64,
    /// Orders the connections of one identity within one broker run: a report about an
    /// older connection never overrides one about a newer.
    #[serde(default)]
    pub generation: u64,
    /// The services the worker announced (`ONLINE` only), at most 64 (`MAX_ANNOUNCED`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::AnnouncedServices))]
    pub services: Vec<String>,
}

impl WorkerStateReport {
    /// Whether this report is about a later moment of the identity than `other`: a newer
    /// connection, or the end of the same one.
    pub fn supersedes(&self, other: &WorkerStateReport) -> bool {
        (self.generation, self.state == WorkerState::Disconnected)
            > (other.generation, other.state == WorkerState::Disconnected)
            || (self.generation == other.generation && self.state == other.state)
    }
}

/// What the broker reports back (`POST /api/v1/broker/report`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokerReport {
    /// Worker state changes, oldest first.
    pub workers: Vec<WorkerStateReport>,
    /// The reports list every worker online at this broker: any other is `DISCONNECTED`.
    /// Sent whenever the broker (re)connects to the control plane, so that states left
    /// `ONLINE` by a crash or a lost connection are corrected.
    #[serde(default)]
    pub full: bool,
    /// The broker node the reports come from (its id, as in its heartbeats): `full` then
    /// speaks for that node's connections only, and a worker is `ONLINE` while any live node
    /// reports it connected. `None` for a broker outside a cell (no `--advertise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::NodeId>))]
    pub node: Option<String>,
}

/// A broker node of a cell, every few seconds (`PUT /api/v1/broker/nodes/{node}`, where
/// `node` is an id the broker picks at start: a UUID). A node unseen for the control plane's
/// lease leaves the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeHeartbeat {
    /// The address peers connect to (`host:port`, or `tls://host:port`): `--advertise`
    /// ([`check_advertise`]).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Advertise))]
    pub advertise: String,
    /// When this broker run started (milliseconds since the Unix epoch).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::UnixMs))]
    pub started_unix_ms: u64,
    /// Client connections open now.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Count))]
    pub clients: u32,
    /// Worker connections open now.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Count))]
    pub workers: u32,
}

/// One live broker node of the cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeEntry {
    /// The node's id.
    pub node: String,
    /// Where peers connect to it.
    pub advertise: String,
}

/// The cell's live broker nodes (those seen within the lease), ordered by address: the answer
/// to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeList {
    /// Every live node, the caller included.
    pub nodes: Vec<NodeEntry>,
    /// How long a node stays in the list without a heartbeat (milliseconds).
    pub lease_ms: u64,
}

/// A node id as the control plane takes it: a UUID in its hyphenated lower-case form
/// (`uuid::Uuid::to_string`), 36 characters.
pub const NODE_ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// The longest `advertise` a heartbeat may carry: `tls://`, a host name of 253 characters,
/// `:` and a port of 5 digits.
pub const MAX_ADVERTISE: usize = 265;

/// What [`check_advertise`] accepts (all but the length, [`MAX_ADVERTISE`]): `host:port` or
/// `tls://host:port`, the host DNS labels (1 to 63 letters, digits or `-`, neither first nor
/// last) separated by `.`, or an IPv6 address in brackets; the port 1 to 65535.
pub const ADVERTISE_PATTERN: &str = concat!(
    "^(tls://)?",
    "([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*",
    "|\\[[0-9A-Fa-f:.]{2,45}\\])",
    ":([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
);

/// Why a text is not a node id ([`NODE_ID_PATTERN`]), if it is not.
pub fn check_node_id(node: &str) -> Result<(), String> {
    let b = node.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        });
    if ok {
        Ok(())
    } else {
        Err("a node id is a UUID in lower-case hyphenated form (36 characters)".into())
    }
}

/// Why a text is not an address a node may advertise ([`ADVERTISE_PATTERN`],
/// [`MAX_ADVERTISE`]), if it is not.
pub fn check_advertise(advertise: &str) -> Result<(), String> {
    let refuse = || {
        Err(format!(
            "advertise is `host:port` or `tls://host:port` (a DNS name or a bracketed IPv6 \
             address, a port from 1 to 65535), at most {MAX_ADVERTISE} characters"
        ))
    };
    if advertise.chars().count() > MAX_ADVERTISE {
        return refuse();
    }
    let rest = advertise.strip_prefix("tls://").unwrap_or(advertise);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return refuse();
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && !port.starts_with('0')
        && port.bytes().all(|c| c.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65535);
    let label_ok = |label: &str| {
        let b = label.as_bytes();
        (1..=63).contains(&b.len())
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').is_some_and(|ip| {
            (2..=45).contains(&ip.len())
                && ip
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        }),
        None => host.split('.').all(label_ok),
    };
    if port_ok && host_ok {
        Ok(())
    } else {
        refuse()
    }
}

/// Hex SHA-256 of a worker token: what is stored and compared, never the token.
///
/// Worker tokens are random UUID v4 (122 bits), so a fast hash is enough: unlike a user's
/// secret they cannot be guessed from a dictionary, and the broker checks one per handshake.
pub fn token_digest(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_hex_sha256() {
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Addresses and node ids of every shape near the rules: the patterns accept exactly
    /// what the checks accept.
    #[test]
    fn node_patterns_are_the_checks() {
        let advertise = regex::Regex::new(ADVERTISE_PATTERN).unwrap();
        let node = regex::Regex::new(NODE_ID_PATTERN).unwrap();
        let long_label = "a".repeat(63);
        let longer_label = "a".repeat(64);
        let long_host = [long_label.as_str(); 4].join(".");
        let mut cases: Vec<String> = [
            "10.0.0.11:5555",
            "tls://10.0.0.11:5555",
            "h:1",
            "h:0",
            "h:65535",
            "h:65536",
            "h:99999",
            "h:05555",
            "h:",
            ":5555",
            "h",
            "tls://h",
            "tls://:1",
            "a-b.c:80",
            "-a:80",
            "a-:80",
            "a..b:80",
            "a.:80",
            ".a:80",
            "a_b:80",
            "[::1]:5555",
            "[::1]",
            "[]:1",
            "[:]:1",
            "[g::1]:1",
            "tls://[fe80::1]:443",
            "h:1:2",
            "tls:/h:1",
            "TLS://h:1",
            "h :1",
            "é:1",
            "h:1\n",
            "udp://h:1",
            "h:123456",
            "h:6553",
            "h:65529",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push(format!("{long_label}:1"));
        cases.push(format!("{longer_label}:1"));
        cases.push(format!("tls://{long_host}:65535"));
        cases.push(format!("tls://{long_host}x:65535"));
        cases.push(format!("[{}]:1", "1".repeat(45)));
        cases.push(format!("[{}]:1", "1".repeat(46)));
        for port in 0..70_000 {
            cases.push(format!("h:{port}"));
        }
        for case in &cases {
            let by_pattern = advertise.is_match(case) && case.chars().count() <= MAX_ADVERTISE;
            assert_eq!(by_pattern, check_advertise(case).is_ok(), "{case:?}");
        }
        let uuid = "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d80";
        for case in [
            uuid,
            "0B5F6C2E-8F2A-4C1E-9D3B-2A7E4F1C6D80",
            "0b5f6c2e8f2a4c1e9d3b2a7e4f1c6d80",
            "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d8",
            "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d800",
            "0b5f6c2e-8f2a-4c1e-9d3b_2a7e4f1c6d80",
            "0b5f6c2g-8f2a-4c1e-9d3b-2a7e4f1c6d80",
            "",
        ] {
            assert_eq!(node.is_match(case), check_node_id(case).is_ok(), "{case:?}");
        }
        assert!(check_node_id(uuid).is_ok());
    }

    #[test]
    fn newer_connections_and_ends_supersede() {
        let r = |generation, state| WorkerStateReport {
            team: "t".into(),
            identity: "w".into(),
            state,
            at_unix_ms: 0,
            generation,
            services: vec![],
        };
        let (on, off) = (WorkerState::Online, WorkerState::Disconnected);
        assert!(r(5, on).supersedes(&r(4, off)), "a newer connection");
        assert!(!r(4, off).supersedes(&r(5, on)), "an older one's end");
        assert!(r(5, off).supersedes(&r(5, on)), "the same one's end");
        assert!(!r(5, on).supersedes(&r(5, off)), "the same one, ended");
        assert!(r(5, on).supersedes(&r(5, on)), "a new announcement");
        // Reports from a broker without generations still apply in order.
        let old: WorkerStateReport =
            serde_json::from_str(r#"{"team":"t","identity":"w","state":"ONLINE","at_unix_ms":1}"#)
                .unwrap();
        assert_eq!((old.generation, old.services.len()), (0, 0));
    }

    #[test]
    fn snapshot_json_shape() {
        let s = BrokerSnapshot {
            revision: 3,
            services: vec![ServiceEntry {
                team: "t".into(),
                name: "s".into(),
                owner: "u".into(),
                algorithm: Algorithm::Mirror,
                workers: vec!["w".into()],
                timeout_ms: 0,
                visibility: Visibility::Public,
                batch: None,
                stop_on_failure: false,
                retry: false,
                history: Default::default(),
            }],
            ..Default::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["services"][0]["algorithm"], "mirror");
        assert_eq!(json["services"][0]["visibility"], "public");
        let back: BrokerSnapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            serde_json::to_string(&WorkerState::Disconnected).unwrap(),
            "\"DISCONNECTED\""
        );
    }
}

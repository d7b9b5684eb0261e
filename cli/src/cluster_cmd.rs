//! `triggerfs cluster status`: the cell's live broker nodes (`/api/v1/brokers`): address, when
//! each was last heard from, its connections (operators) and the team's workers on it.
//! Logging in is `triggerfs jobs`'s.

use crate::console::table::{seed_time, Table};
use crate::jobs_cmd::{refused, ApiLogin};
use anyhow::Result;
use api::brokers::BrokerNodeView;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Flags of `triggerfs cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub auth: ApiLogin,
    /// The API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// `triggerfs cluster ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterCommand {
    /// The cell's live broker nodes: address, last seen, connections (operators see every
    /// team's), your team's workers on each, and since when each runs.
    Status,
}

/// `triggerfs cluster ...`, on a runtime of its own.
pub fn main(args: ClusterArgs) -> Result<i32> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// `triggerfs cluster ...`: prints to stdout, returns the exit status.
pub async fn run(args: ClusterArgs) -> Result<i32> {
    let api = args.auth.sign_in().await?;
    match args.command {
        ClusterCommand::Status => {
            let nodes: Vec<BrokerNodeView> = api.get("/brokers").await.map_err(refused)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else if nodes.is_empty() {
                println!("no broker node has registered: the broker runs outside a cell");
            } else {
                for line in status_table(&nodes, unix_ms_now()) {
                    println!("{line}");
                }
            }
            Ok(0)
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The lines of `cluster status` (and the console's `show brokers`), `now_ms` being now.
pub fn status_table(nodes: &[BrokerNodeView], now_ms: u64) -> Vec<String> {
    let mut t = Table::new(&[
        "node",
        "advertise",
        "last seen",
        "clients",
        "workers",
        "team workers",
        "up since",
    ]);
    let count = |n: Option<u32>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    for n in nodes {
        let ago = Duration::from_millis(now_ms.saturating_sub(n.last_seen_unix_ms));
        let started = UNIX_EPOCH + Duration::from_millis(n.started_unix_ms);
        t.row(vec![
            n.node.clone(),
            n.advertise.clone(),
            format!("{:.1}s ago", ago.as_secs_f64()),
            count(n.clients),
            count(n.workers),
            n.team_workers.to_string(),
            seed_time(&humantime::format_rfc3339_millis(started).to_string()),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_sees_dashes_for_the_totals() {
        let node = |clients| BrokerNodeView {
            node: "0b5f6c2e-8f2a-4c1e-9d3b-2a7e4f1c6d80".into(),
            advertise: "10.0.0.11:5555".into(),
            started_unix_ms: 1_700_000_000_000,
            last_seen_unix_ms: 1_700_000_001_000,
            clients,
            workers: clients,
            team_workers: 2,
        };
        let lines = status_table(&[node(Some(7)), node(None)], 1_700_000_002_500);
        let text = lines.join("\n");
        assert!(text.contains("1.5s ago"), "{text}");
        assert!(text.contains("Tue, 14 Nov 2023 22:13:20 UTC"), "{text}");
        let rows: Vec<&String> = lines.iter().filter(|l| l.contains("10.0.0.11")).collect();
        assert!(rows[0].contains(" 7 "), "{text}");
        assert!(rows[1].contains(" - "), "{text}");
        assert!(text.ends_with("(2 rows)"), "{text}");
    }
}

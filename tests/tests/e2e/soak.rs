//! The soak with faults (issue 16), 20 s: `triggerfs bench soak` with a control plane, a
//! broker following it, workers in processes of their own and 50 clients at a steady rate
//! (a fifth of the requests a plugin process that runs 1 s, so faults catch some mid-run);
//! worker processes SIGKILLed, the broker and the control plane restarted once each. Every
//! request must end in an answer or a typed error (lost = 0) and the broker's peak RSS stays
//! under 512 MiB.
//!
//! Lighter than `scripts/soak` (2,000 workers in 20 processes, 60 s) so that the suite fits a
//! 2-core machine: 300 workers in 6 processes, 100 requests a second.

use anyhow::{ensure, Context, Result};
use std::process::Command;
use tests::bin;

#[test]
fn soak_with_faults_loses_nothing() -> Result<()> {
    let out = Command::new(bin())
        .args([
            "bench",
            "soak",
            "--duration",
            "20s",
            "--workers",
            "300",
            "--worker-procs",
            "6",
            "--worker-kills",
            "5",
            "--clients",
            "50",
            "--rate",
            "100",
            "--json",
        ])
        .env("RUST_LOG", "error")
        .env_remove("TRIGGERFS_CONFIG")
        .output()
        .context("run triggerfs bench soak")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("no JSON from the soak; stderr:\n{stderr}"))?;
    let n = |key: &str| doc[key].as_u64().unwrap_or(u64::MAX);
    let summary = format!("{doc:#}\nstderr:\n{stderr}");
    ensure!(n("lost") == 0, "requests lost: {summary}");
    ensure!(n("unaccounted") == 0, "requests unaccounted: {summary}");
    ensure!(
        n("answered") > n("sent") / 2,
        "most requests should be answered: {summary}"
    );
    ensure!(
        n("broker_peak_rss_kib") < 512 * 1024,
        "broker peak RSS over 512 MiB: {summary}"
    );
    let faults = &doc["faults"];
    ensure!(
        faults["broker_restarts"] == 1 && faults["control_restarts"] == 1,
        "the restarts did not happen: {summary}"
    );
    ensure!(
        faults["worker_process_kills"].as_u64() >= Some(1),
        "no worker was killed: {summary}"
    );
    ensure!(
        n("workers_online_at_end") == 300,
        "not every worker came back: {summary}"
    );
    ensure!(
        out.status.success(),
        "exit status {}: {summary}",
        out.status
    );
    Ok(())
}

//! Many workers on one broker: mirror to all of them.

use anyhow::Result;
use std::time::Duration;
use tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_echo_to_200_workers() -> Result<()> {
    const N: usize = 200;
    let broker = Broker::start(
        "[broker.services.all]\nalgorithm = \"mirror\"\nannounced = true\n",
        2,
    )?;
    let plugins = Plugins::core()?;
    // 200 worker connections from this process (the worker library, as `triggerfs worker`
    // runs it); each announces `all`.
    let ids: Vec<String> = (0..N).map(|i| format!("f{i:03}")).collect();
    let stop_tx = library_workers(broker.addr, &plugins, &ids, &["all"]);
    let c = connect(broker.addr).await?;
    wait_until(Duration::from_secs(30), "200 workers online", || async {
        matches!(
            request(&c, "all", "echo", "count", Duration::from_secs(10)).await,
            Ok(o) if o.summary.is_some_and(|s| s.ok as usize == N)
        )
    })
    .await?;

    let addr = broker.addr.to_string();
    let (code, out, err) = run_cli(
        &[
            "client",
            "--broker",
            &addr,
            "--service",
            "all",
            "--plugin",
            "echo",
            "--json",
            "--command",
            "hello fleet",
        ],
        Duration::from_secs(60),
    )?;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    let workers = doc["workers"].as_array().unwrap();
    assert_eq!(workers.len(), N);
    assert!(workers
        .iter()
        .all(|w| w["status"] == "ok" && w["output"][0]["line"] == "hello fleet"));
    assert_eq!(doc["summary"]["workers"], N);
    assert_eq!(doc["summary"]["ok"], N);
    let _ = stop_tx.send(true);
    Ok(())
}

/// Spinning shards are pinned to cores (more shards than cores share them); `--spin 0s`
/// neither spins nor pins. Both serve the same mirror, every shard taking part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_serve_with_and_without_spinning() -> Result<()> {
    const N: usize = 6;
    let plugins = Plugins::core()?;
    for spin in ["0s", "300us"] {
        let broker = Broker::start_with(
            "127.0.0.1:0",
            "[broker.services.all]\nalgorithm = \"mirror\"\nannounced = true\n",
            3,
            &["--spin", spin],
        )?;
        let ids: Vec<String> = (0..N).map(|i| format!("s{i}")).collect();
        let _workers: Vec<_> = ids
            .iter()
            .map(|id| start_worker(broker.addr, id, &plugins, &["--service", "all"]))
            .collect::<Result<_>>()?;
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        wait_for_workers(broker.addr, &refs).await?;
        let c = connect(broker.addr).await?;
        for _ in 0..5 {
            let o = request(&c, "all", "echo", "spin", Duration::from_secs(10)).await?;
            let summary = o.summary.expect("a mirror ends with a summary");
            assert_eq!(summary.ok as usize, N, "--spin {spin}: {o:?}");
        }
    }
    Ok(())
}

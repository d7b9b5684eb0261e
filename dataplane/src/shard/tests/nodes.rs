//! A cell's nodes: in every `Welcome`, and as `Nodes` to every peer when they change.

use super::*;
use proto::control::WorkerStateReport;
use proto::Credential;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// A [`FileConfig`] whose node list the test changes.
#[derive(Default)]
struct CellSource {
    file: FileConfig,
    nodes: Mutex<Vec<String>>,
    revision: AtomicU64,
}

impl CellSource {
    fn set(&self, nodes: &[&str]) {
        *self.nodes.lock().unwrap() = nodes.iter().map(|n| n.to_string()).collect();
        self.revision.fetch_add(1, Ordering::SeqCst);
    }
}

impl ConfigSource for CellSource {
    fn revision(&self) -> u64 {
        0
    }
    fn routing(&self) -> Arc<crate::config::RoutingConfig> {
        self.file.routing()
    }
    fn authenticate(&self, credential: &Credential) -> Result<Principal, crate::config::Refusal> {
        self.file.authenticate(credential)
    }
    fn report(&self, report: WorkerStateReport) {
        self.file.report(report)
    }
    fn nodes_revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }
    fn nodes(&self) -> Vec<String> {
        self.nodes.lock().unwrap().clone()
    }
}

#[test]
fn welcome_carries_the_nodes_and_a_change_reaches_every_peer() {
    let source = Arc::new(CellSource::default());
    source.set(&["10.0.0.1:5555", "10.0.0.2:5555"]);
    let dyn_source: Arc<dyn ConfigSource> = source.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move {
            let shard = Rc::new(Shard::new(
                0,
                &Shared::new(settings(1, 1), dyn_source),
                None,
            ));
            let open = |role| {
                let out = Rc::new(Outbox::new(64, proto::DEFAULT_MAX_FRAME));
                let id = shard.open_conn(
                    out.clone(),
                    principal("w1"),
                    role,
                    proto::MIN_PROTOCOL_VERSION,
                );
                (id, out)
            };
            let (_, worker) = open(Role::Worker);
            let (_, client) = open(Role::Client);
            for out in [&worker, &client] {
                match out.take_frames().as_slice() {
                    [Frame::Welcome { nodes, .. }] => {
                        assert_eq!(nodes, &["10.0.0.1:5555", "10.0.0.2:5555"])
                    }
                    other => panic!("expected a Welcome, got {other:?}"),
                }
            }
            // Unchanged: nothing is sent.
            shard.tick().await;
            assert!(worker.take_frames().is_empty());
            source.set(&["10.0.0.2:5555"]);
            shard.tick().await;
            for out in [&worker, &client] {
                assert_eq!(
                    out.take_frames(),
                    [Frame::Nodes {
                        nodes: vec!["10.0.0.2:5555".into()]
                    }]
                );
            }
            // A new revision with the same list says nothing again.
            source.set(&["10.0.0.2:5555"]);
            shard.tick().await;
            assert!(client.take_frames().is_empty());
            // A peer connecting now is welcomed with the new list.
            let (_, late) = open(Role::Client);
            assert!(matches!(
                late.take_frames().as_slice(),
                [Frame::Welcome { nodes, .. }] if nodes == &["10.0.0.2:5555"]
            ));
        })
        .expect("executor")
        .join()
        .expect("shard script");
}

//! End-to-end tests: the real `triggerfs` binary on 127.0.0.1.
//!
//! One test binary (one link, one harness), split in modules by capability.

mod e2e {
    pub mod algorithms;
    pub mod api_abuse;
    pub mod bad_input;
    pub mod cell;
    pub mod cell_netns;
    pub mod cluster_status;
    pub mod console;
    pub mod containment;
    pub mod control;
    pub mod core_plugins;
    pub mod defences;
    pub mod failover;
    pub mod failures;
    pub mod fanout;
    pub mod first_hour;
    pub mod fleet;
    pub mod fs;
    pub mod http_limits;
    pub mod idem;
    pub mod jobs;
    pub mod limits;
    pub mod operator;
    pub mod persistent;
    pub mod readme;
    pub mod replicas;
    pub mod schedules;
    pub mod seed_cli;
    pub mod seed_promises;
    pub mod slow_consumers;
    pub mod soak;
    pub mod tls;
    pub mod trigger_history;
    pub mod trust;
    pub mod trust_misc;
    pub mod web;
    pub mod worker_rights;
}

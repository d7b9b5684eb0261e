//! `triggerfs bench-child <role>` (hidden): the processes a benchmark starts from its own
//! binary. Servers (`relay`, `echo`, `nats-responders`) print one line when ready
//! (`listening on ADDR`, or `ready` / `skip`) and run until their stdin closes; a `load`
//! process prints `ready` once connected and answers `Run` lines (see `load.rs`).

use crate::System;
use clap::{Args, Subcommand};
use std::net::SocketAddr;

/// `triggerfs bench-child <role>`.
#[derive(Args, Debug, Clone)]
pub struct ChildArgs {
    /// What this process is.
    #[command(subcommand)]
    pub role: Role,
}

/// The roles of `bench-child`.
#[derive(Subcommand, Debug, Clone)]
pub enum Role {
    /// The relay baseline, forwarding to its echo server.
    Relay {
        /// The echo server.
        #[arg(long)]
        upstream: SocketAddr,
        /// Threads, each with a single-threaded runtime (the broker's shards).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// The relay's echo server.
    Echo,
    /// NATS echo responders in one queue group.
    NatsResponders {
        /// The NATS server.
        #[arg(long)]
        nats: String,
        /// The subject they answer.
        #[arg(long)]
        subject: String,
        /// Responders, one connection each.
        #[arg(long, default_value_t = 1)]
        responders: usize,
    },
    /// A load process: drives one system.
    Load(LoadChildArgs),
    /// A FUSE filesystem that accepts every write and keeps nothing (`bench fs`'s floor).
    NullFuse {
        /// Where to mount it.
        #[arg(long)]
        mount: std::path::PathBuf,
        /// FUSE threads, each with a cloned fd (as `triggerfs fs --threads`).
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// The same null filesystem served over FUSE-over-io_uring (`bench fs --fuse-uring`).
    NullFuseUring {
        /// Where to mount it.
        #[arg(long)]
        mount: std::path::PathBuf,
    },
    /// Workers of `bench soak` and `bench fanout`: one per `identity token` line of `--ids`,
    /// in this process, on one current-thread runtime.
    Workers {
        /// The broker.
        #[arg(long)]
        broker: String,
        /// Their team.
        #[arg(long)]
        team: String,
        /// A file of `identity token` lines.
        #[arg(long)]
        ids: std::path::PathBuf,
        /// Services every worker announces (repeat; none: those the configuration binds).
        #[arg(long)]
        service: Vec<String>,
    },
}

/// `bench-child load`.
#[derive(Args, Debug, Clone)]
pub struct LoadChildArgs {
    /// Which client to use.
    #[arg(long)]
    pub system: System,
    /// The name shown on its progress bar.
    #[arg(long)]
    pub name: String,
    /// The broker, relay or NATS server. triggerFS: several nodes of a cell, comma-separated,
    /// over which the connections are spread in turn.
    #[arg(long)]
    pub addr: String,
    /// triggerFS: a file holding the JWT the connections log in with (a broker that follows
    /// a control plane).
    #[arg(long)]
    pub jwt_file: Option<std::path::PathBuf>,
    /// Connections; requests spread over them.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// The triggerFS service or the NATS subject.
    #[arg(long, default_value = "")]
    pub target: String,
    /// triggerFS: services that must answer before the load process is ready (repeat).
    #[arg(long)]
    pub ready: Vec<String>,
    /// triggerFS: what each request runs.
    #[arg(long, default_value = "in-worker")]
    pub kind: crate::PluginKind,
    /// triggerFS, `--kind append`: the file the lines go to.
    #[arg(long)]
    pub append_file: Option<std::path::PathBuf>,
}

/// Runs one `bench-child` role; returns the exit status.
pub fn run(args: ChildArgs) -> anyhow::Result<i32> {
    match args.role {
        Role::Relay { upstream, threads } => crate::relay::relay_main(upstream, threads),
        Role::Echo => crate::relay::echo_main(),
        Role::NatsResponders {
            nats,
            subject,
            responders,
        } => crate::nats::responders_main(&nats, &subject, responders),
        Role::Load(load) => load_main(load),
        Role::NullFuse { mount, threads } => crate::nullfuse::main(&mount, threads),
        Role::NullFuseUring { mount } => crate::nullfuse_uring::main(&mount),
        Role::Workers {
            broker,
            team,
            ids,
            service,
        } => crate::soak::workers_main(&broker, &team, &ids, &service),
    }
}

/// A load process: one current-thread runtime, whatever the system.
fn load_main(args: LoadChildArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let (name, addr, n) = (&args.name, &args.addr, args.connections);
        match args.system {
            System::Triggerfs => {
                let jwt = match &args.jwt_file {
                    Some(path) => std::fs::read_to_string(path)?.trim().to_string(),
                    None => String::new(),
                };
                let caller = crate::triggerfs::caller(
                    addr,
                    &jwt,
                    n,
                    &args.target,
                    &args.ready,
                    args.kind,
                    args.append_file.as_deref(),
                )
                .await?;
                crate::load::serve_runs(name, caller).await
            }
            System::Relay => {
                let caller = crate::relay::caller(addr, n).await?;
                crate::load::serve_runs(name, caller).await
            }
            System::Nats => {
                let caller = crate::nats::caller(addr, n, &args.target).await?;
                crate::load::serve_runs(name, caller).await
            }
        }
    })?;
    Ok(0)
}

//! `kiln launch`: start one kiln process per device on this node with `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` set (torchrun's names), wait
//! for them, and when one fails stop the others and fail too, naming the rank.

use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What `kiln launch` was asked to start.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    /// `HOST:PORT` of global rank 0 (required with several nodes; a free local port otherwise).
    pub master: Option<String>,
    /// The kiln subcommand and its arguments (`train --config ...`).
    pub args: Vec<String>,
}

fn free_local_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free local port for the rendezvous")?
        .local_addr()?
        .port())
}

/// Start the node's ranks and supervise them. Ok when every rank exits successfully.
pub fn launch(p: &LaunchPlan) -> Result<()> {
    if p.nproc_per_node == 0 || p.nnodes == 0 {
        bail!("--nproc-per-node and --nnodes must be at least 1");
    }
    if p.node_rank >= p.nnodes {
        bail!(
            "--node-rank {} must be below --nnodes {}",
            p.node_rank,
            p.nnodes
        );
    }
    if p.args.is_empty() {
        bail!("nothing to launch: give the kiln command after `--`, e.g. `kiln launch --nproc-per-node 2 -- train --config run.toml`");
    }
    let master = match &p.master {
        Some(m) => m.clone(),
        None if p.nnodes > 1 => {
            bail!(
                "--nnodes {} needs --master HOST:PORT (an address of node 0 every node can reach)",
                p.nnodes
            )
        }
        None => format!("127.0.0.1:{}", free_local_port()?),
    };
    let Some((host, port)) = master.rsplit_once(':') else {
        bail!("--master {master:?}: expected HOST:PORT");
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("--master {master:?}: expected HOST:PORT");
    }
    let world = p.nproc_per_node * p.nnodes;
    let exe = std::env::current_exe().context("cannot find the kiln executable to launch")?;
    eprintln!(
        "launch: node {} of {}: ranks {}..{} of world {world}, rendezvous at {master}",
        p.node_rank,
        p.nnodes,
        p.node_rank * p.nproc_per_node,
        (p.node_rank + 1) * p.nproc_per_node
    );
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..p.nproc_per_node {
        let rank = p.node_rank * p.nproc_per_node + local;
        let spawned = Command::new(&exe)
            .args(&p.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", p.nproc_per_node.to_string())
            .env("MASTER_ADDR", host)
            .env("MASTER_PORT", port)
            // kiln launch inside a torchrun worker: its ranks rendezvous at MASTER_PORT itself.
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .spawn();
        match spawned {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children);
                bail!("cannot start rank {rank} ({}): {e}", exe.display());
            }
        }
    }
    supervise(children)
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Wait for every child; on the first failure stop the rest. Ranks that fail within a short
/// grace period of the first are reported with it (a crash makes its peers fail too; the
/// report lists them all, in rank order, with their exit statuses).
fn supervise(mut children: Vec<(usize, Child)>) -> Result<()> {
    let n = children.len();
    let mut failed: Vec<(usize, std::process::ExitStatus)> = Vec::new();
    let mut first_failure: Option<std::time::Instant> = None;
    loop {
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            let rank = *rank;
            match child.try_wait() {
                Ok(Some(status)) => {
                    children.remove(i);
                    if !status.success() {
                        failed.push((rank, status));
                        first_failure.get_or_insert_with(std::time::Instant::now);
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    stop_all(&mut children);
                    bail!("cannot watch rank {rank}: {e}");
                }
            }
        }
        let grace_over = first_failure.is_some_and(|t| t.elapsed() > Duration::from_millis(500));
        if grace_over || (children.is_empty() && !failed.is_empty()) {
            let others = children.len();
            stop_all(&mut children);
            failed.sort_by_key(|(r, _)| *r);
            let list: Vec<String> = failed
                .iter()
                .map(|(r, s)| format!("rank {r} failed ({s})"))
                .collect();
            bail!(
                "{}; stopped the other {others} running rank(s) of {n}",
                list.join(", ")
            );
        }
        if children.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

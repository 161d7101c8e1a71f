//! Data parallelism: the communicator boundary, where a process learns its rank, the TCP
//! rendezvous, the launcher, and the gradient reducer with the sharded state of ZeRO-1, 2 and 3.
//!
//! * [`Communicator`]: the collectives the trainer needs (all-reduce, reduce-scatter, all-gather,
//!   broadcast, barrier, and a small host all-reduce for token counts and norms), in place on a
//!   backend's buffers. Implementations: NCCL for the CUDA backend (`nccl.rs`, on its own stream,
//!   ordered against compute with events) and [`host::HostComm`] for the CPU backend, whose ranks
//!   are threads of one process (CI) or processes joined over TCP (`kiln launch` on a CPU).
//! * [`DistEnv`]: rank, world size, local rank and the rendezvous address, from `kiln launch`'s,
//!   torchrun's or SLURM's environment variables.
//! * `rendezvous.rs`: rank 0 listens, every other rank connects; rank 0 hands out the NCCL id.
//! * `launch.rs`: `kiln launch` starts one process per device and stops them all when one fails.
//! * `reducer.rs`: gradients in buckets reduced as their layers finish backward; the sharded
//!   masters, moments and gradients of ZeRO-1 and 2; ZeRO-3's weights gathered around each unit.
//! * [`TrackedComm`]: the same collectives for a memory-measuring backend.
//!
//! It does not know about models beyond parameter indices and the backward's ready groups.

pub mod host;
pub mod launch;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod reducer;
pub mod rendezvous;

use anyhow::{bail, Result};

use crate::backend::tracked::{Tracked, TrackedBuf};
use crate::backend::Backend;

/// Collectives over the ranks of one data-parallel group, in place on backend buffers. Every
/// rank must call the same collectives in the same order. A call may only queue the work (NCCL):
/// [`Communicator::wait`] makes the backend's compute wait for everything queued and surfaces
/// errors. No call waits forever: a rank that fails or stops answering turns into an error on
/// the others within the communicator's timeout.
///
/// Buffers are reduced in every storage they have: f32, and bf16 where a backend keeps a bf16
/// copy (CUDA parameters), so an all-gather of parameters moves both the fp32 master and the
/// compute copy.
pub trait Communicator<B: Backend>: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// buf[..len] = Σ over ranks of buf[..len].
    fn all_reduce(&self, be: &B, buf: &mut B::Buf, len: usize) -> Result<()>;
    /// len = world·s: afterwards buf[rank·s..(rank+1)·s] holds the sum over ranks of that slice
    /// (the rest of buf[..len] is unspecified).
    fn reduce_scatter(&self, be: &B, buf: &mut B::Buf, len: usize) -> Result<()>;
    /// len = world·s: afterwards every rank's buf holds, in each slice r of buf[..len], rank r's
    /// slice r.
    fn all_gather(&self, be: &B, buf: &mut B::Buf, len: usize) -> Result<()>;
    /// Every rank's buf[..len] becomes `root`'s.
    fn broadcast(&self, be: &B, buf: &mut B::Buf, len: usize, root: usize) -> Result<()>;
    /// Sum host numbers over ranks (token counts, loss sums, squared norms). Blocking.
    fn all_reduce_host(&self, x: &mut [f64]) -> Result<()>;
    /// Every rank reaches this point before any leaves it.
    fn barrier(&self) -> Result<()>;
    /// Make the backend's compute wait for the collectives queued so far, without blocking the
    /// host (NCCL: an event); errors already known come back here.
    fn wait(&self, be: &B) -> Result<()>;
    /// As `wait`, and block the host until the queued collectives are done, failing after the
    /// timeout (call before the host reads anything that depends on them).
    fn sync(&self, be: &B) -> Result<()>;
}

/// A communicator for a [`Tracked`] backend: the same collectives, on the inner backend's
/// buffers, over `C` (a communicator of the inner backend, by value, reference or box).
pub struct TrackedComm<C>(pub C);

impl<B: Backend, C: std::ops::Deref + Send + Sync> Communicator<Tracked<B>> for TrackedComm<C>
where
    C::Target: Communicator<B>,
{
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn all_reduce(&self, be: &Tracked<B>, buf: &mut TrackedBuf<B>, len: usize) -> Result<()> {
        self.0.all_reduce(&be.inner, &mut buf.inner, len)
    }
    fn reduce_scatter(&self, be: &Tracked<B>, buf: &mut TrackedBuf<B>, len: usize) -> Result<()> {
        self.0.reduce_scatter(&be.inner, &mut buf.inner, len)
    }
    fn all_gather(&self, be: &Tracked<B>, buf: &mut TrackedBuf<B>, len: usize) -> Result<()> {
        self.0.all_gather(&be.inner, &mut buf.inner, len)
    }
    fn broadcast(
        &self,
        be: &Tracked<B>,
        buf: &mut TrackedBuf<B>,
        len: usize,
        root: usize,
    ) -> Result<()> {
        self.0.broadcast(&be.inner, &mut buf.inner, len, root)
    }
    fn all_reduce_host(&self, x: &mut [f64]) -> Result<()> {
        self.0.all_reduce_host(x)
    }
    fn barrier(&self) -> Result<()> {
        self.0.barrier()
    }
    fn wait(&self, be: &Tracked<B>) -> Result<()> {
        self.0.wait(&be.inner)
    }
    fn sync(&self, be: &Tracked<B>) -> Result<()> {
        self.0.sync(&be.inner)
    }
}

/// Every rank gets `root`'s bytes (`mine` is read on `root` only), over the host all-reduce: the
/// length, then the bytes four to an f64 (exact), the other ranks adding zeros. For small start-up
/// messages; every rank must call it, like any collective.
pub fn broadcast_bytes<B: Backend>(
    comm: &dyn Communicator<B>,
    mine: &[u8],
    root: usize,
) -> Result<Vec<u8>> {
    let is_root = comm.rank() == root;
    let mut len = [if is_root { mine.len() as f64 } else { 0.0 }];
    comm.all_reduce_host(&mut len)?;
    let len = len[0] as usize;
    let mut words = vec![0.0f64; len.div_ceil(4)];
    if is_root {
        for (w, c) in words.iter_mut().zip(mine.chunks(4)) {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            *w = u32::from_le_bytes(b) as f64;
        }
    }
    comm.all_reduce_host(&mut words)?;
    let mut out: Vec<u8> = words
        .iter()
        .flat_map(|&w| (w as u32).to_le_bytes())
        .collect();
    out.truncate(len);
    Ok(out)
}

/// The error of a rank that stops because another rank failed or went away first: it echoes the
/// root cause, which the failing rank reports itself. Launchers report a root cause before echoes.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank}: {why}; stopping")]
pub struct PeerStopped {
    pub rank: usize,
    pub why: String,
}

impl PeerStopped {
    pub fn new(rank: usize, why: impl std::fmt::Display) -> Self {
        PeerStopped {
            rank,
            why: why.to_string(),
        }
    }

    /// Whether `e` (or anything in its chain of causes) is another rank's echo.
    pub fn is_echo(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<PeerStopped>())
    }
}

/// Where this process sits in a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world: usize,
    /// Rank within the node: the GPU this process uses.
    pub local_rank: usize,
    /// Rendezvous address of rank 0 (`HOST:PORT`).
    pub master: String,
    /// Why the rendezvous port is not `MASTER_PORT` itself, when it is not (torchrun's agent
    /// store holds `MASTER_PORT`): said when the port cannot be used.
    pub port_note: Option<String>,
    /// Which variables it came from, for the start-up line.
    pub source: &'static str,
}

impl DistEnv {
    /// Rank 0's rendezvous address for the start-up line, with why its port was chosen.
    pub fn waiting_at(&self) -> String {
        match &self.port_note {
            Some(n) => format!("{} ({n})", self.master),
            None => self.master.clone(),
        }
    }
}

/// The rendezvous port when none is given (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// Whether torchrun says its agent's TCPStore listens on `MASTER_PORT`: torchrun sets
/// `TORCHELASTIC_USE_AGENT_STORE=True` in its workers' environment exactly when it does (its
/// default static rendezvous in every version; the c10d rendezvous of `--standalone` too in
/// recent PyTorch 2.x, which shares its store), and PyTorch's own `env://` initialisation reads
/// it to the same end. kiln's rank 0 then listens on `MASTER_PORT + 1` (docs/DISTRIBUTED.md says
/// why not as a client of that store).
fn torchrun_store_holds_master_port(var: &impl Fn(&str) -> Option<String>) -> bool {
    var("TORCHELASTIC_USE_AGENT_STORE")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"))
}

impl DistEnv {
    /// Read the process's place from `kiln launch` / torchrun variables (`RANK`, `WORLD_SIZE`,
    /// `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), else SLURM's (`SLURM_PROCID`,
    /// `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` or `SLURM_LAUNCH_NODE_IPADDR`). None
    /// when neither is set (a single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`] over any variable lookup (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<usize>() {
                    Ok(n) => Ok(Some(n)),
                    Err(_) => bail!("environment variable {name}={v:?} is not a whole number"),
                },
            }
        };
        let (rank, world, local, source) = if var("WORLD_SIZE").is_some() || var("RANK").is_some() {
            let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) else {
                bail!(
                    "RANK and WORLD_SIZE must be set together (torchrun / kiln launch variables)"
                );
            };
            let local = num("LOCAL_RANK")?.unwrap_or(rank);
            (rank, world, local, "RANK/WORLD_SIZE")
        } else if var("SLURM_PROCID").is_some() && var("SLURM_NTASKS").is_some() {
            let rank = num("SLURM_PROCID")?.unwrap_or(0);
            let world = num("SLURM_NTASKS")?.unwrap_or(1);
            let local = num("SLURM_LOCALID")?.unwrap_or(0);
            (rank, world, local, "SLURM")
        } else {
            return Ok(None);
        };
        if world == 0 || rank >= world {
            bail!("rank {rank} is not below world size {world} ({source} variables)");
        }
        let host = var("MASTER_ADDR")
            .or_else(|| var("SLURM_LAUNCH_NODE_IPADDR"))
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = match var("MASTER_PORT") {
            None => DEFAULT_PORT,
            Some(p) => match p.trim().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => bail!("environment variable MASTER_PORT={p:?} is not a port number"),
            },
        };
        let (port, port_note, source) = if source == "RANK/WORLD_SIZE"
            && torchrun_store_holds_master_port(&var)
        {
            let Some(next) = port.checked_add(1) else {
                bail!("MASTER_PORT={port}: under torchrun kiln's rendezvous uses MASTER_PORT + 1 (torchrun's store holds MASTER_PORT), and {port} is the last port: pick a lower --master_port");
            };
            let note = format!("MASTER_PORT + 1: torchrun's store holds MASTER_PORT {port}");
            (next, Some(note), "torchrun")
        } else {
            (port, None, source)
        };
        Ok(Some(DistEnv {
            rank,
            world,
            local_rank: local,
            master: format!("{host}:{port}"),
            port_note,
            source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<DistEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DistEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_and_slurm_variables_are_read_and_bad_ones_named() {
        assert_eq!(env(&[]).unwrap(), None);
        let e = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.rank, e.world, e.local_rank, e.master.as_str()),
            (1, 4, 1, "node7:1234")
        );
        let e = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (e.rank, e.world, e.local_rank, e.master.as_str()),
            (5, 8, 1, "10.0.0.2:29500")
        );
        let err = env(&[("RANK", "4"), ("WORLD_SIZE", "4")]).unwrap_err();
        assert!(err.to_string().contains("rank 4 is not below world size 4"));
        let err = env(&[("RANK", "x"), ("WORLD_SIZE", "4")]).unwrap_err();
        assert!(err.to_string().contains("RANK=\"x\""), "{err}");
        let err = env(&[("RANK", "0")]).unwrap_err();
        assert!(err.to_string().contains("set together"), "{err}");
        let err = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("MASTER_PORT"), "{err}");
    }

    #[test]
    fn under_torchruns_agent_store_the_rendezvous_is_master_port_plus_one() {
        let torchrun = |store: &str, port: &str| {
            env(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "node0"),
                ("MASTER_PORT", port),
                ("TORCHELASTIC_RUN_ID", "none"),
                ("TORCHELASTIC_USE_AGENT_STORE", store),
            ])
        };
        let e = torchrun("True", "29500").unwrap().unwrap();
        assert_eq!((e.master.as_str(), e.source), ("node0:29501", "torchrun"));
        assert!(e.port_note.unwrap().contains("29500"));
        // torchrun 1.13's --standalone (c10d rendezvous) leaves MASTER_PORT free.
        let e = torchrun("False", "29500").unwrap().unwrap();
        assert_eq!((e.master.as_str(), e.port_note), ("node0:29500", None));
        let err = torchrun("True", "65535").unwrap_err().to_string();
        assert!(err.contains("MASTER_PORT + 1"), "{err}");
    }
}

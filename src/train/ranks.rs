//! Data-parallel training with the ranks as threads of one process (the CPU backend over an
//! in-process communicator): CI's stand-in for `kiln launch`, with the same bucketing, sharding and
//! checkpoint code as a multi-process run.

use anyhow::{bail, Result};

use crate::backend::cpu::CpuBackend;
use crate::backend::tracked::Tracked;
use crate::config::Config;
use crate::dist::host::{thread_group, HostComm};
use crate::dist::PeerStopped;
use crate::dist::TrackedComm;
use crate::train::trainer::{train_dist, Resume, TrainSummary};

/// Data-parallel training on the CPU backend with `train.world_size` ranks as threads of this
/// process, over an in-process communicator: the same bucketing, sharding and checkpoint code as
/// a multi-process run. Returns rank 0's summary; when a rank fails, the others stop with an
/// error and the failing rank's error (or panic) is returned.
pub fn train_ranks_as_threads(
    cfg: &Config,
    resume: Option<Resume>,
    until: Option<u64>,
) -> Result<TrainSummary> {
    let mut all = ranks_as_threads(cfg, |comm| {
        let be = Tracked::new(CpuBackend::<f32>::new());
        train_dist(&be, cfg, resume.clone(), until, Some(&TrackedComm(comm)))
    })?;
    Ok(all.swap_remove(0))
}

/// `work` on `train.world_size` ranks as threads of this process, each with its in-process
/// communicator; every rank's result in rank order. When a rank fails, the others stop with an
/// error and the failing rank's error (or panic) is returned.
pub fn ranks_as_threads<R: Send>(
    cfg: &Config,
    work: impl Fn(&HostComm) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let world = cfg.train.world_size;
    let timeout = std::time::Duration::from_secs_f64(cfg.train.comm_timeout_s);
    let group = thread_group(world, timeout);
    let work = &work;
    let results: Vec<std::thread::Result<Result<R>>> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|ex| {
                s.spawn(move || {
                    let comm = HostComm::new(Box::new(ex));
                    work(&comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    // Report the root cause: a panic first, then the first error that is not another rank's echo.
    let mut first_err: Option<(bool, anyhow::Error)> = None;
    let mut out = Vec::with_capacity(world);
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                bail!("rank {rank} panicked: {msg}");
            }
            Ok(Err(e)) => {
                let echo = PeerStopped::is_echo(&e);
                match &first_err {
                    Some((was_echo, _)) if !*was_echo || echo => {}
                    _ => first_err = Some((echo, e.context(format!("rank {rank}")))),
                }
            }
            Ok(Ok(x)) => out.push(x),
        }
    }
    match first_err {
        Some((_, e)) => Err(e),
        None if out.len() == world => Ok(out),
        None => bail!("internal: {} of {world} ranks returned", out.len()),
    }
}

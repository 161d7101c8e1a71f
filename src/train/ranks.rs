//! Data-parallel training with the ranks as threads of one process (the CPU backend over an
//! in-process communicator): CI's stand-in for `kiln launch`, with the same bucketing, sharding and
//! checkpoint code as a multi-process run.

use anyhow::{bail, Result};

use crate::backend::cpu::CpuBackend;
use crate::config::Config;
use crate::dist::host::{thread_group, HostComm};
use crate::dist::PeerStopped;
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
    let world = cfg.train.world_size;
    let timeout = std::time::Duration::from_secs_f64(cfg.train.comm_timeout_s);
    let group = thread_group(world, timeout);
    let results: Vec<std::thread::Result<Result<TrainSummary>>> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|ex| {
                let resume = resume.clone();
                s.spawn(move || {
                    let be = CpuBackend::<f32>::new();
                    let comm = HostComm::new(Box::new(ex));
                    train_dist(&be, cfg, resume, until, Some(&comm))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    // Report the root cause: a panic first, then the first error that is not another rank's echo.
    let mut first_err: Option<(bool, anyhow::Error)> = None;
    let mut summary = None;
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
            Ok(Ok(s)) if rank == 0 => summary = Some(s),
            Ok(Ok(_)) => {}
        }
    }
    match (first_err, summary) {
        (Some((_, e)), _) => Err(e),
        (None, Some(s)) => Ok(s),
        (None, None) => bail!("internal: rank 0 returned no summary"),
    }
}

//! The optimizer a run steps with, and everything data parallelism changes about a step: which
//! backward reduces gradients, where the gradient norm comes from, which AdamW runs, and who
//! writes which part of a checkpoint. The training step calls the same five methods on one
//! process, under ZeRO-0 and under ZeRO-1; the branches live here.
//!
//! * One process: full AdamW moments, a plain backward, the norm of the local gradients.
//! * Data parallel, ZeRO-0: full moments on every rank; the last micro-batch's backward hands
//!   finished layers to the reducer (bucketed all-reduce), then the same AdamW everywhere.
//! * Data parallel, ZeRO-1: the reducer reduce-scatters into this rank's segments and holds
//!   their moments; AdamW runs on the segments and an all-gather brings back the whole model.

use std::path::Path;

use anyhow::Result;

use crate::backend::{AdamW, Backend, BufKind};
use crate::data::loader::Batch;
use crate::dist::reducer::Reducer;
use crate::dist::Communicator;
use crate::model::{Model, Workspace};
use crate::train::checkpoint::{self, Checkpoint, NamedTensor};

/// Whole Adam moments in parameter order, as a checkpoint holds them (host f32).
pub struct HostMoments {
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// AdamW, over one process or one rank of a data-parallel group.
pub struct Optimizer<'c, B: Backend> {
    /// Full moments in parameter order; empty when the reducer holds this rank's shard.
    m: Vec<B::Buf>,
    v: Vec<B::Buf>,
    dp: Option<DataParallel<'c, B>>,
}

struct DataParallel<'c, B: Backend> {
    comm: &'c dyn Communicator<B>,
    reducer: Reducer<B>,
}

impl<'c, B: Backend> Optimizer<'c, B> {
    /// Moments from `resumed` (or zero). With `comm`, every rank first takes rank 0's
    /// parameters, and `zero_stage >= 1` shards the moments over the ranks.
    pub fn new(
        be: &B,
        model: &mut Model<B>,
        comm: Option<&'c dyn Communicator<B>>,
        zero_stage: u8,
        bucket_elems: usize,
        resumed: Option<HostMoments>,
    ) -> Result<Self> {
        let sharded = comm.is_some() && zero_stage >= 1;
        let (m, v) = if sharded {
            (Vec::new(), Vec::new())
        } else {
            match &resumed {
                Some(h) => (upload(be, &h.m), upload(be, &h.v)),
                None => {
                    let zeros = || {
                        model
                            .info
                            .iter()
                            .map(|p| be.alloc(p.numel(), BufKind::Optim))
                            .collect()
                    };
                    (zeros(), zeros())
                }
            }
        };
        let dp = match comm {
            None => None,
            Some(comm) => {
                for p in &mut model.params {
                    let n = be.buf_len(p);
                    comm.broadcast(be, p, n, 0)?;
                }
                comm.sync(be)?;
                let (rank, world) = (comm.rank(), comm.world());
                let mut reducer = Reducer::new(be, model, rank, world, sharded, bucket_elems);
                if let Some(h) = &resumed {
                    reducer.load_moments(be, &h.m, &h.v);
                }
                Some(DataParallel { comm, reducer })
            }
        };
        Ok(Optimizer { m, v, dp })
    }

    /// (rank, world size).
    pub fn rank_and_world(&self) -> (usize, usize) {
        self.dp
            .as_ref()
            .map_or((0, 1), |d| (d.comm.rank(), d.comm.world()))
    }

    /// The start-up line of a data-parallel run (None on one process).
    pub fn describe(&self, bucket_mb: f64) -> Option<String> {
        let d = self.dp.as_ref()?;
        Some(format!(
            "data parallel: {} ranks, ZeRO-{}, {} gradient buckets of up to {bucket_mb} MB, reduced as the backward finishes each",
            d.comm.world(),
            u8::from(d.reducer.shard.is_some()),
            d.reducer.plan.buckets.len(),
        ))
    }

    /// `x` summed over the ranks (token counts, loss sums); `x` itself on one process.
    pub fn sum_over_ranks(&self, x: f64) -> Result<f64> {
        let mut buf = [x];
        if let Some(d) = &self.dp {
            d.comm.all_reduce_host(&mut buf)?;
        }
        Ok(buf[0])
    }

    /// The backward of one micro-batch, accumulating into `model.grads`. On the last micro-batch
    /// of a data-parallel step each bucket's reduction is queued as soon as its layers are done.
    pub fn backward(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        ws: &mut Workspace<B>,
        batch: &Batch,
        last: bool,
    ) {
        match &mut self.dp {
            Some(d) if last => {
                let (reducer, comm) = (&mut d.reducer, d.comm);
                reducer.begin_step();
                model.backward_hooked(be, ws, &batch.inputs, &batch.doc_ids, &mut |g, grads| {
                    reducer.on_ready(be, comm, g, grads)
                });
            }
            _ => model.backward(be, ws, &batch.inputs, &batch.doc_ids),
        }
    }

    /// Finish the step's gradient reductions and return the global gradient norm.
    pub fn reduce(&mut self, be: &B, model: &mut Model<B>) -> Result<f64> {
        let sharded_norm = match &mut self.dp {
            Some(d) => d.reducer.finish(be, d.comm, &mut model.grads)?,
            None => None,
        };
        Ok(sharded_norm.unwrap_or_else(|| {
            model
                .grads
                .iter()
                .map(|g| be.sum_squares(g))
                .sum::<f64>()
                .sqrt()
        }))
    }

    /// One AdamW update of every parameter (decay only where the parameter decays).
    pub fn update(&mut self, be: &B, model: &mut Model<B>, hp: AdamW) -> Result<()> {
        match &mut self.dp {
            Some(d) if d.reducer.shard.is_some() => d.reducer.step_zero1(be, d.comm, model, hp),
            _ => {
                model.adamw_step(be, &mut self.m, &mut self.v, hp);
                Ok(())
            }
        }
    }

    /// Write the checkpoint of `state` (a `TrainState`, serialised) at `step` under `out`. On
    /// one process: one atomic save. Data parallel: every rank takes part (rank 0 prepares the
    /// directory and writes the weights and the state, and the whole optimizer unless it is
    /// sharded; under ZeRO-1 each rank writes its optimizer shard; rank 0 marks it DONE after a
    /// barrier).
    pub fn save(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        step: u64,
        state: serde_json::Value,
        out: &Path,
        keep_last: usize,
    ) -> Result<()> {
        let Some(d) = &mut self.dp else {
            let ck = checkpoint_of(be, model, &self.m, &self.v, step, state, true);
            checkpoint::save(out, &ck, keep_last)?;
            return Ok(());
        };
        let (comm, reducer) = (d.comm, &mut d.reducer);
        let rank = comm.rank();
        let sharded = reducer.shard.is_some();
        reducer.gather_masters(be, comm, &mut model.params)?;
        comm.sync(be)?;
        if rank == 0 {
            checkpoint::begin(out, step)?;
        }
        comm.barrier()?;
        let tmp = checkpoint::tmp_dir(out, step);
        if sharded {
            let pieces: Vec<(String, usize, Vec<f32>, Vec<f32>)> = reducer
                .moment_pieces(be)
                .into_iter()
                .map(|(p, off, mm, vv)| (model.info[p].name.clone(), off, mm, vv))
                .collect();
            checkpoint::write_optimizer_shard(&tmp, rank, &pieces)?;
        }
        if rank == 0 {
            let ck = checkpoint_of(be, model, &self.m, &self.v, step, state, !sharded);
            checkpoint::write_parts(&tmp, &ck, !sharded)?;
        }
        comm.barrier()?;
        if rank == 0 {
            checkpoint::commit(out, step, keep_last)?;
        }
        comm.barrier()
    }
}

fn upload<B: Backend>(be: &B, host: &[Vec<f32>]) -> Vec<B::Buf> {
    host.iter()
        .map(|h| be.upload_as(h, BufKind::Optim))
        .collect()
}

fn checkpoint_of<B: Backend>(
    be: &B,
    model: &Model<B>,
    m: &[B::Buf],
    v: &[B::Buf],
    step: u64,
    state: serde_json::Value,
    with_optimizer: bool,
) -> Checkpoint {
    let named = |suffix: &str, bufs: &[B::Buf]| -> Vec<NamedTensor> {
        model
            .info
            .iter()
            .zip(bufs)
            .map(|(p, b)| NamedTensor {
                name: format!("{}{suffix}", p.name),
                shape: p.shape.clone(),
                data: be.download(b),
            })
            .collect()
    };
    let mut optimizer = Vec::new();
    if with_optimizer {
        optimizer = named(".exp_avg", m);
        optimizer.extend(named(".exp_avg_sq", v));
    }
    Checkpoint {
        step,
        model: named("", &model.params),
        optimizer,
        state,
    }
}

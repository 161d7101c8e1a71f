//! The optimizer a run steps with, and everything data parallelism changes about a step: how the
//! model's state is stored, which backward reduces gradients, where the gradient norm comes from,
//! which AdamW runs, and who writes which part of a checkpoint. The training step calls the same
//! methods on one process and at every ZeRO stage; the branches live here.
//!
//! * One process: full AdamW moments, a plain backward, the norm of the local gradients.
//! * Data parallel, ZeRO-0: full moments on every rank; the last micro-batch's backward hands
//!   finished layers to the reducer (bucketed all-reduce), then the same AdamW everywhere.
//! * ZeRO-1: the model keeps its weights in the compute precision only; the reducer
//!   reduce-scatters into this rank's segments and holds their fp32 masters and moments; AdamW runs
//!   on the segments and an all-gather brings back the whole model.
//! * ZeRO-2: as ZeRO-1, and the model holds gradients only for the group the backward is
//!   computing; every micro-batch is reduce-scattered into the shard's fp32 gradients.
//! * ZeRO-3: as ZeRO-2, and the model holds weights only around the unit being computed: each
//!   unit's are all-gathered before its forward and again before its backward, the next unit's
//!   gather queued meanwhile, and freed after.

use std::path::Path;

use anyhow::Result;

use crate::backend::{AdamW, Backend, BufKind};
use crate::data::loader::Batch;
use crate::dist::reducer::{Hook, Reducer};
use crate::dist::Communicator;
use crate::model::{Model, ModelConfig, Workspace};
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
    /// The model and its optimizer from host parameters `host` (`cfg.params()` order) and
    /// moments `resumed` (or zero). On one process or at ZeRO-0 every rank keeps whole state and
    /// first takes rank 0's parameters; at `zero_stage` 1 or 2 each rank keeps the masters and
    /// moments of its shard, taken from `host` (every rank reads the same checkpoint or
    /// initialisation), and at 2 the gradients too.
    pub fn build(
        be: &B,
        cfg: &ModelConfig,
        host: &[Vec<f32>],
        comm: Option<&'c dyn Communicator<B>>,
        zero_stage: u8,
        bucket_elems: usize,
        resumed: Option<HostMoments>,
    ) -> Result<(Model<B>, Self)> {
        let Some(comm) = comm else {
            let model = Model::from_host(be, cfg, host);
            let (m, v) = whole_moments(be, &model, resumed);
            return Ok((model, Optimizer { m, v, dp: None }));
        };
        let (rank, world) = (comm.rank(), comm.world());
        let numel: Vec<usize> = cfg.params().iter().map(|p| p.numel()).collect();
        if zero_stage == 0 {
            let mut model = Model::from_host(be, cfg, host);
            for p in &mut model.params {
                let n = be.buf_len(p);
                comm.broadcast(be, p, n, 0)?;
            }
            comm.sync(be)?;
            let (m, v) = whole_moments(be, &model, resumed);
            let groups = model.grad_ready_groups();
            let reducer = Reducer::new(be, &groups, &numel, rank, world, 0, bucket_elems);
            return Ok((
                model,
                Optimizer {
                    m,
                    v,
                    dp: Some(DataParallel { comm, reducer }),
                },
            ));
        }
        let model = Model::for_sharded_optimizer(be, cfg, host, zero_stage < 3, zero_stage < 2);
        let groups = model.grad_ready_groups();
        let mut reducer = Reducer::new(be, &groups, &numel, rank, world, zero_stage, bucket_elems);
        let moments = resumed.as_ref().map(|h| (h.m.as_slice(), h.v.as_slice()));
        reducer.load(be, host, moments);
        let dp = Some(DataParallel { comm, reducer });
        Ok((
            model,
            Optimizer {
                m: Vec::new(),
                v: Vec::new(),
                dp,
            },
        ))
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
        let r = &d.reducer;
        let what = match r.stage {
            0 => "whole optimizer state on every rank",
            1 => "fp32 master weights and moments sharded",
            2 => "fp32 master weights, moments and gradients sharded",
            _ => "weights, gradients and moments sharded, each unit's weights gathered when needed",
        };
        Some(format!(
            "data parallel: {} ranks, ZeRO-{} ({what}), {} gradient buckets of up to {bucket_mb} MB, reduced as the backward finishes each{}",
            d.comm.world(),
            r.stage,
            r.plan.buckets.len(),
            if r.stage >= 2 { " on every micro-batch" } else { "" },
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

    /// The forward of one micro-batch (ZeRO-3 gathers each unit's weights around it).
    pub fn forward(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        ws: &mut Workspace<B>,
        batch: &Batch,
    ) -> Result<()> {
        match &mut self.dp {
            Some(d) if d.reducer.stage >= 3 => {
                let mut hook = Hook {
                    reducer: &mut d.reducer,
                    comm: d.comm,
                };
                model.forward_hooked(be, ws, &batch.inputs, &batch.doc_ids, &mut hook);
                d.reducer.take_error()
            }
            _ => {
                model.forward(be, ws, &batch.inputs, &batch.doc_ids);
                Ok(())
            }
        }
    }

    /// Whether the model holds only the weights of the unit being computed (ZeRO-3); then
    /// [`Optimizer::gather_model`] must run on every rank before the model is used whole.
    pub fn model_is_sharded(&self) -> bool {
        self.dp.as_ref().is_some_and(|d| d.reducer.stage >= 3)
    }

    /// ZeRO-3: gather the whole model (every rank takes part) for validation or evaluation, until
    /// [`Optimizer::release_model`]; nothing otherwise.
    pub fn gather_model(&mut self, be: &B, model: &mut Model<B>) -> Result<()> {
        match &mut self.dp {
            Some(d) if d.reducer.stage >= 3 => d.reducer.gather_all(be, d.comm, &mut model.params),
            _ => Ok(()),
        }
    }

    /// ZeRO-3: free what [`Optimizer::gather_model`] gathered.
    pub fn release_model(&mut self, be: &B, model: &mut Model<B>) {
        if let Some(d) = &mut self.dp {
            d.reducer.release_all(be, &mut model.params);
        }
    }

    /// The backward of one micro-batch (`first`, `last`: its place in the step), accumulating into
    /// the gradients. On the last micro-batch of a data-parallel step (every micro-batch at
    /// ZeRO-2) each bucket's reduction is queued as soon as its layers are done.
    pub fn backward(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        ws: &mut Workspace<B>,
        batch: &Batch,
        first: bool,
        last: bool,
    ) -> Result<()> {
        match &mut self.dp {
            Some(d) if last || d.reducer.stage >= 2 => {
                d.reducer.begin_micro(first);
                let mut hook = Hook {
                    reducer: &mut d.reducer,
                    comm: d.comm,
                };
                model.backward_hooked(be, ws, &batch.inputs, &batch.doc_ids, &mut hook);
                if !last {
                    d.reducer.drain(be, d.comm, &mut model.grads)?;
                }
                Ok(())
            }
            _ => {
                model.backward(be, ws, &batch.inputs, &batch.doc_ids);
                Ok(())
            }
        }
    }

    /// Finish the step's gradient reductions and return the global gradient norm.
    pub fn reduce(&mut self, be: &B, model: &mut Model<B>) -> Result<f64> {
        let sharded_norm = match &mut self.dp {
            Some(d) => d.reducer.finish(be, d.comm, &mut model.grads)?,
            None => None,
        };
        Ok(sharded_norm.unwrap_or_else(|| {
            let grads: Vec<&B::Buf> = model.grads.iter().collect();
            be.sum_squares_many(&grads).sqrt()
        }))
    }

    /// One AdamW update of every parameter (decay only where the parameter decays).
    pub fn update(&mut self, be: &B, model: &mut Model<B>, hp: AdamW) -> Result<()> {
        match &mut self.dp {
            Some(d) if d.reducer.shard.is_some() => {
                let decays: Vec<bool> = model.info.iter().map(|p| p.decay).collect();
                d.reducer.step(be, d.comm, &mut model.params, &decays, hp)
            }
            _ => {
                model.adamw_step(be, &mut self.m, &mut self.v, hp);
                Ok(())
            }
        }
    }

    /// Write the checkpoint of `state` (a `TrainState`, serialised) at `step` under `out`. On
    /// one process: one atomic save. Data parallel: every rank takes part (rank 0 prepares the
    /// directory and writes the state, and at ZeRO-0 the weights and the whole optimizer; when
    /// sharded each rank writes its shard of the masters and moments and rank 0 the model's
    /// index; rank 0 marks it DONE after a barrier).
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
        comm.sync(be)?;
        if rank == 0 {
            checkpoint::begin(out, step)?;
        }
        comm.barrier()?;
        let tmp = checkpoint::tmp_dir(out, step);
        if sharded {
            let name = |p: usize| model.info[p].name.clone();
            let mut masters = Vec::new();
            let mut moments = Vec::new();
            for (p, off, w, m, v) in reducer.pieces(be) {
                masters.push((name(p), off, w));
                moments.push((name(p), off, m, v));
            }
            checkpoint::write_model_shard(&tmp, rank, &masters)?;
            checkpoint::write_optimizer_shard(&tmp, rank, &moments)?;
            if rank == 0 {
                let shapes: Vec<(String, Vec<usize>)> = model
                    .info
                    .iter()
                    .map(|p| (p.name.clone(), p.shape.clone()))
                    .collect();
                checkpoint::write_model_index(&tmp, comm.world(), &shapes)?;
                let ck = Checkpoint {
                    step,
                    model: Vec::new(),
                    optimizer: Vec::new(),
                    state,
                };
                checkpoint::write_parts(&tmp, &ck, false, false)?;
            }
        } else if rank == 0 {
            let ck = checkpoint_of(be, model, &self.m, &self.v, step, state, true);
            checkpoint::write_parts(&tmp, &ck, true, true)?;
        }
        comm.barrier()?;
        if rank == 0 {
            checkpoint::commit(out, step, keep_last)?;
        }
        comm.barrier()
    }
}

/// Whole moments from `resumed`, or zero.
fn whole_moments<B: Backend>(
    be: &B,
    model: &Model<B>,
    resumed: Option<HostMoments>,
) -> (Vec<B::Buf>, Vec<B::Buf>) {
    match resumed {
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

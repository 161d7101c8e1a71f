//! Data-parallel gradient reduction and the ZeRO-1 optimizer step, over any backend and
//! [`Communicator`].
//!
//! * **Buckets.** Parameters are grouped, in the order the backward finishes them (head, last
//!   layer … first layer, embedding: `Model::grad_ready_groups`), into buckets of about
//!   `train.bucket_mb`. Each bucket is one flat buffer padded to a multiple of the world size.
//! * **Overlap.** On the last micro-batch of a step the model's backward calls
//!   [`Reducer::on_ready`] per layer; when every parameter of a bucket is final its gradients are
//!   copied into the bucket and the bucket's collective is queued (on NCCL's own stream, while
//!   the backward of earlier layers continues on the compute stream). Earlier micro-batches only
//!   accumulate locally.
//! * **ZeRO-0:** each bucket is all-reduced and copied back into the gradients; every rank then
//!   runs the ordinary AdamW over all parameters with full moments.
//! * **ZeRO-1:** each bucket is reduce-scattered: rank r receives the summed slice r of every
//!   bucket. Its slices cut parameters into *segments*; rank r keeps Adam moments for its
//!   segments only, updates the fp32 master of those segments, and an all-gather of each
//!   bucket's parameters in the compute precision (bf16 on CUDA, f32 on the CPU) brings every
//!   rank the whole updated model. Before a checkpoint the fp32 masters are all-gathered too.
//! * **Memory.** Buckets go through a ring of [`RING`] slot buffers of the largest bucket (fp32
//!   gradients, plus compute-precision parameters under ZeRO-1), not a second copy of the model.
//!
//! The loss is a mean over all tokens of the global batch: the trainer scales by 1 / (tokens of
//! every rank), so the summed gradients equal the single-process gradients of the whole batch.

use anyhow::{bail, Result};

use super::Communicator;
use crate::backend::{AdamW, Backend, BufKind};
use crate::model::Model;

/// Parameters grouped into flat buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketPlan {
    pub buckets: Vec<Bucket>,
    pub world: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// (parameter index, offset in the bucket, elements), in ready order.
    pub members: Vec<(usize, usize, usize)>,
    /// Σ elements of the members.
    pub len: usize,
    /// `len` rounded up to a multiple of the world size.
    pub padded: usize,
}

/// A piece of one parameter inside rank r's slice of one bucket (ZeRO-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub bucket: usize,
    pub param: usize,
    /// Offset of the piece within the parameter.
    pub param_off: usize,
    /// Offset of the piece within the bucket.
    pub bucket_off: usize,
    pub len: usize,
}

impl BucketPlan {
    /// Buckets of at most `cap` elements (a larger parameter gets a bucket of its own), filled in
    /// the order of `groups` (`Model::grad_ready_groups`).
    pub fn new(groups: &[Vec<usize>], numel: &[usize], cap: usize, world: usize) -> Self {
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut cur = Bucket {
            members: Vec::new(),
            len: 0,
            padded: 0,
        };
        for &p in groups.iter().flatten() {
            let n = numel[p];
            if !cur.members.is_empty() && cur.len + n > cap {
                buckets.push(std::mem::replace(
                    &mut cur,
                    Bucket {
                        members: Vec::new(),
                        len: 0,
                        padded: 0,
                    },
                ));
            }
            cur.members.push((p, cur.len, n));
            cur.len += n;
        }
        if !cur.members.is_empty() {
            buckets.push(cur);
        }
        for b in &mut buckets {
            b.padded = b.len.div_ceil(world) * world;
        }
        BucketPlan { buckets, world }
    }

    /// Rank `rank`'s segments: its slice of every bucket cut at parameter boundaries.
    pub fn segments(&self, rank: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        for (bi, b) in self.buckets.iter().enumerate() {
            let s = b.padded / self.world;
            let (lo, hi) = (rank * s, (rank + 1) * s);
            for &(p, off, n) in &b.members {
                let (a, z) = (off.max(lo), (off + n).min(hi));
                if a < z {
                    out.push(Segment {
                        bucket: bi,
                        param: p,
                        param_off: a - off,
                        bucket_off: a,
                        len: z - a,
                    });
                }
            }
        }
        out
    }
}

/// Bucket buffers in flight at once: bucket b uses slot b mod RING; before a slot is reused,
/// the compute stream waits for the collectives queued so far and takes the older bucket's result.
pub const RING: usize = 3;

/// Rank r's part of the optimizer under ZeRO-1: Adam moments of its segments, and scratch for
/// the segments' master weights and gradients.
pub struct Shard<B: Backend> {
    pub segments: Vec<Segment>,
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    p: Vec<B::Buf>,
    g: Vec<B::Buf>,
}

/// Buckets, their buffers, and the step's progress.
pub struct Reducer<B: Backend> {
    pub plan: BucketPlan,
    bucket_of: Vec<usize>,
    /// RING slots of the largest padded bucket: fp32 gradients (also the fp32 master gather).
    grad_slots: Vec<B::Buf>,
    /// ZeRO-1: RING slots for the parameters' all-gather in the compute precision (bf16 on CUDA).
    param_slots: Vec<B::Buf>,
    /// Parameters of each bucket not yet final in this step.
    pending: Vec<usize>,
    /// Buckets whose collective is queued / whose result has been taken, this step.
    launched: usize,
    retired: usize,
    error: Option<anyhow::Error>,
    pub shard: Option<Shard<B>>,
}

impl<B: Backend> Reducer<B> {
    /// Buckets of about `bucket_elems` elements for `model` over `world` ranks; `zero1` shards the
    /// optimizer (moments start at zero; see [`Reducer::load_moments`]).
    pub fn new(
        be: &B,
        model: &Model<B>,
        rank: usize,
        world: usize,
        zero1: bool,
        bucket_elems: usize,
    ) -> Self {
        let numel: Vec<usize> = model.info.iter().map(|p| p.numel()).collect();
        let plan = BucketPlan::new(
            &model.grad_ready_groups(),
            &numel,
            bucket_elems.max(1),
            world,
        );
        let mut bucket_of = vec![usize::MAX; numel.len()];
        for (bi, b) in plan.buckets.iter().enumerate() {
            for &(p, _, _) in &b.members {
                bucket_of[p] = bi;
            }
        }
        let slot_len = plan.buckets.iter().map(|b| b.padded).max().unwrap_or(0);
        let slots = |kind| {
            (0..RING.min(plan.buckets.len()))
                .map(|_| be.alloc(slot_len, kind))
                .collect::<Vec<_>>()
        };
        let grad_slots = slots(BufKind::Grad);
        let (param_slots, shard) = if zero1 {
            let segments = plan.segments(rank);
            let alloc = |kind| segments.iter().map(|s| be.alloc(s.len, kind)).collect();
            let shard = Shard {
                m: alloc(BufKind::Optim),
                v: alloc(BufKind::Optim),
                p: alloc(BufKind::Param),
                g: alloc(BufKind::Grad),
                segments,
            };
            (slots(BufKind::Act), Some(shard))
        } else {
            (Vec::new(), None)
        };
        let pending = plan.buckets.iter().map(|b| b.members.len()).collect();
        Reducer {
            plan,
            bucket_of,
            grad_slots,
            param_slots,
            pending,
            launched: 0,
            retired: 0,
            error: None,
            shard,
        }
    }

    /// Forget the previous step's progress (call before the last micro-batch's backward).
    pub fn begin_step(&mut self) {
        for (p, b) in self.pending.iter_mut().zip(&self.plan.buckets) {
            *p = b.members.len();
        }
        self.launched = 0;
        self.retired = 0;
        self.error = None;
    }

    /// The backward's hook: the gradients of `group` are final. Queues the collective of every
    /// bucket this completes. Errors are kept for [`Reducer::finish`].
    pub fn on_ready(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        group: &[usize],
        grads: &mut [B::Buf],
    ) {
        for &p in group {
            let b = self.bucket_of[p];
            self.pending[b] -= 1;
            if self.pending[b] > 0 || self.error.is_some() {
                continue;
            }
            debug_assert_eq!(b, self.launched, "buckets complete in order");
            if let Err(e) = self.launch(be, comm, b, grads) {
                self.error = Some(e);
            }
        }
    }

    fn launch(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        b: usize,
        grads: &mut [B::Buf],
    ) -> Result<()> {
        if b >= RING {
            self.retire_through(be, comm, b - RING + 1, grads)?;
        }
        let bucket = &self.plan.buckets[b];
        let slot = &mut self.grad_slots[b % RING];
        for &(q, off, n) in &bucket.members {
            be.copy_range(slot, off, &grads[q], 0, n);
        }
        if self.shard.is_some() {
            comm.reduce_scatter(be, slot, bucket.padded)?;
        } else {
            comm.all_reduce(be, slot, bucket.padded)?;
        }
        self.launched += 1;
        Ok(())
    }

    /// Take the results of buckets up to (not including) `end`: ZeRO-0 copies the summed
    /// gradients back, ZeRO-1 copies this rank's slice into its segments.
    fn retire_through(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        end: usize,
        grads: &mut [B::Buf],
    ) -> Result<()> {
        if self.retired >= end {
            return Ok(());
        }
        comm.wait(be)?;
        for b in self.retired..end {
            let slot = &self.grad_slots[b % RING];
            match &mut self.shard {
                None => {
                    for &(q, off, n) in &self.plan.buckets[b].members {
                        be.copy_range(&mut grads[q], 0, slot, off, n);
                    }
                }
                Some(sh) => {
                    for (s, g) in sh.segments.iter().zip(&mut sh.g) {
                        if s.bucket == b {
                            be.copy_range(g, 0, slot, s.bucket_off, s.len);
                        }
                    }
                }
            }
        }
        self.retired = end;
        Ok(())
    }

    /// Wait for the step's reductions. ZeRO-0: the summed gradients are back in `grads`.
    /// ZeRO-1: this rank's summed slices are in its segments, and the global gradient norm is
    /// returned (the caller computes it from `grads` otherwise).
    pub fn finish(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        grads: &mut [B::Buf],
    ) -> Result<Option<f64>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let n = self.plan.buckets.len();
        if self.launched != n {
            bail!(
                "internal: {} of {n} gradient buckets were reduced",
                self.launched
            );
        }
        self.retire_through(be, comm, n, grads)?;
        // The host reads norms next: the reductions must be done (and bounded by the timeout).
        comm.sync(be)?;
        match &self.shard {
            None => Ok(None),
            Some(sh) => {
                let mut sq = [sh.g.iter().map(|g| be.sum_squares(g)).sum::<f64>()];
                comm.all_reduce_host(&mut sq)?;
                Ok(Some(sq[0].sqrt()))
            }
        }
    }

    /// ZeRO-1: AdamW on this rank's segments (their fp32 master in `model` is updated), then an
    /// all-gather of every bucket's parameters in the compute precision brings every rank the
    /// updated model. `hp.weight_decay` applies to the parameters that decay. On a backend with
    /// a narrower compute copy, the fp32 master of other ranks' segments is then stale until
    /// [`Reducer::gather_masters`].
    pub fn step_zero1(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        model: &mut Model<B>,
        hp: AdamW,
    ) -> Result<()> {
        let Some(sh) = &mut self.shard else {
            bail!("internal: step_zero1 without ZeRO-1");
        };
        for (i, s) in sh.segments.iter().enumerate() {
            let hp = AdamW {
                weight_decay: if model.info[s.param].decay {
                    hp.weight_decay
                } else {
                    0.0
                },
                ..hp
            };
            be.copy_range(&mut sh.p[i], 0, &model.params[s.param], s.param_off, s.len);
            be.adamw(&mut sh.p[i], &sh.g[i], &mut sh.m[i], &mut sh.v[i], hp);
            be.copy_range(&mut model.params[s.param], s.param_off, &sh.p[i], 0, s.len);
        }
        self.gather(be, comm, &mut model.params, false)
    }

    /// ZeRO-1: bring every rank the fp32 master of every segment (before a checkpoint).
    pub fn gather_masters(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        params: &mut [B::Buf],
    ) -> Result<()> {
        if self.shard.is_none() {
            return Ok(());
        }
        self.gather(be, comm, params, true)
    }

    /// All-gather each bucket's parameters through the ring: this rank's segments in, everyone's
    /// out. `masters`: through the fp32 slots (master weights); else the compute-precision slots.
    fn gather(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        params: &mut [B::Buf],
        masters: bool,
    ) -> Result<()> {
        let Some(sh) = &self.shard else {
            return Ok(());
        };
        let slots = if masters {
            &mut self.grad_slots
        } else {
            &mut self.param_slots
        };
        let buckets = &self.plan.buckets;
        let unpack = |be: &B, slot: &B::Buf, b: usize, params: &mut [B::Buf]| {
            for &(q, off, n) in &buckets[b].members {
                be.copy_range(&mut params[q], 0, slot, off, n);
            }
        };
        for b in 0..buckets.len() {
            if b >= RING {
                comm.wait(be)?;
                unpack(be, &slots[(b - RING) % RING], b - RING, params);
            }
            let slot = &mut slots[b % RING];
            for s in sh.segments.iter().filter(|s| s.bucket == b) {
                be.copy_range(slot, s.bucket_off, &params[s.param], s.param_off, s.len);
            }
            comm.all_gather(be, slot, buckets[b].padded)?;
        }
        comm.wait(be)?;
        for b in buckets.len().saturating_sub(RING)..buckets.len() {
            unpack(be, &slots[b % RING], b, params);
        }
        Ok(())
    }

    /// ZeRO-1: set this rank's moments from whole host moments (parameter order), e.g. from a
    /// checkpoint written with any world size.
    pub fn load_moments(&mut self, be: &B, m: &[Vec<f32>], v: &[Vec<f32>]) {
        if let Some(sh) = &mut self.shard {
            for (i, s) in sh.segments.iter().enumerate() {
                let r = s.param_off..s.param_off + s.len;
                sh.m[i] = be.upload_as(&m[s.param][r.clone()], BufKind::Optim);
                sh.v[i] = be.upload_as(&v[s.param][r], BufKind::Optim);
            }
        }
    }

    /// ZeRO-1: this rank's moments as (parameter, offset, exp_avg, exp_avg_sq) host pieces.
    pub fn moment_pieces(&self, be: &B) -> Vec<(usize, usize, Vec<f32>, Vec<f32>)> {
        match &self.shard {
            None => Vec::new(),
            Some(sh) => sh
                .segments
                .iter()
                .zip(sh.m.iter().zip(&sh.v))
                .map(|(s, (m, v))| (s.param, s.param_off, be.download(m), be.download(v)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_segments_tile_every_parameter_once() {
        let groups = vec![vec![3, 4], vec![0, 1, 2], vec![5]];
        let numel = [7, 3, 11, 2, 5, 40];
        let plan = BucketPlan::new(&groups, &numel, 12, 3);
        // 2+5 | 7+3 | 11 | 40: the 40-element parameter gets a bucket of its own.
        let lens: Vec<usize> = plan.buckets.iter().map(|b| b.len).collect();
        assert_eq!(lens, vec![7, 10, 11, 40]);
        assert!(plan.buckets.iter().all(|b| b.padded % 3 == 0));
        let mut covered: Vec<Vec<bool>> = numel.iter().map(|&n| vec![false; n]).collect();
        for r in 0..3 {
            for s in plan.segments(r) {
                for x in &mut covered[s.param][s.param_off..s.param_off + s.len] {
                    assert!(!*x, "covered twice");
                    *x = true;
                }
            }
        }
        assert!(covered.iter().flatten().all(|&x| x));
    }
}

//! Data-parallel gradient reduction, the sharded optimizer step (ZeRO-1, 2, 3) and ZeRO-3's
//! weight gathering, over any backend and [`Communicator`].
//!
//! * **Buckets.** Parameters are grouped as the backward finishes them (head, last layer … first
//!   layer, embedding: `Model::grad_ready_groups`); each group is cut into buckets of at most
//!   `train.bucket_mb`, a parameter larger than that split over several. A bucket never spans two
//!   groups, so every bucket of a group can be reduced the moment the group is final. Each bucket
//!   is one flat buffer padded to a multiple of the world size.
//! * **Overlap.** The model's backward calls [`Reducer::on_event`] per group; when a group is final
//!   its gradients are copied into its buckets and the buckets' collectives are queued (on NCCL's
//!   own stream, while the backward of earlier layers continues on the compute stream).
//! * **ZeRO-0:** each bucket is all-reduced on the last micro-batch of a step and copied back into
//!   the gradients; every rank then runs the ordinary AdamW over all parameters with full moments.
//! * **ZeRO-1:** each bucket is reduce-scattered on the last micro-batch: rank r receives the summed
//!   slice r of every bucket. Its slices cut parameters into *segments*; rank r alone keeps the
//!   fp32 master weights and Adam moments of its segments. It updates them, and an all-gather of
//!   each bucket in the compute precision (bf16 on CUDA, f32 on the CPU) brings every rank the
//!   whole updated model, which is stored in the compute precision only.
//! * **ZeRO-2:** as ZeRO-1, and the gradients are sharded too: a group's gradients get storage when
//!   the backward starts on it ([`GradEvent::Begin`]) and lose it once copied into the buckets, and
//!   the buckets are reduce-scattered on *every* micro-batch, each rank adding its slice into the
//!   fp32 gradients of its segments. (The alternative, accumulating whole bf16 gradients locally
//!   and reducing once per step, holds 2 bytes per parameter on every rank and rounds the sum to
//!   bf16; reducing every micro-batch holds 4/world bytes per parameter plus one group in flight,
//!   costs `grad_accum` reductions per step, which overlap the backward, and keeps fp32 sums: the
//!   choice of DeepSpeed's ZeRO-2 and FSDP.)
//! * **ZeRO-3:** as ZeRO-2, and the model holds weights only around the unit of work it computes
//!   ([`PassHook::weights`]): each group's buckets are all-gathered from the ranks' masters into
//!   buffers of their own, unpacked and freed bucket by bucket, the next unit's gather queued on
//!   the communication stream while this unit computes, and the unit's weights freed after it
//!   ([`PassHook::weights_done`]).
//! * **Memory.** Buckets go through a ring of [`RING`] slot buffers of the largest bucket (fp32
//!   gradients, plus compute-precision parameters when sharded), not a second copy of the model.
//!
//! The loss is a mean over all tokens of the global batch: the trainer scales by 1 / (tokens of
//! every rank), so the summed gradients equal the single-process gradients of the whole batch.

use std::ops::Range;

use anyhow::{bail, Result};

use super::Communicator;
use crate::backend::{AdamW, Backend, BufKind};
use crate::model::{GradEvent, PassHook};

/// Parameters grouped into flat buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct BucketPlan {
    pub buckets: Vec<Bucket>,
    /// The buckets of each ready group, in order.
    pub groups: Vec<Range<usize>>,
    pub world: usize,
}

/// A run of one parameter's elements inside a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub param: usize,
    /// Offset of the piece within the parameter.
    pub param_off: usize,
    /// Offset of the piece within the bucket.
    pub bucket_off: usize,
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// Pieces in ready order; together they fill 0..len.
    pub pieces: Vec<Piece>,
    /// Σ elements of the pieces.
    pub len: usize,
    /// `len` rounded up to a multiple of the world size.
    pub padded: usize,
}

/// A piece of one parameter inside rank r's slice of one bucket (ZeRO-1 and 2).
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
    /// Buckets of at most `cap` elements, each within one of `groups` (`Model::grad_ready_groups`)
    /// and filled in their order; a parameter that does not fit the rest of a bucket continues in
    /// the next.
    pub fn new(groups: &[Vec<usize>], numel: &[usize], cap: usize, world: usize) -> Self {
        let cap = cap.max(1);
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut ranges = Vec::with_capacity(groups.len());
        let empty = || Bucket {
            pieces: Vec::new(),
            len: 0,
            padded: 0,
        };
        for group in groups {
            let start = buckets.len();
            let mut cur = empty();
            for &p in group {
                let mut off = 0;
                while off < numel[p] {
                    if cur.len == cap {
                        buckets.push(std::mem::replace(&mut cur, empty()));
                    }
                    let len = (numel[p] - off).min(cap - cur.len);
                    cur.pieces.push(Piece {
                        param: p,
                        param_off: off,
                        bucket_off: cur.len,
                        len,
                    });
                    cur.len += len;
                    off += len;
                }
            }
            if cur.len > 0 {
                buckets.push(cur);
            }
            ranges.push(start..buckets.len());
        }
        for b in &mut buckets {
            b.padded = b.len.div_ceil(world) * world;
        }
        BucketPlan {
            buckets,
            groups: ranges,
            world,
        }
    }

    /// Rank `rank`'s segments: its slice of every bucket cut at parameter boundaries, in bucket
    /// order.
    pub fn segments(&self, rank: usize) -> Vec<Segment> {
        let mut out = Vec::new();
        for (bi, b) in self.buckets.iter().enumerate() {
            let s = b.padded / self.world;
            let (lo, hi) = (rank * s, (rank + 1) * s);
            for pc in &b.pieces {
                let (a, z) = (pc.bucket_off.max(lo), (pc.bucket_off + pc.len).min(hi));
                if a < z {
                    out.push(Segment {
                        bucket: bi,
                        param: pc.param,
                        param_off: pc.param_off + (a - pc.bucket_off),
                        bucket_off: a,
                        len: z - a,
                    });
                }
            }
        }
        out
    }

    /// Elements of the largest bucket (the size of a ring slot).
    pub fn largest(&self) -> usize {
        self.buckets.iter().map(|b| b.padded).max().unwrap_or(0)
    }
}

/// Bucket buffers in flight at once: bucket b uses slot b mod RING; before a slot is reused,
/// the compute stream waits for the collectives queued so far and takes the older bucket's result.
pub const RING: usize = 3;

/// Rank r's part of a sharded optimizer: fp32 master weights, Adam moments and (summed)
/// gradients of its segments.
pub struct Shard<B: Backend> {
    pub segments: Vec<Segment>,
    /// The segments of each bucket.
    by_bucket: Vec<Range<usize>>,
    /// Master weights (`BufKind::Param`: the fp32 master and its compute copy).
    pub p: Vec<B::Buf>,
    pub m: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    g: Vec<B::Buf>,
}

impl<B: Backend> Shard<B> {
    /// Copy this rank's masters of bucket `b` (their compute copy, when `buf` is a compute
    /// buffer) to their places in `buf`, the all-gather's input.
    fn pack(&self, be: &B, b: usize, buf: &mut B::Buf) {
        for i in self.by_bucket[b].clone() {
            let s = self.segments[i];
            be.copy_range(buf, s.bucket_off, &self.p[i], 0, s.len);
        }
    }
}

/// One rank's piece of a sharded optimizer state, on the host: (parameter, offset, master
/// weights, exp_avg, exp_avg_sq).
pub type HostPiece = (usize, usize, Vec<f32>, Vec<f32>, Vec<f32>);

/// Whole Adam moments (exp_avg, exp_avg_sq) on the host, in parameter order.
pub type WholeMoments<'a> = (&'a [Vec<f32>], &'a [Vec<f32>]);

/// Buckets, their buffers, and the step's progress.
pub struct Reducer<B: Backend> {
    pub plan: BucketPlan,
    /// 0, 1, 2 or 3.
    pub stage: u8,
    numel: Vec<usize>,
    /// The parameters of each ready group, and each parameter's group.
    group_params: Vec<Vec<usize>>,
    group_of: Vec<usize>,
    /// ZeRO-3: whether a group's weights are in the model, and the all-gathers queued for it
    /// (bucket, buffer).
    present: Vec<bool>,
    inflight: Vec<Vec<(usize, B::Buf)>>,
    /// RING slots of the largest padded bucket: fp32 gradients.
    grad_slots: Vec<B::Buf>,
    /// Sharded: RING slots for the parameters' all-gather in the compute precision.
    param_slots: Vec<B::Buf>,
    /// Buckets whose collective is queued / whose result has been taken, this micro-batch.
    launched: usize,
    retired: usize,
    /// ZeRO-2 after a step's first micro-batch: reduced slices add into the shard's gradients.
    accumulate: bool,
    error: Option<anyhow::Error>,
    pub shard: Option<Shard<B>>,
}

impl<B: Backend> Reducer<B> {
    /// Buckets of at most `bucket_elems` elements over `groups` (`Model::grad_ready_groups`) of
    /// parameters of `numel` elements, for rank `rank` of `world`, at ZeRO `stage` (0, 1 or 2).
    /// Sharded, the masters and moments start at zero: see [`Reducer::load`].
    pub fn new(
        be: &B,
        groups: &[Vec<usize>],
        numel: &[usize],
        rank: usize,
        world: usize,
        stage: u8,
        bucket_elems: usize,
    ) -> Self {
        let plan = BucketPlan::new(groups, numel, bucket_elems, world);
        let slot_len = plan.largest();
        let slots = |kind| {
            (0..RING.min(plan.buckets.len()))
                .map(|_| be.alloc(slot_len, kind))
                .collect::<Vec<_>>()
        };
        let grad_slots = slots(BufKind::Grad);
        let mut group_of = vec![usize::MAX; numel.len()];
        for (g, ps) in groups.iter().enumerate() {
            for &p in ps {
                group_of[p] = g;
            }
        }
        let (param_slots, shard) = if stage >= 1 {
            let segments = plan.segments(rank);
            let mut by_bucket = vec![0..0; plan.buckets.len()];
            for (i, s) in segments.iter().enumerate() {
                let r = &mut by_bucket[s.bucket];
                if r.start == r.end {
                    *r = i..i;
                }
                r.end = i + 1;
            }
            let alloc = |kind| segments.iter().map(|s| be.alloc(s.len, kind)).collect();
            let shard = Shard {
                p: alloc(BufKind::Param),
                m: alloc(BufKind::Optim),
                v: alloc(BufKind::Optim),
                g: alloc(BufKind::Grad),
                by_bucket,
                segments,
            };
            // ZeRO-3 gathers each group into buffers of its own when it is needed.
            let param_slots = if stage >= 3 {
                Vec::new()
            } else {
                slots(BufKind::Act)
            };
            (param_slots, Some(shard))
        } else {
            (Vec::new(), None)
        };
        Reducer {
            present: vec![stage < 3; groups.len()],
            inflight: groups.iter().map(|_| Vec::new()).collect(),
            group_params: groups.to_vec(),
            group_of,
            plan,
            stage,
            numel: numel.to_vec(),
            grad_slots,
            param_slots,
            launched: 0,
            retired: 0,
            accumulate: false,
            error: None,
            shard,
        }
    }

    /// Forget the previous micro-batch's progress (call before a backward that reduces);
    /// `first`: the step's first micro-batch (ZeRO-2 then overwrites its summed gradients
    /// instead of adding to them).
    pub fn begin_micro(&mut self, first: bool) {
        self.launched = 0;
        self.retired = 0;
        self.accumulate = self.stage >= 2 && !first;
    }

    /// The backward's hook. `Begin`: ZeRO-2 gives the group's gradients storage (zeroed).
    /// `Ready`: queue the collectives of the group's buckets; ZeRO-2 then drops the gradients.
    /// Errors are kept for [`Reducer::finish`].
    pub fn on_event(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        event: GradEvent,
        group: usize,
        params: &[usize],
        grads: &mut [B::Buf],
    ) {
        match event {
            GradEvent::Begin => {
                if self.stage >= 2 {
                    for &p in params {
                        if be.buf_len(&grads[p]) != self.numel[p] {
                            grads[p] = be.alloc(self.numel[p], BufKind::Grad);
                        }
                    }
                }
            }
            GradEvent::Ready => {
                for b in self.plan.groups[group].clone() {
                    if self.error.is_some() {
                        return;
                    }
                    debug_assert_eq!(b, self.launched, "buckets complete in order");
                    if let Err(e) = self.launch(be, comm, b, grads) {
                        self.error = Some(e);
                    }
                }
                if self.stage >= 2 {
                    // The copies into the buckets are queued before the storage is released.
                    for &p in params {
                        grads[p] = be.alloc(0, BufKind::Grad);
                    }
                }
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
        for pc in &bucket.pieces {
            be.copy_range(slot, pc.bucket_off, &grads[pc.param], pc.param_off, pc.len);
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
    /// gradients back, a sharded optimizer copies (or adds) this rank's slice into its segments.
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
                    for pc in &self.plan.buckets[b].pieces {
                        be.copy_range(
                            &mut grads[pc.param],
                            pc.param_off,
                            slot,
                            pc.bucket_off,
                            pc.len,
                        );
                    }
                }
                Some(sh) => {
                    for i in sh.by_bucket[b].clone() {
                        let s = sh.segments[i];
                        if self.accumulate {
                            be.add_range(&mut sh.g[i], 0, slot, s.bucket_off, s.len);
                        } else {
                            be.copy_range(&mut sh.g[i], 0, slot, s.bucket_off, s.len);
                        }
                    }
                }
            }
        }
        self.retired = end;
        Ok(())
    }

    /// Wait (on the compute stream, without blocking the host) for this micro-batch's reductions:
    /// their results are taken and every slot is free again.
    pub fn drain(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        grads: &mut [B::Buf],
    ) -> Result<()> {
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
        self.retire_through(be, comm, n, grads)
    }

    /// Finish the step's reductions. ZeRO-0: the summed gradients are back in `grads`. Sharded:
    /// this rank's summed slices are in its segments, and the global gradient norm is returned
    /// (the caller computes it from `grads` otherwise).
    pub fn finish(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        grads: &mut [B::Buf],
    ) -> Result<Option<f64>> {
        self.drain(be, comm, grads)?;
        // The host reads norms next: the reductions must be done (and bounded by the timeout).
        comm.sync(be)?;
        match &self.shard {
            None => Ok(None),
            Some(sh) => {
                let grads: Vec<&B::Buf> = sh.g.iter().collect();
                let mut sq = [be.sum_squares_many(&grads)];
                comm.all_reduce_host(&mut sq)?;
                Ok(Some(sq[0].sqrt()))
            }
        }
    }

    /// The error a hook kept (a collective that failed inside a pass), if any.
    pub fn take_error(&mut self) -> Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The groups `params` belong to, each once, in order.
    fn groups_of(&self, params: &[usize]) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        for &p in params {
            let g = self.group_of[p];
            if !out.contains(&g) {
                out.push(g);
            }
        }
        out
    }

    /// ZeRO-3: queue the all-gather of group `g`'s weights, each bucket into a buffer of its own
    /// (this rank's masters' compute copy in, everyone's out).
    fn gather_group(&mut self, be: &B, comm: &dyn Communicator<B>, g: usize) {
        let Some(sh) = &self.shard else { return };
        for b in self.plan.groups[g].clone() {
            let padded = self.plan.buckets[b].padded;
            let mut buf = be.alloc(padded, BufKind::Act);
            sh.pack(be, b, &mut buf);
            if self.error.is_none() {
                if let Err(e) = comm.all_gather(be, &mut buf, padded) {
                    self.error = Some(e);
                }
            }
            self.inflight[g].push((b, buf));
        }
    }

    /// ZeRO-3: give group `g`'s parameters storage and fill them from its gathered buckets, each
    /// bucket's buffer freed as soon as it is unpacked. (After a failed collective the weights
    /// are wrong but present; the step fails at its end.)
    fn unpack_group(&mut self, be: &B, g: usize, params: &mut [B::Buf]) {
        for &p in &self.group_params[g] {
            if be.buf_len(&params[p]) != self.numel[p] {
                params[p] = be.alloc(self.numel[p], BufKind::Act);
            }
        }
        for (b, buf) in std::mem::take(&mut self.inflight[g]) {
            for pc in &self.plan.buckets[b].pieces {
                be.copy_range(
                    &mut params[pc.param],
                    pc.param_off,
                    &buf,
                    pc.bucket_off,
                    pc.len,
                );
            }
        }
        self.present[g] = true;
    }

    /// ZeRO-3: make the weights of `need` present (gathering what was not prefetched), then start
    /// gathering those of `next`.
    pub fn need(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        params: &mut [B::Buf],
        need: &[usize],
        next: &[usize],
    ) {
        if self.stage < 3 {
            return;
        }
        let missing: Vec<usize> = self
            .groups_of(need)
            .into_iter()
            .filter(|&g| !self.present[g])
            .collect();
        for &g in &missing {
            if self.inflight[g].is_empty() {
                self.gather_group(be, comm, g);
            }
        }
        if !missing.is_empty() {
            if let Err(e) = comm.wait(be) {
                self.error.get_or_insert(e);
            }
            for &g in &missing {
                self.unpack_group(be, g, params);
            }
        }
        for g in self.groups_of(next) {
            if !self.present[g] && self.inflight[g].is_empty() {
                self.gather_group(be, comm, g);
            }
        }
    }

    /// ZeRO-3: free the weights of `done`'s groups.
    pub fn release(&mut self, be: &B, params: &mut [B::Buf], done: &[usize]) {
        if self.stage < 3 {
            return;
        }
        for g in self.groups_of(done) {
            if self.present[g] {
                for &p in &self.group_params[g] {
                    params[p] = be.alloc(0, BufKind::Act);
                }
                self.present[g] = false;
            }
        }
    }

    /// ZeRO-3: gather the whole model into `params`, one group at a time (for validation and
    /// evaluation, which run on rank 0 with every weight); [`Reducer::release_all`] frees it.
    pub fn gather_all(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        params: &mut [B::Buf],
    ) -> Result<()> {
        for g in 0..self.group_params.len() {
            if !self.present[g] {
                if self.inflight[g].is_empty() {
                    self.gather_group(be, comm, g);
                }
                if let Err(e) = comm.wait(be) {
                    self.error.get_or_insert(e);
                }
                self.unpack_group(be, g, params);
            }
        }
        comm.sync(be)?;
        self.take_error()
    }

    /// ZeRO-3: free every group's weights.
    pub fn release_all(&mut self, be: &B, params: &mut [B::Buf]) {
        let all: Vec<usize> = (0..params.len()).collect();
        self.release(be, params, &all);
    }

    /// Sharded: AdamW on this rank's segments (their fp32 masters), then (below ZeRO-3) an
    /// all-gather of every bucket in the compute precision brings every rank the updated model
    /// `params`; ZeRO-3 gathers each group when a pass needs it.
    /// `decays[p]`: whether `hp.weight_decay` applies to parameter p.
    pub fn step(
        &mut self,
        be: &B,
        comm: &dyn Communicator<B>,
        params: &mut [B::Buf],
        decays: &[bool],
        hp: AdamW,
    ) -> Result<()> {
        let Some(sh) = &mut self.shard else {
            bail!("internal: a sharded step without a shard");
        };
        for (i, s) in sh.segments.iter().enumerate() {
            let hp = AdamW {
                weight_decay: if decays[s.param] {
                    hp.weight_decay
                } else {
                    0.0
                },
                ..hp
            };
            be.adamw(&mut sh.p[i], &sh.g[i], &mut sh.m[i], &mut sh.v[i], hp);
        }
        if self.stage >= 3 {
            return Ok(());
        }
        self.gather(be, comm, params)
    }

    /// All-gather each bucket's parameters through the ring in the compute precision: this
    /// rank's master segments in, everyone's out into `params`.
    fn gather(&mut self, be: &B, comm: &dyn Communicator<B>, params: &mut [B::Buf]) -> Result<()> {
        let Some(sh) = &self.shard else {
            return Ok(());
        };
        let slots = &mut self.param_slots;
        let buckets = &self.plan.buckets;
        let unpack = |be: &B, slot: &B::Buf, b: usize, params: &mut [B::Buf]| {
            for pc in &buckets[b].pieces {
                be.copy_range(
                    &mut params[pc.param],
                    pc.param_off,
                    slot,
                    pc.bucket_off,
                    pc.len,
                );
            }
        };
        for b in 0..buckets.len() {
            if b >= RING {
                comm.wait(be)?;
                unpack(be, &slots[(b - RING) % RING], b - RING, params);
            }
            let slot = &mut slots[b % RING];
            sh.pack(be, b, slot);
            comm.all_gather(be, slot, buckets[b].padded)?;
        }
        comm.wait(be)?;
        for b in buckets.len().saturating_sub(RING)..buckets.len() {
            unpack(be, &slots[b % RING], b, params);
        }
        Ok(())
    }

    /// Sharded: set this rank's masters and moments from whole host tensors (parameter order),
    /// e.g. from a checkpoint written with any world size and stage; moments default to zero.
    pub fn load(&mut self, be: &B, params: &[Vec<f32>], moments: Option<WholeMoments<'_>>) {
        if let Some(sh) = &mut self.shard {
            // Each zero buffer is released before its replacement is made: no segment is held twice.
            let set = |buf: &mut B::Buf, host: &[f32], kind| {
                *buf = be.alloc(0, kind);
                *buf = be.upload_as(host, kind);
            };
            for (i, s) in sh.segments.iter().enumerate() {
                let r = s.param_off..s.param_off + s.len;
                set(&mut sh.p[i], &params[s.param][r.clone()], BufKind::Param);
                if let Some((m, v)) = moments {
                    set(&mut sh.m[i], &m[s.param][r.clone()], BufKind::Optim);
                    set(&mut sh.v[i], &v[s.param][r], BufKind::Optim);
                }
            }
        }
    }

    /// Sharded: this rank's state as host pieces, for its checkpoint shard.
    pub fn pieces(&self, be: &B) -> Vec<HostPiece> {
        match &self.shard {
            None => Vec::new(),
            Some(sh) => sh
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        s.param,
                        s.param_off,
                        be.download(&sh.p[i]),
                        be.download(&sh.m[i]),
                        be.download(&sh.v[i]),
                    )
                })
                .collect(),
        }
    }
}

/// The reducer as the model's [`PassHook`]: gradient events reduce buckets; at ZeRO-3 weight
/// events gather and free each unit's weights.
pub struct Hook<'a, B: Backend> {
    pub reducer: &'a mut Reducer<B>,
    pub comm: &'a dyn Communicator<B>,
}

impl<B: Backend> PassHook<B> for Hook<'_, B> {
    fn weights(&mut self, be: &B, params: &mut [B::Buf], need: &[usize], next: &[usize]) {
        self.reducer.need(be, self.comm, params, need, next);
    }
    fn weights_done(&mut self, be: &B, params: &mut [B::Buf], done: &[usize]) {
        self.reducer.release(be, params, done);
    }
    fn grads(
        &mut self,
        be: &B,
        event: GradEvent,
        group: usize,
        params: &[usize],
        grads: &mut [B::Buf],
    ) {
        self.reducer
            .on_event(be, self.comm, event, group, params, grads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_bounded_stay_within_groups_and_segments_tile_every_parameter_once() {
        let groups = vec![vec![3, 4], vec![0, 1, 2], vec![5]];
        let numel = [7, 3, 11, 2, 5, 40];
        let plan = BucketPlan::new(&groups, &numel, 12, 3);
        // 2+5 | 7+3+2 of 11 | the other 9 | 40 in pieces of 12, 12, 12, 4: no bucket exceeds the
        // cap, none spans two groups.
        let lens: Vec<usize> = plan.buckets.iter().map(|b| b.len).collect();
        assert_eq!(lens, vec![7, 12, 9, 12, 12, 12, 4]);
        assert_eq!(plan.groups, vec![0..1, 1..3, 3..7]);
        assert_eq!(plan.largest(), 12);
        assert!(plan.buckets.iter().all(|b| b.padded % 3 == 0));
        let mut in_buckets: Vec<Vec<bool>> = numel.iter().map(|&n| vec![false; n]).collect();
        for b in &plan.buckets {
            let mut at = 0;
            for pc in &b.pieces {
                assert_eq!(pc.bucket_off, at, "pieces fill the bucket in order");
                at += pc.len;
                for x in &mut in_buckets[pc.param][pc.param_off..pc.param_off + pc.len] {
                    assert!(!*x, "in two buckets");
                    *x = true;
                }
            }
            assert_eq!(at, b.len);
        }
        assert!(in_buckets.iter().flatten().all(|&x| x));
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

//! Batched generation with a KV cache and continuous batching: many prompts of different lengths
//! are prefilled in one packed pass (causal attention with one document per prompt), then the
//! whole batch decodes one token per step; a sequence leaves the batch when it samples a stop
//! token, reaches its token limit or fills its context, and a waiting prompt takes its slot.
//!
//! The KV cache is a pool of `slots` rows per layer, K and V each [slots, context, Hkv, D],
//! allocated once from [`GenLimits`]; [`GenPlan`] says what it and the weights cost before
//! anything is allocated. Every linear layer goes through `GenerationBackend::matmul_rowwise` and every
//! other operation is per row, so on the CPU a sequence's logits have the same bits whatever
//! else is in the batch: batched = unbatched = continuous, and a resumed `kiln synth` equals an
//! uninterrupted one. Sampling draws from a per-request RNG for the same reason.
//!
//! `Model::generate` (generate.rs) stays the simple single-sequence reference.

use std::collections::VecDeque;

use anyhow::{bail, Result};

use super::generate::{sample, Sampling};
use super::{add_bias, Model, ModelConfig};
use crate::backend::{AttnShape, BufKind, GenerationBackend};
use crate::rng::Rng;

/// Batch and context limits of one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenLimits {
    /// Sequences decoded together (KV cache slots).
    pub slots: usize,
    /// Tokens per sequence, prompt and generation together (the cache's length per slot).
    pub context: usize,
    /// Most prompt tokens prefilled in one packed pass (at least `context`).
    pub prefill_tokens: usize,
    /// Admit waiting prompts whenever a slot is free (continuous batching); when false, only
    /// once the whole batch has finished (static batches).
    pub continuous: bool,
}

/// Memory of an engine, in bytes, computed from the model and the limits before allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GenPlan {
    pub weights: f64,
    pub kv_cache: f64,
    /// Activations of the largest pass (the prefill), logits included.
    pub activations: f64,
}

impl GenPlan {
    pub fn new(
        cfg: &ModelConfig,
        limits: &GenLimits,
        act_bytes: usize,
        weight_bytes: usize,
    ) -> Self {
        let (d, f, v) = (cfg.dim as f64, cfg.ffn_dim as f64, cfg.vocab_size as f64);
        let qd = (cfg.n_heads * cfg.head_dim) as f64;
        let kvd = (cfg.n_kv_heads * cfg.head_dim) as f64;
        let kv_cache =
            2.0 * (cfg.n_layers * limits.slots * limits.context) as f64 * kvd * act_bytes as f64;
        let rows = limits.prefill_tokens.max(limits.slots) as f64;
        // x, xn, h, q, att, k, v, gate, up, act live at once; logits are fp32 for the last rows.
        let per_row = 3.0 * d + 2.0 * qd + 2.0 * kvd + 3.0 * f;
        let activations = rows * per_row * act_bytes as f64
            + (limits.slots as f64) * v * (act_bytes as f64 + 4.0);
        GenPlan {
            weights: cfg.num_params() as f64 * weight_bytes as f64,
            kv_cache,
            activations,
        }
    }

    pub fn total(&self) -> f64 {
        self.weights + self.kv_cache + self.activations
    }

    /// One line for the log.
    pub fn describe(&self, limits: &GenLimits) -> String {
        let gb = |b: f64| b / 1e9;
        format!(
            "generation memory plan: weights {:.2} GB + KV cache {:.2} GB ({} slots × {} tokens) + activations {:.2} GB (prefill {} tokens) = {:.2} GB",
            gb(self.weights),
            gb(self.kv_cache),
            limits.slots,
            limits.context,
            gb(self.activations),
            limits.prefill_tokens,
            gb(self.total())
        )
    }
}

/// One prompt to continue.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The caller's id, returned with the result.
    pub id: u64,
    pub prompt: Vec<u32>,
    /// New tokens at most.
    pub max_new: usize,
    pub sampling: Sampling,
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// It sampled a stop token (kept as the last token).
    Stop,
    /// It generated `max_new` tokens.
    Limit,
    /// Prompt and generation filled the context.
    Context,
}

/// A finished request.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub id: u64,
    pub tokens: Vec<u32>,
    pub reason: StopReason,
}

struct Active {
    id: u64,
    slot: u32,
    /// Tokens in the cache.
    len: usize,
    /// Sampled (or the next prompt token), not yet in the cache.
    pending: u32,
    /// Prompt tokens past the sliding window, fed one per decode step after `pending` (the
    /// prefill attends whole prompts, so it takes at most a window of them).
    forced: VecDeque<u32>,
    out: Vec<u32>,
    max_new: usize,
    sampling: Sampling,
    rng: Rng,
}

/// The batched generator: owns the KV cache, the waiting queue and the active sequences.
pub struct Engine<'a, B: GenerationBackend> {
    be: &'a B,
    model: &'a Model<B>,
    limits: GenLimits,
    stop: Vec<u32>,
    k: Vec<B::Buf>, // per layer [slots, context, Hkv, D]
    v: Vec<B::Buf>,
    free: Vec<u32>,
    active: Vec<Active>,
    waiting: VecDeque<Request>,
    /// Tokens generated since the engine was made.
    pub generated_tokens: u64,
}

impl<'a, B: GenerationBackend> Engine<'a, B> {
    /// Allocate the KV cache. `stop`: tokens that end a sequence (EOS).
    pub fn new(be: &'a B, model: &'a Model<B>, limits: GenLimits, stop: Vec<u32>) -> Result<Self> {
        let c = &model.cfg;
        if limits.slots == 0 || limits.context < 2 {
            bail!("generation needs at least one slot and a context of 2 tokens or more");
        }
        if limits.context > c.max_seq_len {
            bail!(
                "context {} is longer than the model's {} positions",
                limits.context,
                c.max_seq_len
            );
        }
        let limits = GenLimits {
            prefill_tokens: limits.prefill_tokens.max(limits.context),
            ..limits
        };
        let per = limits.slots * limits.context * c.n_kv_heads * c.head_dim;
        let alloc = || -> Vec<B::Buf> {
            (0..c.n_layers)
                .map(|_| be.alloc(per, BufKind::Act))
                .collect()
        };
        Ok(Engine {
            be,
            model,
            limits,
            stop,
            k: alloc(),
            v: alloc(),
            free: (0..limits.slots as u32).rev().collect(),
            active: Vec::new(),
            waiting: VecDeque::new(),
            generated_tokens: 0,
        })
    }

    pub fn limits(&self) -> GenLimits {
        self.limits
    }

    /// Queue a request. Its prompt must be non-empty and shorter than the context.
    pub fn submit(&mut self, r: Request) -> Result<()> {
        if r.prompt.is_empty() || r.prompt.len() >= self.limits.context {
            bail!(
                "request {}: a prompt of {} tokens does not fit a context of {} (it needs 1 to {})",
                r.id,
                r.prompt.len(),
                self.limits.context,
                self.limits.context - 1
            );
        }
        if let Some(&t) = r
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.model.cfg.vocab_size)
        {
            bail!(
                "request {}: token {t} is outside the model's vocabulary",
                r.id
            );
        }
        self.waiting.push_back(r);
        Ok(())
    }

    /// Requests queued or running.
    pub fn pending(&self) -> usize {
        self.waiting.len() + self.active.len()
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }

    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    /// One step: admit waiting prompts into free slots (one packed prefill), then decode one
    /// token for every running sequence. Returns the requests that finished, in the order they
    /// finished (by slot within a step).
    pub fn step(&mut self) -> Vec<Finished> {
        let mut done = Vec::new();
        if self.limits.continuous || self.active.is_empty() {
            let mut admitted = Vec::new();
            let mut tokens = 0;
            while let Some(r) = self.waiting.front() {
                if self.free.is_empty()
                    || (!admitted.is_empty()
                        && tokens + self.prefill_len(r) > self.limits.prefill_tokens)
                {
                    break;
                }
                tokens += self.prefill_len(r);
                let r = self.waiting.pop_front().expect("front exists");
                let slot = self.free.pop().expect("a free slot");
                admitted.push((r, slot));
            }
            if !admitted.is_empty() {
                done.extend(self.prefill(admitted));
            }
        }
        if !self.active.is_empty() {
            done.extend(self.decode());
        }
        done
    }

    /// Run until every submitted request has finished; results in finishing order.
    pub fn run_all(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        while !self.is_idle() {
            out.extend(self.step());
        }
        out
    }

    /// Record a sampled token; returns the finished result when the sequence stops.
    fn advance(&mut self, idx: usize, next: u32) -> Option<Finished> {
        self.generated_tokens += 1;
        let a = &mut self.active[idx];
        a.out.push(next);
        a.pending = next;
        let reason = if self.stop.contains(&next) {
            Some(StopReason::Stop)
        } else if a.out.len() >= a.max_new {
            Some(StopReason::Limit)
        } else if a.len + 1 >= self.limits.context {
            // Prompt and generation (a.len in the cache, plus `next`) fill the context.
            Some(StopReason::Context)
        } else {
            None
        };
        reason.map(|reason| {
            let a = self.active.swap_remove(idx);
            self.free.push(a.slot);
            Finished {
                id: a.id,
                tokens: a.out,
                reason,
            }
        })
    }

    /// Prompt tokens a request's prefill takes: all of them, or the first sliding window's worth
    /// (the rest go through decode steps, which apply the window).
    fn prefill_len(&self, r: &Request) -> usize {
        r.prompt
            .len()
            .min(self.model.cfg.sliding_window.unwrap_or(usize::MAX))
    }

    /// Packed prefill of the admitted prompts; samples each one's first token (or queues the
    /// rest of a prompt longer than the sliding window).
    fn prefill(&mut self, admitted: Vec<(Request, u32)>) -> Vec<Finished> {
        let model = self.model;
        let taken: Vec<usize> = admitted.iter().map(|(r, _)| self.prefill_len(r)).collect();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut docs = Vec::new();
        let mut slots = Vec::new();
        let mut last_rows = Vec::new();
        for (doc, (r, slot)) in admitted.iter().enumerate() {
            for (p, &t) in r.prompt[..taken[doc]].iter().enumerate() {
                ids.push(t);
                positions.push(p as u32);
                docs.push(doc as u32);
                slots.push(*slot);
            }
            last_rows.push(ids.len() - 1);
        }
        let logits = self.forward(
            &ids,
            &positions,
            &slots,
            Pass::Prefill { docs: &docs },
            &last_rows,
        );
        let v = model.cfg.vocab_size;
        let mut done = Vec::new();
        for (i, (r, slot)) in admitted.into_iter().enumerate() {
            let mut rng = Rng::new(r.sampling.seed);
            let mut forced: VecDeque<u32> = r.prompt[taken[i]..].iter().copied().collect();
            let prompt_next = forced.pop_front();
            let next = match prompt_next {
                Some(t) => t,
                None => sample(&logits[i * v..(i + 1) * v], r.sampling, &mut rng),
            };
            self.active.push(Active {
                id: r.id,
                slot,
                len: taken[i],
                pending: next,
                forced,
                out: Vec::new(),
                max_new: r.max_new.max(1),
                sampling: r.sampling,
                rng,
            });
            if prompt_next.is_none() {
                let idx = self.active.len() - 1;
                done.extend(self.advance(idx, next));
            }
        }
        done
    }

    /// One decode step for every active sequence.
    fn decode(&mut self) -> Vec<Finished> {
        // Slot order keeps the batch layout independent of admission history.
        self.active.sort_by_key(|a| a.slot);
        let ids: Vec<u32> = self.active.iter().map(|a| a.pending).collect();
        let positions: Vec<u32> = self.active.iter().map(|a| a.len as u32).collect();
        let slots: Vec<u32> = self.active.iter().map(|a| a.slot).collect();
        let rows: Vec<usize> = (0..ids.len()).collect();
        let logits = self.forward(&ids, &positions, &slots, Pass::Decode, &rows);
        let v = self.model.cfg.vocab_size;
        let mut picks = Vec::with_capacity(ids.len());
        for (i, a) in self.active.iter_mut().enumerate() {
            a.len += 1;
            match a.forced.pop_front() {
                // Still feeding the prompt: its next token, nothing sampled.
                Some(t) => {
                    a.pending = t;
                    picks.push(None);
                }
                None => picks.push(Some(sample(
                    &logits[i * v..(i + 1) * v],
                    a.sampling,
                    &mut a.rng,
                ))),
            }
        }
        // Advance in reverse so swap_remove does not move an unvisited sequence.
        let mut done = Vec::new();
        for i in (0..picks.len()).rev() {
            if let Some(next) = picks[i] {
                done.extend(self.advance(i, next));
            }
        }
        done.reverse();
        done
    }

    /// The model over `ids` (token i at `positions[i]`, cached in `slots[i]`), writing every
    /// token's keys and values to the cache; returns the logits [rows.len(), V] of `rows`.
    fn forward(
        &mut self,
        ids: &[u32],
        positions: &[u32],
        slots: &[u32],
        pass: Pass<'_>,
        rows: &[usize],
    ) -> Vec<f32> {
        let (be, model) = (self.be, self.model);
        let c = &model.cfg;
        let n = ids.len();
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let eps = c.norm_eps as f32;
        let max_len = self.limits.context;
        let p = &model.params;
        let z = |len: usize| be.alloc(len, BufKind::Act);
        let (mut x, mut xn, mut rstd) = (z(n * d), z(n * d), be.alloc(n, BufKind::Stat));
        let (mut q, mut k, mut v, mut att) = (z(n * qd), z(n * kvd), z(n * kvd), z(n * qd));
        let (mut h, mut gate, mut up, mut act) = (z(n * d), z(n * f), z(n * f), z(n * f));
        let mut lse = match pass {
            Pass::Prefill { .. } => be.alloc(c.n_heads * n, BufKind::Stat),
            Pass::Decode => be.alloc(0, BufKind::Stat),
        };
        let lens: Vec<u32> = positions.iter().map(|&p| p + 1).collect();
        be.embedding(&mut x, &p[model.embed], ids, d);
        for (l, lp) in model.layers.iter().enumerate() {
            be.rmsnorm(&mut xn, &mut rstd, &x, &p[lp.input_norm], d, eps);
            be.matmul_rowwise(&mut q, &xn, &p[lp.q], n, d, qd);
            be.matmul_rowwise(&mut k, &xn, &p[lp.k], n, d, kvd);
            be.matmul_rowwise(&mut v, &xn, &p[lp.v], n, d, kvd);
            add_bias(be, &mut q, p, lp.q_b);
            add_bias(be, &mut k, p, lp.k_b);
            add_bias(be, &mut v, p, lp.v_b);
            be.rope(
                &mut q,
                positions,
                c.n_heads,
                hd,
                &model.rope_cos,
                &model.rope_sin,
            );
            be.rope(
                &mut k,
                positions,
                c.n_kv_heads,
                hd,
                &model.rope_cos,
                &model.rope_sin,
            );
            be.kv_write(&mut self.k[l], &k, slots, positions, max_len);
            be.kv_write(&mut self.v[l], &v, slots, positions, max_len);
            match pass {
                Pass::Prefill { docs } => {
                    let shape = AttnShape {
                        batch: 1,
                        seq: n,
                        heads: c.n_heads,
                        kv_heads: c.n_kv_heads,
                        head_dim: hd,
                        causal: true,
                    };
                    be.attention(&mut att, &mut lse, &q, &k, &v, docs, shape);
                }
                Pass::Decode => {
                    let shape = AttnShape {
                        batch: n,
                        seq: 1,
                        heads: c.n_heads,
                        kv_heads: c.n_kv_heads,
                        head_dim: hd,
                        causal: true,
                    };
                    be.attention_decode(
                        &mut att,
                        &q,
                        &self.k[l],
                        &self.v[l],
                        slots,
                        &lens,
                        max_len,
                        c.sliding_window,
                        shape,
                    );
                }
            }
            be.matmul_rowwise(&mut h, &att, &p[lp.o], n, qd, d);
            add_bias(be, &mut h, p, lp.o_b);
            be.add_assign(&mut h, &x);
            be.rmsnorm(&mut xn, &mut rstd, &h, &p[lp.post_norm], d, eps);
            be.matmul_rowwise(&mut gate, &xn, &p[lp.gate], n, d, f);
            be.matmul_rowwise(&mut up, &xn, &p[lp.up], n, d, f);
            add_bias(be, &mut gate, p, lp.gate_b);
            add_bias(be, &mut up, p, lp.up_b);
            be.swiglu(&mut act, &gate, &up);
            be.matmul_rowwise(&mut x, &act, &p[lp.down], n, f, d);
            add_bias(be, &mut x, p, lp.down_b);
            be.add_assign(&mut x, &h);
        }
        let r = rows.len();
        let mut last = z(r * d);
        if r == n {
            be.copy(&mut last, &x);
        } else {
            for (i, &row) in rows.iter().enumerate() {
                be.copy_range(&mut last, i * d, &x, row * d, d);
            }
        }
        let mut last_n = z(r * d);
        let mut rs = be.alloc(r, BufKind::Stat);
        be.rmsnorm(&mut last_n, &mut rs, &last, &p[model.final_norm], d, eps);
        let mut logits = z(r * c.vocab_size);
        be.matmul_rowwise(&mut logits, &last_n, &p[model.lm_head], r, d, c.vocab_size);
        be.download(&logits)
    }
}

#[derive(Clone, Copy)]
enum Pass<'d> {
    /// Packed prompts: one document id per token.
    Prefill {
        docs: &'d [u32],
    },
    Decode,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    fn tiny(seed: u64) -> (CpuBackend<f32>, Model<CpuBackend<f32>>) {
        let mut cfg: ModelConfig = toml::from_str(
            "dim = 32\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 48\nmax_seq_len = 64\ninit_std = 0.3\n",
        )
        .unwrap();
        cfg.resolve(97).unwrap();
        let be = CpuBackend::<f32>::new();
        let model = Model::new(&be, &cfg, seed);
        (be, model)
    }

    fn requests(n: usize, sampling: impl Fn(u64) -> Sampling) -> Vec<Request> {
        let mut rng = Rng::new(7);
        (0..n as u64)
            .map(|id| {
                let len = 1 + rng.index(20);
                Request {
                    id,
                    prompt: (0..len).map(|_| rng.index(97) as u32).collect(),
                    max_new: 4 + rng.index(30),
                    sampling: sampling(id),
                }
            })
            .collect()
    }

    fn run(
        be: &CpuBackend<f32>,
        model: &Model<CpuBackend<f32>>,
        reqs: &[Request],
        slots: usize,
        continuous: bool,
        prefill_tokens: usize,
        stop: &[u32],
    ) -> Vec<Finished> {
        let limits = GenLimits {
            slots,
            context: 64,
            prefill_tokens,
            continuous,
        };
        let mut e = Engine::new(be, model, limits, stop.to_vec()).unwrap();
        for r in reqs {
            e.submit(r.clone()).unwrap();
        }
        let mut out = e.run_all();
        out.sort_by_key(|f| f.id);
        out
    }

    #[test]
    fn batched_equals_unbatched_with_and_without_continuous_batching() {
        let (be, model) = tiny(3);
        for sampling in [(|_| Sampling::default()) as fn(u64) -> Sampling, |id| {
            Sampling {
                temperature: 0.9,
                top_p: 0.95,
                seed: 100 + id,
            }
        }] {
            let reqs = requests(13, sampling);
            // A stop token that some sequences emit: the first token of the unbatched run of #0.
            let solo0 = run(&be, &model, &reqs[..1], 1, true, 48, &[]);
            let stop = [solo0[0].tokens[2]];
            let one = run(&be, &model, &reqs, 1, true, 48, &stop);
            let cont = run(&be, &model, &reqs, 5, true, 48, &stop);
            let stat = run(&be, &model, &reqs, 5, false, 48, &stop);
            let wide = run(&be, &model, &reqs, 16, true, 1000, &stop);
            assert_eq!(one, cont);
            assert_eq!(one, stat);
            assert_eq!(one, wide);
            assert!(one.iter().any(|f| f.reason == StopReason::Stop));
            assert!(one.iter().any(|f| f.reason == StopReason::Limit));
        }
    }

    #[test]
    fn greedy_engine_matches_the_single_sequence_reference() {
        let (be, model) = tiny(5);
        let reqs = requests(6, |_| Sampling::default());
        let got = run(&be, &model, &reqs, 3, true, 48, &[]);
        for (r, g) in reqs.iter().zip(&got) {
            let want = model.generate(&be, &r.prompt, r.max_new, &[], Sampling::default());
            assert_eq!(g.tokens, want, "request {}", r.id);
        }
    }

    #[test]
    fn sequences_stop_at_the_context_and_long_prompts_are_refused() {
        let (be, model) = tiny(2);
        let limits = GenLimits {
            slots: 2,
            context: 10,
            prefill_tokens: 0,
            continuous: true,
        };
        let mut e = Engine::new(&be, &model, limits, vec![]).unwrap();
        let r = |id, len| Request {
            id,
            prompt: vec![1; len],
            max_new: 100,
            sampling: Sampling::default(),
        };
        assert!(e
            .submit(r(0, 10))
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
        e.submit(r(1, 7)).unwrap();
        let out = e.run_all();
        // 7 prompt tokens + 3 generated = the context of 10.
        assert_eq!(out[0].tokens.len(), 3);
        assert_eq!(out[0].reason, StopReason::Context);
    }

    #[test]
    fn plan_counts_the_kv_cache() {
        let mut cfg: ModelConfig = toml::from_str(
            "dim = 4096\nn_layers = 32\nn_heads = 32\nn_kv_heads = 8\nffn_dim = 14336\nvocab_size = 32000\nmax_seq_len = 4096\n",
        )
        .unwrap();
        cfg.resolve(32000).unwrap();
        let limits = GenLimits {
            slots: 16,
            context: 4096,
            prefill_tokens: 4096,
            continuous: true,
        };
        let p = GenPlan::new(&cfg, &limits, 2, 2);
        // Mistral-7B: 2 · 32 layers · 16 · 4096 · 1024 · 2 bytes = 8.6 GB; weights 14.5 GB.
        assert!((p.kv_cache - 8.589934592e9).abs() < 1.0);
        assert!((p.weights / 1e9 - 14.48).abs() < 0.01, "{}", p.weights);
    }
}

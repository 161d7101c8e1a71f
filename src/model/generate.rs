//! Autoregressive generation with a KV cache: prefill the prompt in one pass, then one token per
//! step attending to cached keys and values. Sampling is greedy, or temperature with nucleus
//! (top-p) filtering, from the project's seeded RNG.

use crate::backend::{AttnShape, Backend, BufKind, GenerationBackend};
use crate::rng::Rng;

use super::{add_bias, Model};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 = no filtering.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Per-layer key/value caches for one sequence: [max_len, Hkv, D] each.
pub struct KvCache<B: Backend> {
    pub k: Vec<B::Buf>,
    pub v: Vec<B::Buf>,
    pub max_len: usize,
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(be: &B, model: &Model<B>, max_len: usize) -> Self {
        let c = &model.cfg;
        let per = max_len * c.n_kv_heads * c.head_dim;
        KvCache {
            k: (0..c.n_layers)
                .map(|_| be.alloc(per, BufKind::Act))
                .collect(),
            v: (0..c.n_layers)
                .map(|_| be.alloc(per, BufKind::Act))
                .collect(),
            max_len,
            len: 0,
        }
    }
}

impl<B: GenerationBackend> Model<B> {
    /// Run `tokens` (positions cache.len..) through the model, appending to the cache; returns the
    /// logits of the last token (V).
    pub fn forward_cached(&self, be: &B, cache: &mut KvCache<B>, tokens: &[u32]) -> Vec<f32> {
        let c = &self.cfg;
        let t = tokens.len();
        let past = cache.len;
        assert!(
            t > 0 && past + t <= cache.max_len.min(c.max_seq_len),
            "KV cache full"
        );
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let eps = c.norm_eps as f32;
        let positions: Vec<u32> = (past..past + t).map(|p| p as u32).collect();
        let shape = AttnShape {
            batch: 1,
            seq: t,
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: hd,
            causal: true,
        };
        let p = &self.params;
        let z = |n: usize| be.alloc(n, BufKind::Act);
        let (mut x, mut xn, mut rstd) = (z(t * d), z(t * d), be.alloc(t, BufKind::Stat));
        let (mut q, mut k, mut v, mut att) = (z(t * qd), z(t * kvd), z(t * kvd), z(t * qd));
        let (mut h, mut gate, mut up, mut act) = (z(t * d), z(t * f), z(t * f), z(t * f));
        be.embedding(&mut x, &p[self.embed], tokens, d);
        for (l, lp) in self.layers.iter().enumerate() {
            be.rmsnorm(&mut xn, &mut rstd, &x, &p[lp.input_norm], d, eps);
            be.matmul(&mut q, &xn, &p[lp.q], t, d, qd);
            be.matmul(&mut k, &xn, &p[lp.k], t, d, kvd);
            be.matmul(&mut v, &xn, &p[lp.v], t, d, kvd);
            add_bias(be, &mut q, p, lp.q_b);
            add_bias(be, &mut k, p, lp.k_b);
            add_bias(be, &mut v, p, lp.v_b);
            be.rope(
                &mut q,
                &positions,
                c.n_heads,
                hd,
                &self.rope_cos,
                &self.rope_sin,
            );
            be.rope(
                &mut k,
                &positions,
                c.n_kv_heads,
                hd,
                &self.rope_cos,
                &self.rope_sin,
            );
            be.copy_range(&mut cache.k[l], past * kvd, &k, 0, t * kvd);
            be.copy_range(&mut cache.v[l], past * kvd, &v, 0, t * kvd);
            be.attention_cached(
                &mut att,
                &q,
                &cache.k[l],
                &cache.v[l],
                cache.max_len,
                past,
                c.sliding_window,
                shape,
            );
            be.matmul(&mut h, &att, &p[lp.o], t, qd, d);
            add_bias(be, &mut h, p, lp.o_b);
            be.add_assign(&mut h, &x);
            be.rmsnorm(&mut xn, &mut rstd, &h, &p[lp.post_norm], d, eps);
            be.matmul(&mut gate, &xn, &p[lp.gate], t, d, f);
            be.matmul(&mut up, &xn, &p[lp.up], t, d, f);
            add_bias(be, &mut gate, p, lp.gate_b);
            add_bias(be, &mut up, p, lp.up_b);
            be.swiglu(&mut act, &gate, &up);
            be.matmul(&mut x, &act, &p[lp.down], t, f, d);
            add_bias(be, &mut x, p, lp.down_b);
            be.add_assign(&mut x, &h);
        }
        cache.len += t;
        let mut last = z(d);
        be.copy_range(&mut last, 0, &x, (t - 1) * d, d);
        let mut last_n = z(d);
        let mut r = be.alloc(1, BufKind::Stat);
        be.rmsnorm(&mut last_n, &mut r, &last, &p[self.final_norm], d, eps);
        let mut logits = z(c.vocab_size);
        be.matmul(&mut logits, &last_n, &p[self.lm_head], 1, d, c.vocab_size);
        be.download(&logits)
    }

    /// Generate up to `max_new` tokens after `prompt`, stopping after any token in `stop`.
    /// Returns the new tokens (the stop token included when one was produced).
    pub fn generate(
        &self,
        be: &B,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        sampling: Sampling,
    ) -> Vec<u32> {
        let cap = (prompt.len() + max_new).min(self.cfg.max_seq_len);
        let mut cache = KvCache::new(be, self, cap);
        let mut rng = Rng::new(sampling.seed);
        let mut out = Vec::new();
        if prompt.is_empty() || prompt.len() >= cap {
            return out;
        }
        let mut logits = self.forward_cached(be, &mut cache, prompt);
        loop {
            let next = sample(&logits, sampling, &mut rng);
            out.push(next);
            if stop.contains(&next) || out.len() >= max_new || cache.len >= cap {
                return out;
            }
            logits = self.forward_cached(be, &mut cache, &[next]);
        }
    }
}

/// Pick a token from logits: argmax when temperature is 0, else softmax(logits / T) restricted to
/// the smallest set of tokens whose mass reaches top_p.
pub fn sample(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, (((x - max) / s.temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= s.top_p as f64 {
            break;
        }
    }
    let weights: Vec<f64> = probs[..kept].iter().map(|p| p.1).collect();
    probs[rng.weighted_index(&weights)].0
}

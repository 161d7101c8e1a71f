//! The memory plan printed before a run allocates anything: weights, gradients, optimizer state
//! and activations per device, for the configured world size and ZeRO stage, against the memory a
//! device has. A run that cannot fit stops here with what to change.

use anyhow::{bail, Result};

use crate::model::{ModelConfig, Recompute};

/// Bytes per element of each kind of state on a backend.
#[derive(Clone, Copy, Debug)]
pub struct Widths {
    /// Master weights plus any compute copy (fp32 + bf16 on CUDA: 6; f32 on the CPU: 4).
    pub weights: f64,
    pub grads: f64,
    /// Both Adam moments.
    pub optimizer: f64,
    pub activations: f64,
    /// Per-row statistics and tables kept in full precision (RMSNorm's rstd, attention's lse).
    pub stats: f64,
}

impl Widths {
    /// The widths a backend stores each kind of state in.
    pub fn of<B: crate::backend::Backend>(be: &B) -> Self {
        use crate::backend::BufKind;
        let w = |kind| be.storage_bytes(kind) as f64;
        Widths {
            weights: w(BufKind::Param),
            grads: w(BufKind::Grad),
            optimizer: 2.0 * w(BufKind::Optim),
            activations: w(BufKind::Act),
            stats: w(BufKind::Stat),
        }
    }

    /// The CUDA backend's widths: fp32 master + bf16 copy, fp32 gradients and moments, bf16 activations.
    pub const CUDA: Widths = Widths {
        weights: 6.0,
        grads: 4.0,
        optimizer: 8.0,
        activations: 2.0,
        stats: 4.0,
    };
    /// The CPU reference: f32 everything.
    pub const CPU: Widths = Widths {
        weights: 4.0,
        grads: 4.0,
        optimizer: 8.0,
        activations: 4.0,
        stats: 4.0,
    };
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub weights: f64,
    pub grads: f64,
    pub optimizer: f64,
    pub activations: f64,
    /// Data parallelism's bucket slots (fp32 gradients, plus compute-precision weights when
    /// sharded). 0 on one device.
    pub buckets: f64,
    pub available: f64,
    /// What the backward recomputes (for the advice when the plan does not fit).
    pub recompute: Recompute,
    /// The same bytes by the kind of buffer that holds them (`backend::tracked::KINDS` order:
    /// Param, Grad, Optim, Act, Stat), to hold against a measured step.
    pub by_kind: [f64; 5],
}

impl MemoryPlan {
    pub fn total(&self) -> f64 {
        self.weights + self.grads + self.optimizer + self.activations + self.buckets
    }
}

/// How a run is set up, as far as its memory goes.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// A micro-batch of `batch` × `seq` tokens.
    pub batch: usize,
    pub seq: usize,
    pub world: usize,
    pub zero_stage: u8,
    /// Gradient bucket size in elements (`train.bucket_mb`).
    pub bucket_elems: usize,
    pub recompute: Recompute,
    /// `train.head_chunk`: rows of the output projection and loss computed at once (0: all).
    pub head_chunk: usize,
    /// The run validates or evaluates: at ZeRO-3 every rank then gathers the whole model.
    pub evaluates: bool,
    /// The run takes the data-parallel path, where ZeRO stages apply: several ranks, or one
    /// launched rank (`kiln launch`, torchrun); a plain single process keeps everything.
    pub data_parallel: bool,
}

impl Setting {
    /// The setting of `cfg`.
    pub fn of(cfg: &crate::config::Config) -> Self {
        let t = &cfg.train;
        Setting {
            batch: cfg.data.batch_size,
            seq: cfg.data.seq_len,
            world: t.world_size,
            zero_stage: t.zero_stage,
            bucket_elems: t.bucket_elems(),
            recompute: t.recompute,
            head_chunk: t.head_chunk,
            evaluates: cfg.data.val_fraction > 0.0 || cfg.eval.is_some(),
            data_parallel: t.world_size > 1,
        }
    }
}

/// Bytes of one training step on one device.
pub fn plan(m: &ModelConfig, s: &Setting, w: Widths, available: f64) -> MemoryPlan {
    let Setting {
        batch,
        seq,
        world,
        zero_stage,
        bucket_elems,
        recompute,
        head_chunk,
        evaluates,
        data_parallel,
    } = *s;
    let n = m.num_params() as f64;
    let tokens = (batch * seq) as f64;
    let (d, f) = (m.dim as f64, m.ffn_dim as f64);
    let (qd, kvd) = (
        (m.n_heads * m.head_dim) as f64,
        (m.n_kv_heads * m.head_dim) as f64,
    );
    // Kept per layer and token (model/mod.rs LayerActs): x, xn1, q, k, v, att, h, xn2, gate, up,
    // act in the compute precision; rstd1, rstd2 and the attention's lse (one per head) as
    // statistics.
    let per_layer = 4.0 * d + 2.0 * qd + 2.0 * kvd + 3.0 * f;
    let per_layer_stats = 2.0 + m.n_heads as f64;
    // `train.recompute`: with norms, xn1, xn2 and act are rebuilt in the backward from one
    // shared scratch (xn, rstd, act) instead; with full, a layer keeps its input x only and runs
    // again in one shared layer of activations. (kept, shared scratch) per token:
    let ((saved, saved_stats), (scratch, scratch_stats)) = match recompute {
        Recompute::None => ((per_layer, per_layer_stats), (0.0, 0.0)),
        Recompute::Norms => ((per_layer - 2.0 * d - f, per_layer_stats), (d + f, 1.0)),
        Recompute::Full => ((d, 0.0), (per_layer, per_layer_stats)),
    };
    let layers = m.n_layers as f64;
    // Plus the final norm's input and output and its rstd, the logits (which hold their
    // gradient), and the backward's scratch: dres, dxn, dq, datt, dk, dv, dgate, dup, dact.
    // A chunked head holds one chunk's logits, and that chunk's rows of xn and dxn.
    let grad_scratch = 2.0 * d + 2.0 * qd + 2.0 * kvd + 3.0 * f;
    let head_rows = crate::model::head_rows(batch * seq, head_chunk) as f64;
    let head = if head_rows < tokens {
        head_rows * (m.vocab_size as f64 + 2.0 * d)
    } else {
        tokens * m.vocab_size as f64
    };
    let act_values = tokens * (layers * saved + scratch + 2.0 * d + grad_scratch) + head;
    // Per token also the final norm's rstd and the loss; the RoPE tables: cos and sin of every
    // position, D/2 each.
    let stat_values =
        tokens * (layers * saved_stats + scratch_stats + 2.0) + (m.max_seq_len * m.head_dim) as f64;
    // ZeRO stages apply to data-parallel runs only; one process keeps everything.
    let stage = if data_parallel { zero_stage } else { 0 };
    let shard = n / world as f64;
    // Sharded: the model in the compute precision, and the fp32 masters (with their compute
    // copy, the all-gather's source) of this rank's shard. ZeRO-3 holds the weights of two units
    // of work at once (one in use, the next one's gather in flight) — or the whole model while
    // rank 0 validates or evaluates.
    let (masters, compute_weights) = match stage {
        0 => (n * w.weights, 0.0),
        1 | 2 => (shard * w.weights, n * w.activations),
        _ => {
            let (layer, head, embed) = group_sizes(m);
            let head = if m.tie_embeddings { head + embed } else { head };
            let mut in_flight = (embed + layer).max(layer + head);
            if m.n_layers > 1 {
                in_flight = in_flight.max(2 * layer);
            }
            let held = if evaluates { n } else { in_flight as f64 };
            (shard * w.weights, held * w.activations)
        }
    };
    // ZeRO-1: whole local gradients, and this rank's summed shard beside them; ZeRO-2: the
    // summed shard, and storage for the group being computed.
    let grads = match stage {
        0 => n,
        1 => n + shard,
        _ => shard + largest_group(m) as f64,
    } * w.grads;
    let optimizer = if stage >= 1 { shard } else { n } * w.optimizer;
    // The reducer's ring of slots, each as large as the largest bucket: at most the bucket size
    // (larger parameters are split), at most the largest group (buckets stay within one).
    let (grad_slots, param_slots) = if data_parallel {
        let (layer, head, embed) = group_sizes(m);
        let largest = bucket_elems.min(layer.max(head).max(embed));
        let slots = (crate::dist::reducer::RING * largest.div_ceil(world) * world) as f64;
        // ZeRO-1 and 2 all-gather the updated weights through slots too; ZeRO-3 gathers into
        // the units' own buffers, counted with the weights.
        let params = if stage == 1 || stage == 2 {
            slots * w.activations
        } else {
            0.0
        };
        (slots * w.grads, params)
    } else {
        (0.0, 0.0)
    };
    let (acts, stats) = (act_values * w.activations, stat_values * w.stats);
    MemoryPlan {
        weights: masters + compute_weights,
        grads,
        optimizer,
        activations: acts + stats,
        buckets: grad_slots + param_slots,
        available,
        recompute,
        by_kind: [
            masters,
            grads + grad_slots,
            optimizer,
            compute_weights + acts + param_slots,
            stats,
        ],
    }
}

/// Elements of one layer's parameters, of the head group (final norm and an untied output
/// projection) and of the embedding.
fn group_sizes(m: &ModelConfig) -> (usize, usize, usize) {
    let info = m.params();
    let size = |f: &dyn Fn(&str) -> bool| -> usize {
        info.iter().filter(|p| f(&p.name)).map(|p| p.numel()).sum()
    };
    (
        size(&|n| n.starts_with("model.layers.0.")),
        size(&|n| n == "model.norm.weight" || n == "lm_head.weight"),
        size(&|n| n == "model.embed_tokens.weight"),
    )
}

/// Elements of gradient storage a ZeRO-2 backward holds at once: one group (the head, a layer, or
/// the embedding); a tied embedding's gradient is held from the head to the end.
fn largest_group(m: &ModelConfig) -> usize {
    let (layer, head, embed) = group_sizes(m);
    if m.tie_embeddings {
        embed + head.max(layer)
    } else {
        layer.max(head).max(embed)
    }
}

/// The peak of a real step's buffers, by kind, against the plan (printed after a run's first step).
/// `allocator`: the device allocator's peak; `device`: the memory the device reports in use
/// (everything, not only the buffers).
pub fn measured_line(
    p: &MemoryPlan,
    m: &crate::backend::tracked::MemPeaks,
    allocator: Option<f64>,
    device: Option<f64>,
) -> String {
    use crate::backend::tracked::KINDS;
    let kinds: Vec<String> = KINDS
        .iter()
        .zip(&m.peak)
        .zip(&p.by_kind)
        .map(|((k, &have), &want)| format!("{k:?} {} (planned {})", gb(have as f64), gb(want)))
        .collect();
    format!(
        "memory measured after the first step: peak {} of buffers (planned {}): {}{}{}",
        gb(m.peak_total as f64),
        gb(p.total()),
        kinds.join(", "),
        allocator.map_or(String::new(), |a| format!(
            "; the allocator peaked at {}",
            gb(a)
        )),
        device.map_or(String::new(), |d| format!(
            "; the device reports {} in use",
            gb(d)
        ))
    )
}

/// Bytes in GB with two decimals, or in MB below 1 GB (small models would read 0.00 GB).
fn gb(x: f64) -> String {
    if x < 1e9 {
        format!("{:.2} MB", x / 1e6)
    } else {
        format!("{:.2} GB", x / 1e9)
    }
}

/// Print the plan; stop with advice when it does not fit.
pub fn check(p: &MemoryPlan, world: usize, zero_stage: u8, batch: usize) -> Result<()> {
    eprintln!(
        "memory plan per device (world {world}, ZeRO-{zero_stage}): weights {}, gradients {}, optimizer {}, activations {}{} = {}{}",
        gb(p.weights),
        gb(p.grads),
        gb(p.optimizer),
        gb(p.activations),
        if p.buckets > 0.0 {
            format!(", reduction buckets {}", gb(p.buckets))
        } else {
            String::new()
        },
        gb(p.total()),
        if p.available > 0.0 {
            format!(" of {} available", gb(p.available))
        } else {
            " (the device's memory is unknown: not checked)".to_string()
        }
    );
    if p.available > 0.0 && p.total() > p.available {
        let state = p.weights + p.grads + p.optimizer + p.buckets;
        let full = if p.recompute == Recompute::Full {
            ""
        } else {
            "set train.recompute = \"full\", or "
        };
        let advice = if state > p.available {
            if world == 1 {
                "the model's state alone does not fit one device: train on several (train.world_size) with train.zero_stage = 2 to shard it, or use a smaller model".to_string()
            } else if zero_stage < 2 {
                "set train.zero_stage = 2 to shard the master weights, gradients and optimizer state over the train.world_size devices, or raise train.world_size".to_string()
            } else if zero_stage < 3 {
                "set train.zero_stage = 3 to shard the weights themselves too, or raise train.world_size".to_string()
            } else {
                "the sharded state still does not fit: raise train.world_size or use a smaller model".to_string()
            }
        } else if batch > 1 {
            format!("{full}lower data.batch_size (raise train.grad_accum to keep the tokens per step) or data.seq_len")
        } else {
            format!("{full}lower data.seq_len")
        };
        bail!(
            "the run needs {} per device but {} is available: {advice}",
            gb(p.total()),
            gb(p.available)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama3_8b() -> ModelConfig {
        let mut m: ModelConfig = toml::from_str(
            "vocab_size = 128256\ndim = 4096\nn_layers = 32\nn_heads = 32\nn_kv_heads = 8\nffn_dim = 14336\nrope_theta = 500000.0\nmax_seq_len = 8192\n",
        )
        .unwrap();
        m.resolve(128256).unwrap();
        m
    }

    /// The plan on CUDA widths, with 4 Mi-element buckets and no evaluation.
    fn at(
        m: &ModelConfig,
        batch: usize,
        seq: usize,
        world: usize,
        zero_stage: u8,
        recompute: Recompute,
        available: f64,
    ) -> MemoryPlan {
        let s = Setting {
            batch,
            seq,
            world,
            zero_stage,
            bucket_elems: 1 << 22,
            recompute,
            head_chunk: 0,
            evaluates: false,
            data_parallel: world > 1,
        };
        plan(m, &s, Widths::CUDA, available)
    }

    #[test]
    fn recomputation_drops_the_norm_and_swiglu_activations() {
        let m = llama3_8b();
        let keep = at(&m, 1, 4096, 1, 0, Recompute::None, 80e9);
        let rc = at(&m, 1, 4096, 1, 0, Recompute::Norms, 80e9);
        // (2·d + F) values per token and layer fewer, (d + F) of shared scratch more (bf16), and
        // one shared rstd (fp32)
        let per_token = (32.0 * (2.0 * 4096.0 + 14336.0) - (4096.0 + 14336.0)) * 2.0 - 4.0;
        let saved = keep.activations - rc.activations;
        assert!((saved - 4096.0 * per_token).abs() < 1.0, "{saved}");
        assert_eq!(keep.weights, rc.weights);
    }

    #[test]
    fn full_recomputation_keeps_each_layers_input_and_one_layer_of_scratch() {
        let m = llama3_8b();
        let keep = at(&m, 1, 4096, 1, 0, Recompute::None, 80e9);
        let full = at(&m, 1, 4096, 1, 0, Recompute::Full, 80e9);
        // Per layer: x, xn1, q, k, v, att, h, xn2, gate, up, act (4d + 2·H·D + 2·Hkv·D + 3F).
        let per_layer = 4.0 * 4096.0 + 2.0 * 4096.0 + 2.0 * 1024.0 + 3.0 * 14336.0;
        // 32 layers keep all of it without recomputation; with it they keep x (d) and share one
        // layer of scratch; the same for the statistics (2 rstd, 32 lse per token and layer).
        let saved = (32.0 * per_layer - (32.0 * 4096.0 + per_layer)) * 2.0 * 4096.0
            + 31.0 * 34.0 * 4.0 * 4096.0;
        assert!((keep.activations - full.activations - saved).abs() < 1.0);
        // 32 layers of 8B at 4,096 tokens: 19.9 GB of activations become 3.3 GB, a third of it
        // the logits.
        assert!(
            keep.activations > 19e9 && full.activations < 3.4e9,
            "{} {}",
            keep.activations,
            full.activations
        );
    }

    #[test]
    fn llama3_8b_state_is_counted_and_each_zero_stage_shards_more() {
        let m = llama3_8b();
        let n = 8_030_261_248.0;
        assert_eq!(m.num_params(), 8_030_261_248);
        let cu = |world, stage, rc| at(&m, 1, 4096, world, stage, rc, 80e9);
        let p0 = cu(4, 0, Recompute::None);
        let p1 = cu(4, 1, Recompute::None);
        let p2 = cu(4, 2, Recompute::None);
        assert!((p0.weights - 6.0 * n).abs() < 1.0);
        // ZeRO-1: bf16 weights everywhere, fp32 masters (+ their bf16 copy) and moments of a quarter.
        assert!((p1.weights - (2.0 * n + 6.0 * n / 4.0)).abs() < 1.0);
        assert!((p0.optimizer / p1.optimizer - 4.0).abs() < 1e-9);
        assert!((p1.grads - p0.grads - 4.0 * n / 4.0).abs() < 1.0);
        // ZeRO-2: a quarter of the fp32 gradients, plus the largest group while the backward
        // computes it: the head (the output projection, 128256 × 4096, and the final norm).
        assert!((p2.grads - 4.0 * (n / 4.0 + 128256.0 * 4096.0 + 4096.0)).abs() < 1.0);
        // ZeRO-3: the masters of an eighth, and the bf16 weights of two units of work at once
        // (at most a layer, 218,112,000, and the head, 128256 × 4096 + 4096); no gather slots.
        let p3 = cu(8, 3, Recompute::None);
        let held = 218_112_000.0 + 128256.0 * 4096.0 + 4096.0;
        assert!((p3.weights - (6.0 * n / 8.0 + 2.0 * held)).abs() < 1.0);
        assert!((p3.buckets - 3.0 * (1 << 22) as f64 * 4.0).abs() < 1.0);
        // Buckets are bounded: three slots of 4 Mi elements in fp32 and bf16.
        assert!((p2.buckets - 3.0 * (1 << 22) as f64 * 6.0).abs() < 1.0);
        // Unsharded state does not fit one 80 GB device; the advice is ZeRO-2.
        let e = check(&p0, 4, 0, 1).unwrap_err().to_string();
        assert!(e.contains("train.zero_stage = 2"), "{e}");
        let e = check(&p1, 4, 1, 1).unwrap_err().to_string();
        assert!(e.contains("train.zero_stage = 2"), "{e}");
        // ZeRO-2's state fits, two sequences' activations do not: the advice is recomputation.
        let p = at(&m, 2, 4096, 4, 2, Recompute::None, 80e9);
        let e = check(&p, 4, 2, 2).unwrap_err().to_string();
        assert!(e.contains("train.recompute = \"full\""), "{e}");
        // The paper's recipe, 4,096 tokens per device: fits 80 GB at ZeRO-2 with full
        // recomputation over 4 devices, and over 8.
        for world in [4, 8] {
            let p = cu(world, 2, Recompute::Full);
            assert!(p.total() < 60e9, "world {world}: {}", p.total());
            assert!(check(&p, world, 2, 1).is_ok());
        }
    }

    #[test]
    fn a_small_model_fits_and_a_huge_batch_asks_for_a_smaller_batch() {
        let mut m = llama3_8b();
        m.n_layers = 2;
        m.dim = 512;
        m.ffn_dim = 1024;
        m.n_heads = 8;
        m.n_kv_heads = 4;
        m.head_dim = 64;
        assert!(check(&at(&m, 8, 1024, 1, 0, Recompute::None, 80e9), 1, 0, 8).is_ok());
        let e = check(&at(&m, 512, 4096, 1, 0, Recompute::None, 80e9), 1, 0, 512)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lower data.batch_size"), "{e}");
    }
}

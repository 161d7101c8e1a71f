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
}

impl Widths {
    /// The widths a backend stores each kind of state in.
    pub fn of<B: crate::backend::Backend>(be: &B) -> Self {
        use crate::backend::BufKind;
        let (param, optim) = (
            be.elem_bytes(BufKind::Param) as f64,
            be.elem_bytes(BufKind::Optim) as f64,
        );
        Widths {
            // A compute copy narrower than the fp32 master is stored beside it.
            weights: if param < optim { param + optim } else { param },
            grads: be.elem_bytes(BufKind::Grad) as f64,
            optimizer: 2.0 * optim,
            activations: be.elem_bytes(BufKind::Act) as f64,
        }
    }

    /// The CUDA backend's widths: fp32 master + bf16 copy, fp32 gradients and moments, bf16 activations.
    pub const CUDA: Widths = Widths {
        weights: 6.0,
        grads: 4.0,
        optimizer: 8.0,
        activations: 2.0,
    };
    /// The CPU reference: f32 everything.
    pub const CPU: Widths = Widths {
        weights: 4.0,
        grads: 4.0,
        optimizer: 8.0,
        activations: 4.0,
    };
}

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub weights: f64,
    pub grads: f64,
    pub optimizer: f64,
    pub activations: f64,
    /// Data parallelism's bucket slots (fp32 gradients, plus compute-precision weights under
    /// ZeRO-1). 0 on one device.
    pub buckets: f64,
    pub available: f64,
}

impl MemoryPlan {
    pub fn total(&self) -> f64 {
        self.weights + self.grads + self.optimizer + self.activations + self.buckets
    }
}

/// Bytes of one step on one device: a micro-batch of `batch` × `seq` tokens; with several ranks,
/// gradient buckets of about `bucket_elems` elements.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    m: &ModelConfig,
    batch: usize,
    seq: usize,
    world: usize,
    zero_stage: u8,
    bucket_elems: usize,
    recompute: Recompute,
    w: Widths,
    available: f64,
) -> MemoryPlan {
    let n = m.num_params() as f64;
    let tokens = (batch * seq) as f64;
    let (d, f) = (m.dim as f64, m.ffn_dim as f64);
    let (qd, kvd) = (
        (m.n_heads * m.head_dim) as f64,
        (m.n_kv_heads * m.head_dim) as f64,
    );
    // Saved per layer and token: x, xn1, q, k, v, att, h, xn2, gate, up, act (model/mod.rs LayerActs).
    let per_layer = 4.0 * d + 2.0 * qd + 2.0 * kvd + 3.0 * f;
    // `train.recompute`: with norms, xn1, xn2 and act are rebuilt in the backward from one
    // shared scratch (xn, rstd, act) instead; with full, a layer keeps its input x only and runs
    // again in one shared layer of activations.
    let (saved, scratch) = match recompute {
        Recompute::None => (per_layer, 0.0),
        Recompute::Norms => (per_layer - 2.0 * d - f, d + 1.0 + f),
        Recompute::Full => (d, per_layer),
    };
    // Plus the final norm, the logits (which hold their gradient) and one layer of gradient scratch.
    let acts =
        tokens * (m.n_layers as f64 * saved + 2.0 * d + m.vocab_size as f64 + per_layer + scratch);
    MemoryPlan {
        weights: n * w.weights,
        grads: n * w.grads,
        optimizer: n * w.optimizer / if zero_stage >= 1 { world as f64 } else { 1.0 },
        activations: acts * w.activations,
        buckets: if world > 1 {
            // The reducer's ring of slots, each as large as the largest bucket (a parameter
            // larger than the bucket size gets a bucket of its own).
            let largest = m.params().iter().map(|p| p.numel()).max().unwrap_or(0);
            let slot = bucket_elems.max(largest).min(m.num_params()) as f64;
            let per = w.grads + if zero_stage >= 1 { w.activations } else { 0.0 };
            crate::dist::reducer::RING as f64 * slot * per
        } else {
            0.0
        },
        available,
    }
}

fn gb(x: f64) -> String {
    format!("{:.2} GB", x / 1e9)
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
        let advice = if p.weights + p.grads > p.available {
            "the weights and gradients alone do not fit one device, and kiln does not shard them yet (ZeRO-2/3): use devices with more memory or a smaller model"
        } else if state > p.available {
            if zero_stage == 0 {
                "set train.zero_stage = 1 to shard the optimizer state over train.world_size devices, or use more devices"
            } else {
                "the sharded optimizer state still does not fit: raise train.world_size or use a smaller model"
            }
        } else if batch > 1 {
            "lower data.batch_size (raise train.grad_accum to keep the tokens per step) or data.seq_len"
        } else {
            "lower data.seq_len"
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

    const CUDA: Widths = Widths {
        weights: 6.0,
        grads: 4.0,
        optimizer: 8.0,
        activations: 2.0,
    };

    #[test]
    fn recomputation_drops_the_norm_and_swiglu_activations() {
        let m = llama3_8b();
        let keep = plan(&m, 1, 4096, 1, 0, 1 << 22, Recompute::None, CUDA, 80e9);
        let rc = plan(&m, 1, 4096, 1, 0, 1 << 22, Recompute::Norms, CUDA, 80e9);
        // (2·d + F) values per token and layer fewer, (d + 1 + F) of shared scratch more
        let per_token = (32.0 * (2.0 * 4096.0 + 14336.0) - (4096.0 + 1.0 + 14336.0)) * 2.0;
        let saved = keep.activations - rc.activations;
        assert!((saved - 4096.0 * per_token).abs() < 1.0, "{saved}");
        assert_eq!(keep.weights, rc.weights);
    }

    #[test]
    fn full_recomputation_keeps_each_layers_input_and_one_layer_of_scratch() {
        let m = llama3_8b();
        let keep = plan(&m, 1, 4096, 1, 0, 1 << 22, Recompute::None, CUDA, 80e9);
        let full = plan(&m, 1, 4096, 1, 0, 1 << 22, Recompute::Full, CUDA, 80e9);
        // Per layer: x, xn1, q, k, v, att, h, xn2, gate, up, act (4d + 2·H·D + 2·Hkv·D + 3F).
        let per_layer = 4.0 * 4096.0 + 2.0 * 4096.0 + 2.0 * 1024.0 + 3.0 * 14336.0;
        // 32 layers keep all of it without recomputation; with it they keep x (d) and share one
        // layer of scratch.
        let saved = (32.0 * per_layer - (32.0 * 4096.0 + per_layer)) * 2.0 * 4096.0;
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
    fn llama3_8b_state_is_counted_and_zero1_shards_the_optimizer() {
        let m = llama3_8b();
        assert_eq!(m.num_params(), 8_030_261_248);
        let p0 = plan(&m, 1, 4096, 4, 0, 1 << 22, Recompute::None, CUDA, 80e9);
        let p1 = plan(&m, 1, 4096, 4, 1, 1 << 22, Recompute::None, CUDA, 80e9);
        assert!((p0.optimizer / p1.optimizer - 4.0).abs() < 1e-9);
        assert!((p0.weights - 6.0 * 8_030_261_248.0).abs() < 1.0);
        // 8B with fp32 master weights and gradients cannot fit one 80 GB device even with ZeRO-1.
        let e = check(&p1, 4, 1, 1).unwrap_err().to_string();
        assert!(e.contains("weights and gradients alone do not fit"), "{e}");
        // On 141 GB devices it fits with ZeRO-1 over 4 ranks at one sequence of 4096.
        assert!(check(
            &plan(&m, 1, 4096, 4, 1, 1 << 22, Recompute::None, CUDA, 141e9),
            4,
            1,
            1
        )
        .is_ok());
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
        assert!(check(
            &plan(&m, 8, 1024, 1, 0, 1 << 22, Recompute::None, CUDA, 80e9),
            1,
            0,
            8
        )
        .is_ok());
        let e = check(
            &plan(&m, 512, 4096, 1, 0, 1 << 22, Recompute::None, CUDA, 80e9),
            1,
            0,
            512,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lower data.batch_size"), "{e}");
    }
}

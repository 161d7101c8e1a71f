//! The Llama-family transformer: parameters (Hugging Face names), initialisation, forward, and the
//! hand-written backward, against the `Backend` trait. Pre-norm RMSNorm, RoPE (rotate-half, theta,
//! optional Llama-3.1 scaling), grouped-query attention with causal + document masking, SwiGLU MLP,
//! optional tied embeddings.
//!
//! Initialisation: every matrix ~ N(0, init_std²) (0.02 by default), except the residual output
//! projections (o_proj, down_proj), whose std is divided by sqrt(2·L) (GPT-2 / Megatron scaling);
//! norm weights are 1.
//!
//! The activations the backward needs are saved during `forward` in buffers allocated once for a
//! micro-batch shape (B, T); `forward_backward` allocates nothing.
//! Generation with a KV cache lives in `generate.rs`.

pub mod batched;
pub mod config;
pub mod generate;
pub mod presets;

use serde::{Deserialize, Serialize};

use crate::backend::{AdamW, AttnShape, Backend, BufKind};
use crate::rng::Rng;
pub use config::{ModelConfig, ParamInfo, RopeScaling};

/// What the backward rebuilds instead of keeping (`train.recompute`). Gradients are the same
/// either way (bitwise on the CPU); memory and time trade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recompute {
    /// Keep every activation the backward needs.
    #[default]
    None,
    /// Rebuild the cheap ones (both RMSNorm outputs and the SwiGLU product) from one shared
    /// scratch: 2·d + F fewer values per token and layer.
    Norms,
    /// Keep each layer's input only and run the whole layer again inside the backward, in one
    /// shared layer of scratch (one extra forward of every layer).
    Full,
}

/// `train.recompute` is `false`, `true` (the norms and SwiGLU), or one of "none", "norms",
/// "full"; written back as `false`, `true` and "full", so older configs read unchanged.
impl Serialize for Recompute {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Recompute::None => s.serialize_bool(false),
            Recompute::Norms => s.serialize_bool(true),
            Recompute::Full => s.serialize_str("full"),
        }
    }
}

impl<'de> Deserialize<'de> for Recompute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(Recompute::None),
            Raw::Bool(true) => Ok(Recompute::Norms),
            Raw::Name(n) => match n.as_str() {
                "none" => Ok(Recompute::None),
                "norms" => Ok(Recompute::Norms),
                "full" => Ok(Recompute::Full),
                other => Err(serde::de::Error::custom(format!(
                    "recompute = {other:?}: expected false, true, \"none\", \"norms\" or \"full\""
                ))),
            },
        }
    }
}

/// Indices of one layer's parameters in `Model::params`.
#[derive(Clone, Copy, Debug)]
pub struct LayerParams {
    pub input_norm: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub o: usize,
    pub post_norm: usize,
    pub gate: usize,
    pub up: usize,
    pub down: usize,
    /// Biases (`attention_bias`, `mlp_bias`), each None when the model has none.
    pub q_b: Option<usize>,
    pub k_b: Option<usize>,
    pub v_b: Option<usize>,
    pub o_b: Option<usize>,
    pub gate_b: Option<usize>,
    pub up_b: Option<usize>,
    pub down_b: Option<usize>,
}

impl LayerParams {
    /// The layer's parameters in the order the backward finalises their gradients.
    fn backward_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(16);
        out.extend(self.down_b);
        out.push(self.down);
        out.extend(self.gate_b);
        out.extend(self.up_b);
        out.extend([self.gate, self.up, self.post_norm]);
        out.extend(self.o_b);
        out.push(self.o);
        out.extend(self.q_b);
        out.extend(self.k_b);
        out.extend(self.v_b);
        out.extend([self.q, self.k, self.v, self.input_norm]);
        out
    }
}

/// y += bias, when there is one (a linear layer's optional bias).
pub(crate) fn add_bias<B: Backend>(be: &B, y: &mut B::Buf, params: &[B::Buf], bias: Option<usize>) {
    if let Some(b) = bias {
        be.add_bias(y, &params[b]);
    }
}

/// grads[bias] += Σ_rows dy, when there is a bias.
fn bias_grad<B: Backend>(be: &B, grads: &mut [B::Buf], dy: &B::Buf, bias: Option<usize>) {
    if let Some(b) = bias {
        be.bias_grad(&mut grads[b], dy);
    }
}

/// Activations of one layer saved for backward. Shapes with N = B·T.
pub struct LayerActs<B: Backend> {
    pub x: B::Buf,     // (N, d)  layer input (residual stream)
    pub rstd1: B::Buf, // (N)
    pub xn1: B::Buf,   // (N, d)  input_layernorm(x); empty when recomputed
    pub q: B::Buf,     // (N, H·D) after RoPE
    pub k: B::Buf,     // (N, Hkv·D) after RoPE
    pub v: B::Buf,     // (N, Hkv·D)
    pub att: B::Buf,   // (N, H·D) attention output
    pub lse: B::Buf,   // (B, H, T)
    pub h: B::Buf,     // (N, d)  x + o_proj(att)
    pub rstd2: B::Buf, // (N)
    pub xn2: B::Buf,   // (N, d)  post_attention_layernorm(h); empty when recomputed
    pub gate: B::Buf,  // (N, F)
    pub up: B::Buf,    // (N, F)
    pub act: B::Buf,   // (N, F)  silu(gate) ⊙ up; empty when recomputed
}

/// Scratch for one micro-batch shape.
pub struct Workspace<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    pub layers: Vec<LayerActs<B>>,
    pub x_final: B::Buf, // (N, d) residual stream after the last layer
    pub rstd_f: B::Buf,  // (N)
    pub xn_f: B::Buf,    // (N, d)
    /// (R, V) with R = `head_rows` rows: all N unchunked, holding dlogits after the loss;
    /// one chunk of rows at a time with a chunked head (see [`head_rows`]).
    pub logits: B::Buf,
    /// Rows of the output projection and loss computed at once: N, or a chunk of them.
    pub head_rows: usize,
    /// With a chunked head: one chunk of xn_f's rows, and its part of dxn (R, d); else empty.
    pub xn_chunk: B::Buf,
    pub dxn_chunk: B::Buf,
    /// Each row's loss (N), written by the loss on the device and read once per micro-batch.
    pub losses: B::Buf,
    /// The loss staged for a chunked head's backward, and whether `losses` holds a loss not yet
    /// taken ([`Workspace::take_loss`]).
    staged: Option<StagedLoss>,
    loss_ready: bool,
    // Gradient scratch.
    pub dres: B::Buf,  // (N, d)
    pub dxn: B::Buf,   // (N, d)
    pub dq: B::Buf,    // (N, H·D)
    pub dk: B::Buf,    // (N, Hkv·D)
    pub dv: B::Buf,    // (N, Hkv·D)
    pub datt: B::Buf,  // (N, H·D)
    pub dgate: B::Buf, // (N, F)
    pub dup: B::Buf,   // (N, F)
    pub dact: B::Buf,  // (N, F)
    pub positions: Vec<u32>,
    /// `train.recompute`. Norms: the layers keep no xn1, xn2 or act; the forward writes them
    /// into the shared scratch below and the backward rebuilds them there from x, h, gate and up.
    /// Full: the layers keep x only; every layer runs in `full`, forward and again in backward.
    pub recompute: Recompute,
    pub rc_xn: B::Buf,   // (N, d) with Norms, else empty
    pub rc_rstd: B::Buf, // (N)
    pub rc_act: B::Buf,  // (N, F)
    /// One layer's activations, shared by every layer, with Full (None otherwise).
    pub full: Option<LayerActs<B>>,
}

/// Rows of the output projection and loss computed at once for `n` rows when
/// `train.head_chunk` is `head_chunk`: all of them at 0 or when the chunk covers them, else
/// the largest divisor of `n` that is at most `head_chunk`, so every chunk has the same shape.
pub fn head_rows(n: usize, head_chunk: usize) -> usize {
    if head_chunk == 0 || head_chunk >= n {
        return n;
    }
    (1..=head_chunk)
        .rev()
        .find(|r| n.is_multiple_of(*r))
        .unwrap_or(1)
}

/// What a chunked head's backward computes the loss from ([`Model::stage_loss`]).
struct StagedLoss {
    targets: Vec<u32>,
    mask: Vec<u8>,
    scale: f32,
}

impl<B: Backend> Workspace<B> {
    /// Whether the output projection and loss run a chunk of rows at a time.
    pub fn chunked_head(&self) -> bool {
        self.head_rows < self.batch * self.seq
    }

    /// The loss of the micro-batch staged with [`Model::stage_loss`], once its backward has run
    /// (Σ mask·nll, as [`Model::loss`] returns it): the one read of the row losses, waiting for
    /// the device.
    pub fn take_loss(&mut self, be: &B) -> f64 {
        assert!(
            self.staged.is_none() && self.loss_ready,
            "take_loss before the backward of the staged loss"
        );
        self.loss_ready = false;
        be.read_sum(&self.losses, self.batch * self.seq)
    }
}

/// The shared scratch the forward writes xn1, xn2 and act into under `Recompute::Norms`.
struct NormScratch<'a, B: Backend> {
    xn: &'a mut B::Buf,
    act: &'a mut B::Buf,
}

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub info: Vec<ParamInfo>,
    /// Parameters in `info` order.
    pub params: Vec<B::Buf>,
    /// Gradients, same order and shapes.
    pub grads: Vec<B::Buf>,
    pub layers: Vec<LayerParams>,
    pub embed: usize,
    pub final_norm: usize,
    /// Index of the output projection (the embedding when tied).
    pub lm_head: usize,
    pub rope_cos: B::Buf, // (max_seq_len, D/2)
    pub rope_sin: B::Buf,
}

/// What the backward tells its hook about a group of parameters ([`Model::grad_ready_groups`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradEvent {
    /// The backward is about to accumulate into the group's gradients (a sharded optimizer
    /// gives them storage here).
    Begin,
    /// The group's gradients are final for this micro-batch.
    Ready,
}

/// What a data-parallel optimizer does around the model's passes; every method defaults to
/// nothing. Parameter lists are indices into `Model::params`.
pub trait PassHook<B: Backend> {
    /// The weights of `need` are used next (they must be in `params` when this returns), then
    /// those of `next` (a hint: a sharded optimizer starts gathering them).
    fn weights(&mut self, _be: &B, _params: &mut [B::Buf], _need: &[usize], _next: &[usize]) {}
    /// The weights of `done` are not used again in this pass (a sharded optimizer frees them).
    fn weights_done(&mut self, _be: &B, _params: &mut [B::Buf], _done: &[usize]) {}
    /// A gradient event of group `group` (`Model::grad_ready_groups`), whose parameters are
    /// `params` (for `Begin`: every parameter whose gradient the backward is about to write).
    fn grads(
        &mut self,
        _be: &B,
        _event: GradEvent,
        _group: usize,
        _params: &[usize],
        _grads: &mut [B::Buf],
    ) {
    }
}

/// No hook: every parameter is resident.
pub struct NoHook;
impl<B: Backend> PassHook<B> for NoHook {}

/// The parameters a pass computes with: resident in the model, or taken out of it and handed to
/// a hook before and after each unit of work.
enum Weights<'a, B: Backend> {
    Resident(&'a [B::Buf]),
    Hooked(&'a mut [B::Buf], &'a mut dyn PassHook<B>),
}

impl<B: Backend> Weights<'_, B> {
    fn get(&self) -> &[B::Buf] {
        match self {
            Weights::Resident(p) => p,
            Weights::Hooked(p, _) => p,
        }
    }
    fn need(&mut self, be: &B, need: &[usize], next: &[usize]) {
        if let Weights::Hooked(p, h) = self {
            h.weights(be, p, need, next);
        }
    }
    fn done(&mut self, be: &B, done: &[usize]) {
        if let Weights::Hooked(p, h) = self {
            h.weights_done(be, p, done);
        }
    }
}

/// Standard normal samples (Box–Muller) from the project's RNG.
fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = rng.f64().max(1e-300);
        let u2 = rng.f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos() * std) as f32);
        out.push((r * t.sin() * std) as f32);
    }
    out.truncate(n);
    out
}

/// The host tensors of a freshly initialised model, in `cfg.params()` order (what `Model::new`
/// uploads).
pub fn init_params(cfg: &ModelConfig, seed: u64) -> Vec<Vec<f32>> {
    let info = cfg.params();
    let mut rng = Rng::new(seed);
    let resid_std = cfg.init_std / (2.0 * cfg.n_layers as f64).sqrt();
    info.iter()
        .map(|p| {
            if p.name.ends_with(".bias") {
                vec![0.0; p.numel()]
            } else if p.shape.len() == 1 {
                vec![1.0; p.numel()]
            } else if p.name.ends_with("o_proj.weight") || p.name.ends_with("down_proj.weight") {
                normal(&mut rng, p.numel(), resid_std)
            } else {
                normal(&mut rng, p.numel(), cfg.init_std)
            }
        })
        .collect()
}

impl<B: Backend> Model<B> {
    /// A freshly initialised model (`cfg` already resolved).
    pub fn new(backend: &B, cfg: &ModelConfig, seed: u64) -> Self {
        Self::from_host(backend, cfg, &init_params(cfg, seed))
    }

    /// A model from host tensors in `cfg.params()` order (checkpoints, imports).
    pub fn from_host(backend: &B, cfg: &ModelConfig, host: &[Vec<f32>]) -> Self {
        Self::from_host_as(backend, cfg, host, BufKind::Param, Some(true))
    }

    /// A model for a sharded optimizer, which keeps the fp32 master weights of its shard itself:
    /// parameters stored as the compute copy alone (`BufKind::Act`), whole (`whole_params`) or
    /// left empty (length 0) for the optimizer to gather around each unit of work
    /// ([`PassHook::weights`]), and gradients whole (`whole_grads`) or left empty for the
    /// optimizer to give storage per group during the backward ([`GradEvent::Begin`]).
    pub fn for_sharded_optimizer(
        backend: &B,
        cfg: &ModelConfig,
        host: &[Vec<f32>],
        whole_params: bool,
        whole_grads: bool,
    ) -> Self {
        if whole_params {
            return Self::from_host_as(backend, cfg, host, BufKind::Act, Some(whole_grads));
        }
        let empty: Vec<Vec<f32>> = host.iter().map(|_| Vec::new()).collect();
        Self::from_host_as(backend, cfg, &empty, BufKind::Act, Some(whole_grads))
    }

    /// `grads`: None for none at all, Some(whole) for whole gradients or empty placeholders.
    fn from_host_as(
        backend: &B,
        cfg: &ModelConfig,
        host: &[Vec<f32>],
        kind: BufKind,
        grads: Option<bool>,
    ) -> Self {
        let info = cfg.params();
        assert_eq!(host.len(), info.len(), "tensor count");
        let params: Vec<B::Buf> = host.iter().map(|h| backend.upload_as(h, kind)).collect();
        let grads = match grads {
            None => Vec::new(),
            Some(whole) => info
                .iter()
                .map(|p| backend.alloc(if whole { p.numel() } else { 0 }, BufKind::Grad))
                .collect(),
        };
        let index = |name: &str| {
            info.iter()
                .position(|p| p.name == name)
                .expect("known parameter")
        };
        let find = |name: &str| info.iter().position(|p| p.name == name);
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| index(&format!("model.layers.{i}.{s}.weight"));
                let b = |s: &str| find(&format!("model.layers.{i}.{s}.bias"));
                LayerParams {
                    q_b: b("self_attn.q_proj"),
                    k_b: b("self_attn.k_proj"),
                    v_b: b("self_attn.v_proj"),
                    o_b: b("self_attn.o_proj"),
                    gate_b: b("mlp.gate_proj"),
                    up_b: b("mlp.up_proj"),
                    down_b: b("mlp.down_proj"),
                    input_norm: n("input_layernorm"),
                    q: n("self_attn.q_proj"),
                    k: n("self_attn.k_proj"),
                    v: n("self_attn.v_proj"),
                    o: n("self_attn.o_proj"),
                    post_norm: n("post_attention_layernorm"),
                    gate: n("mlp.gate_proj"),
                    up: n("mlp.up_proj"),
                    down: n("mlp.down_proj"),
                }
            })
            .collect();
        let embed = index("model.embed_tokens.weight");
        let lm_head = if cfg.tie_embeddings {
            embed
        } else {
            index("lm_head.weight")
        };
        let (cos, sin) = cfg.rope_tables();
        let final_norm = index("model.norm.weight");
        Model {
            cfg: cfg.clone(),
            info,
            params,
            grads,
            layers,
            embed,
            final_norm,
            lm_head,
            rope_cos: backend.upload_as(&cos, BufKind::Stat),
            rope_sin: backend.upload_as(&sin, BufKind::Stat),
        }
    }

    /// A model for generation only: parameters stored as activations (bf16 alone on the GPU, no
    /// fp32 master copy) and no gradients.
    pub fn for_inference(backend: &B, cfg: &ModelConfig, host: &[Vec<f32>]) -> Self {
        Self::from_host_as(backend, cfg, host, BufKind::Act, None)
    }

    /// Parameters as host tensors, in `info` order.
    pub fn to_host(&self, backend: &B) -> Vec<Vec<f32>> {
        self.params.iter().map(|p| backend.download(p)).collect()
    }

    pub fn workspace(&self, backend: &B, batch: usize, seq: usize) -> Workspace<B> {
        self.workspace_with(backend, batch, seq, Recompute::None, 0)
    }

    /// As [`Model::workspace`], recomputing what `recompute` says in the backward, and running
    /// the output projection and loss `head_chunk` rows at a time (0: all at once; see
    /// [`head_rows`]). A chunked head never holds the logits of the whole micro-batch:
    /// its backward computes the loss, the logits' gradient, dxn and the projection's gradient
    /// chunk by chunk, so training stages the loss ([`Model::stage_loss`]) before the backward.
    pub fn workspace_with(
        &self,
        backend: &B,
        batch: usize,
        seq: usize,
        recompute: Recompute,
        head_chunk: usize,
    ) -> Workspace<B> {
        let c = &self.cfg;
        let n = batch * seq;
        let head_rows = head_rows(n, head_chunk);
        let chunk = if head_rows < n { head_rows * c.dim } else { 0 };
        let (d, f) = (c.dim, c.ffn_dim);
        let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let z = |len: usize| backend.alloc(len, BufKind::Act);
        let stat = |len: usize| backend.alloc(len, BufKind::Stat);
        // One layer's activations; `cheap`: whether xn1, xn2 and act are kept, `rest`: the others.
        let acts = |cheap: bool, rest: bool| {
            let (c1, r1) = (if cheap { 1 } else { 0 }, if rest { 1 } else { 0 });
            LayerActs {
                x: z(n * d),
                rstd1: stat(r1 * n),
                xn1: z(c1 * n * d),
                q: z(r1 * n * qd),
                k: z(r1 * n * kvd),
                v: z(r1 * n * kvd),
                att: z(r1 * n * qd),
                lse: stat(r1 * batch * c.n_heads * seq),
                h: z(r1 * n * d),
                rstd2: stat(r1 * n),
                xn2: z(c1 * n * d),
                gate: z(r1 * n * f),
                up: z(r1 * n * f),
                act: z(c1 * n * f),
            }
        };
        let layers = (0..c.n_layers)
            .map(|_| match recompute {
                Recompute::None => acts(true, true),
                Recompute::Norms => acts(false, true),
                Recompute::Full => acts(false, false),
            })
            .collect();
        let norms = recompute == Recompute::Norms;
        Workspace {
            batch,
            seq,
            layers,
            x_final: z(n * d),
            rstd_f: stat(n),
            xn_f: z(n * d),
            logits: z(head_rows * c.vocab_size),
            head_rows,
            xn_chunk: z(chunk),
            dxn_chunk: z(chunk),
            losses: stat(n),
            staged: None,
            loss_ready: false,
            dres: z(n * d),
            dxn: z(n * d),
            dq: z(n * qd),
            dk: z(n * kvd),
            dv: z(n * kvd),
            datt: z(n * qd),
            dgate: z(n * f),
            dup: z(n * f),
            dact: z(n * f),
            positions: (0..n).map(|i| (i % seq) as u32).collect(),
            recompute,
            rc_xn: z(if norms { n * d } else { 0 }),
            rc_rstd: stat(if norms { n } else { 0 }),
            rc_act: z(if norms { n * f } else { 0 }),
            full: (recompute == Recompute::Full).then(|| acts(true, true)),
        }
    }

    fn attn_shape(&self, ws: &Workspace<B>) -> AttnShape {
        AttnShape {
            batch: ws.batch,
            seq: ws.seq,
            heads: self.cfg.n_heads,
            kv_heads: self.cfg.n_kv_heads,
            head_dim: self.cfg.head_dim,
            causal: true,
        }
    }

    /// Forward pass over inputs (B·T token ids) with per-token document ids; leaves logits
    /// (N, V) in `ws.logits` and every activation backward needs in `ws`. A chunked head stops
    /// at the final norm's output `ws.xn_f`: the loss computes the logits chunk by chunk.
    pub fn forward(&self, be: &B, ws: &mut Workspace<B>, inputs: &[u32], doc_ids: &[u32]) {
        self.forward_with(be, ws, inputs, doc_ids, Weights::Resident(&self.params));
    }

    /// As [`Model::forward`], handing each unit's weights to `hook` before they are used and
    /// after (the embedding, each layer, the head; the head's stay for the backward).
    pub fn forward_hooked(
        &mut self,
        be: &B,
        ws: &mut Workspace<B>,
        inputs: &[u32],
        doc_ids: &[u32],
        hook: &mut dyn PassHook<B>,
    ) {
        let mut params = std::mem::take(&mut self.params);
        self.forward_with(be, ws, inputs, doc_ids, Weights::Hooked(&mut params, hook));
        self.params = params;
    }

    /// The parameters of each unit of work: the embedding, each layer, and the head (the final
    /// norm and the output projection, which is the embedding when tied).
    fn units(&self) -> (Vec<usize>, Vec<Vec<usize>>, Vec<usize>) {
        let layers = self.layers.iter().map(|lp| lp.backward_order()).collect();
        (
            vec![self.embed],
            layers,
            vec![self.final_norm, self.lm_head],
        )
    }

    fn forward_with(
        &self,
        be: &B,
        ws: &mut Workspace<B>,
        inputs: &[u32],
        doc_ids: &[u32],
        mut w: Weights<'_, B>,
    ) {
        let c = &self.cfg;
        let n = ws.batch * ws.seq;
        assert_eq!(inputs.len(), n, "inputs must be B·T tokens");
        assert!(
            ws.seq <= c.max_seq_len,
            "sequence longer than model.max_seq_len"
        );
        let (d, eps) = (c.dim, c.norm_eps as f32);
        let shape = self.attn_shape(ws);
        let (embed, layers, head) = self.units();
        w.need(be, &embed, &layers[0]);
        be.embedding(&mut ws.layers[0].x, &w.get()[self.embed], inputs, d);
        w.done(be, &embed);
        for l in 0..c.n_layers {
            w.need(be, &layers[l], layers.get(l + 1).unwrap_or(&head));
            let (done, rest) = ws.layers.split_at_mut(l + 1);
            let next = match rest.first_mut() {
                Some(nl) => &mut nl.x,
                None => &mut ws.x_final,
            };
            let a = match ws.full.as_mut() {
                Some(full) => {
                    be.copy(&mut full.x, &done[l].x);
                    full
                }
                None => &mut done[l],
            };
            let norms = (ws.recompute == Recompute::Norms).then_some(NormScratch {
                xn: &mut ws.rc_xn,
                act: &mut ws.rc_act,
            });
            self.layer_forward(
                be,
                w.get(),
                l,
                a,
                next,
                norms,
                &ws.positions,
                doc_ids,
                shape,
            );
            w.done(be, &layers[l]);
        }
        w.need(be, &head, &[]);
        let p = w.get();
        be.rmsnorm(
            &mut ws.xn_f,
            &mut ws.rstd_f,
            &ws.x_final,
            &p[self.final_norm],
            d,
            eps,
        );
        if !ws.chunked_head() {
            be.matmul(
                &mut ws.logits,
                &ws.xn_f,
                &p[self.lm_head],
                n,
                d,
                c.vocab_size,
            );
        }
    }

    /// Chunk `i` of a chunked head: its rows of xn_f into `ws.xn_chunk` and their logits into
    /// `ws.logits`. Returns the chunk's first row.
    fn head_chunk_logits(&self, be: &B, ws: &mut Workspace<B>, w: &B::Buf, i: usize) -> usize {
        let (rows, d) = (ws.head_rows, self.cfg.dim);
        let r0 = i * rows;
        be.copy_range(&mut ws.xn_chunk, 0, &ws.xn_f, r0 * d, rows * d);
        be.matmul(
            &mut ws.logits,
            &ws.xn_chunk,
            w,
            rows,
            d,
            self.cfg.vocab_size,
        );
        r0
    }

    /// Layer `l` on its input `a.x`: every activation into `a` (xn1, xn2 and act into `norms`
    /// instead when given) and the layer's output into `next`.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        be: &B,
        p: &[B::Buf],
        l: usize,
        a: &mut LayerActs<B>,
        next: &mut B::Buf,
        mut norms: Option<NormScratch<'_, B>>,
        positions: &[u32],
        doc_ids: &[u32],
        shape: AttnShape,
    ) {
        let c = &self.cfg;
        let n = shape.batch * shape.seq;
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let eps = c.norm_eps as f32;
        let lp = self.layers[l];
        let xn1: &mut B::Buf = match norms.as_mut() {
            Some(s) => &mut *s.xn,
            None => &mut a.xn1,
        };
        be.rmsnorm(xn1, &mut a.rstd1, &a.x, &p[lp.input_norm], d, eps);
        be.matmul(&mut a.q, xn1, &p[lp.q], n, d, qd);
        be.matmul(&mut a.k, xn1, &p[lp.k], n, d, kvd);
        be.matmul(&mut a.v, xn1, &p[lp.v], n, d, kvd);
        add_bias(be, &mut a.q, p, lp.q_b);
        add_bias(be, &mut a.k, p, lp.k_b);
        add_bias(be, &mut a.v, p, lp.v_b);
        be.rope(
            &mut a.q,
            positions,
            c.n_heads,
            hd,
            &self.rope_cos,
            &self.rope_sin,
        );
        be.rope(
            &mut a.k,
            positions,
            c.n_kv_heads,
            hd,
            &self.rope_cos,
            &self.rope_sin,
        );
        be.attention(&mut a.att, &mut a.lse, &a.q, &a.k, &a.v, doc_ids, shape);
        // h = x + att · Woᵀ
        be.matmul(&mut a.h, &a.att, &p[lp.o], n, qd, d);
        add_bias(be, &mut a.h, p, lp.o_b);
        be.add_assign(&mut a.h, &a.x);
        let xn2: &mut B::Buf = match norms.as_mut() {
            Some(s) => &mut *s.xn,
            None => &mut a.xn2,
        };
        be.rmsnorm(xn2, &mut a.rstd2, &a.h, &p[lp.post_norm], d, eps);
        be.matmul(&mut a.gate, xn2, &p[lp.gate], n, d, f);
        be.matmul(&mut a.up, xn2, &p[lp.up], n, d, f);
        add_bias(be, &mut a.gate, p, lp.gate_b);
        add_bias(be, &mut a.up, p, lp.up_b);
        let act: &mut B::Buf = match norms.as_mut() {
            Some(s) => &mut *s.act,
            None => &mut a.act,
        };
        be.swiglu(act, &a.gate, &a.up);
        // next x = h + act · Wdownᵀ
        be.matmul(next, act, &p[lp.down], n, f, d);
        add_bias(be, next, p, lp.down_b);
        be.add_assign(next, &a.h);
    }

    /// Loss of the last forward: Σ mask·nll (returned) and dlogits = scale · ∂/∂logits in place.
    /// A chunked head computes the loss alone (evaluation): training stages it with
    /// [`Model::stage_loss`] for the backward, which computes the gradient chunk by chunk.
    pub fn loss(
        &self,
        be: &B,
        ws: &mut Workspace<B>,
        targets: &[u32],
        mask: &[u8],
        scale: f32,
    ) -> f64 {
        self.queue_loss(be, ws, targets, mask, scale);
        be.read_sum(&ws.losses, targets.len())
    }

    /// The row losses of the last forward into `ws.losses`, and dlogits, unread. A chunked head
    /// computes each chunk's logits first (leaving the last chunk's gradient in `ws.logits`).
    fn queue_loss(&self, be: &B, ws: &mut Workspace<B>, targets: &[u32], mask: &[u8], scale: f32) {
        let v = self.cfg.vocab_size;
        assert_eq!(
            targets.len(),
            ws.batch * ws.seq,
            "targets must be B·T tokens"
        );
        if !ws.chunked_head() {
            be.cross_entropy_rows(&mut ws.logits, targets, mask, 0, v, scale, &mut ws.losses);
        } else {
            for i in 0..targets.len() / ws.head_rows {
                let r0 = self.head_chunk_logits(be, ws, &self.params[self.lm_head], i);
                be.cross_entropy_rows(&mut ws.logits, targets, mask, r0, v, scale, &mut ws.losses);
            }
        }
    }

    /// The loss of the last forward, for the backward that follows: unchunked, [`Model::loss`]
    /// now; with a chunked head, the backward computes it chunk by chunk with the gradient. Read
    /// it with [`Workspace::take_loss`] after the backward.
    pub fn stage_loss(
        &self,
        be: &B,
        ws: &mut Workspace<B>,
        targets: &[u32],
        mask: &[u8],
        scale: f32,
    ) {
        if ws.chunked_head() {
            let n = ws.batch * ws.seq;
            assert!(
                targets.len() == n && mask.len() == n,
                "targets and mask must be B·T tokens"
            );
            ws.staged = Some(StagedLoss {
                targets: targets.to_vec(),
                mask: mask.to_vec(),
                scale,
            });
        } else {
            self.queue_loss(be, ws, targets, mask, scale);
            ws.loss_ready = true;
        }
    }

    /// Backward from dlogits in `ws.logits`, accumulating into `self.grads`.
    pub fn backward(&mut self, be: &B, ws: &mut Workspace<B>, inputs: &[u32], doc_ids: &[u32]) {
        self.backward_hooked(be, ws, inputs, doc_ids, &mut NoHook);
    }

    /// The groups of parameters whose gradients are final, in the order `backward_hooked`
    /// reports them: the head (final norm, and the output projection unless tied), each layer
    /// from the last to the first, then the embedding.
    pub fn grad_ready_groups(&self) -> Vec<Vec<usize>> {
        let mut groups = vec![if self.lm_head == self.embed {
            vec![self.final_norm]
        } else {
            vec![self.lm_head, self.final_norm]
        }];
        for lp in self.layers.iter().rev() {
            groups.push(lp.backward_order());
        }
        groups.push(vec![self.embed]);
        groups
    }

    /// As [`Model::backward`], calling `hook(Begin, ..)` before the backward first writes a group's
    /// gradients (see [`Model::grad_ready_groups`]) and `hook(Ready, ..)` as soon as they are final
    /// for this micro-batch, so a data-parallel reducer can start reducing them while the backward
    /// goes on, and a sharded one can hold only the gradients being computed. `Begin` lists every
    /// parameter whose gradient the backward is about to write: the head's includes a tied
    /// embedding, whose group is final last.
    pub fn backward_hooked(
        &mut self,
        be: &B,
        ws: &mut Workspace<B>,
        inputs: &[u32],
        doc_ids: &[u32],
        hook: &mut dyn PassHook<B>,
    ) {
        let groups = self.grad_ready_groups();
        let c = self.cfg.clone();
        let n = ws.batch * ws.seq;
        let (d, f, hd) = (c.dim, c.ffn_dim, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let shape = self.attn_shape(ws);
        // The gradients and weights are borrowed apart from the model, which a full recompute
        // runs forward; the hook changes what they hold between units of work.
        let mut grads = std::mem::take(&mut self.grads);
        let mut params = std::mem::take(&mut self.params);
        let g = &mut grads;
        let this = &*self;
        let (_, units, head) = this.units();
        hook.weights(be, &mut params, &head, &units[c.n_layers - 1]);
        let p = &params;
        // A tied output projection is the embedding: its gradient starts here and is final last.
        let head_writes = [groups[0].as_slice(), &[this.lm_head]].concat();
        hook.grads(be, GradEvent::Begin, 0, &head_writes, g);
        // logits = xn_f · Wlmᵀ
        if ws.chunked_head() {
            // Chunk by chunk: the logits, the loss and dlogits in place, then dW and dxn.
            let staged = ws
                .staged
                .take()
                .expect("a chunked head's backward needs Model::stage_loss first");
            let rows = ws.head_rows;
            for i in 0..n / rows {
                let r0 = this.head_chunk_logits(be, ws, &p[this.lm_head], i);
                be.cross_entropy_rows(
                    &mut ws.logits,
                    &staged.targets,
                    &staged.mask,
                    r0,
                    c.vocab_size,
                    staged.scale,
                    &mut ws.losses,
                );
                be.matmul_dw(
                    &mut g[this.lm_head],
                    &ws.logits,
                    &ws.xn_chunk,
                    rows,
                    d,
                    c.vocab_size,
                );
                be.matmul_dx(
                    &mut ws.dxn_chunk,
                    &ws.logits,
                    &p[this.lm_head],
                    rows,
                    d,
                    c.vocab_size,
                    false,
                );
                be.copy_range(&mut ws.dxn, r0 * d, &ws.dxn_chunk, 0, rows * d);
            }
            ws.loss_ready = true;
        } else {
            be.matmul_dw(
                &mut g[this.lm_head],
                &ws.logits,
                &ws.xn_f,
                n,
                d,
                c.vocab_size,
            );
            be.matmul_dx(
                &mut ws.dxn,
                &ws.logits,
                &p[this.lm_head],
                n,
                d,
                c.vocab_size,
                false,
            );
        }
        be.fill_zero(&mut ws.dres);
        be.rmsnorm_bwd(
            &mut ws.dres,
            &mut g[this.final_norm],
            &ws.dxn,
            &ws.x_final,
            &p[this.final_norm],
            &ws.rstd_f,
            d,
        );
        hook.grads(be, GradEvent::Ready, 0, &groups[0], g);
        hook.weights_done(be, &mut params, &head);
        for l in (0..c.n_layers).rev() {
            let lp = this.layers[l];
            let eps = c.norm_eps as f32;
            let gi = c.n_layers - l;
            let next: &[usize] = if l > 0 { &units[l - 1] } else { &[] };
            hook.weights(be, &mut params, &units[l], next);
            let p = &params;
            hook.grads(be, GradEvent::Begin, gi, &groups[gi], g);
            if let Some(full) = ws.full.as_mut() {
                // Run the layer again from its input (the same operations on the same inputs).
                // Its output lands where the next layer's input was, which that layer's
                // backward no longer needs.
                let (done, rest) = ws.layers.split_at_mut(l + 1);
                let next = match rest.first_mut() {
                    Some(nl) => &mut nl.x,
                    None => &mut ws.x_final,
                };
                be.copy(&mut full.x, &done[l].x);
                this.layer_forward(be, p, l, full, next, None, &ws.positions, doc_ids, shape);
            }
            let a = match ws.full.as_ref() {
                Some(full) => full,
                None => &ws.layers[l],
            };
            let norms = ws.recompute == Recompute::Norms;
            // Rebuild what the forward did not keep (the same operations on the same inputs).
            let act = if norms {
                be.swiglu(&mut ws.rc_act, &a.gate, &a.up);
                &ws.rc_act
            } else {
                &a.act
            };
            // x_next = h + act · Wdownᵀ   (dres holds ∂L/∂x_next, which is also ∂L/∂h so far)
            be.matmul_dw(&mut g[lp.down], &ws.dres, act, n, f, d);
            bias_grad(be, g, &ws.dres, lp.down_b);
            be.matmul_dx(&mut ws.dact, &ws.dres, &p[lp.down], n, f, d, false);
            be.swiglu_bwd(&mut ws.dgate, &mut ws.dup, &ws.dact, &a.gate, &a.up);
            bias_grad(be, g, &ws.dgate, lp.gate_b);
            bias_grad(be, g, &ws.dup, lp.up_b);
            let xn2 = if norms {
                be.rmsnorm(
                    &mut ws.rc_xn,
                    &mut ws.rc_rstd,
                    &a.h,
                    &p[lp.post_norm],
                    d,
                    eps,
                );
                &ws.rc_xn
            } else {
                &a.xn2
            };
            be.matmul_dw(&mut g[lp.gate], &ws.dgate, xn2, n, d, f);
            be.matmul_dw(&mut g[lp.up], &ws.dup, xn2, n, d, f);
            be.matmul_dx(&mut ws.dxn, &ws.dgate, &p[lp.gate], n, d, f, false);
            be.matmul_dx(&mut ws.dxn, &ws.dup, &p[lp.up], n, d, f, true);
            be.rmsnorm_bwd(
                &mut ws.dres,
                &mut g[lp.post_norm],
                &ws.dxn,
                &a.h,
                &p[lp.post_norm],
                &a.rstd2,
                d,
            );
            // h = x + att · Woᵀ   (dres now holds ∂L/∂h, which is also ∂L/∂x so far)
            be.matmul_dw(&mut g[lp.o], &ws.dres, &a.att, n, qd, d);
            bias_grad(be, g, &ws.dres, lp.o_b);
            be.matmul_dx(&mut ws.datt, &ws.dres, &p[lp.o], n, qd, d, false);
            be.attention_bwd(
                &mut ws.dq, &mut ws.dk, &mut ws.dv, &ws.datt, &a.att, &a.lse, &a.q, &a.k, &a.v,
                doc_ids, shape,
            );
            be.rope_bwd(
                &mut ws.dq,
                &ws.positions,
                c.n_heads,
                hd,
                &this.rope_cos,
                &this.rope_sin,
            );
            be.rope_bwd(
                &mut ws.dk,
                &ws.positions,
                c.n_kv_heads,
                hd,
                &this.rope_cos,
                &this.rope_sin,
            );
            bias_grad(be, g, &ws.dq, lp.q_b);
            bias_grad(be, g, &ws.dk, lp.k_b);
            bias_grad(be, g, &ws.dv, lp.v_b);
            let xn1 = if norms {
                be.rmsnorm(
                    &mut ws.rc_xn,
                    &mut ws.rc_rstd,
                    &a.x,
                    &p[lp.input_norm],
                    d,
                    eps,
                );
                &ws.rc_xn
            } else {
                &a.xn1
            };
            be.matmul_dw(&mut g[lp.q], &ws.dq, xn1, n, d, qd);
            be.matmul_dw(&mut g[lp.k], &ws.dk, xn1, n, d, kvd);
            be.matmul_dw(&mut g[lp.v], &ws.dv, xn1, n, d, kvd);
            be.matmul_dx(&mut ws.dxn, &ws.dq, &p[lp.q], n, d, qd, false);
            be.matmul_dx(&mut ws.dxn, &ws.dk, &p[lp.k], n, d, kvd, true);
            be.matmul_dx(&mut ws.dxn, &ws.dv, &p[lp.v], n, d, kvd, true);
            be.rmsnorm_bwd(
                &mut ws.dres,
                &mut g[lp.input_norm],
                &ws.dxn,
                &a.x,
                &p[lp.input_norm],
                &a.rstd1,
                d,
            );
            hook.grads(be, GradEvent::Ready, gi, &groups[gi], g);
            hook.weights_done(be, &mut params, &units[l]);
        }
        // The embedding's gradient needs no weights.
        let gi = c.n_layers + 1;
        hook.grads(be, GradEvent::Begin, gi, &groups[gi], g);
        be.embedding_dw(&mut g[this.embed], &ws.dres, inputs, d);
        hook.grads(be, GradEvent::Ready, gi, &groups[gi], g);
        self.grads = grads;
        self.params = params;
    }

    /// One AdamW update of every parameter from its gradient and moments `m`, `v` (same order);
    /// `hp.weight_decay` applies only to the parameters that decay (2-D weights).
    pub fn adamw_step(&mut self, be: &B, m: &mut [B::Buf], v: &mut [B::Buf], hp: AdamW) {
        for (i, p) in self.info.iter().enumerate() {
            let hp = AdamW {
                weight_decay: if p.decay { hp.weight_decay } else { 0.0 },
                ..hp
            };
            be.adamw(
                &mut self.params[i],
                &self.grads[i],
                &mut m[i],
                &mut v[i],
                hp,
            );
        }
    }

    pub fn zero_grads(&mut self, be: &B) {
        for g in &mut self.grads {
            be.fill_zero(g);
        }
    }
}

#[cfg(test)]
mod tests;

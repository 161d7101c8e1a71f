//! The CUDA backend: bf16 compute with fp32 master weights, on kiln's own kernels (`kernels/*.cu`,
//! compiled by build.rs into fatbins embedded here) and cuBLASLt GEMMs (`gemm.rs`).
//!
//! Storage by buffer kind: activations bf16; parameters fp32 master + bf16 working copy (the
//! AdamW kernel refreshes the copy); gradients, optimizer moments and statistics fp32. Small
//! per-token integer inputs arrive as host slices and go through a grow-only device scratch, so
//! a steady-state step allocates no device memory for them.
//!
//! Every call into the device goes through [`device`]: cudarc on a GPU (`cuda` feature), or
//! kiln's CUDA emulator on the CPU (`cuda-emu`), so this same code runs in CI without a GPU.
//!
//! CUDA errors are programming or environment errors, not user input: they panic with the
//! operation's name. Start-up problems (no driver, no device, missing libraries) come back from
//! [`CudaBackend::new`] as one-line errors.

pub mod device;
mod gemm;

use std::sync::{Arc, Mutex};

use device::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchArgs, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use half::bf16;

use super::{contract, AdamW, AttnShape, Backend, BufKind, GenerationBackend};
pub use crate::backend::AttentionKernel;
use gemm::Gemm;

/// The compiled `kernels/*.cu`, one constant per file: fatbins (`cuda`) or the emulator's kernel
/// tables (`cuda-emu`), for `device::load_module`.
pub mod kernel_files {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// One buffer: fp32 storage, bf16 storage, or both (parameters).
pub struct CudaBuf {
    kind: BufKind,
    len: usize,
    f32: Option<CudaSlice<f32>>,
    bf16: Option<CudaSlice<bf16>>,
}

impl CudaBuf {
    /// The fp32 and bf16 storage, where the buffer has them (communicators reduce both in place).
    #[cfg(feature = "cuda")]
    pub(crate) fn storages_mut(
        &mut self,
    ) -> (Option<&mut CudaSlice<f32>>, Option<&mut CudaSlice<bf16>>) {
        (self.f32.as_mut(), self.bf16.as_mut())
    }
    fn h(&self) -> &CudaSlice<bf16> {
        self.bf16
            .as_ref()
            .unwrap_or_else(|| panic!("{:?} buffer has no bf16 storage", self.kind))
    }
    fn h_mut(&mut self) -> &mut CudaSlice<bf16> {
        let kind = self.kind;
        self.bf16
            .as_mut()
            .unwrap_or_else(|| panic!("{kind:?} buffer has no bf16 storage"))
    }
    fn f(&self) -> &CudaSlice<f32> {
        self.f32
            .as_ref()
            .unwrap_or_else(|| panic!("{:?} buffer has no fp32 storage", self.kind))
    }
    fn f_mut(&mut self) -> &mut CudaSlice<f32> {
        let kind = self.kind;
        self.f32
            .as_mut()
            .unwrap_or_else(|| panic!("{kind:?} buffer has no fp32 storage"))
    }
}

/// Every kernel kiln launches, loaded once.
struct Kernels {
    rmsnorm_fwd: CudaFunction,
    rmsnorm_bwd: CudaFunction,
    reduce_partials_add: CudaFunction,
    rope: CudaFunction,
    swiglu_fwd: CudaFunction,
    swiglu_bwd: CudaFunction,
    embedding_fwd: CudaFunction,
    embedding_bwd: CudaFunction,
    cross_entropy_fused: CudaFunction,
    adamw: CudaFunction,
    add_bf16: CudaFunction,
    add_bias_bf16: CudaFunction,
    add_f32_range: CudaFunction,
    bias_grad_partials: CudaFunction,
    sum_squares_f32: CudaFunction,
    cast_f32_to_bf16: CudaFunction,
    attention_fwd: CudaFunction,
    attention_delta: CudaFunction,
    attention_bwd_dq: CudaFunction,
    attention_bwd_dkdv: CudaFunction,
    attention_cached: CudaFunction,
    /// [rows per block 64, 128][head dim 64, 128]
    flash_fwd: [[CudaFunction; 2]; 2],
    flash_bwd_dkdv: [CudaFunction; 2],
    flash_bwd_dq: [CudaFunction; 2],
    flash_bwd_pre: CudaFunction,
    flash_dq_convert: CudaFunction,
    kv_write: CudaFunction,
    attention_decode_partial: CudaFunction,
    attention_decode_combine: CudaFunction,
}

/// Dynamic shared memory of the flash kernels (kernels/flash_attention.cu) at head dim `d`.
fn flash_smem(kernel: FlashKernel, d: usize) -> usize {
    match kernel {
        // Q (`rows` rows), two K and two V tiles (64 rows each) and their doc ids
        FlashKernel::Fwd(rows) => (rows + 4 * 64) * d * 2 + 2 * 64 * 4,
        // K, V (64 rows), Q, dO (32 rows), dS^T (64 × 40), lse, delta and doc ids of 32 queries
        FlashKernel::DkDv => (2 * 64 + 2 * 32) * d * 2 + 64 * 40 * 2 + 3 * 32 * 4,
        // Q, dO (64 rows), K, V (32 rows) and the key tile's doc ids
        FlashKernel::Dq => (2 * 64 + 2 * 32) * d * 2 + 32 * 4,
    }
}

#[derive(Clone, Copy)]
enum FlashKernel {
    /// The forward at this many query rows per block.
    Fwd(usize),
    DkDv,
    Dq,
}

/// Head dims the flash kernels are built for.
pub const FLASH_HEAD_DIMS: [usize; 2] = [64, 128];

/// Grow-only device scratch.
/// Integer metadata that every layer of a step asks for with the same contents — the RoPE
/// positions, the flash kernels' document metadata — kept on the device and uploaded again only
/// when its key changes (once per micro-batch rather than once per layer and direction). Uploads
/// go through two page-locked staging buffers in turn, so a copy never stalls the stream and the
/// host waits, if at all, only for the copy before last.
struct Kept {
    /// What the device copy was built from (positions; doc ids), and the shape it was built for.
    key: Vec<u32>,
    shape: (usize, usize),
    valid: bool,
    /// The flash metadata's `contiguous` flag.
    flag: bool,
    dev: Option<CudaSlice<i32>>,
    staging: [Option<PinnedHostSlice<i32>>; 2],
    next: usize,
    /// Uploads made (the tests count them).
    uploads: u64,
}

impl Kept {
    fn new() -> Self {
        Kept {
            key: Vec::new(),
            shape: (0, 0),
            valid: false,
            flag: false,
            dev: None,
            staging: [None, None],
            next: 0,
            uploads: 0,
        }
    }
}

struct Scratch {
    /// The RoPE positions and the flash metadata (`CudaBackend::kept`).
    positions: Kept,
    flash: Kept,
    /// Cross-entropy's targets, the loss mask folded in.
    targets: Kept,
    ints: Vec<CudaSlice<i32>>,
    partials: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    /// fp32 dQ accumulator of the flash backward.
    dq_acc: CudaSlice<f32>,
    /// attention_decode's per-split partials: m, l [N·H·splits] and acc [N·H·splits·D].
    decode_m: CudaSlice<f32>,
    decode_l: CudaSlice<f32>,
    decode_acc: CudaSlice<f32>,
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    gemm: Gemm,
    scratch: Mutex<Scratch>,
    attention: AttentionKernel,
    deterministic: bool,
    /// Query rows per block of the flash forward: 64 or 128.
    flash_fwd_rows: usize,
}

/// Query rows per block of the flash forward: 128 (FlashAttention-2's block), or
/// `KILN_FLASH_FWD_ROWS` (64 or 128) to compare the two on a device.
fn flash_fwd_rows_from_env() -> Result<usize, String> {
    match std::env::var("KILN_FLASH_FWD_ROWS") {
        Err(_) => Ok(128),
        Ok(v) => match v.trim() {
            "64" => Ok(64),
            "128" => Ok(128),
            _ => Err(format!("KILN_FLASH_FWD_ROWS={v}: expected 64 or 128")),
        },
    }
}

/// Rows per block in rmsnorm_bwd (its dw partials are reduced in a second, ordered pass).
const RMSNORM_BWD_ROWS: usize = 32;
/// Rows per partial sum of bias_grad (the CPU's grouping).
const BIAS_GRAD_ROWS: usize = 32;
/// Keys per split of attention_decode (fixed, so results do not depend on the batch).
const DECODE_CHUNK: usize = 256;
/// Blocks of sum_squares_f32; the host adds their partials in f64.
const SUMSQ_BLOCKS: usize = 1024;

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(n, 256).min(65535 * 8), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch of a kernel that moves 8 elements per thread and step (`kernels/common.cuh`'s vector
/// paths): one thread per 8 of the `n` elements, capped as `grid`.
fn grid8(n: usize) -> LaunchConfig {
    grid(n.div_ceil(8))
}

fn i(x: usize) -> i32 {
    i32::try_from(x).expect("size exceeds i32 (kernels take int sizes)")
}

/// The flash kernels' per-position metadata ([3, B, T]: doc ids, then the start and the end of
/// each position's run of equal doc ids) and whether every doc id of a row forms one run. When
/// it does not (an id recurs after another), runs span the whole row and every tile is masked
/// element by element.
pub fn flash_meta(doc_ids: &[u32], batch: usize, seq: usize) -> (Vec<u32>, bool) {
    assert_eq!(doc_ids.len(), batch * seq, "attention: doc_ids");
    let n = batch * seq;
    let mut meta = vec![0u32; 3 * n];
    meta[..n].copy_from_slice(doc_ids);
    let mut contiguous = true;
    for row in doc_ids.chunks(seq.max(1)) {
        let mut seen = rustc_hash::FxHashSet::default();
        for w in row.windows(2) {
            if w[0] != w[1] {
                seen.insert(w[0]);
                contiguous &= !seen.contains(&w[1]);
            }
        }
    }
    for (b, row) in doc_ids.chunks(seq.max(1)).enumerate() {
        let base = b * seq;
        let mut start = 0;
        while start < row.len() {
            let mut end = start + 1;
            while end < row.len() && row[end] == row[start] {
                end += 1;
            }
            let (lo, hi) = if contiguous { (start, end) } else { (0, seq) };
            for t in start..end {
                meta[n + base + t] = lo as u32;
                meta[2 * n + base + t] = hi as u32;
            }
            start = end;
        }
    }
    (meta, contiguous)
}

/// The arguments every attention-backward kernel takes after its outputs (reference
/// `attention_bwd_dq` and `attention_bwd_dkdv`; flash `flash_bwd_dkdv_*` and `flash_bwd_dq_*`),
/// in their signatures' order: dout, q, k, v, lse, delta, the per-position ids (doc ids for the
/// reference kernels, `flash_meta` for the flash ones), B, T, H, Hkv, then `D, scale, causal`
/// (reference) or `scale, causal, contiguous` (flash).
struct AttnBwdInputs<'a> {
    dout: &'a CudaSlice<bf16>,
    q: &'a CudaSlice<bf16>,
    k: &'a CudaSlice<bf16>,
    v: &'a CudaSlice<bf16>,
    lse: &'a CudaSlice<f32>,
    delta: &'a CudaSlice<f32>,
    ids: &'a CudaSlice<i32>,
    /// B, T, H, Hkv
    dims: [i32; 4],
    head_dim: i32,
    scale: f32,
    causal: i32,
    /// The flash kernels' `contiguous` flag; None for the reference kernels.
    flash_contiguous: Option<i32>,
}

impl<'a> AttnBwdInputs<'a> {
    fn push(&'a self, b: &mut LaunchArgs<'a>) {
        b.arg(self.dout)
            .arg(self.q)
            .arg(self.k)
            .arg(self.v)
            .arg(self.lse)
            .arg(self.delta)
            .arg(self.ids);
        let [batch, seq, heads, kv_heads] = &self.dims;
        b.arg(batch).arg(seq).arg(heads).arg(kv_heads);
        match &self.flash_contiguous {
            None => b.arg(&self.head_dim).arg(&self.scale).arg(&self.causal),
            Some(contiguous) => b.arg(&self.scale).arg(&self.causal).arg(contiguous),
        };
    }
}

pub use device::missing_libraries;

impl CudaBackend {
    /// Open device `ordinal`, load every kernel and cuBLASLt. Errors are one line.
    pub fn new(ordinal: usize) -> Result<Self, String> {
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(format!(
                "CUDA libraries not found: {} (run through scripts/cuda-env.sh, or put them on LD_LIBRARY_PATH)",
                missing.join(", ")
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e:?} (is the NVIDIA driver installed, and does the device exist?)"))?;
        let stream = ctx.default_stream();
        let load = |name: &str, file: device::KernelFile| {
            device::load_module(&ctx, file).map_err(|e| format!("loading kernels/{name}.cu: {e}"))
        };
        let rmsnorm = load("rmsnorm", kernel_files::RMSNORM)?;
        let rope = load("rope", kernel_files::ROPE)?;
        let swiglu = load("swiglu", kernel_files::SWIGLU)?;
        let embedding = load("embedding", kernel_files::EMBEDDING)?;
        let ce = load("cross_entropy", kernel_files::CROSS_ENTROPY)?;
        let adamw = load("adamw", kernel_files::ADAMW)?;
        let ew = load("elementwise", kernel_files::ELEMENTWISE)?;
        let attn = load("attention", kernel_files::ATTENTION)?;
        let flash = load("flash_attention", kernel_files::FLASH_ATTENTION)?;
        let decode = load("decode", kernel_files::DECODE)?;
        let f = |m: &Arc<CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(|e| format!("kernel {name}: {e:?}"))
        };
        let k = Kernels {
            rmsnorm_fwd: f(&rmsnorm, "rmsnorm_fwd")?,
            rmsnorm_bwd: f(&rmsnorm, "rmsnorm_bwd")?,
            reduce_partials_add: f(&rmsnorm, "reduce_partials_add")?,
            rope: f(&rope, "rope")?,
            swiglu_fwd: f(&swiglu, "swiglu_fwd")?,
            swiglu_bwd: f(&swiglu, "swiglu_bwd")?,
            embedding_fwd: f(&embedding, "embedding_fwd")?,
            embedding_bwd: f(&embedding, "embedding_bwd")?,
            cross_entropy_fused: f(&ce, "cross_entropy_fused")?,
            adamw: f(&adamw, "adamw")?,
            add_bf16: f(&ew, "add_bf16")?,
            add_bias_bf16: f(&ew, "add_bias_bf16")?,
            add_f32_range: f(&ew, "add_f32_range")?,
            bias_grad_partials: f(&ew, "bias_grad_partials")?,
            sum_squares_f32: f(&ew, "sum_squares_f32")?,
            cast_f32_to_bf16: f(&ew, "cast_f32_to_bf16")?,
            attention_fwd: f(&attn, "attention_fwd")?,
            attention_delta: f(&attn, "attention_delta")?,
            attention_bwd_dq: f(&attn, "attention_bwd_dq")?,
            attention_bwd_dkdv: f(&attn, "attention_bwd_dkdv")?,
            attention_cached: f(&attn, "attention_cached")?,
            flash_fwd: [
                [
                    f(&flash, "flash_fwd_d64_r64")?,
                    f(&flash, "flash_fwd_d128_r64")?,
                ],
                [
                    f(&flash, "flash_fwd_d64_r128")?,
                    f(&flash, "flash_fwd_d128_r128")?,
                ],
            ],
            flash_bwd_dkdv: [
                f(&flash, "flash_bwd_dkdv_d64")?,
                f(&flash, "flash_bwd_dkdv_d128")?,
            ],
            flash_bwd_dq: [
                f(&flash, "flash_bwd_dq_d64")?,
                f(&flash, "flash_bwd_dq_d128")?,
            ],
            flash_bwd_pre: f(&flash, "flash_bwd_pre")?,
            flash_dq_convert: f(&flash, "flash_dq_convert")?,
            kv_write: f(&decode, "kv_write")?,
            attention_decode_partial: f(&decode, "attention_decode_partial")?,
            attention_decode_combine: f(&decode, "attention_decode_combine")?,
        };
        // Above 48 KiB of dynamic shared memory a kernel must opt in.
        for (funcs, kind) in [
            (&k.flash_fwd[0], FlashKernel::Fwd(64)),
            (&k.flash_fwd[1], FlashKernel::Fwd(128)),
            (&k.flash_bwd_dkdv, FlashKernel::DkDv),
            (&k.flash_bwd_dq, FlashKernel::Dq),
        ] {
            for (func, d) in funcs.iter().zip(FLASH_HEAD_DIMS) {
                device::set_max_dynamic_shared(func, flash_smem(kind, d)).map_err(|e| {
                    format!("flash attention (head dim {d}): cannot reserve shared memory: {e}")
                })?;
            }
        }
        let gemm = Gemm::new(stream.clone())?;
        let z = |n| {
            stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| format!("CUDA allocation: {e:?}"))
        };
        let scratch = Scratch {
            positions: Kept::new(),
            flash: Kept::new(),
            targets: Kept::new(),
            ints: Vec::new(),
            partials: z(SUMSQ_BLOCKS)?,
            delta: z(1)?,
            dq_acc: z(1)?,
            decode_m: z(1)?,
            decode_l: z(1)?,
            decode_acc: z(1)?,
        };
        Ok(CudaBackend {
            ctx,
            stream,
            k,
            gemm,
            scratch: Mutex::new(scratch),
            attention: AttentionKernel::Flash,
            deterministic: false,
            flash_fwd_rows: flash_fwd_rows_from_env()?,
        })
    }

    /// Choose the attention kernels (`train.attention`) and whether the backward is bitwise
    /// repeatable (`train.deterministic`).
    pub fn set_attention(&mut self, kernel: AttentionKernel, deterministic: bool) {
        self.attention = kernel;
        self.deterministic = deterministic;
    }

    /// Query rows per block of the flash forward (64 or 128; anything else is refused).
    pub fn set_flash_fwd_rows(&mut self, rows: usize) {
        assert!(
            rows == 64 || rows == 128,
            "flash forward rows must be 64 or 128, not {rows}"
        );
        self.flash_fwd_rows = rows;
    }

    /// Which kernels `attention` and `attention_bwd` run for head dim `d`.
    pub fn attention_kernel(&self, d: usize) -> AttentionKernel {
        if self.attention == AttentionKernel::Flash && FLASH_HEAD_DIMS.contains(&d) {
            AttentionKernel::Flash
        } else {
            AttentionKernel::Reference
        }
    }

    /// The device's context (communicators create their streams in it).
    #[cfg(feature = "cuda")]
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The compute stream every kernel of this backend runs on.
    #[cfg(feature = "cuda")]
    pub(crate) fn compute_stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown device".into())
    }

    fn launch<'a>(
        &'a self,
        what: &str,
        f: &'a CudaFunction,
        cfg: LaunchConfig,
        push: impl FnOnce(&mut LaunchArgs<'a>),
    ) {
        let mut b = self.stream.launch_builder(f);
        push(&mut b);
        // SAFETY: every kernel's argument list is pushed in the order and types of its extern "C"
        // signature in kernels/*.cu. Every `Backend` operation first checks its buffers' lengths
        // and kinds, and its host indices, against the shapes it launches with (`contract`), and
        // sizes the scratch it passes itself, so the kernels index inside their allocations.
        unsafe { b.launch(cfg) }.unwrap_or_else(|e| panic!("CUDA launch {what}: {e:?}"));
    }

    /// Grow the fp32 partial sums of a two-pass column reduction to `len` (grow-only).
    fn grow_partials(&self, scratch: &mut Scratch, len: usize) {
        if scratch.partials.len() < len {
            scratch.partials = self
                .stream
                .alloc_zeros::<f32>(len)
                .expect("CUDA allocation");
        }
    }

    /// dst[j] += Σ_p partials[p, j] over `nparts` rows of `d`, in row order (fp32 dst).
    fn reduce_partials_add(&self, scratch: &Scratch, dst: &mut CudaBuf, nparts: usize, d: usize) {
        let (nparts_i32, d_i32) = (i(nparts), i(d));
        self.launch(
            "reduce_partials_add",
            &self.k.reduce_partials_add,
            grid(d),
            |b| {
                b.arg(dst.f_mut())
                    .arg(&scratch.partials)
                    .arg(&nparts_i32)
                    .arg(&d_i32);
            },
        );
    }

    /// The device copy of the array `build` makes from `key` (and `shape`), with its flag: the
    /// last one when `key` and `shape` are the last call's, else a fresh upload (`Kept`).
    fn kept<'k>(
        &self,
        k: &'k mut Kept,
        key: &[u32],
        shape: (usize, usize),
        build: impl FnOnce() -> (Vec<u32>, bool),
    ) -> (&'k CudaSlice<i32>, bool) {
        if !(k.valid && k.shape == shape && k.key == key) {
            let (vals, flag) = build();
            let cap = vals.len().max(1).next_power_of_two();
            if k.dev.as_ref().is_none_or(|d| d.len() < vals.len()) {
                k.dev = Some(
                    self.stream
                        .alloc_zeros::<i32>(cap)
                        .expect("CUDA allocation"),
                );
                k.staging = [None, None];
            }
            let dev = k.dev.as_mut().expect("kept device copy");
            let slot = &mut k.staging[k.next];
            k.next = 1 - k.next;
            if slot.is_none() {
                *slot = Some(
                    device::alloc_pinned::<i32>(&self.ctx, dev.len())
                        .expect("CUDA pinned allocation"),
                );
            }
            let staging = slot.as_mut().expect("staging");
            let host = staging.as_mut_slice().expect("CUDA pinned staging");
            for (h, &v) in host.iter_mut().zip(&vals) {
                *h = v as i32;
            }
            self.stream
                .memcpy_htod(&*staging, dev)
                .expect("CUDA upload");
            k.key.clear();
            k.key.extend_from_slice(key);
            k.shape = shape;
            k.flag = flag;
            k.valid = true;
            k.uploads += 1;
        }
        (k.dev.as_ref().expect("kept device copy"), k.flag)
    }

    /// How many times the RoPE positions and the flash metadata have been uploaded.
    pub fn metadata_uploads(&self) -> (u64, u64) {
        let s = self.scratch.lock().expect("scratch");
        (s.positions.uploads, s.flash.uploads)
    }

    /// How many times cross-entropy's targets (the loss mask folded in) have been uploaded.
    pub fn target_uploads(&self) -> u64 {
        self.scratch.lock().expect("scratch").targets.uploads
    }

    /// Upload small host integer arrays into scratch slot `slot` (grow-only).
    fn ints(&self, scratch: &mut Scratch, slot: usize, host: &[u32]) {
        while scratch.ints.len() <= slot {
            scratch
                .ints
                .push(self.stream.alloc_zeros::<i32>(1).expect("CUDA allocation"));
        }
        if scratch.ints[slot].len() < host.len() {
            scratch.ints[slot] = self
                .stream
                .alloc_zeros::<i32>(host.len().next_power_of_two())
                .expect("CUDA allocation");
        }
        let as_i32: Vec<i32> = host.iter().map(|&x| x as i32).collect();
        self.stream
            .memcpy_htod(&as_i32, &mut scratch.ints[slot])
            .expect("CUDA upload");
    }

    #[allow(clippy::too_many_arguments)]
    fn flash_fwd(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        doc_ids: &[u32],
        a: AttnShape,
    ) {
        let mut guard = self.scratch.lock().expect("scratch");
        let s = &mut *guard;
        let (meta, contiguous) = self.kept(&mut s.flash, doc_ids, (a.batch, a.seq), || {
            flash_meta(doc_ids, a.batch, a.seq)
        });
        let di = (a.head_dim == 128) as usize;
        let rows = self.flash_fwd_rows;
        let cfg = LaunchConfig {
            grid_dim: (a.seq.div_ceil(rows) as u32, a.heads as u32, a.batch as u32),
            block_dim: (rows as u32 / 16 * 32, 1, 1),
            shared_mem_bytes: flash_smem(FlashKernel::Fwd(rows), a.head_dim) as u32,
        };
        let (bb, t, h, hkv) = (i(a.batch), i(a.seq), i(a.heads), i(a.kv_heads));
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let (causal, contiguous) = (a.causal as i32, contiguous as i32);
        let func = &self.k.flash_fwd[(rows == 128) as usize][di];
        self.launch("flash_fwd", func, cfg, |b| {
            b.arg(out.h_mut())
                .arg(lse.f_mut())
                .arg(q.h())
                .arg(k.h())
                .arg(v.h())
                .arg(meta);
            b.arg(&bb)
                .arg(&t)
                .arg(&h)
                .arg(&hkv)
                .arg(&scale)
                .arg(&causal)
                .arg(&contiguous);
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn flash_bwd(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        doc_ids: &[u32],
        a: AttnShape,
    ) {
        let mut guard = self.scratch.lock().expect("scratch");
        let s = &mut *guard;
        let (meta, contiguous) = self.kept(&mut s.flash, doc_ids, (a.batch, a.seq), || {
            flash_meta(doc_ids, a.batch, a.seq)
        });
        let rows = a.batch * a.heads * a.seq;
        let grow = |buf: &mut CudaSlice<f32>, n: usize| {
            if buf.len() < n {
                *buf = self.stream.alloc_zeros::<f32>(n).expect("CUDA allocation");
            }
        };
        grow(&mut s.delta, rows);
        let atomic = !self.deterministic;
        if atomic {
            grow(&mut s.dq_acc, rows * a.head_dim);
        }
        let di = (a.head_dim == 128) as usize;
        let (bb, t, h, hkv, d) = (
            i(a.batch),
            i(a.seq),
            i(a.heads),
            i(a.kv_heads),
            i(a.head_dim),
        );
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let (causal, contiguous, atomic_i) = (a.causal as i32, contiguous as i32, atomic as i32);
        let pre = LaunchConfig {
            grid_dim: (blocks(rows, 4), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch("flash_bwd_pre", &self.k.flash_bwd_pre, pre, |b| {
            b.arg(&mut s.delta)
                .arg(&mut s.dq_acc)
                .arg(dout.h())
                .arg(out.h());
            b.arg(&bb).arg(&t).arg(&h).arg(&d).arg(&atomic_i);
        });
        let cfg = LaunchConfig {
            grid_dim: (a.seq.div_ceil(64) as u32, a.kv_heads as u32, a.batch as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: flash_smem(FlashKernel::DkDv, a.head_dim) as u32,
        };
        let inputs = AttnBwdInputs {
            dout: dout.h(),
            q: q.h(),
            k: k.h(),
            v: v.h(),
            lse: lse.f(),
            delta: &s.delta,
            ids: meta,
            dims: [bb, t, h, hkv],
            head_dim: d,
            scale,
            causal,
            flash_contiguous: Some(contiguous),
        };
        self.launch("flash_bwd_dkdv", &self.k.flash_bwd_dkdv[di], cfg, |b| {
            b.arg(dk.h_mut()).arg(dv.h_mut()).arg(&mut s.dq_acc);
            inputs.push(b);
            b.arg(&atomic_i);
        });
        if atomic {
            let n = i(rows * a.head_dim);
            self.launch(
                "flash_dq_convert",
                &self.k.flash_dq_convert,
                grid8(rows * a.head_dim),
                |b| {
                    b.arg(dq.h_mut()).arg(&s.dq_acc).arg(&n);
                },
            );
        } else {
            let cfg = LaunchConfig {
                grid_dim: (a.seq.div_ceil(64) as u32, a.heads as u32, a.batch as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: flash_smem(FlashKernel::Dq, a.head_dim) as u32,
            };
            self.launch("flash_bwd_dq", &self.k.flash_bwd_dq[di], cfg, |b| {
                b.arg(dq.h_mut());
                inputs.push(b);
            });
        }
    }

    fn gemm_run(&self, p: &gemm::Problem, a: &CudaSlice<bf16>, b: &CudaSlice<bf16>, d: u64) {
        let (pa, _sa) = a.device_ptr(&self.stream);
        let (pb, _sb) = b.device_ptr(&self.stream);
        // SAFETY: the GEMM operations check their buffers' lengths against m, k and n first
        // (`contract::matmul`, `matmul_dx`, `matmul_dw`), and the problem is built from the same
        // m, k and n, so cuBLASLt reads and writes inside the three allocations.
        unsafe { self.gemm.run(p, pa, pb, d) }.unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!(
            "cuda ({}, bf16 compute, fp32 master weights)",
            self.device_name()
        )
    }

    fn elem_bytes(&self, kind: BufKind) -> usize {
        match kind {
            BufKind::Act | BufKind::Param => 2,
            BufKind::Grad | BufKind::Optim | BufKind::Stat => 4,
        }
    }

    fn storage_bytes(&self, kind: BufKind) -> usize {
        match kind {
            BufKind::Param => 6,
            other => self.elem_bytes(other),
        }
    }

    fn device_memory_bytes(&self) -> Option<f64> {
        self.ctx.total_mem().ok().map(|b| b as f64)
    }

    fn allocator_peak(&self) -> Option<f64> {
        device::pool_peak_bytes(&self.ctx).ok().map(|b| b as f64)
    }

    fn device_memory_in_use(&self) -> Option<f64> {
        let (free, total) = self.ctx.mem_get_info().ok()?;
        Some(total.saturating_sub(free) as f64)
    }

    /// Dense bf16 peak of known devices (never the sparse figure); 0 for others.
    fn peak_flops(&self) -> f64 {
        let name = self.device_name();
        if name.contains("H100") || name.contains("H200") || name.contains("GH200") {
            989.4e12
        } else if name.contains("A100") {
            312e12
        } else if name.contains("L40S") {
            362e12
        } else if name.contains("A10G") || name.contains("A10") {
            125e12
        } else {
            0.0
        }
    }

    fn synchronize(&self) {
        self.stream.synchronize().expect("CUDA synchronize");
    }

    fn alloc(&self, len: usize, kind: BufKind) -> CudaBuf {
        let s = &self.stream;
        let (f32, bf16) = match kind {
            BufKind::Act => (
                None,
                Some(s.alloc_zeros::<bf16>(len).expect("CUDA allocation")),
            ),
            BufKind::Param => (
                Some(s.alloc_zeros::<f32>(len).expect("CUDA allocation")),
                Some(s.alloc_zeros::<bf16>(len).expect("CUDA allocation")),
            ),
            BufKind::Grad | BufKind::Optim | BufKind::Stat => (
                Some(s.alloc_zeros::<f32>(len).expect("CUDA allocation")),
                None,
            ),
        };
        CudaBuf {
            kind,
            len,
            f32,
            bf16,
        }
    }

    fn upload_as(&self, host: &[f32], kind: BufKind) -> CudaBuf {
        let s = &self.stream;
        let f32 = matches!(
            kind,
            BufKind::Param | BufKind::Grad | BufKind::Optim | BufKind::Stat
        )
        .then(|| s.clone_htod(host).expect("CUDA upload"));
        let bf16 = matches!(kind, BufKind::Param | BufKind::Act).then(|| {
            let h: Vec<bf16> = host.iter().map(|&x| bf16::from_f32(x)).collect();
            s.clone_htod(&h).expect("CUDA upload")
        });
        CudaBuf {
            kind,
            len: host.len(),
            f32,
            bf16,
        }
    }

    fn download(&self, buf: &CudaBuf) -> Vec<f32> {
        match (&buf.f32, &buf.bf16) {
            (Some(f), _) => self.stream.clone_dtoh(f).expect("CUDA download"),
            (None, Some(h)) => self
                .stream
                .clone_dtoh(h)
                .expect("CUDA download")
                .into_iter()
                .map(f32::from)
                .collect(),
            (None, None) => Vec::new(),
        }
    }

    fn buf_len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn buf_kind(&self, buf: &CudaBuf) -> Option<BufKind> {
        Some(buf.kind)
    }

    fn fill_zero(&self, buf: &mut CudaBuf) {
        if let Some(f) = buf.f32.as_mut() {
            self.stream.memset_zeros(f).expect("CUDA memset");
        }
        if let Some(h) = buf.bf16.as_mut() {
            self.stream.memset_zeros(h).expect("CUDA memset");
        }
    }

    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf) {
        contract::copy(self, dst, src);
        self.copy_range(dst, 0, src, 0, src.len);
    }

    fn copy_range(
        &self,
        dst: &mut CudaBuf,
        dst_off: usize,
        src: &CudaBuf,
        src_off: usize,
        len: usize,
    ) {
        contract::copy_range(self, dst, dst_off, src, src_off, len);
        if let (Some(d), Some(s)) = (dst.f32.as_mut(), src.f32.as_ref()) {
            self.stream
                .memcpy_dtod(
                    &s.slice(src_off..src_off + len),
                    &mut d.slice_mut(dst_off..dst_off + len),
                )
                .expect("CUDA copy");
        }
        if let (Some(d), Some(s)) = (dst.bf16.as_mut(), src.bf16.as_ref()) {
            self.stream
                .memcpy_dtod(
                    &s.slice(src_off..src_off + len),
                    &mut d.slice_mut(dst_off..dst_off + len),
                )
                .expect("CUDA copy");
        }
    }

    fn add_range(
        &self,
        dst: &mut CudaBuf,
        dst_off: usize,
        src: &CudaBuf,
        src_off: usize,
        len: usize,
    ) {
        contract::add_range(self, dst, dst_off, src, src_off, len);
        let (d_i32, s_i32, n_i32) = (i(dst_off), i(src_off), i(len));
        self.launch("add_f32_range", &self.k.add_f32_range, grid(len), |b| {
            b.arg(dst.f_mut())
                .arg(&d_i32)
                .arg(src.f())
                .arg(&s_i32)
                .arg(&n_i32);
        });
    }

    fn matmul(&self, y: &mut CudaBuf, x: &CudaBuf, w: &CudaBuf, m: usize, k: usize, n: usize) {
        contract::matmul(self, "matmul", y, x, w, (m, k, n));
        let (py, _sy) = y.h_mut().device_ptr_mut(&self.stream);
        self.gemm_run(&gemm::Problem::forward(m, k, n), w.h(), x.h(), py);
    }

    fn matmul_dx(
        &self,
        dx: &mut CudaBuf,
        dy: &CudaBuf,
        w: &CudaBuf,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        contract::matmul_dx(self, dx, dy, w, (m, k, n));
        let (pd, _sd) = dx.h_mut().device_ptr_mut(&self.stream);
        self.gemm_run(
            &gemm::Problem::input_grad(m, k, n, accumulate),
            w.h(),
            dy.h(),
            pd,
        );
    }

    fn matmul_dw(&self, dw: &mut CudaBuf, dy: &CudaBuf, x: &CudaBuf, m: usize, k: usize, n: usize) {
        contract::matmul_dw(self, dw, dy, x, (m, k, n));
        let (pd, _sd) = dw.f_mut().device_ptr_mut(&self.stream);
        self.gemm_run(&gemm::Problem::weight_grad(m, k, n), x.h(), dy.h(), pd);
    }

    fn embedding(&self, out: &mut CudaBuf, table: &CudaBuf, ids: &[u32], d: usize) {
        contract::embedding(self, out, table, ids, d);
        let mut s = self.scratch.lock().expect("scratch");
        self.ints(&mut s, 0, ids);
        let n = ids.len();
        let n_i32 = i(n);
        let d_i32 = i(d);
        i(n * d); // the kernel indexes N·d in 32 bits
        self.launch("embedding_fwd", &self.k.embedding_fwd, grid8(n * d), |b| {
            b.arg(out.h_mut())
                .arg(table.h())
                .arg(&s.ints[0])
                .arg(&n_i32)
                .arg(&d_i32);
        });
    }

    fn embedding_dw(&self, dtable: &mut CudaBuf, dout: &CudaBuf, ids: &[u32], d: usize) {
        contract::embedding_dw(self, dtable, dout, ids, d);
        // Deterministic: tokens sorted (stably) by id on the host; one block per distinct id sums
        // its rows in order.
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&t| ids[t as usize]);
        let mut seg_start = Vec::new();
        let mut seg_id = Vec::new();
        for (pos, &t) in order.iter().enumerate() {
            if pos == 0 || ids[t as usize] != ids[order[pos - 1] as usize] {
                seg_start.push(pos as u32);
                seg_id.push(ids[t as usize]);
            }
        }
        seg_start.push(order.len() as u32);
        let nseg = seg_id.len();
        let mut s = self.scratch.lock().expect("scratch");
        self.ints(&mut s, 0, &order);
        self.ints(&mut s, 1, &seg_start);
        self.ints(&mut s, 2, &seg_id);
        let cfg = LaunchConfig {
            grid_dim: (nseg.max(1) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let nseg_i32 = i(nseg);
        let d_i32 = i(d);
        self.launch("embedding_bwd", &self.k.embedding_bwd, cfg, |b| {
            b.arg(dtable.f_mut())
                .arg(dout.h())
                .arg(&s.ints[0])
                .arg(&s.ints[1])
                .arg(&s.ints[2])
                .arg(&nseg_i32)
                .arg(&d_i32);
        });
    }

    fn rmsnorm(
        &self,
        out: &mut CudaBuf,
        rstd: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        d: usize,
        eps: f32,
    ) {
        contract::rmsnorm(self, out, rstd, x, w, d);
        let n = rstd.len;
        let cfg = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n_i32 = i(n);
        let d_i32 = i(d);
        self.launch("rmsnorm_fwd", &self.k.rmsnorm_fwd, cfg, |b| {
            b.arg(out.h_mut())
                .arg(rstd.f_mut())
                .arg(x.h())
                .arg(w.h())
                .arg(&n_i32)
                .arg(&d_i32)
                .arg(&eps);
        });
    }

    fn rmsnorm_bwd(
        &self,
        dx: &mut CudaBuf,
        dw: &mut CudaBuf,
        dout: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        rstd: &CudaBuf,
        d: usize,
    ) {
        contract::rmsnorm_bwd(self, dx, dw, dout, x, w, rstd, d);
        let n = rstd.len;
        let nblocks = n.div_ceil(RMSNORM_BWD_ROWS);
        let mut s = self.scratch.lock().expect("scratch");
        self.grow_partials(&mut s, nblocks * d);
        let cfg = LaunchConfig {
            grid_dim: (nblocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n_i32 = i(n);
        let d_i32 = i(d);
        let rows_per_block = i(RMSNORM_BWD_ROWS);
        self.launch("rmsnorm_bwd", &self.k.rmsnorm_bwd, cfg, |b| {
            b.arg(dx.h_mut())
                .arg(&mut s.partials)
                .arg(dout.h())
                .arg(x.h())
                .arg(w.h())
                .arg(rstd.f())
                .arg(&n_i32)
                .arg(&d_i32)
                .arg(&rows_per_block);
        });
        self.reduce_partials_add(&s, dw, nblocks, d);
    }

    fn rope(
        &self,
        x: &mut CudaBuf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &CudaBuf,
        sin: &CudaBuf,
    ) {
        contract::rope(self, "rope", x, positions, (heads, head_dim), cos, sin);
        self.rope_dir(x, positions, heads, head_dim, cos, sin, 1);
    }

    fn rope_bwd(
        &self,
        dx: &mut CudaBuf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &CudaBuf,
        sin: &CudaBuf,
    ) {
        contract::rope(self, "rope_bwd", dx, positions, (heads, head_dim), cos, sin);
        self.rope_dir(dx, positions, heads, head_dim, cos, sin, -1);
    }

    fn attention(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        doc_ids: &[u32],
        a: AttnShape,
    ) {
        contract::attention(self, out, lse, q, k, v, doc_ids, a);
        if self.attention_kernel(a.head_dim) == AttentionKernel::Flash {
            return self.flash_fwd(out, lse, q, k, v, doc_ids, a);
        }
        let mut s = self.scratch.lock().expect("scratch");
        self.ints(&mut s, 0, doc_ids);
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let causal = a.causal as i32;
        let cfg = LaunchConfig {
            grid_dim: ((a.batch * a.heads * a.seq) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (a.seq * 4) as u32,
        };
        let batch_i32 = i(a.batch);
        let seq_i32 = i(a.seq);
        let heads_i32 = i(a.heads);
        let kv_heads_i32 = i(a.kv_heads);
        let head_dim_i32 = i(a.head_dim);
        self.launch("attention_fwd", &self.k.attention_fwd, cfg, |b| {
            b.arg(out.h_mut())
                .arg(lse.f_mut())
                .arg(q.h())
                .arg(k.h())
                .arg(v.h())
                .arg(&s.ints[0]);
            b.arg(&batch_i32)
                .arg(&seq_i32)
                .arg(&heads_i32)
                .arg(&kv_heads_i32)
                .arg(&head_dim_i32)
                .arg(&scale)
                .arg(&causal);
        });
    }

    fn attention_bwd(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        doc_ids: &[u32],
        a: AttnShape,
    ) {
        contract::attention_bwd(self, (dq, dk, dv), dout, out, lse, (q, k, v), doc_ids, a);
        if self.attention_kernel(a.head_dim) == AttentionKernel::Flash {
            return self.flash_bwd(dq, dk, dv, dout, out, lse, q, k, v, doc_ids, a);
        }
        let mut s = self.scratch.lock().expect("scratch");
        self.ints(&mut s, 0, doc_ids);
        let causal = a.causal as i32;
        let rows = a.batch * a.heads * a.seq;
        if s.delta.len() < rows {
            s.delta = self
                .stream
                .alloc_zeros::<f32>(rows)
                .expect("CUDA allocation");
        }
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let (bb, t, h, hkv, d) = (
            i(a.batch),
            i(a.seq),
            i(a.heads),
            i(a.kv_heads),
            i(a.head_dim),
        );
        self.launch(
            "attention_delta",
            &self.k.attention_delta,
            grid(rows),
            |b| {
                b.arg(&mut s.delta)
                    .arg(dout.h())
                    .arg(out.h())
                    .arg(&bb)
                    .arg(&t)
                    .arg(&h)
                    .arg(&d);
            },
        );
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let inputs = AttnBwdInputs {
            dout: dout.h(),
            q: q.h(),
            k: k.h(),
            v: v.h(),
            lse: lse.f(),
            delta: &s.delta,
            ids: &s.ints[0],
            dims: [bb, t, h, hkv],
            head_dim: d,
            scale,
            causal,
            flash_contiguous: None,
        };
        self.launch("attention_bwd_dq", &self.k.attention_bwd_dq, cfg, |b| {
            b.arg(dq.h_mut());
            inputs.push(b);
        });
        let cfg = LaunchConfig {
            grid_dim: ((a.batch * a.kv_heads * a.seq) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch("attention_bwd_dkdv", &self.k.attention_bwd_dkdv, cfg, |b| {
            b.arg(dk.h_mut()).arg(dv.h_mut());
            inputs.push(b);
        });
    }

    fn swiglu(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf) {
        contract::swiglu(self, out, gate, up);
        let n = out.len;
        let n_i32 = i(n);
        self.launch("swiglu_fwd", &self.k.swiglu_fwd, grid8(n), |b| {
            b.arg(out.h_mut()).arg(gate.h()).arg(up.h()).arg(&n_i32);
        });
    }

    fn swiglu_bwd(
        &self,
        dgate: &mut CudaBuf,
        dup: &mut CudaBuf,
        dout: &CudaBuf,
        gate: &CudaBuf,
        up: &CudaBuf,
    ) {
        contract::swiglu_bwd(self, dgate, dup, dout, gate, up);
        let n = dout.len;
        let n_i32 = i(n);
        self.launch("swiglu_bwd", &self.k.swiglu_bwd, grid8(n), |b| {
            b.arg(dgate.h_mut())
                .arg(dup.h_mut())
                .arg(dout.h())
                .arg(gate.h())
                .arg(up.h())
                .arg(&n_i32);
        });
    }

    fn cross_entropy_rows(
        &self,
        logits: &mut CudaBuf,
        targets: &[u32],
        mask: &[u8],
        row0: usize,
        vocab: usize,
        scale: f32,
        losses: &mut CudaBuf,
    ) {
        contract::cross_entropy_rows(self, logits, targets, mask, row0, vocab, losses);
        let rows = logits.len / vocab;
        // The batch's targets with the mask folded in (u32::MAX, as int −1: masked), uploaded
        // once per micro-batch: every chunk of a chunked head passes the same.
        let folded: Vec<u32> = targets
            .iter()
            .zip(mask)
            .map(|(&t, &m)| if m != 0 { t } else { u32::MAX })
            .collect();
        let mut guard = self.scratch.lock().expect("scratch");
        let s = &mut *guard;
        let (dev, _) = self.kept(&mut s.targets, &folded, (targets.len(), 1), || {
            (folded.clone(), false)
        });
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (512, 1, 1),
            shared_mem_bytes: 0,
        };
        let chunk_targets = dev.slice(row0..row0 + rows);
        let mut chunk_losses = losses.f_mut().slice_mut(row0..row0 + rows);
        let (rows_i32, vocab_i32) = (i(rows), i(vocab));
        self.launch(
            "cross_entropy_fused",
            &self.k.cross_entropy_fused,
            cfg,
            |b| {
                b.arg(logits.h_mut())
                    .arg(&mut chunk_losses)
                    .arg(&chunk_targets)
                    .arg(&rows_i32)
                    .arg(&vocab_i32)
                    .arg(&scale);
            },
        );
    }

    fn add_assign(&self, y: &mut CudaBuf, x: &CudaBuf) {
        contract::add_assign(self, y, x);
        let n = y.len;
        let n_i32 = i(n);
        self.launch("add_bf16", &self.k.add_bf16, grid8(n), |b| {
            b.arg(y.h_mut()).arg(x.h()).arg(&n_i32);
        });
    }

    fn add_bias(&self, y: &mut CudaBuf, b: &CudaBuf) {
        contract::add_bias(self, y, b);
        let (n_i32, d_i32) = (i(y.len), i(b.len));
        self.launch("add_bias_bf16", &self.k.add_bias_bf16, grid8(y.len), |a| {
            a.arg(y.h_mut()).arg(b.h()).arg(&n_i32).arg(&d_i32);
        });
    }

    fn bias_grad(&self, db: &mut CudaBuf, dy: &CudaBuf) {
        contract::bias_grad(self, db, dy);
        let d = db.len;
        let rows = dy.len / d;
        let nblocks = rows.div_ceil(BIAS_GRAD_ROWS);
        let mut s = self.scratch.lock().expect("scratch");
        self.grow_partials(&mut s, nblocks * d);
        let cfg = LaunchConfig {
            grid_dim: (nblocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows_i32, d_i32, per_block) = (i(rows), i(d), i(BIAS_GRAD_ROWS));
        self.launch("bias_grad_partials", &self.k.bias_grad_partials, cfg, |a| {
            a.arg(&mut s.partials)
                .arg(dy.h())
                .arg(&rows_i32)
                .arg(&d_i32)
                .arg(&per_block);
        });
        self.reduce_partials_add(&s, db, nblocks, d);
    }

    fn sum_squares(&self, x: &CudaBuf) -> f64 {
        contract::sum_squares(self, x);
        let n = x.len;
        let mut s = self.scratch.lock().expect("scratch");
        let cfg = LaunchConfig {
            grid_dim: (SUMSQ_BLOCKS as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n_i32 = i(n);
        self.launch("sum_squares_f32", &self.k.sum_squares_f32, cfg, |b| {
            b.arg(&mut s.partials).arg(x.f()).arg(&n_i32);
        });
        let parts = self
            .stream
            .clone_dtoh(&s.partials.slice(0..SUMSQ_BLOCKS))
            .expect("CUDA download");
        parts.iter().map(|&p| p as f64).sum()
    }

    fn sum_squares_many(&self, xs: &[&CudaBuf]) -> f64 {
        for x in xs {
            contract::sum_squares(self, x);
        }
        if xs.is_empty() {
            return 0.0;
        }
        let mut s = self.scratch.lock().expect("scratch");
        self.grow_partials(&mut s, xs.len() * SUMSQ_BLOCKS);
        let cfg = LaunchConfig {
            grid_dim: (SUMSQ_BLOCKS as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // Each tensor's block partials in a row of their own, then one read of them all.
        for (k, x) in xs.iter().enumerate() {
            let n_i32 = i(x.len);
            let mut row = s
                .partials
                .slice_mut(k * SUMSQ_BLOCKS..(k + 1) * SUMSQ_BLOCKS);
            self.launch("sum_squares_f32", &self.k.sum_squares_f32, cfg, |b| {
                b.arg(&mut row).arg(x.f()).arg(&n_i32);
            });
        }
        let parts = self
            .stream
            .clone_dtoh(&s.partials.slice(0..xs.len() * SUMSQ_BLOCKS))
            .expect("CUDA download");
        // The order of sum_squares, tensor by tensor.
        parts
            .chunks(SUMSQ_BLOCKS)
            .map(|c| c.iter().map(|&p| p as f64).sum::<f64>())
            .sum()
    }

    fn adamw(&self, p: &mut CudaBuf, g: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, hp: AdamW) {
        contract::adamw(self, p, g, m, v, &hp);
        let n = p.len;
        let bc1 = 1.0 - (hp.beta1 as f64).powi(hp.step as i32);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(hp.step as i32);
        let (Some(pf), Some(ph)) = (p.f32.as_mut(), p.bf16.as_mut()) else {
            unreachable!("contract::adamw admits only parameters, which have both storages");
        };
        let n_i32 = i(n);
        let (bias_c1, bias_c2) = (bc1 as f32, bc2 as f32);
        self.launch("adamw", &self.k.adamw, grid8(n), |b| {
            b.arg(pf)
                .arg(ph)
                .arg(g.f())
                .arg(m.f_mut())
                .arg(v.f_mut())
                .arg(&n_i32);
            b.arg(&hp.lr)
                .arg(&hp.beta1)
                .arg(&hp.beta2)
                .arg(&hp.eps)
                .arg(&hp.weight_decay);
            b.arg(&bias_c1).arg(&bias_c2).arg(&hp.grad_scale);
        });
    }
}

impl GenerationBackend for CudaBackend {
    /// cuBLASLt picks its algorithm by shape, so on the GPU this is the ordinary GEMM and a row's
    /// result may change (in its last bf16 bits) with the batch it is computed in.
    fn matmul_rowwise(
        &self,
        y: &mut CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        m: usize,
        k: usize,
        n: usize,
    ) {
        contract::matmul(self, "matmul_rowwise", y, x, w, (m, k, n));
        let (py, _sy) = y.h_mut().device_ptr_mut(&self.stream);
        self.gemm_run(&gemm::Problem::forward(m, k, n), w.h(), x.h(), py);
    }

    fn attention_cached(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        max_len: usize,
        past: usize,
        window: Option<usize>,
        a: AttnShape,
    ) {
        contract::attention_cached(self, out, q, k_cache, v_cache, max_len, past, window, a);
        let window_i32 = i(window.unwrap_or(0));
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: ((a.batch * a.heads * a.seq) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: ((past + a.seq) * 4) as u32,
        };
        let batch_i32 = i(a.batch);
        let seq_i32 = i(a.seq);
        let heads_i32 = i(a.heads);
        let kv_heads_i32 = i(a.kv_heads);
        let head_dim_i32 = i(a.head_dim);
        let max_len_i32 = i(max_len);
        let past_i32 = i(past);
        self.launch("attention_cached", &self.k.attention_cached, cfg, |b| {
            b.arg(out.h_mut())
                .arg(q.h())
                .arg(k_cache.h())
                .arg(v_cache.h());
            b.arg(&batch_i32)
                .arg(&seq_i32)
                .arg(&heads_i32)
                .arg(&kv_heads_i32)
                .arg(&head_dim_i32)
                .arg(&max_len_i32)
                .arg(&past_i32)
                .arg(&window_i32)
                .arg(&scale);
        });
    }

    fn kv_write(
        &self,
        cache: &mut CudaBuf,
        src: &CudaBuf,
        slots: &[u32],
        positions: &[u32],
        max_len: usize,
    ) {
        contract::kv_write(self, cache, src, slots, positions, max_len);
        let n = slots.len();
        if n == 0 {
            return;
        }
        let w = src.len / n;
        let mut s = self.scratch.lock().expect("scratch");
        self.ints(&mut s, 0, slots);
        self.ints(&mut s, 1, positions);
        let (n_i32, w_i32, max_len_i32) = (i(n), i(w), i(max_len));
        i(n * w); // the kernel indexes N·W in 32 bits
        self.launch("kv_write", &self.k.kv_write, grid8(n * w), |b| {
            b.arg(cache.h_mut())
                .arg(src.h())
                .arg(&s.ints[0])
                .arg(&s.ints[1])
                .arg(&n_i32)
                .arg(&w_i32)
                .arg(&max_len_i32);
        });
    }

    fn attention_decode(
        &self,
        out: &mut CudaBuf,
        q: &CudaBuf,
        k_cache: &CudaBuf,
        v_cache: &CudaBuf,
        slots: &[u32],
        lens: &[u32],
        max_len: usize,
        window: Option<usize>,
        a: AttnShape,
    ) {
        contract::attention_decode(
            self, out, q, k_cache, v_cache, slots, lens, max_len, window, a,
        );
        let window_i32 = i(window.unwrap_or(0));
        assert!(
            a.head_dim <= 256,
            "attention_decode: head_dim {} > 256 (the decode kernels' limit)",
            a.head_dim
        );
        let n = a.batch;
        let longest = lens.iter().copied().max().unwrap_or(1) as usize;
        let splits = longest.div_ceil(DECODE_CHUNK);
        let rows = n * a.heads * splits;
        let mut s = self.scratch.lock().expect("scratch");
        let grow = |buf: &mut CudaSlice<f32>, need: usize| {
            if buf.len() < need {
                *buf = self
                    .stream
                    .alloc_zeros::<f32>(need.next_power_of_two())
                    .expect("CUDA allocation");
            }
        };
        grow(&mut s.decode_m, rows);
        grow(&mut s.decode_l, rows);
        grow(&mut s.decode_acc, rows * a.head_dim);
        self.ints(&mut s, 0, slots);
        self.ints(&mut s, 1, lens);
        let scale = 1.0 / (a.head_dim as f32).sqrt();
        let (n_i32, h_i32, hkv_i32, d_i32) = (i(n), i(a.heads), i(a.kv_heads), i(a.head_dim));
        let (max_len_i32, chunk_i32, splits_i32) = (i(max_len), i(DECODE_CHUNK), i(splits));
        let Scratch {
            ints,
            decode_m: pm,
            decode_l: pl,
            decode_acc: pacc,
            ..
        } = &mut *s;
        let cfg = LaunchConfig {
            grid_dim: ((n * a.heads) as u32, splits as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (DECODE_CHUNK * 4) as u32,
        };
        self.launch(
            "attention_decode_partial",
            &self.k.attention_decode_partial,
            cfg,
            |b| {
                b.arg(&mut *pm)
                    .arg(&mut *pl)
                    .arg(&mut *pacc)
                    .arg(q.h())
                    .arg(k_cache.h())
                    .arg(v_cache.h())
                    .arg(&ints[0])
                    .arg(&ints[1]);
                b.arg(&n_i32)
                    .arg(&h_i32)
                    .arg(&hkv_i32)
                    .arg(&d_i32)
                    .arg(&max_len_i32)
                    .arg(&chunk_i32)
                    .arg(&splits_i32)
                    .arg(&window_i32)
                    .arg(&scale);
            },
        );
        let cfg = LaunchConfig {
            grid_dim: ((n * a.heads) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(
            "attention_decode_combine",
            &self.k.attention_decode_combine,
            cfg,
            |b| {
                b.arg(out.h_mut())
                    .arg(&*pm)
                    .arg(&*pl)
                    .arg(&*pacc)
                    .arg(&n_i32)
                    .arg(&h_i32)
                    .arg(&d_i32)
                    .arg(&splits_i32);
            },
        );
    }
}

impl CudaBackend {
    #[allow(clippy::too_many_arguments)]
    fn rope_dir(
        &self,
        x: &mut CudaBuf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &CudaBuf,
        sin: &CudaBuf,
        dir: i32,
    ) {
        let n = positions.len();
        let mut guard = self.scratch.lock().expect("scratch");
        let (pos, _) = self.kept(&mut guard.positions, positions, (n, 0), || {
            (positions.to_vec(), false)
        });
        let n_i32 = i(n);
        let heads_i32 = i(heads);
        let head_dim_i32 = i(head_dim);
        i(n * heads * head_dim); // the kernel indexes x in 32 bits
        self.launch("rope", &self.k.rope, grid8(n * heads * head_dim / 2), |b| {
            b.arg(x.h_mut())
                .arg(pos)
                .arg(cos.f())
                .arg(sin.f())
                .arg(&n_i32)
                .arg(&heads_i32)
                .arg(&head_dim_i32)
                .arg(&dir);
        });
    }

    /// Refresh a parameter's bf16 copy from its fp32 master (after loading weights).
    pub fn sync_param_copy(&self, p: &mut CudaBuf) {
        let n = p.len;
        if let (Some(f), Some(h)) = (p.f32.as_ref(), p.bf16.as_mut()) {
            let n_i32 = i(n);
            self.launch(
                "cast_f32_to_bf16",
                &self.k.cast_f32_to_bf16,
                grid8(n),
                |b| {
                    b.arg(h).arg(f).arg(&n_i32);
                },
            );
        }
    }
}

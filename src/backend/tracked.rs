//! A backend that measures memory: [`Tracked`] wraps any backend, runs every operation on it
//! unchanged, and counts the bytes of the buffers alive by [`BufKind`], with the peak of each, as
//! buffers are made and dropped. The memory plan (`train::memory`) is held against these
//! measurements on the CPU in CI, during real training steps at every ZeRO stage and
//! recomputation mode.

use std::sync::{Arc, Mutex};

use super::{AdamW, AttnShape, Backend, BufKind, GenerationBackend};

/// The kinds in the order of [`MemPeaks`]'s arrays.
pub const KINDS: [BufKind; 5] = [
    BufKind::Param,
    BufKind::Grad,
    BufKind::Optim,
    BufKind::Act,
    BufKind::Stat,
];

fn slot(kind: BufKind) -> usize {
    KINDS.iter().position(|&k| k == kind).expect("every kind")
}

/// Bytes alive now and at their peak, by kind ([`KINDS`] order), and the peak of their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemPeaks {
    pub live: [u64; 5],
    pub peak: [u64; 5],
    pub peak_total: u64,
}

impl MemPeaks {
    /// The peak bytes of buffers of `kind`.
    pub fn peak_of(&self, kind: BufKind) -> u64 {
        self.peak[slot(kind)]
    }
}

#[derive(Default)]
struct Counter(Mutex<MemPeaks>);

impl Counter {
    fn add(&self, kind: BufKind, bytes: u64) {
        let mut c = self.0.lock().expect("memory counter");
        let i = slot(kind);
        c.live[i] += bytes;
        c.peak[i] = c.peak[i].max(c.live[i]);
        let total = c.live.iter().sum::<u64>();
        c.peak_total = c.peak_total.max(total);
    }
    fn sub(&self, kind: BufKind, bytes: u64) {
        let mut c = self.0.lock().expect("memory counter");
        c.live[slot(kind)] -= bytes;
    }
}

/// Any backend, with its buffers counted.
pub struct Tracked<B: Backend> {
    pub inner: B,
    counter: Arc<Counter>,
}

/// A buffer of a [`Tracked`] backend: the inner buffer, and what it counts for until dropped.
pub struct TrackedBuf<B: Backend> {
    pub inner: B::Buf,
    kind: BufKind,
    bytes: u64,
    counter: Arc<Counter>,
}

impl<B: Backend> Drop for TrackedBuf<B> {
    fn drop(&mut self) {
        self.counter.sub(self.kind, self.bytes);
    }
}

impl<B: Backend> Tracked<B> {
    pub fn new(inner: B) -> Self {
        Tracked {
            inner,
            counter: Arc::default(),
        }
    }

    /// Bytes alive now and the peaks so far.
    pub fn peaks(&self) -> MemPeaks {
        *self.counter.0.lock().expect("memory counter")
    }

    /// Start measuring peaks again from what is alive now.
    pub fn reset_peaks(&self) {
        let mut c = self.counter.0.lock().expect("memory counter");
        c.peak = c.live;
        c.peak_total = c.live.iter().sum();
    }

    fn wrap(&self, inner: B::Buf, kind: BufKind) -> TrackedBuf<B> {
        let bytes = (self.inner.buf_len(&inner) * self.inner.storage_bytes(kind)) as u64;
        self.counter.add(kind, bytes);
        TrackedBuf {
            inner,
            kind,
            bytes,
            counter: self.counter.clone(),
        }
    }
}

impl<B: Backend> Backend for Tracked<B> {
    type Buf = TrackedBuf<B>;

    fn name(&self) -> String {
        format!("{} (memory tracked)", self.inner.name())
    }
    fn elem_bytes(&self, kind: BufKind) -> usize {
        self.inner.elem_bytes(kind)
    }
    fn storage_bytes(&self, kind: BufKind) -> usize {
        self.inner.storage_bytes(kind)
    }
    fn device_memory_bytes(&self) -> Option<f64> {
        self.inner.device_memory_bytes()
    }
    fn peak_flops(&self) -> f64 {
        self.inner.peak_flops()
    }
    fn synchronize(&self) {
        self.inner.synchronize()
    }
    fn device_memory_in_use(&self) -> Option<f64> {
        self.inner.device_memory_in_use()
    }
    fn allocator_peak(&self) -> Option<f64> {
        self.inner.allocator_peak()
    }
    fn memory_peaks(&self) -> Option<MemPeaks> {
        Some(self.peaks())
    }
    fn alloc(&self, len: usize, kind: BufKind) -> Self::Buf {
        self.wrap(self.inner.alloc(len, kind), kind)
    }
    fn upload_as(&self, host: &[f32], kind: BufKind) -> Self::Buf {
        self.wrap(self.inner.upload_as(host, kind), kind)
    }
    fn download(&self, buf: &Self::Buf) -> Vec<f32> {
        self.inner.download(&buf.inner)
    }
    fn buf_len(&self, buf: &Self::Buf) -> usize {
        self.inner.buf_len(&buf.inner)
    }
    fn buf_kind(&self, buf: &Self::Buf) -> Option<BufKind> {
        self.inner.buf_kind(&buf.inner)
    }
    fn fill_zero(&self, buf: &mut Self::Buf) {
        self.inner.fill_zero(&mut buf.inner)
    }
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf) {
        self.inner.copy(&mut dst.inner, &src.inner)
    }
    fn copy_range(&self, dst: &mut Self::Buf, d: usize, src: &Self::Buf, s: usize, len: usize) {
        self.inner.copy_range(&mut dst.inner, d, &src.inner, s, len)
    }
    fn add_range(&self, dst: &mut Self::Buf, d: usize, src: &Self::Buf, s: usize, len: usize) {
        self.inner.add_range(&mut dst.inner, d, &src.inner, s, len)
    }
    fn matmul(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
    ) {
        self.inner.matmul(&mut y.inner, &x.inner, &w.inner, m, k, n)
    }
    fn matmul_dx(
        &self,
        dx: &mut Self::Buf,
        dy: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        self.inner
            .matmul_dx(&mut dx.inner, &dy.inner, &w.inner, m, k, n, accumulate)
    }
    fn matmul_dw(
        &self,
        dw: &mut Self::Buf,
        dy: &Self::Buf,
        x: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
    ) {
        self.inner
            .matmul_dw(&mut dw.inner, &dy.inner, &x.inner, m, k, n)
    }
    fn embedding(&self, out: &mut Self::Buf, table: &Self::Buf, ids: &[u32], d: usize) {
        self.inner.embedding(&mut out.inner, &table.inner, ids, d)
    }
    fn embedding_dw(&self, dtable: &mut Self::Buf, dout: &Self::Buf, ids: &[u32], d: usize) {
        self.inner
            .embedding_dw(&mut dtable.inner, &dout.inner, ids, d)
    }
    fn rmsnorm(
        &self,
        out: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        d: usize,
        eps: f32,
    ) {
        self.inner
            .rmsnorm(&mut out.inner, &mut rstd.inner, &x.inner, &w.inner, d, eps)
    }
    fn rmsnorm_bwd(
        &self,
        dx: &mut Self::Buf,
        dw: &mut Self::Buf,
        dout: &Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        rstd: &Self::Buf,
        d: usize,
    ) {
        self.inner.rmsnorm_bwd(
            &mut dx.inner,
            &mut dw.inner,
            &dout.inner,
            &x.inner,
            &w.inner,
            &rstd.inner,
            d,
        )
    }
    fn rope(
        &self,
        x: &mut Self::Buf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &Self::Buf,
        sin: &Self::Buf,
    ) {
        self.inner.rope(
            &mut x.inner,
            positions,
            heads,
            head_dim,
            &cos.inner,
            &sin.inner,
        )
    }
    fn rope_bwd(
        &self,
        dx: &mut Self::Buf,
        positions: &[u32],
        heads: usize,
        head_dim: usize,
        cos: &Self::Buf,
        sin: &Self::Buf,
    ) {
        self.inner.rope_bwd(
            &mut dx.inner,
            positions,
            heads,
            head_dim,
            &cos.inner,
            &sin.inner,
        )
    }
    fn attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_ids: &[u32],
        s: AttnShape,
    ) {
        self.inner.attention(
            &mut out.inner,
            &mut lse.inner,
            &q.inner,
            &k.inner,
            &v.inner,
            doc_ids,
            s,
        )
    }
    fn attention_bwd(
        &self,
        dq: &mut Self::Buf,
        dk: &mut Self::Buf,
        dv: &mut Self::Buf,
        dout: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        doc_ids: &[u32],
        s: AttnShape,
    ) {
        self.inner.attention_bwd(
            &mut dq.inner,
            &mut dk.inner,
            &mut dv.inner,
            &dout.inner,
            &out.inner,
            &lse.inner,
            &q.inner,
            &k.inner,
            &v.inner,
            doc_ids,
            s,
        )
    }
    fn swiglu(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf) {
        self.inner.swiglu(&mut out.inner, &gate.inner, &up.inner)
    }
    fn swiglu_bwd(
        &self,
        dgate: &mut Self::Buf,
        dup: &mut Self::Buf,
        dout: &Self::Buf,
        gate: &Self::Buf,
        up: &Self::Buf,
    ) {
        self.inner.swiglu_bwd(
            &mut dgate.inner,
            &mut dup.inner,
            &dout.inner,
            &gate.inner,
            &up.inner,
        )
    }
    fn cross_entropy_rows(
        &self,
        logits: &mut Self::Buf,
        targets: &[u32],
        mask: &[u8],
        row0: usize,
        vocab: usize,
        scale: f32,
        losses: &mut Self::Buf,
    ) {
        self.inner.cross_entropy_rows(
            &mut logits.inner,
            targets,
            mask,
            row0,
            vocab,
            scale,
            &mut losses.inner,
        )
    }
    fn read_sum(&self, x: &Self::Buf, len: usize) -> f64 {
        self.inner.read_sum(&x.inner, len)
    }
    fn add_assign(&self, y: &mut Self::Buf, x: &Self::Buf) {
        self.inner.add_assign(&mut y.inner, &x.inner)
    }
    fn add_bias(&self, y: &mut Self::Buf, b: &Self::Buf) {
        self.inner.add_bias(&mut y.inner, &b.inner)
    }
    fn bias_grad(&self, db: &mut Self::Buf, dy: &Self::Buf) {
        self.inner.bias_grad(&mut db.inner, &dy.inner)
    }
    fn sum_squares(&self, x: &Self::Buf) -> f64 {
        self.inner.sum_squares(&x.inner)
    }
    fn sum_squares_many(&self, xs: &[&Self::Buf]) -> f64 {
        let inner: Vec<&B::Buf> = xs.iter().map(|x| &x.inner).collect();
        self.inner.sum_squares_many(&inner)
    }
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: AdamW,
    ) {
        self.inner
            .adamw(&mut p.inner, &g.inner, &mut m.inner, &mut v.inner, hp)
    }
}

impl<B: GenerationBackend> GenerationBackend for Tracked<B> {
    fn matmul_rowwise(
        &self,
        y: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
    ) {
        self.inner
            .matmul_rowwise(&mut y.inner, &x.inner, &w.inner, m, k, n)
    }
    fn attention_cached(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        max_len: usize,
        past: usize,
        window: Option<usize>,
        s: AttnShape,
    ) {
        self.inner.attention_cached(
            &mut out.inner,
            &q.inner,
            &k_cache.inner,
            &v_cache.inner,
            max_len,
            past,
            window,
            s,
        )
    }
    fn kv_write(
        &self,
        cache: &mut Self::Buf,
        src: &Self::Buf,
        slots: &[u32],
        positions: &[u32],
        max_len: usize,
    ) {
        self.inner
            .kv_write(&mut cache.inner, &src.inner, slots, positions, max_len)
    }
    fn attention_decode(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::Buf,
        v_cache: &Self::Buf,
        slots: &[u32],
        lens: &[u32],
        max_len: usize,
        window: Option<usize>,
        s: AttnShape,
    ) {
        self.inner.attention_decode(
            &mut out.inner,
            &q.inner,
            &k_cache.inner,
            &v_cache.inner,
            slots,
            lens,
            max_len,
            window,
            s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn live_bytes_and_peaks_follow_allocations_and_drops() {
        let be = Tracked::new(CpuBackend::<f32>::new());
        let a = be.alloc(100, BufKind::Grad);
        let b = be.upload_as(&[1.0; 50], BufKind::Act);
        assert_eq!(be.peaks().live[1], 400);
        drop(a);
        let c = be.alloc(10, BufKind::Grad);
        let p = be.peaks();
        assert_eq!((p.live[1], p.peak_of(BufKind::Grad)), (40, 400));
        assert_eq!((p.live[3], p.peak_total), (200, 600));
        be.reset_peaks();
        assert_eq!(be.peaks().peak_of(BufKind::Grad), 40);
        drop((b, c));
        assert_eq!(be.peaks().live, [0; 5]);
    }
}

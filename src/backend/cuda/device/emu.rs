//! The device layer on kiln's CUDA emulator: device memory is host memory (one allocation per
//! buffer, registered with the C++ runtime so cp.async sources and GEMM operands are checked
//! against their allocations), launches run `kernels/*.cu` compiled as host C++ through
//! `kernels/emu/runtime.cpp`, and [`Gemm`] interprets exactly the column-major cuBLASLt problem
//! kiln would pass on a GPU. Everything is synchronous: a stream is a name for "now".
//!
//! What runs here is the real `CudaBackend` (`../mod.rs`); this file only stands in for cudarc.

use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use half::bf16;
use rayon::prelude::*;

use super::super::gemm::Problem;

/// An emulator error (a kernel fault, a bad argument): one line.
#[derive(Debug, Clone)]
pub struct EmuError(pub String);

impl std::fmt::Display for EmuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[repr(C)]
struct RawEntry {
    name: *const c_char,
    invoke: *const c_void,
    nargs: i32,
    ptr_mask: u64,
}

unsafe extern "C" {
    fn kiln_emu_alloc(bytes: usize) -> *mut c_void;
    fn kiln_emu_free(p: *mut c_void);
    fn kiln_emu_extent_ok(p: *const c_void, bytes: usize) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn kiln_emu_launch(
        kernel: *const RawEntry,
        grid: *const u32,
        block: *const u32,
        dyn_bytes: u32,
        max_dyn_attr: u32,
        args: *mut *mut c_void,
        arg_is_ptr: *const u8,
        nargs: i32,
        err: *mut c_char,
        errlen: usize,
    ) -> i32;
}

/// One kernel file compiled for the emulator: its name and its table of kernels (build.rs).
#[derive(Clone, Copy)]
pub struct KernelFile {
    pub name: &'static str,
    pub table: unsafe extern "C" fn(*mut i32) -> *const c_void,
}

/// The emulated device (there is one: ordinal 0).
pub struct CudaContext {
    _private: (),
}

impl CudaContext {
    pub fn new(ordinal: usize) -> Result<Arc<Self>, EmuError> {
        if ordinal != 0 {
            return Err(EmuError(format!(
                "the CUDA emulator has one device (0), not {ordinal}"
            )));
        }
        Ok(Arc::new(CudaContext { _private: () }))
    }

    pub fn name(&self) -> Result<String, EmuError> {
        Ok("kiln CUDA emulator (CPU)".into())
    }

    /// The emulator has no device memory of its own (it is the host's).
    pub fn total_mem(&self) -> Result<usize, EmuError> {
        Err(EmuError("emulated device memory is host memory".into()))
    }

    /// (free, total) device memory: none of its own either.
    pub fn mem_get_info(&self) -> Result<(usize, usize), EmuError> {
        Err(EmuError("emulated device memory is host memory".into()))
    }

    pub fn default_stream(self: &Arc<Self>) -> Arc<CudaStream> {
        Arc::new(CudaStream { _private: () })
    }
}

/// The emulator's memory is the host's: no allocator peak of its own.
pub fn pool_peak_bytes(_ctx: &Arc<CudaContext>) -> Result<u64, String> {
    Err("emulated device memory is host memory".into())
}

/// A loaded kernel file.
pub struct CudaModule {
    file: &'static str,
    entries: &'static [RawEntry],
}

// SAFETY: the entries are immutable static tables in the C++ library.
unsafe impl Send for CudaModule {}
unsafe impl Sync for CudaModule {}

pub fn load_module(_ctx: &Arc<CudaContext>, file: KernelFile) -> Result<Arc<CudaModule>, String> {
    let mut n = 0i32;
    // SAFETY: the table function returns a pointer to `n` static entries.
    let entries = unsafe {
        let p = (file.table)(&mut n) as *const RawEntry;
        std::slice::from_raw_parts(p, n as usize)
    };
    Ok(Arc::new(CudaModule {
        file: file.name,
        entries,
    }))
}

impl CudaModule {
    pub fn load_function(&self, name: &str) -> Result<CudaFunction, EmuError> {
        for e in self.entries {
            // SAFETY: names are NUL-terminated string literals.
            let n = unsafe { CStr::from_ptr(e.name) };
            if n.to_bytes() == name.as_bytes() {
                return Ok(CudaFunction {
                    entry: e,
                    name: n.to_string_lossy().into_owned(),
                    max_dyn_shared: Arc::new(AtomicU32::new(0)),
                });
            }
        }
        Err(EmuError(format!(
            "kernels/{}.cu has no kernel `{name}`",
            self.file
        )))
    }
}

/// One kernel, with its dynamic-shared-memory opt-in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
#[derive(Clone)]
pub struct CudaFunction {
    entry: *const RawEntry,
    name: String,
    max_dyn_shared: Arc<AtomicU32>,
}

// SAFETY: `entry` points into an immutable static table.
unsafe impl Send for CudaFunction {}
unsafe impl Sync for CudaFunction {}

pub fn set_max_dynamic_shared(f: &CudaFunction, bytes: usize) -> Result<(), String> {
    if bytes > 227 << 10 {
        return Err(format!(
            "{}: {bytes} bytes of dynamic shared memory is above the device's 227 KiB",
            f.name
        ));
    }
    f.max_dyn_shared.store(bytes as u32, Ordering::Relaxed);
    Ok(())
}

/// Nothing to load: the emulator is linked in.
pub fn missing_libraries() -> Vec<&'static str> {
    Vec::new()
}

#[derive(Clone, Copy, Debug)]
pub struct LaunchConfig {
    pub grid_dim: (u32, u32, u32),
    pub block_dim: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// Device memory: `len` elements of `T` in one host allocation of the emulator's.
pub struct CudaSlice<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the slice owns its allocation; access follows Rust's borrow rules on the slice.
unsafe impl<T: Send> Send for CudaSlice<T> {}
unsafe impl<T: Sync> Sync for CudaSlice<T> {}

impl<T> Drop for CudaSlice<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by kiln_emu_alloc and freed once.
        unsafe { kiln_emu_free(self.ptr as *mut c_void) }
    }
}

impl<T> CudaSlice<T> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn slice(&self, r: Range<usize>) -> CudaView<'_, T> {
        assert!(r.start <= r.end && r.end <= self.len, "slice out of range");
        CudaView {
            // SAFETY: in bounds (checked above).
            ptr: unsafe { self.ptr.add(r.start) },
            len: r.end - r.start,
            _m: PhantomData,
        }
    }
    pub fn slice_mut(&mut self, r: Range<usize>) -> CudaViewMut<'_, T> {
        assert!(r.start <= r.end && r.end <= self.len, "slice out of range");
        CudaViewMut {
            // SAFETY: in bounds (checked above).
            ptr: unsafe { self.ptr.add(r.start) },
            len: r.end - r.start,
            _m: PhantomData,
        }
    }
}

pub struct CudaView<'a, T> {
    ptr: *const T,
    len: usize,
    _m: PhantomData<&'a T>,
}

pub struct CudaViewMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _m: PhantomData<&'a mut T>,
}

/// Page-locked host memory for uploads (`alloc_pinned`); in the emulator an ordinary host buffer,
/// since every copy completes before it returns.
pub struct PinnedHostSlice<T> {
    host: Vec<T>,
}

impl<T> PinnedHostSlice<T> {
    pub fn len(&self) -> usize {
        self.host.len()
    }
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }
    /// The host contents, once every copy out of them has completed.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T], EmuError> {
        Ok(&mut self.host)
    }
}

impl<T> AsRef<[T]> for PinnedHostSlice<T> {
    fn as_ref(&self) -> &[T] {
        &self.host
    }
}

/// `len` elements of page-locked host memory for `memcpy_htod`, zeroed here.
pub fn alloc_pinned<T: Copy + Default>(
    _ctx: &Arc<CudaContext>,
    len: usize,
) -> Result<PinnedHostSlice<T>, String> {
    Ok(PinnedHostSlice {
        host: vec![T::default(); len],
    })
}

/// Read access to device memory: its address (as on a GPU, a u64) and length.
pub trait DevicePtr<T> {
    fn device_ptr(&self, stream: &CudaStream) -> (u64, ());
    fn elems(&self) -> usize;
}

/// Write access to device memory.
pub trait DevicePtrMut<T> {
    fn device_ptr_mut(&mut self, stream: &CudaStream) -> (u64, ());
    fn elems_mut(&self) -> usize;
}

impl<T> DevicePtr<T> for CudaSlice<T> {
    fn device_ptr(&self, _: &CudaStream) -> (u64, ()) {
        (self.ptr as u64, ())
    }
    fn elems(&self) -> usize {
        self.len
    }
}
impl<T> DevicePtr<T> for CudaView<'_, T> {
    fn device_ptr(&self, _: &CudaStream) -> (u64, ()) {
        (self.ptr as u64, ())
    }
    fn elems(&self) -> usize {
        self.len
    }
}
impl<T> DevicePtrMut<T> for CudaSlice<T> {
    fn device_ptr_mut(&mut self, _: &CudaStream) -> (u64, ()) {
        (self.ptr as u64, ())
    }
    fn elems_mut(&self) -> usize {
        self.len
    }
}
impl<T> DevicePtrMut<T> for CudaViewMut<'_, T> {
    fn device_ptr_mut(&mut self, _: &CudaStream) -> (u64, ()) {
        (self.ptr as u64, ())
    }
    fn elems_mut(&self) -> usize {
        self.len
    }
}

/// The emulated stream: every operation completes before it returns.
pub struct CudaStream {
    _private: (),
}

impl CudaStream {
    pub fn alloc_zeros<T: Copy>(&self, n: usize) -> Result<CudaSlice<T>, EmuError> {
        let bytes = n * std::mem::size_of::<T>();
        // SAFETY: a fresh allocation of `bytes`, zeroed before use.
        let ptr = unsafe { kiln_emu_alloc(bytes) } as *mut T;
        if ptr.is_null() {
            return Err(EmuError(format!("out of memory allocating {bytes} bytes")));
        }
        // SAFETY: `ptr` addresses `bytes` writable bytes.
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, bytes) };
        Ok(CudaSlice { ptr, len: n })
    }

    pub fn clone_htod<T: Copy, S: AsRef<[T]> + ?Sized>(
        &self,
        src: &S,
    ) -> Result<CudaSlice<T>, EmuError> {
        let src = src.as_ref();
        let mut d = self.alloc_zeros::<T>(src.len())?;
        self.memcpy_htod(src, &mut d)?;
        Ok(d)
    }

    pub fn memcpy_htod<T: Copy, S: AsRef<[T]> + ?Sized, D: DevicePtrMut<T>>(
        &self,
        src: &S,
        dst: &mut D,
    ) -> Result<(), EmuError> {
        let src = src.as_ref();
        if src.len() > dst.elems_mut() {
            return Err(EmuError(format!(
                "memcpy_htod: {} elements into {}",
                src.len(),
                dst.elems_mut()
            )));
        }
        let (p, ()) = dst.device_ptr_mut(self);
        // SAFETY: the destination holds at least src.len() elements (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p as *mut T, src.len()) };
        Ok(())
    }

    pub fn clone_dtoh<T: Copy, S: DevicePtr<T>>(&self, src: &S) -> Result<Vec<T>, EmuError> {
        let (p, ()) = src.device_ptr(self);
        let n = src.elems();
        let mut out = Vec::with_capacity(n);
        // SAFETY: the source holds `n` initialized elements; `out` has capacity `n`.
        unsafe {
            std::ptr::copy_nonoverlapping(p as *const T, out.as_mut_ptr(), n);
            out.set_len(n);
        }
        Ok(out)
    }

    pub fn memcpy_dtod<T: Copy, S: DevicePtr<T>, D: DevicePtrMut<T>>(
        &self,
        src: &S,
        dst: &mut D,
    ) -> Result<(), EmuError> {
        let n = src.elems();
        if n > dst.elems_mut() {
            return Err(EmuError(format!(
                "memcpy_dtod: {n} elements into {}",
                dst.elems_mut()
            )));
        }
        let (s, ()) = src.device_ptr(self);
        let (d, ()) = dst.device_ptr_mut(self);
        // SAFETY: both ranges are live device memory of at least `n` elements.
        unsafe { std::ptr::copy(s as *const T, d as *mut T, n) };
        Ok(())
    }

    pub fn memset_zeros<T, D: DevicePtrMut<T>>(&self, dst: &mut D) -> Result<(), EmuError> {
        let n = dst.elems_mut();
        let (d, ()) = dst.device_ptr_mut(self);
        // SAFETY: `n` elements of live device memory.
        unsafe { std::ptr::write_bytes(d as *mut T, 0, n) };
        Ok(())
    }

    pub fn synchronize(&self) -> Result<(), EmuError> {
        Ok(())
    }

    pub fn launch_builder<'a>(&'a self, f: &'a CudaFunction) -> LaunchArgs<'a> {
        LaunchArgs {
            func: f,
            vals: Vec::new(),
            is_ptr: Vec::new(),
        }
    }
}

/// A kernel's arguments, pushed in the order of its signature.
pub struct LaunchArgs<'a> {
    func: &'a CudaFunction,
    vals: Vec<u64>,
    is_ptr: Vec<u8>,
}

/// One kernel argument: device memory (by address) or a scalar (by value).
pub trait PushKernelArg<T> {
    fn arg(&mut self, arg: T) -> &mut Self;
}

impl<'a, 'b, T> PushKernelArg<&'b CudaSlice<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b CudaSlice<T>) -> &mut Self {
        self.vals.push(arg.ptr as u64);
        self.is_ptr.push(1);
        self
    }
}
impl<'a, 'b, T> PushKernelArg<&'b mut CudaSlice<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut CudaSlice<T>) -> &mut Self {
        self.vals.push(arg.ptr as u64);
        self.is_ptr.push(1);
        self
    }
}
impl<'a, 'b, 'c, T> PushKernelArg<&'b CudaView<'c, T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b CudaView<'c, T>) -> &mut Self {
        self.vals.push(arg.ptr as u64);
        self.is_ptr.push(1);
        self
    }
}
impl<'a, 'b, 'c, T> PushKernelArg<&'b mut CudaViewMut<'c, T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut CudaViewMut<'c, T>) -> &mut Self {
        self.vals.push(arg.ptr as u64);
        self.is_ptr.push(1);
        self
    }
}
macro_rules! scalar_arg {
    ($($t:ty => $bits:expr),*) => {$(
        impl<'a, 'b> PushKernelArg<&'b $t> for LaunchArgs<'a> {
            fn arg(&mut self, arg: &'b $t) -> &mut Self {
                let f: fn($t) -> u64 = $bits;
                self.vals.push(f(*arg));
                self.is_ptr.push(0);
                self
            }
        }
    )*};
}
scalar_arg!(i32 => |x| x as u32 as u64, u32 => |x| x as u64, f32 => |x| x.to_bits() as u64);

impl LaunchArgs<'_> {
    /// Run the kernel over the grid; a fault is an error naming the kernel, block, thread and
    /// source line.
    ///
    /// # Safety
    /// The arguments must match the kernel's signature in kind and order (the emulator checks
    /// arity and which are pointers, not the pointee types), and every pointer must address
    /// device memory the kernel may touch.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), EmuError> {
        let grid = [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2];
        let block = [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2];
        let mut ptrs: Vec<*mut c_void> = self
            .vals
            .iter_mut()
            .map(|v| v as *mut u64 as *mut c_void)
            .collect();
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: `ptrs` points at live argument values for the duration of the call; the
        // entry is a static table entry; `err` has the length passed.
        let rc = unsafe {
            kiln_emu_launch(
                self.func.entry,
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_mem_bytes,
                self.func.max_dyn_shared.load(Ordering::Relaxed),
                ptrs.as_mut_ptr(),
                self.is_ptr.as_ptr(),
                ptrs.len() as i32,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            // SAFETY: the runtime wrote a NUL-terminated message.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
            Err(EmuError(msg.to_string_lossy().into_owned()))
        }
    }
}

/// cuBLASLt as kiln calls it, interpreted: D[m×n] = op(A)·op(B) (+ D when accumulating), all
/// column-major with the problem's leading dimensions, bf16 operands, fp32 accumulation in k
/// order, bf16 (round to nearest even) or fp32 output. Invalid leading dimensions and operands
/// that reach past their allocations are errors, as cuBLASLt's own checks or a fault would be.
pub struct Gemm {
    _private: (),
}

impl Gemm {
    pub fn new(_stream: Arc<CudaStream>) -> Result<Self, String> {
        Ok(Gemm { _private: () })
    }

    /// # Safety
    /// `a`, `b` and `d` must be emulator device addresses (checked against their allocations).
    pub unsafe fn run(&self, p: &Problem, a: u64, b: u64, d: u64) -> Result<(), String> {
        let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
        let (a_rows, a_cols) = if p.trans_a { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if p.trans_b { (n, k) } else { (k, n) };
        let check = |what: &str, ptr: u64, rows: usize, cols: usize, ld: i64, elem: usize| {
            if ld < rows.max(1) as i64 {
                return Err(format!(
                    "cuBLASLt matmul {p:?}: {what}: leading dimension {ld} < rows {rows}"
                ));
            }
            let span = if rows == 0 || cols == 0 {
                0
            } else {
                ((cols - 1) * ld as usize + rows) * elem
            };
            // SAFETY: only asks the registry.
            if span > 0 && unsafe { kiln_emu_extent_ok(ptr as *const c_void, span) } == 0 {
                return Err(format!(
                    "cuBLASLt matmul {p:?}: {what} ({rows}×{cols}, ld {ld}) reaches past its allocation"
                ));
            }
            Ok(())
        };
        check("A", a, a_rows, a_cols, p.lda, 2)?;
        check("B", b, b_rows, b_cols, p.ldb, 2)?;
        check("D", d, m, n, p.ldd, if p.out_f32 { 4 } else { 2 })?;
        let (lda, ldb, ldd) = (p.lda as usize, p.ldb as usize, p.ldd as usize);
        // op(A) as rows of k (row i = op(A)[i, :]), in f32.
        let a_ptr = a as *const bf16;
        let mut at = vec![0f32; m * k];
        for i in 0..m {
            for l in 0..k {
                let idx = if p.trans_a { l + i * lda } else { i + l * lda };
                // SAFETY: inside A's checked extent.
                at[i * k + l] = unsafe { *a_ptr.add(idx) }.to_f32();
            }
        }
        let b_addr = b as usize;
        let d_addr = d as usize;
        (0..n).into_par_iter().for_each(|j| {
            let b_ptr = b_addr as *const bf16;
            let col: Vec<f32> = (0..k)
                .map(|l| {
                    let idx = if p.trans_b { j + l * ldb } else { l + j * ldb };
                    // SAFETY: inside B's checked extent.
                    unsafe { *b_ptr.add(idx) }.to_f32()
                })
                .collect();
            for i in 0..m {
                let row = &at[i * k..(i + 1) * k];
                let mut acc = 0f32;
                for (x, y) in row.iter().zip(&col) {
                    acc += x * y;
                }
                let at_d = i + j * ldd;
                // SAFETY: inside D's checked extent; each (i, j) is written by one task.
                unsafe {
                    if p.out_f32 {
                        let q = (d_addr as *mut f32).add(at_d);
                        *q = if p.accumulate { *q + acc } else { acc };
                    } else {
                        let q = (d_addr as *mut bf16).add(at_d);
                        let v = if p.accumulate {
                            (*q).to_f32() + acc
                        } else {
                            acc
                        };
                        *q = bf16::from_f32(v);
                    }
                }
            }
        });
        Ok(())
    }
}

//! The device layer on a real GPU: cudarc's driver API, cuBLASLt (`../gemm.rs`), and kiln's
//! kernels as fatbins built by build.rs with nvcc.

use std::sync::Arc;

pub use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchArgs, LaunchConfig, PinnedHostSlice, PushKernelArg,
};

/// One kernel file: its fatbin.
pub type KernelFile = &'static [u8];

/// Load a kernel file into the context.
pub fn load_module(ctx: &Arc<CudaContext>, file: KernelFile) -> Result<Arc<CudaModule>, String> {
    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(file.to_vec()))
        .map_err(|e| format!("{e:?}"))
}

/// `len` elements of page-locked, write-combined host memory for `memcpy_htod`: a copy from it
/// is a true asynchronous DMA (a copy from pageable memory may stall the stream), and
/// `as_mut_slice` waits for the last copy out of it before handing it back.
pub fn alloc_pinned<
    T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default,
>(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> Result<PinnedHostSlice<T>, String> {
    // SAFETY: the memory starts unset; it is filled with zeros before anything reads it.
    let mut p = unsafe { ctx.alloc_pinned::<T>(len) }.map_err(|e| format!("{e:?}"))?;
    p.as_mut_slice()
        .map_err(|e| format!("{e:?}"))?
        .fill(T::default());
    Ok(p)
}

/// Let `f` use up to `bytes` of dynamic shared memory (required above 48 KiB).
pub fn set_max_dynamic_shared(f: &CudaFunction, bytes: usize) -> Result<(), String> {
    f.set_attribute(
        cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| format!("{e:?}"))
}

/// The high-water mark, in bytes, of the device's default memory pool: the stream-ordered
/// allocator every buffer comes from (cudarc allocates with `cuMemAllocAsync`).
pub fn pool_peak_bytes(ctx: &Arc<CudaContext>) -> Result<u64, String> {
    use cudarc::driver::sys;
    ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
    let dev =
        cudarc::driver::result::device::get(ctx.ordinal() as i32).map_err(|e| format!("{e:?}"))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut high: u64 = 0;
    // SAFETY: `pool` and `high` are valid out-pointers of the types the two calls write (a pool
    // handle; the attribute's documented cuuint64_t); the device comes from the live context.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev)
            .result()
            .map_err(|e| format!("{e:?}"))?;
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut high as *mut u64).cast(),
        )
        .result()
        .map_err(|e| format!("{e:?}"))?;
    }
    Ok(high)
}

/// The CUDA libraries kiln loads at run time that cannot be found (scripts/cuda-env.sh puts them
/// on LD_LIBRARY_PATH).
pub fn missing_libraries() -> Vec<&'static str> {
    let mut missing = Vec::new();
    // SAFETY: these only try to dlopen the libraries by name; nothing is called.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            missing.push("libcuda (the NVIDIA driver)");
        }
        if !cudarc::cublaslt::sys::is_culib_present() {
            missing.push("libcublasLt");
        }
    }
    missing
}

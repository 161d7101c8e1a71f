//! The device layer on a real GPU: cudarc's driver API, cuBLASLt (`../gemm.rs`), and kiln's
//! kernels as fatbins built by build.rs with nvcc.

use std::sync::Arc;

pub use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchArgs, LaunchConfig, PushKernelArg,
};

/// One kernel file: its fatbin.
pub type KernelFile = &'static [u8];

/// Load a kernel file into the context.
pub fn load_module(ctx: &Arc<CudaContext>, file: KernelFile) -> Result<Arc<CudaModule>, String> {
    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(file.to_vec()))
        .map_err(|e| format!("{e:?}"))
}

/// Let `f` use up to `bytes` of dynamic shared memory (required above 48 KiB).
pub fn set_max_dynamic_shared(f: &CudaFunction, bytes: usize) -> Result<(), String> {
    f.set_attribute(
        cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| format!("{e:?}"))
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

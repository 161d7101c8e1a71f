//! The device layer: everything `CudaBackend` asks of a CUDA device, behind one narrow interface
//! with two implementations.
//!
//! - `cuda` feature: cudarc on a real GPU (the types below are cudarc's own; `gemm` is
//!   cuBLASLt).
//! - `cuda-emu` feature (without `cuda`): kiln's CUDA emulator (`emu.rs` over the C++ runtime in
//!   `kernels/emu/`), which runs the same `kernels/*.cu` compiled as host C++ with CUDA's
//!   execution model, and interprets exactly the GEMM arguments kiln passes to cuBLASLt.
//!
//! The interface, and all of it: a context per device (`CudaContext`: `new`, `name`, `total_mem`,
//! `mem_get_info`, `default_stream`; `pool_peak_bytes`, the allocator's high-water mark), kernel files (`load_module`, `CudaModule::load_function`,
//! `set_max_dynamic_shared`), device memory (`CudaSlice<T>` with `len`, `slice`, `slice_mut`;
//! the stream's `alloc_zeros`, `clone_htod`, `memcpy_htod`, `clone_dtoh`, `memcpy_dtod`,
//! `memset_zeros`, `synchronize`; raw addresses through `DevicePtr` / `DevicePtrMut`),
//! page-locked upload staging (`alloc_pinned`, `PinnedHostSlice::as_mut_slice`),
//! launches (`LaunchConfig`, `CudaStream::launch_builder`, `PushKernelArg::arg`, `launch`), and
//! the GEMM (`gemm::Gemm::run` on a column-major `gemm::Problem`). `CudaBackend` uses nothing
//! else, so the same backend code runs on both.

#[cfg(feature = "cuda")]
mod driver;
#[cfg(feature = "cuda")]
pub use driver::*;

#[cfg(not(feature = "cuda"))]
mod emu;
#[cfg(not(feature = "cuda"))]
pub use emu::*;

/// Whether this build runs the emulator rather than a GPU.
pub const EMULATED: bool = cfg!(not(feature = "cuda"));

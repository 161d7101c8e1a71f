//! bf16 GEMM through cuBLASLt: bf16 operands, fp32 accumulation, bf16 or fp32 output, optional
//! accumulation into the output (beta = 1). The descriptor, layouts and algorithm of each distinct
//! problem are chosen once (heuristic query on first use) and cached, so the step loop makes no
//! heuristic queries.
//!
//! kiln's tensors are row-major; cuBLASLt is column-major. A row-major [r, c] matrix is a
//! column-major [c, r] matrix with leading dimension c, so every call below is the transposed
//! problem: for y[m,n] = x[m,k]·w[n,k]ᵀ, cuBLASLt computes yᵀ (n×m) = op(wᵀ)·xᵀ with op = T.

//!
//! The `Problem` and its three constructors are what kiln asks for; the `Gemm` that runs them is
//! cuBLASLt on a GPU (`cublaslt` below) or, under the CUDA emulator, an interpreter of exactly
//! these arguments (`device::Gemm`).

#[cfg(not(feature = "cuda"))]
pub use super::device::Gemm;
#[cfg(feature = "cuda")]
pub use cublaslt::Gemm;

/// One column-major problem D[m×n] = alpha·op(A)·op(B) + beta·C (C = D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Problem {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: i64,
    pub ldb: i64,
    pub ldd: i64,
    /// Output in fp32 (gradients) rather than bf16.
    pub out_f32: bool,
    pub accumulate: bool,
}

impl Problem {
    /// Row-major y[m,n] = x[m,k]·w[n,k]ᵀ (bf16 out): column-major yᵀ = op_T(wᵀ)·xᵀ.
    pub fn forward(m: usize, k: usize, n: usize) -> Problem {
        Problem {
            m: n as u64,
            n: m as u64,
            k: k as u64,
            trans_a: true,
            trans_b: false,
            lda: k as i64,
            ldb: k as i64,
            ldd: n as i64,
            out_f32: false,
            accumulate: false,
        }
    }

    /// Row-major dx[m,k] (+)= dy[m,n]·w[n,k]: column-major dxᵀ = wᵀ·dyᵀ.
    pub fn input_grad(m: usize, k: usize, n: usize, accumulate: bool) -> Problem {
        Problem {
            m: k as u64,
            n: m as u64,
            k: n as u64,
            trans_a: false,
            trans_b: false,
            lda: k as i64,
            ldb: n as i64,
            ldd: k as i64,
            out_f32: false,
            accumulate,
        }
    }

    /// Row-major dw[n,k] += dy[m,n]ᵀ·x[m,k] (fp32 out): column-major dwᵀ = xᵀ·op_T(dyᵀ).
    pub fn weight_grad(m: usize, k: usize, n: usize) -> Problem {
        Problem {
            m: k as u64,
            n: n as u64,
            k: m as u64,
            trans_a: false,
            trans_b: true,
            lda: k as i64,
            ldb: n as i64,
            ldd: k as i64,
            out_f32: true,
            accumulate: true,
        }
    }
}

#[cfg(feature = "cuda")]
mod cublaslt {
    use std::collections::HashMap;
    use std::ffi::c_void;
    use std::sync::{Arc, Mutex};

    use cudarc::cublaslt::{result, sys};
    use cudarc::driver::sys::CUdeviceptr;
    use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

    use super::Problem;

    struct Plan {
        desc: sys::cublasLtMatmulDesc_t,
        a: sys::cublasLtMatrixLayout_t,
        b: sys::cublasLtMatrixLayout_t,
        d: sys::cublasLtMatrixLayout_t,
        algo: sys::cublasLtMatmulAlgo_t,
    }

    // SAFETY: the plan's handles are plain cuBLASLt descriptors, used only under the Gemm's mutex.
    unsafe impl Send for Plan {}

    pub struct Gemm {
        handle: sys::cublasLtHandle_t,
        stream: Arc<CudaStream>,
        workspace: CudaSlice<u8>,
        plans: Mutex<HashMap<Problem, Plan>>,
    }

    // SAFETY: the handle is used only through `&self` methods that serialise on the plans mutex.
    unsafe impl Send for Gemm {}
    unsafe impl Sync for Gemm {}

    const WORKSPACE_BYTES: usize = 32 << 20;

    fn cublas_err(what: &str, e: result::CublasError) -> String {
        format!("cuBLASLt {what}: {e:?}")
    }

    impl Gemm {
        pub fn new(stream: Arc<CudaStream>) -> Result<Self, String> {
            let handle = result::create_handle().map_err(|e| cublas_err("create handle", e))?;
            let workspace = stream
                .alloc_zeros::<u8>(WORKSPACE_BYTES)
                .map_err(|e| format!("cuBLASLt workspace: {e:?}"))?;
            Ok(Gemm {
                handle,
                stream,
                workspace,
                plans: Mutex::new(HashMap::new()),
            })
        }

        fn plan(&self, p: &Problem) -> Result<Plan, String> {
            let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
            let out = if p.out_f32 {
                sys::cudaDataType_t::CUDA_R_32F
            } else {
                bf16
            };
            let (a_rows, a_cols) = if p.trans_a { (p.k, p.m) } else { (p.m, p.k) };
            let (b_rows, b_cols) = if p.trans_b { (p.n, p.k) } else { (p.k, p.n) };
            let a = result::create_matrix_layout(bf16, a_rows, a_cols, p.lda)
                .map_err(|e| cublas_err("layout A", e))?;
            let b = result::create_matrix_layout(bf16, b_rows, b_cols, p.ldb)
                .map_err(|e| cublas_err("layout B", e))?;
            let d = result::create_matrix_layout(out, p.m, p.n, p.ldd)
                .map_err(|e| cublas_err("layout D", e))?;
            let desc = result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(|e| cublas_err("descriptor", e))?;
            for (attr, t) in [
                (
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    p.trans_a,
                ),
                (
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                    p.trans_b,
                ),
            ] {
                let v = t as i32;
                // SAFETY: `desc` was just created; the attribute is a 4-byte cublasOperation_t value.
                unsafe {
                    result::set_matmul_desc_attribute(
                        desc,
                        attr,
                        &v as *const i32 as *const c_void,
                        4,
                    )
                }
                .map_err(|e| cublas_err("transpose attribute", e))?;
            }
            let pref = result::create_matmul_pref().map_err(|e| cublas_err("preference", e))?;
            let ws = WORKSPACE_BYTES as u64;
            // SAFETY: `pref` was just created; the attribute is a u64 byte count.
            unsafe {
                result::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            }
            .map_err(|e| cublas_err("workspace preference", e))?;
            // SAFETY: every handle is live; D is used as C.
            let heuristic =
                unsafe { result::get_matmul_algo_heuristic(self.handle, desc, a, b, d, d, pref) }
                    .map_err(|e| cublas_err(&format!("no algorithm for {p:?}"), e))?;
            // SAFETY: `pref` is not used after this.
            unsafe { result::destroy_matmul_pref(pref) }
                .map_err(|e| cublas_err("destroy preference", e))?;
            Ok(Plan {
                desc,
                a,
                b,
                d,
                algo: heuristic.algo,
            })
        }

        /// Run a problem on raw device pointers (A and B bf16; D bf16 or fp32 per `p.out_f32`).
        ///
        /// # Safety
        /// The pointers must address allocations at least as large as the problem's layouts describe,
        /// on this Gemm's stream's context.
        pub unsafe fn run(
            &self,
            p: &Problem,
            a: CUdeviceptr,
            b: CUdeviceptr,
            d: CUdeviceptr,
        ) -> Result<(), String> {
            let mut plans = self.plans.lock().expect("gemm plans poisoned");
            if !plans.contains_key(p) {
                let plan = self.plan(p)?;
                plans.insert(*p, plan);
            }
            let plan = &plans[p];
            let alpha: f32 = 1.0;
            let beta: f32 = if p.accumulate { 1.0 } else { 0.0 };
            let (ws, _sync) = self.workspace.device_ptr(&self.stream);
            result::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                a as *const c_void,
                plan.a,
                b as *const c_void,
                plan.b,
                d as *const c_void,
                plan.d,
                d as *mut c_void,
                plan.d,
                &plan.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                self.stream.cu_stream() as *mut _,
            )
            .map_err(|e| cublas_err(&format!("matmul {p:?}"), e))
        }
    }

    impl Drop for Gemm {
        fn drop(&mut self) {
            if let Ok(plans) = self.plans.get_mut() {
                for (_, p) in plans.drain() {
                    // SAFETY: each handle was created by `plan` and is destroyed once, here.
                    unsafe {
                        let _ = result::destroy_matrix_layout(p.a);
                        let _ = result::destroy_matrix_layout(p.b);
                        let _ = result::destroy_matrix_layout(p.d);
                        let _ = result::destroy_matmul_desc(p.desc);
                    }
                }
            }
            // SAFETY: the handle is destroyed once, after every plan that used it.
            unsafe {
                let _ = result::destroy_handle(self.handle);
            }
        }
    }
}

//! `--device cpu|cuda`: the one place a command turns the flag into a backend. A command's work
//! is an [`OnDevice`] value, generic over the backend; [`on_device`] builds the backend the flag
//! names and runs it. A build without CUDA refuses `--device cuda` here, once.

use anyhow::{bail, Result};

use crate::backend::cpu::CpuBackend;
use crate::backend::tracked::Tracked;
use crate::backend::{AttentionKernel, GenerationBackend};
use crate::cli::Device;
use crate::config::Config;
use crate::dist::{Communicator, DistEnv};

/// What `--device cuda` says in a build without the CUDA backend.
pub const NO_CUDA: &str = "--device cuda: this kiln was built without CUDA; rebuild with `cargo build --release --features cuda`";

/// A backend a command can run on: the model's operations, generation, and how one rank of a
/// launched data-parallel run joins its group.
pub trait DeviceBackend: GenerationBackend + Sized {
    /// Join the data-parallel group `env` describes (rank 0 holds the rendezvous).
    fn join<'a>(&'a self, env: &DistEnv, cfg: &Config) -> Result<Box<dyn Communicator<Self> + 'a>>;

    /// Start-up lines about how this backend will train `cfg` (beyond its name).
    fn training_notes(&self, _cfg: &Config) -> Vec<String> {
        Vec::new()
    }
}

impl DeviceBackend for CpuBackend<f32> {
    fn join<'a>(&'a self, env: &DistEnv, cfg: &Config) -> Result<Box<dyn Communicator<Self> + 'a>> {
        Ok(Box::new(crate::dist::host::HostComm::join_tcp(env, cfg)?))
    }
}

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
impl DeviceBackend for crate::backend::cuda::CudaBackend {
    #[cfg(feature = "cuda")]
    fn join<'a>(&'a self, env: &DistEnv, cfg: &Config) -> Result<Box<dyn Communicator<Self> + 'a>> {
        let comm = crate::dist::nccl::NcclComm::join(self, env, cfg.train.comm_timeout_s)?;
        Ok(Box::new(comm))
    }

    #[cfg(not(feature = "cuda"))]
    fn join<'a>(&'a self, _: &DistEnv, _: &Config) -> Result<Box<dyn Communicator<Self> + 'a>> {
        bail!("data-parallel CUDA training needs NCCL, which the CUDA emulator does not have (build with --features cuda on a GPU machine)")
    }

    fn training_notes(&self, cfg: &Config) -> Vec<String> {
        let Ok(m) = crate::train::setup::resolve_model_shape(cfg, None, false) else {
            return Vec::new();
        };
        let hd = if m.head_dim > 0 {
            m.head_dim
        } else {
            m.dim / m.n_heads.max(1)
        };
        let kernel = self.attention_kernel(hd);
        vec![if kernel != cfg.train.attention {
            format!("attention: reference kernels (the flash kernels are built for head dims 64 and 128, not {hd})")
        } else {
            format!(
                "attention: {kernel:?} kernels{}",
                if cfg.train.deterministic {
                    ", deterministic backward"
                } else {
                    ""
                }
            )
        }]
    }
}

/// A measured backend runs, joins and trains as its inner one does.
impl<B: DeviceBackend> DeviceBackend for Tracked<B> {
    fn join<'a>(&'a self, env: &DistEnv, cfg: &Config) -> Result<Box<dyn Communicator<Self> + 'a>> {
        Ok(Box::new(crate::dist::TrackedComm(
            self.inner.join(env, cfg)?,
        )))
    }

    fn training_notes(&self, cfg: &Config) -> Vec<String> {
        self.inner.training_notes(cfg)
    }
}

/// A command's work, run on whichever backend `--device` names.
pub trait OnDevice {
    type Out;
    fn run<B: DeviceBackend>(self, be: &B) -> Result<Self::Out>;
}

/// Where and how to open the backend.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub device: Device,
    /// The GPU (a launched rank's local rank); ignored on the CPU.
    pub ordinal: usize,
    /// `train.attention` and `train.deterministic` for a CUDA backend that trains.
    pub attention: Option<(AttentionKernel, bool)>,
    /// Count the bytes of every buffer by kind ([`Tracked`]): training reports its measured peak.
    pub measure_memory: bool,
}

impl Placement {
    pub fn new(device: Device) -> Self {
        Placement {
            device,
            ordinal: 0,
            attention: None,
            measure_memory: false,
        }
    }
}

/// Refuse `--device cuda` before any work in a build without CUDA.
pub fn check(device: Device) -> Result<()> {
    if device == Device::Cuda && !cfg!(any(feature = "cuda", feature = "cuda-emu")) {
        bail!(NO_CUDA);
    }
    Ok(())
}

/// Open the backend `at` names and run `work` on it.
pub fn on_device<W: OnDevice>(at: Placement, work: W) -> Result<W::Out> {
    match at.device {
        Device::Cpu if at.measure_memory => work.run(&Tracked::new(CpuBackend::<f32>::new())),
        Device::Cpu => work.run(&CpuBackend::<f32>::new()),
        Device::Cuda => on_cuda(at, work),
    }
}

#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
fn on_cuda<W: OnDevice>(at: Placement, work: W) -> Result<W::Out> {
    let mut be =
        crate::backend::cuda::CudaBackend::new(at.ordinal).map_err(|e| anyhow::anyhow!(e))?;
    if let Some((kernel, deterministic)) = at.attention {
        be.set_attention(kernel, deterministic);
    }
    if at.measure_memory {
        return work.run(&Tracked::new(be));
    }
    work.run(&be)
}

#[cfg(not(any(feature = "cuda", feature = "cuda-emu")))]
fn on_cuda<W: OnDevice>(_: Placement, _: W) -> Result<W::Out> {
    bail!(NO_CUDA)
}

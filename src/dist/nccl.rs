//! The CUDA backend's communicator: NCCL (loaded at run time through cudarc) on a stream of its
//! own. Every collective first makes the communication stream wait for the compute stream (an
//! event), so it reads finished gradients; [`Communicator::wait`] makes the compute stream wait
//! for the communication stream (another event) without blocking the host, so the backward of
//! earlier layers overlaps the reduction of later ones.
//!
//! No rank waits forever: the blocking points (`sync`, the host all-reduce, `barrier`) poll an
//! event together with `ncclCommGetAsyncError`; an NCCL error or the timeout aborts the
//! communicator (`ncclCommAbort`) and returns an error, and initialisation runs under the same
//! timeout. Rank 0 makes the NCCL unique id and hands it out over the TCP rendezvous.
//!
//! Unverified without a GPU machine: this file compiles against cudarc's NCCL bindings, but
//! only the CPU communicator's tests have run (docs/DISTRIBUTED.md).

use std::ffi::CStr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtrMut, SyncOnDrop};
use cudarc::nccl::{result as nccl, sys};

use super::{Communicator, DistEnv};
use crate::backend::cuda::{CudaBackend, CudaBuf};

/// The raw communicator handle; NCCL allows a communicator to be used from any one thread at a
/// time, which the Mutex around it guarantees.
struct Handle(sys::ncclComm_t);
// SAFETY: the handle is only used while holding the Mutex in `NcclComm`.
unsafe impl Send for Handle {}

pub struct NcclComm {
    comm: Mutex<Handle>,
    /// The communication stream.
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Device scratch for the host all-reduce.
    scratch: Mutex<CudaSlice<f64>>,
    /// Set once the communicator has been aborted: every later call fails at once.
    aborted: Mutex<Option<String>>,
}

fn nccl_error(r: sys::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any result code.
    let s = unsafe { CStr::from_ptr(sys::ncclGetErrorString(r)) };
    format!("{} ({r:?})", s.to_string_lossy())
}

impl NcclComm {
    /// Join the ranks of `env` on `be`'s device: rendezvous, NCCL id from rank 0, communicator
    /// initialisation; every step bounded by `timeout_s`. Logs NCCL's version on rank 0.
    pub fn join(be: &CudaBackend, env: &DistEnv, timeout_s: f64) -> Result<Self> {
        let timeout = Duration::from_secs_f64(timeout_s);
        let version = nccl::get_nccl_version().map_err(|e| {
            anyhow!(
                "NCCL is not usable: {} (is libnccl on LD_LIBRARY_PATH? see scripts/cuda-env.sh)",
                nccl_error(e.0)
            )
        })?;
        if env.rank == 0 {
            eprintln!(
                "NCCL {}.{}.{}: rank 0 of {} waiting at {}",
                version / 10000,
                version / 100 % 100,
                version % 100,
                env.world,
                env.waiting_at()
            );
        }
        let joined = super::rendezvous::join(
            &env.master,
            env.port_note.as_deref(),
            env.rank,
            env.world,
            || {
                let id = nccl::get_uniqueid()
                    .map_err(|e| anyhow!("ncclGetUniqueId: {}", nccl_error(e.0)))?;
                Ok(id.internal.iter().map(|&c| c as u8).collect())
            },
            timeout,
        )?;
        if joined.payload.len() != 128 {
            bail!(
                "rendezvous: rank 0 sent {} bytes, not an NCCL id (128 bytes): are all ranks running the CUDA backend?",
                joined.payload.len()
            );
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, &b) in internal.iter_mut().zip(&joined.payload) {
            *d = b as std::ffi::c_char;
        }
        let id = sys::ncclUniqueId { internal };
        let ctx = be.context().clone();
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("cannot create the NCCL stream: {e:?}"))?;
        // ncclCommInitRank blocks until every rank has joined: run it on a helper thread so a
        // missing rank becomes an error after the timeout.
        let (tx, rx) = mpsc::channel();
        let (rank, world) = (env.rank, env.world);
        std::thread::spawn(move || {
            let r = ctx
                .bind_to_thread()
                .map_err(|e| format!("{e:?}"))
                .and_then(|_| {
                    let mut comm = std::mem::MaybeUninit::uninit();
                    // SAFETY: `comm` is a valid out-pointer; the id came from ncclGetUniqueId on rank 0.
                    unsafe {
                        nccl::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
                    }
                    .map_err(|e| nccl_error(e.0))?;
                    // SAFETY: initialised by the successful call above.
                    Ok(Handle(unsafe { comm.assume_init() }))
                });
            let _ = tx.send(r);
        });
        let handle = match rx.recv_timeout(timeout) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => bail!("rank {rank}: NCCL initialisation failed: {e}"),
            Err(_) => bail!(
                "rank {rank}: NCCL initialisation did not finish within {:.0}s: a rank is missing or the network between nodes is blocked (NCCL_DEBUG=INFO says more)",
                timeout.as_secs_f64()
            ),
        };
        // The rendezvous connections are no longer needed.
        drop(joined.peers);
        let scratch = stream
            .alloc_zeros::<f64>(16)
            .map_err(|e| anyhow!("CUDA allocation: {e:?}"))?;
        Ok(NcclComm {
            comm: Mutex::new(handle),
            stream,
            rank,
            world,
            timeout,
            scratch: Mutex::new(scratch),
            aborted: Mutex::new(None),
        })
    }

    fn check_aborted(&self) -> Result<()> {
        match &*self.aborted.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(super::PeerStopped::new(self.rank, why).into()),
            None => Ok(()),
        }
    }

    /// Abort the communicator (a peer is gone or stuck): outstanding collectives return.
    fn abort(&self, why: String) -> anyhow::Error {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the handle is a live communicator; after abort it is never used again
        // (`aborted` is set and checked first by every call).
        unsafe {
            let _ = nccl::comm_abort(comm.0);
        }
        *self.aborted.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        anyhow!("rank {}: {why}", self.rank)
    }

    /// The asynchronous error of the communicator, if any.
    fn async_error(&self) -> Option<String> {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        let mut r = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator and a valid out-pointer.
        unsafe { sys::ncclCommGetAsyncError(comm.0, &mut r) };
        match r {
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => None,
            e => Some(nccl_error(e)),
        }
    }

    /// Queue `f` on the communication stream after the compute stream's work so far.
    fn enqueue(
        &self,
        be: &CudaBackend,
        what: &str,
        f: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<(), nccl::NcclError>,
    ) -> Result<()> {
        self.check_aborted()?;
        self.stream
            .join(be.compute_stream())
            .map_err(|e| anyhow!("{what}: ordering after compute: {e:?}"))?;
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        nccl::group_start().map_err(|e| anyhow!("{what}: {}", nccl_error(e.0)))?;
        let r = f(comm.0, self.stream.cu_stream() as sys::cudaStream_t);
        let end = nccl::group_end();
        drop(comm);
        if let Err(e) = r.and(end.map(|_| ())) {
            return Err(self.abort(format!("NCCL {what} failed: {}", nccl_error(e.0))));
        }
        Ok(())
    }

    /// Block until everything queued on the communication stream is done, or fail: NCCL error
    /// or timeout (then the communicator is aborted).
    fn block_until_done(&self, what: &str) -> Result<()> {
        self.check_aborted()?;
        let event: CudaEvent = self
            .stream
            .record_event(None)
            .map_err(|e| anyhow!("{what}: {e:?}"))?;
        let t0 = Instant::now();
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.abort(format!("{what}: CUDA error {e:?}"))),
            }
            if let Some(e) = self.async_error() {
                return Err(self.abort(format!("NCCL error during {what}: {e}")));
            }
            if t0.elapsed() > self.timeout {
                return Err(self.abort(format!(
                    "{what} did not finish within {:.0}s: another rank is gone or stuck (aborted the NCCL communicator)",
                    self.timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        if self.aborted.get_mut().map(|a| a.is_none()).unwrap_or(false) {
            let comm = self.comm.get_mut().map(|c| c.0).ok();
            if let Some(c) = comm {
                // SAFETY: a live communicator that is not used after this; destroy waits for
                // its outstanding work, which the trainer has already synchronised.
                unsafe {
                    let _ = nccl::comm_destroy(c);
                }
            }
        }
    }
}

/// Each storage of a buffer (f32, then bf16): NCCL type, device pointer, element bytes, and the
/// record that orders later users of the buffer after the communication stream.
type Storage<'a> = (sys::ncclDataType_t, u64, usize, SyncOnDrop<'a>);

fn storages<'a>(stream: &'a Arc<CudaStream>, buf: &'a mut CudaBuf) -> Vec<Storage<'a>> {
    let mut out = Vec::new();
    let (f, h) = buf.storages_mut();
    if let Some(f) = f {
        let (p, record) = f.device_ptr_mut(stream);
        out.push((sys::ncclDataType_t::ncclFloat32, p, 4, record));
    }
    if let Some(h) = h {
        let (p, record) = h.device_ptr_mut(stream);
        out.push((sys::ncclDataType_t::ncclBfloat16, p, 2, record));
    }
    out
}

fn void(p: u64) -> *mut std::ffi::c_void {
    p as usize as *mut std::ffi::c_void
}

impl Communicator<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce(&self, be: &CudaBackend, buf: &mut CudaBuf, len: usize) -> Result<()> {
        let parts = storages(&self.stream, buf);
        self.enqueue(be, "all-reduce", |comm, st| {
            for (dt, p, _, _) in &parts {
                // SAFETY: p points at a device buffer of at least len elements of type dt, kept
                // alive (and its stream-ordering record pending) by `parts`.
                unsafe {
                    nccl::all_reduce(
                        void(*p),
                        void(*p),
                        len,
                        *dt,
                        sys::ncclRedOp_t::ncclSum,
                        comm,
                        st,
                    )?;
                }
            }
            Ok(())
        })
    }
    fn reduce_scatter(&self, be: &CudaBackend, buf: &mut CudaBuf, len: usize) -> Result<()> {
        if !len.is_multiple_of(self.world) {
            bail!("reduce-scatter of {len} elements over {} ranks", self.world);
        }
        let s = len / self.world;
        let parts = storages(&self.stream, buf);
        let rank = self.rank;
        self.enqueue(be, "reduce-scatter", |comm, st| {
            for (dt, p, w, _) in &parts {
                let mine = *p + (rank * s * w) as u64;
                // SAFETY: in place as NCCL defines it: recvbuff = sendbuff + rank·recvcount.
                unsafe {
                    nccl::reduce_scatter(
                        void(*p),
                        void(mine),
                        s,
                        *dt,
                        sys::ncclRedOp_t::ncclSum,
                        comm,
                        st,
                    )?;
                }
            }
            Ok(())
        })
    }
    fn all_gather(&self, be: &CudaBackend, buf: &mut CudaBuf, len: usize) -> Result<()> {
        if !len.is_multiple_of(self.world) {
            bail!("all-gather of {len} elements over {} ranks", self.world);
        }
        let s = len / self.world;
        let parts = storages(&self.stream, buf);
        let rank = self.rank;
        self.enqueue(be, "all-gather", |comm, st| {
            for (dt, p, w, _) in &parts {
                let mine = *p + (rank * s * w) as u64;
                // SAFETY: in place as NCCL defines it: sendbuff = recvbuff + rank·sendcount.
                unsafe {
                    nccl::all_gather(void(mine), void(*p), s, *dt, comm, st)?;
                }
            }
            Ok(())
        })
    }
    fn broadcast(
        &self,
        be: &CudaBackend,
        buf: &mut CudaBuf,
        len: usize,
        root: usize,
    ) -> Result<()> {
        let parts = storages(&self.stream, buf);
        self.enqueue(be, "broadcast", |comm, st| {
            for (dt, p, _, _) in &parts {
                // SAFETY: p points at len elements of type dt on this device.
                unsafe {
                    nccl::broadcast(void(*p), void(*p), len, *dt, root as i32, comm, st)?;
                }
            }
            Ok(())
        })
    }
    fn all_reduce_host(&self, x: &mut [f64]) -> Result<()> {
        self.check_aborted()?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if scratch.len() < x.len() {
            *scratch = self
                .stream
                .alloc_zeros::<f64>(x.len().next_power_of_two())
                .map_err(|e| anyhow!("CUDA allocation: {e:?}"))?;
        }
        let mut view = scratch.slice_mut(0..x.len());
        self.stream
            .memcpy_htod(&*x, &mut view)
            .map_err(|e| anyhow!("host all-reduce upload: {e:?}"))?;
        {
            let (p, _record) = view.device_ptr_mut(&self.stream);
            let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
            // SAFETY: p points at x.len() f64 on this device, on the communication stream.
            let r = unsafe {
                nccl::all_reduce(
                    void(p),
                    void(p),
                    x.len(),
                    sys::ncclDataType_t::ncclFloat64,
                    sys::ncclRedOp_t::ncclSum,
                    comm.0,
                    self.stream.cu_stream() as sys::cudaStream_t,
                )
            };
            drop(comm);
            if let Err(e) = r {
                return Err(self.abort(format!("NCCL host all-reduce failed: {}", nccl_error(e.0))));
            }
        }
        self.block_until_done("host all-reduce")?;
        self.stream
            .memcpy_dtoh(&view, x)
            .map_err(|e| anyhow!("host all-reduce download: {e:?}"))?;
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let mut x = [0.0];
        self.all_reduce_host(&mut x)
    }
    fn wait(&self, be: &CudaBackend) -> Result<()> {
        self.check_aborted()?;
        if let Some(e) = self.async_error() {
            return Err(self.abort(format!("NCCL error: {e}")));
        }
        be.compute_stream()
            .join(&self.stream)
            .map_err(|e| anyhow!("ordering compute after NCCL: {e:?}"))
    }
    fn sync(&self, be: &CudaBackend) -> Result<()> {
        self.wait(be)?;
        self.block_until_done("gradient reduction")
    }
}

//! The CPU backend's communicator: collectives computed on the host from an all-gather of every
//! rank's vector ([`Exchange`]), which either threads of one process share ([`thread_group`]:
//! CI runs data parallelism without GPUs or processes) or processes send over TCP through rank 0
//! ([`TcpExchange`], set up by the rendezvous). Sums are taken in f64 in rank order, so every rank
//! gets bitwise the same result. Built for correctness and tests, not bandwidth: every exchange
//! moves every rank's vector to every rank.
//!
//! Failure: a thread rank that panics or returns marks the group as left, a process rank that
//! dies closes its socket; either way the others' next collective fails with the rank's name
//! instead of waiting, and every wait is bounded by the group's timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::Communicator;
use super::PeerStopped;
use crate::backend::cpu::{CpuBackend, Float};

/// An all-gather of variable-length f64 vectors: the primitive the host collectives are built on.
pub trait Exchange: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Every rank's vector, in rank order.
    fn exchange(&self, mine: Vec<f64>) -> Result<Vec<Arc<Vec<f64>>>>;
}

// ---- threads of one process -------------------------------------------------------------------

struct Round {
    /// Collectives completed so far (the number of the one in progress).
    gen: u64,
    parts: Vec<Option<Arc<Vec<f64>>>>,
    arrived: usize,
    result: Option<Arc<Vec<Arc<Vec<f64>>>>>,
    taken: usize,
    /// Why the group cannot go on (a rank panicked, returned or timed out).
    failed: Option<String>,
}

struct Shared {
    world: usize,
    timeout: Duration,
    round: Mutex<Round>,
    changed: Condvar,
}

/// One thread's handle on an in-process group (see [`thread_group`]).
pub struct ThreadExchange {
    rank: usize,
    gen: Mutex<u64>,
    shared: Arc<Shared>,
}

/// `world` handles on one in-process group; hand one to each rank's thread. Every wait gives up
/// after `timeout`.
pub fn thread_group(world: usize, timeout: Duration) -> Vec<ThreadExchange> {
    let shared = Arc::new(Shared {
        world,
        timeout,
        round: Mutex::new(Round {
            gen: 0,
            parts: vec![None; world],
            arrived: 0,
            result: None,
            taken: 0,
            failed: None,
        }),
        changed: Condvar::new(),
    });
    (0..world)
        .map(|rank| ThreadExchange {
            rank,
            gen: Mutex::new(0),
            shared: shared.clone(),
        })
        .collect()
}

impl ThreadExchange {
    fn fail(&self, why: String) {
        let mut r = self.shared.round.lock().unwrap_or_else(|p| p.into_inner());
        r.failed.get_or_insert(why);
        self.shared.changed.notify_all();
    }
}

impl Drop for ThreadExchange {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            format!("rank {} panicked", self.rank)
        } else {
            format!("rank {} has left the group", self.rank)
        };
        self.fail(why);
    }
}

impl Exchange for ThreadExchange {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn exchange(&self, mine: Vec<f64>) -> Result<Vec<Arc<Vec<f64>>>> {
        let s = &*self.shared;
        let mut gen = self.gen.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + s.timeout;
        let mut r = s.round.lock().unwrap_or_else(|p| p.into_inner());
        // Wait for the previous collective to be collected by every rank, then contribute.
        let timed_out = |r: &Round| {
            let missing: Vec<usize> = (0..s.world).filter(|&i| r.parts[i].is_none()).collect();
            anyhow!(
                "rank {}: collective {} timed out after {:.0}s waiting for ranks {missing:?}",
                self.rank,
                *gen,
                s.timeout.as_secs_f64()
            )
        };
        while r.gen != *gen {
            if let Some(why) = &r.failed {
                return Err(PeerStopped::new(self.rank, why).into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out(&r));
            }
            r = s
                .changed
                .wait_timeout(r, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        r.parts[self.rank] = Some(Arc::new(mine));
        r.arrived += 1;
        if r.arrived == s.world {
            let all: Vec<Arc<Vec<f64>>> = r.parts.iter_mut().map(|p| p.take().unwrap()).collect();
            r.result = Some(Arc::new(all));
            s.changed.notify_all();
        }
        // Wait for the result; a failure only counts while it is not there yet.
        loop {
            if let Some(res) = &r.result {
                let res = (**res).clone();
                r.taken += 1;
                if r.taken == s.world {
                    r.result = None;
                    r.taken = 0;
                    r.arrived = 0;
                    r.gen += 1;
                    s.changed.notify_all();
                }
                *gen += 1;
                return Ok(res);
            }
            if let Some(why) = &r.failed {
                let why = why.clone();
                drop(r);
                // This rank cannot finish the collective either: say so to everyone.
                self.fail(format!("rank {} stopped after: {why}", self.rank));
                return Err(PeerStopped::new(self.rank, why).into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let e = timed_out(&r);
                drop(r);
                self.fail(format!("{e}"));
                return Err(e);
            }
            r = s
                .changed
                .wait_timeout(r, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

// ---- processes over TCP -----------------------------------------------------------------------

/// Rank 0 holds a stream to every other rank; the others one stream to rank 0. An exchange:
/// every rank sends its vector to rank 0, which sends all of them back to everyone.
pub struct TcpExchange {
    rank: usize,
    world: usize,
    /// Rank 0: streams of ranks 1..world (index r-1). Others: the stream to rank 0.
    peers: Mutex<Vec<TcpStream>>,
}

fn write_vec(s: &mut TcpStream, v: &[f64]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + 8 * v.len());
    bytes.extend_from_slice(&(v.len() as u64).to_le_bytes());
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    s.write_all(&bytes)
}

fn read_vec(s: &mut TcpStream) -> std::io::Result<Vec<f64>> {
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n) as usize;
    let mut bytes = vec![0u8; n * 8];
    s.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect())
}

impl TcpExchange {
    /// From the rendezvous's connected streams (see `rendezvous::join`); every read and write
    /// gives up after `timeout`.
    pub fn new(
        rank: usize,
        world: usize,
        peers: Vec<TcpStream>,
        timeout: Duration,
    ) -> Result<Self> {
        for p in &peers {
            p.set_read_timeout(Some(timeout))?;
            p.set_write_timeout(Some(timeout))?;
            p.set_nodelay(true)?;
        }
        Ok(TcpExchange {
            rank,
            world,
            peers: Mutex::new(peers),
        })
    }
}

fn io_error(rank: usize, peer: usize, e: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted => PeerStopped::new(
            rank,
            format!("rank {peer} disconnected (it exited or crashed)"),
        )
        .into(),
        WouldBlock | TimedOut => PeerStopped::new(
            rank,
            format!("rank {peer} did not answer within the timeout"),
        )
        .into(),
        _ => anyhow!("rank {rank}: connection to rank {peer}: {e}"),
    }
}

impl Exchange for TcpExchange {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn exchange(&self, mine: Vec<f64>) -> Result<Vec<Arc<Vec<f64>>>> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if self.rank == 0 {
            let mut all = vec![Arc::new(mine)];
            for (i, p) in peers.iter_mut().enumerate() {
                all.push(Arc::new(read_vec(p).map_err(|e| io_error(0, i + 1, e))?));
            }
            for (i, p) in peers.iter_mut().enumerate() {
                for v in &all {
                    write_vec(p, v).map_err(|e| io_error(0, i + 1, e))?;
                }
            }
            Ok(all)
        } else {
            let p = &mut peers[0];
            write_vec(p, &mine).map_err(|e| io_error(self.rank, 0, e))?;
            (0..self.world)
                .map(|_| {
                    read_vec(p)
                        .map(Arc::new)
                        .map_err(|e| io_error(self.rank, 0, e))
                })
                .collect()
        }
    }
}

// ---- the collectives --------------------------------------------------------------------------

/// The CPU backend's communicator over an [`Exchange`].
pub struct HostComm {
    ex: Box<dyn Exchange>,
}

impl HostComm {
    pub fn new(ex: Box<dyn Exchange>) -> Self {
        HostComm { ex }
    }

    /// This process's communicator among the launched ranks of `env`: the rendezvous's
    /// connections become the TCP channel.
    pub fn join_tcp(env: &super::DistEnv, cfg: &crate::config::Config) -> Result<Self> {
        let timeout = Duration::from_secs_f64(cfg.train.comm_timeout_s);
        if env.rank == 0 {
            eprintln!(
                "rendezvous: rank 0 of {} waiting at {} (CPU communicator over TCP)",
                env.world,
                env.waiting_at()
            );
        }
        let joined = super::rendezvous::join(
            &env.master,
            env.port_note.as_deref(),
            env.rank,
            env.world,
            || Ok(Vec::new()),
            timeout,
        )?;
        let ex = TcpExchange::new(env.rank, env.world, joined.peers, timeout)?;
        Ok(HostComm::new(Box::new(ex)))
    }

    fn shard_len(&self, len: usize, what: &str) -> Result<usize> {
        let w = self.ex.world();
        if !len.is_multiple_of(w) {
            bail!("{what}: buffer of {len} elements does not split over {w} ranks");
        }
        Ok(len / w)
    }
}

fn to_f64<T: Float>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

impl<T: Float> Communicator<CpuBackend<T>> for HostComm {
    fn rank(&self) -> usize {
        self.ex.rank()
    }
    fn world(&self) -> usize {
        self.ex.world()
    }
    fn all_reduce(&self, _be: &CpuBackend<T>, buf: &mut Vec<T>, len: usize) -> Result<()> {
        let buf = &mut buf[..len];
        let parts = self.ex.exchange(to_f64(buf))?;
        for (i, x) in buf.iter_mut().enumerate() {
            *x = T::from_f64(parts.iter().map(|p| p[i]).sum());
        }
        Ok(())
    }
    fn reduce_scatter(&self, _be: &CpuBackend<T>, buf: &mut Vec<T>, len: usize) -> Result<()> {
        let s = self.shard_len(len, "reduce-scatter")?;
        let parts = self.ex.exchange(to_f64(&buf[..len]))?;
        let r = self.ex.rank();
        for i in r * s..(r + 1) * s {
            buf[i] = T::from_f64(parts.iter().map(|p| p[i]).sum());
        }
        Ok(())
    }
    fn all_gather(&self, _be: &CpuBackend<T>, buf: &mut Vec<T>, len: usize) -> Result<()> {
        let s = self.shard_len(len, "all-gather")?;
        let r = self.ex.rank();
        let parts = self.ex.exchange(to_f64(&buf[r * s..(r + 1) * s]))?;
        for (q, p) in parts.iter().enumerate() {
            for (x, &v) in buf[q * s..(q + 1) * s].iter_mut().zip(p.iter()) {
                *x = T::from_f64(v);
            }
        }
        Ok(())
    }
    fn broadcast(
        &self,
        _be: &CpuBackend<T>,
        buf: &mut Vec<T>,
        len: usize,
        root: usize,
    ) -> Result<()> {
        let buf = &mut buf[..len];
        let mine = if self.ex.rank() == root {
            to_f64(buf)
        } else {
            Vec::new()
        };
        let parts = self.ex.exchange(mine)?;
        if parts[root].len() != buf.len() {
            bail!(
                "broadcast: rank {root} sent {} elements, this rank expects {}",
                parts[root].len(),
                buf.len()
            );
        }
        for (x, &v) in buf.iter_mut().zip(parts[root].iter()) {
            *x = T::from_f64(v);
        }
        Ok(())
    }
    fn all_reduce_host(&self, x: &mut [f64]) -> Result<()> {
        let parts = self.ex.exchange(x.to_vec())?;
        for (i, v) in x.iter_mut().enumerate() {
            *v = parts.iter().map(|p| p[i]).sum();
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.ex.exchange(Vec::new()).map(|_| ())
    }
    fn wait(&self, _be: &CpuBackend<T>) -> Result<()> {
        Ok(())
    }
    fn sync(&self, _be: &CpuBackend<T>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Be = CpuBackend<f32>;

    fn run_threads<R: Send + 'static>(
        world: usize,
        timeout: Duration,
        f: impl Fn(HostComm) -> R + Send + Sync + 'static,
    ) -> Vec<std::thread::Result<R>> {
        let f = Arc::new(f);
        let handles: Vec<_> = thread_group(world, timeout)
            .into_iter()
            .map(|ex| {
                let f = f.clone();
                std::thread::spawn(move || f(HostComm::new(Box::new(ex))))
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    }

    #[test]
    fn collectives_over_threads_match_their_definitions() {
        let out = run_threads(3, Duration::from_secs(20), |c| {
            let be = Be::new();
            let r = Communicator::<Be>::rank(&c) as f32;
            let mut a: Vec<f32> = (0..6).map(|i| i as f32 + 10.0 * r).collect();
            c.all_reduce(&be, &mut a, 6).unwrap();
            let mut rs: Vec<f32> = (0..6).map(|i| i as f32 * (r + 1.0)).collect();
            c.reduce_scatter(&be, &mut rs, 6).unwrap();
            let mut ag = vec![-1.0f32; 6];
            let me = r as usize;
            ag[2 * me] = r;
            ag[2 * me + 1] = r + 0.5;
            c.all_gather(&be, &mut ag, 6).unwrap();
            let mut bc = vec![r; 4];
            c.broadcast(&be, &mut bc, 4, 2).unwrap();
            let mut h = [r as f64, 1.0];
            Communicator::<Be>::all_reduce_host(&c, &mut h).unwrap();
            Communicator::<Be>::barrier(&c).unwrap();
            (me, a, rs[2 * me..2 * me + 2].to_vec(), ag, bc, h)
        });
        for o in out {
            let (me, a, rs, ag, bc, h) = o.unwrap();
            assert_eq!(a, (0..6).map(|i| 3.0 * i as f32 + 30.0).collect::<Vec<_>>());
            // Σ_r i·(r+1) = 6i over the slice this rank owns.
            let want: Vec<f32> = (2 * me..2 * me + 2).map(|i| 6.0 * i as f32).collect();
            assert_eq!(rs, want);
            assert_eq!(ag, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
            assert_eq!(bc, vec![2.0; 4]);
            assert_eq!(h, [3.0, 3.0]);
        }
    }

    #[test]
    fn broadcast_bytes_gives_every_rank_the_roots_bytes() {
        let out = run_threads(3, Duration::from_secs(20), |c| {
            let mine = format!("rank {} says hello", Communicator::<Be>::rank(&c));
            super::super::broadcast_bytes::<Be>(&c, mine.as_bytes(), 1).unwrap()
        });
        for o in out {
            assert_eq!(o.unwrap(), b"rank 1 says hello");
        }
    }

    #[test]
    fn a_rank_that_panics_makes_the_others_fail_instead_of_waiting() {
        let t0 = Instant::now();
        let out = run_threads(3, Duration::from_secs(60), |c| {
            let be = Be::new();
            let mut a = vec![1.0f32; 4];
            c.all_reduce(&be, &mut a, 4)?;
            if Communicator::<Be>::rank(&c) == 1 {
                panic!("rank 1 fails on purpose");
            }
            c.all_reduce(&be, &mut a, 4)?;
            Ok::<_, anyhow::Error>(a)
        });
        assert!(t0.elapsed() < Duration::from_secs(30), "the others waited");
        assert!(out[1].is_err(), "rank 1 panicked");
        for r in [0, 2] {
            let e = out[r].as_ref().unwrap().as_ref().unwrap_err().to_string();
            assert!(e.contains("rank 1 panicked"), "{e}");
        }
    }

    #[test]
    fn a_rank_that_never_arrives_times_out_with_the_missing_rank_named() {
        let out = run_threads(2, Duration::from_millis(300), |c| {
            let be = Be::new();
            if Communicator::<Be>::rank(&c) == 1 {
                std::thread::sleep(Duration::from_secs(2));
                return Ok(());
            }
            let mut a = vec![1.0f32; 4];
            c.all_reduce(&be, &mut a, 4)
        });
        let e = out[0].as_ref().unwrap().as_ref().unwrap_err().to_string();
        assert!(e.contains("timed out") && e.contains("[1]"), "{e}");
    }

    #[test]
    fn tcp_exchange_sums_and_reports_a_dead_peer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = Duration::from_secs(10);
        let peer = std::thread::spawn(move || {
            let s = TcpStream::connect(addr).unwrap();
            let c = HostComm::new(Box::new(TcpExchange::new(1, 2, vec![s], t).unwrap()));
            let mut x = [2.0, 5.0];
            Communicator::<Be>::all_reduce_host(&c, &mut x).unwrap();
            x
        });
        let (s, _) = listener.accept().unwrap();
        let c = HostComm::new(Box::new(TcpExchange::new(0, 2, vec![s], t).unwrap()));
        let mut x = [1.0, 1.0];
        Communicator::<Be>::all_reduce_host(&c, &mut x).unwrap();
        assert_eq!(x, [3.0, 6.0]);
        assert_eq!(peer.join().unwrap(), [3.0, 6.0]);
        // The peer has exited (its socket closed): the next collective names it.
        let e = Communicator::<Be>::barrier(&c).unwrap_err().to_string();
        assert!(e.contains("rank 1 disconnected"), "{e}");
    }
}

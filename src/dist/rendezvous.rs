//! The TCP rendezvous (std::net): rank 0 listens on the master port, every other rank connects
//! and says who it is; when all have joined, rank 0 sends each the same payload (the NCCL unique
//! id; nothing for the CPU communicator, which keeps the connections as its channel). Every step
//! is bounded by a timeout and fails with one line saying what was missing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

const MAGIC: &[u8; 8] = b"KILNRDV1";

/// The connections a rank holds after the rendezvous, and rank 0's payload.
pub struct Joined {
    /// Rank 0: the streams of ranks 1..world, in rank order. Others: the stream to rank 0.
    pub peers: Vec<TcpStream>,
    pub payload: Vec<u8>,
}

fn port_of(master: &str) -> Result<u16> {
    master
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("rendezvous address {master:?}: expected HOST:PORT"))
}

/// Join the group at `master` (`HOST:PORT` of rank 0). Rank 0 calls `payload` once and sends its
/// bytes to every rank. `port_note` says where the port came from when it is not `MASTER_PORT`
/// (see [`super::DistEnv::port_note`]); rank 0 names it when it cannot listen there.
pub fn join(
    master: &str,
    port_note: Option<&str>,
    rank: usize,
    world: usize,
    payload: impl FnOnce() -> Result<Vec<u8>>,
    timeout: Duration,
) -> Result<Joined> {
    let deadline = Instant::now() + timeout;
    let port = port_of(master)?;
    if rank == 0 {
        let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| match port_note {
            Some(note) => format!("rendezvous: rank 0 cannot listen on port {port} ({note}): in use by another program? start torchrun with another --master_port"),
            None => format!("rendezvous: rank 0 cannot listen on port {port} (in use by another run? set MASTER_PORT or --master)"),
        })?;
        listener.set_nonblocking(true)?;
        let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        let mut joined = 0;
        while joined < world - 1 {
            match listener.accept() {
                Ok((mut s, from)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut hello = [0u8; 16];
                    if s.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
                        eprintln!(
                            "rendezvous: ignoring a connection from {from} that is not a kiln rank"
                        );
                        continue;
                    }
                    let r = u32::from_le_bytes(hello[8..12].try_into().unwrap()) as usize;
                    let w = u32::from_le_bytes(hello[12..16].try_into().unwrap()) as usize;
                    if w != world {
                        bail!("rendezvous: rank {r} (from {from}) has world size {w}, rank 0 has {world}: start every rank with the same WORLD_SIZE");
                    }
                    if r == 0 || r >= world || peers[r - 1].is_some() {
                        bail!("rendezvous: a second rank {r} joined from {from}: every rank needs its own RANK");
                    }
                    peers[r - 1] = Some(s);
                    joined += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> =
                            (1..world).filter(|&r| peers[r - 1].is_none()).collect();
                        bail!(
                            "rendezvous: only {} of {world} ranks joined rank 0 on port {port} within {:.0}s (missing ranks {missing:?}): did every rank start, with the same MASTER_ADDR and MASTER_PORT?",
                            joined + 1,
                            timeout.as_secs_f64()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => bail!("rendezvous: accepting on port {port}: {e}"),
            }
        }
        let payload = payload()?;
        let peers: Vec<TcpStream> = peers.into_iter().map(|p| p.unwrap()).collect();
        for (i, mut p) in peers.iter().enumerate() {
            p.write_all(&(payload.len() as u64).to_le_bytes())
                .and_then(|_| p.write_all(&payload))
                .with_context(|| format!("rendezvous: sending to rank {}", i + 1))?;
        }
        Ok(Joined { peers, payload })
    } else {
        let mut last_err = String::from("no attempt");
        let mut stream = loop {
            let addrs: Vec<_> = match master.to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last_err = format!("cannot resolve {master}: {e}");
                    Vec::new()
                }
            };
            let mut connected = None;
            for a in &addrs {
                match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
            if let Some(s) = connected {
                break s;
            }
            if Instant::now() >= deadline {
                bail!(
                    "rendezvous: rank {rank} could not reach rank 0 at {master} within {:.0}s ({last_err}): is rank 0 running, and is MASTER_ADDR reachable from this node?",
                    timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut hello = Vec::with_capacity(16);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        hello.extend_from_slice(&(world as u32).to_le_bytes());
        stream.write_all(&hello)?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        stream.set_read_timeout(Some(left))?;
        let mut n = [0u8; 8];
        let read = stream.read_exact(&mut n).and_then(|_| {
            let mut payload = vec![0u8; u64::from_le_bytes(n) as usize];
            stream.read_exact(&mut payload).map(|_| payload)
        });
        let payload = read.map_err(|e| {
            anyhow!("rendezvous: rank {rank} got no answer from rank 0 at {master} ({e}): not every rank joined in time, or rank 0 failed")
        })?;
        stream.set_read_timeout(None)?;
        Ok(Joined {
            peers: vec![stream],
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn ranks_join_and_receive_rank_zeros_payload() {
        let master = format!("127.0.0.1:{}", free_port());
        let t = Duration::from_secs(20);
        let others: Vec<_> = (1..3)
            .map(|r| {
                let m = master.clone();
                std::thread::spawn(move || {
                    join(&m, None, r, 3, || unreachable!(), t).unwrap().payload
                })
            })
            .collect();
        let j = join(&master, None, 0, 3, || Ok(b"id".to_vec()), t).unwrap();
        assert_eq!(j.peers.len(), 2);
        for o in others {
            assert_eq!(o.join().unwrap(), b"id");
        }
    }

    #[test]
    fn a_missing_rank_is_named_after_the_timeout() {
        let master = format!("127.0.0.1:{}", free_port());
        let e = join(
            &master,
            None,
            0,
            2,
            || Ok(vec![]),
            Duration::from_millis(300),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("only 1 of 2 ranks") && e.contains("[1]"), "{e}");
        let e = join(
            &master,
            None,
            1,
            2,
            || Ok(vec![]),
            Duration::from_millis(300),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("could not reach rank 0"), "{e}");
    }
}

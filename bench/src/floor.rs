//! The loopback floor: what plain TCP costs on this machine, measured in the same run so the
//! ratios are not thrown off by a noisy day. Both ends are threads of this process.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::stats::{Figure, Unit};

/// Size of one ping-pong message.
const MSG: usize = 16;
/// Size of one write in the bulk measurement.
const CHUNK: usize = 1 << 20;

/// Where the two ends of a floor measurement run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Placement {
    /// Wherever the scheduler puts them (or all on CPU 0 when the bench is pinned).
    Free,
    /// The client end on the first CPU, the echo end on the second.
    Cpus(usize, usize),
}

/// 16-byte ping-pong over one connection with `TCP_NODELAY`: round-trip times.
///
/// On an idle machine the scheduler may put both ends on one CPU (an echo then costs a few
/// context switches) or on two (a cross-CPU wake-up each way, several times dearer on a
/// virtual machine), and which one varies from run to run; [`Placement::Cpus`] fixes it.
pub(crate) fn ping_pong(
    iters: usize,
    warmup: usize,
    budget: Duration,
    placement: Placement,
) -> anyhow::Result<Figure> {
    let (client_cpu, echo_cpu) = match placement {
        Placement::Free => (None, None),
        Placement::Cpus(a, b) => (Some(a), Some(b)),
    };
    // Both ends on threads of their own, so pinning them leaves the main thread alone.
    thread::spawn(move || {
        if let Some(cpu) = client_cpu {
            crate::procs::pin_current_thread(cpu)?;
        }
        ping_pong_client(iters, warmup, budget, echo_cpu)
    })
    .join()
    .ok()
    .context("ping-pong thread panicked")?
}

fn ping_pong_client(
    iters: usize,
    warmup: usize,
    budget: Duration,
    echo_cpu: Option<usize>,
) -> anyhow::Result<Figure> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = thread::spawn(move || -> anyhow::Result<()> {
        if let Some(cpu) = echo_cpu {
            crate::procs::pin_current_thread(cpu)?;
        }
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; MSG];
        // Ends when the client closes (read_exact fails with UnexpectedEof).
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    let deadline = Instant::now() + budget;
    for _ in 0..warmup {
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        samples.push(t0.elapsed().as_nanos() as u64);
        if Instant::now() > deadline {
            break;
        }
    }
    drop(s);
    echo.join().ok().context("echo thread panicked")??;
    Ok(Figure::new(samples, Unit::Op, None))
}

/// TCP connect, one 16-byte echo, close: per-iteration times.
pub(crate) fn connect_echo(iters: usize, budget: Duration) -> anyhow::Result<Figure> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..iters {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; MSG];
            if s.read_exact(&mut buf).is_err() {
                break; // the client stopped early (time budget) and sent an empty connection
            }
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    let deadline = Instant::now() + budget;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        drop(s);
        samples.push(t0.elapsed().as_nanos() as u64);
        if Instant::now() > deadline {
            break;
        }
    }
    if samples.len() < iters {
        // Unblock the echo thread's accept; it stops at the empty connection.
        drop(TcpStream::connect(addr)?);
    }
    echo.join().ok().context("echo thread panicked")??;
    Ok(Figure::new(samples, Unit::Op, None))
}

/// Bulk transfer of `total` bytes in 1 MiB writes, `runs` times: time until the receiver has
/// every byte, per run.
pub(crate) fn bulk(total: usize, runs: usize, budget: Duration) -> anyhow::Result<Figure> {
    let deadline = Instant::now() + budget;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let sink = thread::spawn(move || -> std::io::Result<usize> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n;
                if got == total {
                    s.write_all(&[1])?; // tell the sender that everything arrived
                }
            }
            Ok(got)
        });
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let chunk = vec![0x5au8; CHUNK];
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < total {
            let n = CHUNK.min(total - sent);
            s.write_all(&chunk[..n])?;
            sent += n;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        samples.push(t0.elapsed().as_nanos() as u64);
        s.shutdown(Shutdown::Both)?;
        let got = sink.join().ok().context("sink thread panicked")??;
        anyhow::ensure!(got == total, "sink got {got} of {total} bytes");
        if Instant::now() > deadline {
            break;
        }
    }
    Ok(Figure::new(samples, Unit::Bytes(total as u64), None))
}

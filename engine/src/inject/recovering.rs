//! The answer a shard gives while it cannot serve yet (RFC 5321 §3.8: a
//! server that is not available answers `421` and closes).
//!
//! While a shard recovers its spool (a blocking scan of every segment, run
//! on the shard's own thread because the spool is single-threaded and not
//! `Send`), and then restores its queues, its listening sockets are already
//! bound and the kernel already hands them connections. A small helper
//! thread owns those sockets meanwhile: it accepts each connection, writes
//! `421 4.3.2 System not accepting network messages (recovering spool)`,
//! drains what the client sent for a moment (closing with unread input
//! would reset the connection and could destroy the `421` before the
//! client reads it) and closes. [`Responder::finish`] stops it and hands
//! the sockets back for the shard's normal accept loops. Nothing of this is
//! on the hot path: it runs once per shard start.

// std
use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The reply while recovering (RFC 3463 4.3.2: system not accepting
/// network messages).
pub const RECOVERING_REPLY: &[u8] =
    b"421 4.3.2 System not accepting network messages (recovering spool)\r\n";

/// How often the helper checks whether it should stop.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Longest the helper drains a refused client's input before closing.
const DRAIN_MAX: Duration = Duration::from_millis(200);
/// Bytes drained at most per refused connection.
const DRAIN_BYTES_MAX: usize = 16 << 10;
const _: () = assert!(DRAIN_MAX.as_millis() < 1000);

/// The helper thread answering `421` on a shard's sockets.
pub struct Responder {
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    thread: JoinHandle<Vec<TcpListener>>,
}

impl Responder {
    /// Takes the sockets and starts answering `reply` on them.
    pub fn start(
        shard: u32,
        listeners: Vec<TcpListener>,
        reply: &'static [u8],
    ) -> io::Result<Responder> {
        for l in &listeners {
            l.set_nonblocking(true)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name(format!("sluice-recovering-{shard}"))
            .spawn({
                let stop = Arc::clone(&stop);
                let refused = Arc::clone(&refused);
                move || {
                    // Off the shard's CPU: this thread was started from it.
                    crate::runtime::helpers::place_current_thread();
                    serve(&listeners, &stop, &refused, reply);
                    listeners
                }
            })?;
        Ok(Responder {
            stop,
            refused,
            thread,
        })
    }

    /// Stops answering and returns the sockets (blocking again, as the
    /// shard's executor expects) with the number of connections refused.
    pub fn finish(self) -> io::Result<(Vec<TcpListener>, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let listeners = self
            .thread
            .join()
            .map_err(|_| io::Error::other("the recovering responder thread panicked"))?;
        for l in &listeners {
            l.set_nonblocking(false)?;
        }
        Ok((listeners, self.refused.load(Ordering::Relaxed)))
    }
}

fn serve(listeners: &[TcpListener], stop: &AtomicBool, refused: &AtomicU64, reply: &[u8]) {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for p in &mut fds {
            p.revents = 0;
        }
        // SAFETY: `fds` is a valid array of pollfd for the call's duration,
        // and the descriptors belong to `listeners`, alive in this frame.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                POLL_INTERVAL.as_millis() as libc::c_int,
            )
        };
        if n <= 0 {
            // Timeout, or EINTR: look at the stop flag again.
            continue;
        }
        for l in listeners {
            // Bounded: stop after a burst so the stop flag is seen.
            for _ in 0..64 {
                match l.accept() {
                    Ok((stream, _)) => {
                        refuse(stream, reply);
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

fn refuse(mut stream: TcpStream, reply: &[u8]) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; timeouts bound
    // every call below.
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(DRAIN_MAX));
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    if stream.write_all(reply).is_err() {
        return;
    }
    let _ = stream.shutdown(NetShutdown::Write);
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while started.elapsed() < DRAIN_MAX && drained < DRAIN_BYTES_MAX {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn answers_421_until_finished_then_hands_the_socket_back() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let responder = Responder::start(0, vec![listener], RECOVERING_REPLY).expect("start");
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            // A pipelining client that speaks first must still read the 421.
            c.write_all(b"EHLO client\r\n").expect("write");
            let mut line = String::new();
            io::BufReader::new(&mut c)
                .read_line(&mut line)
                .expect("read");
            assert_eq!(line.as_bytes(), RECOVERING_REPLY);
        }
        let (listeners, refused) = responder.finish().expect("finish");
        assert_eq!(refused, 3);
        assert_eq!(listeners.len(), 1);
        // Back to the caller: a new connection waits in the backlog until
        // the caller accepts it; nobody answers on its behalf.
        let mut c = TcpStream::connect(addr).expect("connect");
        let (mut s, _) = listeners[0].accept().expect("accept");
        s.write_all(b"220 ready\r\n").expect("write");
        let mut line = String::new();
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        io::BufReader::new(&mut c)
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line, "220 ready\r\n");
    }
}

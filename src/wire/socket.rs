//! Every socket option in one place, through socket2.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

use crate::config::Keepalive;

/// How long a blocked `accept` waits before it looks at the stop flag again, where shutting
/// the listener down does not wake it (not Linux).
pub(crate) const ACCEPT_POLL: Duration = Duration::from_secs(1);

/// A listener with `SO_REUSEADDR`, so a restarted server can take its port back at once, and
/// the waker that stops its `accept`.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<(TcpListener, ListenerWaker)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    // Linux's accept honours SO_RCVTIMEO: the fallback wake-up elsewhere.
    socket.set_read_timeout(Some(ACCEPT_POLL))?;
    let waker = ListenerWaker(socket.try_clone()?);
    Ok((socket.into(), waker))
}

/// A second descriptor of the listening socket, made at bind time, so stopping the server
/// never needs a new descriptor (there may be none left).
pub(crate) struct ListenerWaker(Socket);

impl ListenerWaker {
    /// Wakes a blocked `accept` at once: on Linux, shutting a listening socket down makes it
    /// fail with `EINVAL`. Elsewhere the accept's receive timeout wakes it.
    pub(crate) fn wake(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// Connects with an optional timeout, then tunes the stream.
pub(crate) fn connect(addr: SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    match timeout {
        Some(t) => socket.connect_timeout(&SockAddr::from(addr), t)?,
        None => socket.connect(&SockAddr::from(addr))?,
    }
    let stream: TcpStream = socket.into();
    tune(&stream, &Keepalive::default())?;
    Ok(stream)
}

/// The longest keepalive idle time and interval Linux accepts (`MAX_TCP_KEEPIDLE`,
/// `MAX_TCP_KEEPINTVL`: 32,767 s).
pub(crate) const MAX_KEEPALIVE_SECS: Duration = Duration::from_secs(32_767);
/// The longest `TCP_USER_TIMEOUT` Linux accepts: `i32::MAX` milliseconds (24.8 days).
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
/// The most keepalive probes Linux accepts (`MAX_TCP_KEEPCNT`).
pub(crate) const MAX_KEEPALIVE_PROBES: u32 = 127;

/// `TCP_NODELAY` (requests are small and latency-bound), keepalive and, on Linux,
/// `TCP_USER_TIMEOUT`, so a dead peer is noticed within `keepalive.timeout()` whether the
/// connection is idle (keepalive probes) or has data unacknowledged (the user timeout).
pub(crate) fn tune(stream: &TcpStream, keepalive: &Keepalive) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_nodelay(true)?;
    // Linux refuses figures past its limits with EINVAL, which would fail every connection:
    // clamp to them (the public fields can be set to anything).
    let keepalive = &Keepalive {
        idle: keepalive.idle.min(MAX_KEEPALIVE_SECS),
        interval: keepalive.interval.min(MAX_KEEPALIVE_SECS),
        retries: keepalive.retries.min(MAX_KEEPALIVE_PROBES),
    };
    let probes = TcpKeepalive::new()
        .with_time(keepalive.idle)
        .with_interval(keepalive.interval);
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    let probes = probes.with_retries(keepalive.retries);
    socket.set_tcp_keepalive(&probes)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // The kernel reads it as a signed count of milliseconds.
    socket.set_tcp_user_timeout(Some(keepalive.timeout().min(MAX_USER_TIMEOUT)))?;
    Ok(())
}

/// A TCP stream whose reads can be bounded by one deadline across many read calls, so a peer
/// that trickles bytes cannot stretch a bounded phase (the handshake) for ever; and whose
/// writes can be bounded the same way, so a peer that reads a reply slowly cannot stretch it.
pub(crate) struct DeadlineStream {
    /// Shared with the server's connection registry, which shuts it down to end the session.
    stream: Arc<TcpStream>,
    deadline: Option<Instant>,
    /// How long a read may block while no deadline is set (`None`: as long as it needs).
    idle_timeout: Option<Duration>,
    /// How long one reply may take to write (`None`: as long as it needs).
    write_timeout: Option<Duration>,
    write_deadline: Option<Instant>,
    /// Whether the socket's send timeout is the whole `write_timeout`: then the first write
    /// call of a reply needs no system call to set it.
    send_timeout_whole: bool,
    /// Whether no write call of the current reply was made yet.
    first_write: bool,
}

impl DeadlineStream {
    pub(crate) fn new(stream: Arc<TcpStream>) -> Self {
        DeadlineStream {
            stream,
            deadline: None,
            idle_timeout: None,
            write_timeout: None,
            write_deadline: None,
            send_timeout_whole: true,
            first_write: false,
        }
    }

    /// Bounds every later read by `deadline` (`None`: reads block as long as they need).
    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.deadline = deadline;
        if deadline.is_none() {
            self.stream.set_read_timeout(self.idle_timeout)?;
        }
        Ok(())
    }

    /// Bounds each read made while no deadline is set by `timeout` (`None`: reads block as
    /// long as they need); such a read fails with `WouldBlock` once it has passed. Costs no
    /// system call if the timeout is already `timeout`.
    pub(crate) fn set_idle_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.idle_timeout == timeout {
            return Ok(());
        }
        self.idle_timeout = timeout;
        if self.deadline.is_none() {
            self.stream.set_read_timeout(timeout)?;
        }
        Ok(())
    }

    /// Sets how long each reply, started by [`DeadlineStream::start_reply`], may take to
    /// write in all (`None`: no limit). Until a reply is started, each write call gets this.
    pub(crate) fn set_write_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout = timeout;
        self.write_deadline = None;
        self.stream.set_write_timeout(timeout)?;
        self.send_timeout_whole = true;
        Ok(())
    }

    /// Starts the clock of one reply: every write until the next call shares one deadline,
    /// `write_timeout` from now, and fails with `TimedOut` once it has passed.
    pub(crate) fn start_reply(&mut self) -> io::Result<()> {
        if !self.send_timeout_whole {
            self.stream.set_write_timeout(self.write_timeout)?;
            self.send_timeout_whole = true;
        }
        self.first_write = true;
        self.write_deadline = crate::time::deadline(self.write_timeout);
        Ok(())
    }

    /// The inner stream.
    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The inner stream, to share with another writer.
    pub(crate) fn shared(&self) -> Arc<TcpStream> {
        Arc::clone(&self.stream)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
        }
        (&*self.stream).read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(deadline) = self.write_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            // On the first call of a reply the socket's timeout is the whole budget, which is
            // what is left give or take the time it took to encode the reply: a small reply
            // costs no extra system call.
            if !(self.first_write && self.send_timeout_whole) {
                self.stream.set_write_timeout(Some(left))?;
                self.send_timeout_whole = false;
            }
            self.first_write = false;
        }
        (&*self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.stream).flush()
    }
}

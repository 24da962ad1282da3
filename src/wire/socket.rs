//! Every socket option in one place, through socket2.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, TcpKeepalive, Type};

/// How long an idle connection waits before TCP keepalive probes start, and between probes.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// A listener with `SO_REUSEADDR`, so a restarted server can take its port back at once.
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Connects with an optional timeout, then tunes the stream.
pub(crate) fn connect(addr: SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    match timeout {
        Some(t) => socket.connect_timeout(&SockAddr::from(addr), t)?,
        None => socket.connect(&SockAddr::from(addr))?,
    }
    let stream: TcpStream = socket.into();
    tune(&stream)?;
    Ok(stream)
}

/// `TCP_NODELAY` (requests are small and latency-bound) and keepalive (to notice dead peers).
pub(crate) fn tune(stream: &TcpStream) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE);
    socket.set_tcp_keepalive(&keepalive)
}

/// A TCP stream whose reads can be bounded by one deadline across many read calls, so a peer
/// that trickles bytes cannot stretch a bounded phase (the handshake) for ever; and whose
/// writes can be bounded the same way, so a peer that reads a reply slowly cannot stretch it.
pub(crate) struct DeadlineStream {
    stream: TcpStream,
    deadline: Option<Instant>,
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
    pub(crate) fn new(stream: TcpStream) -> Self {
        DeadlineStream {
            stream,
            deadline: None,
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
            self.stream.set_read_timeout(None)?;
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
        self.stream.read(buf)
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
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

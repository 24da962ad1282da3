//! A `redis-server` the test starts on a free loopback port, without persistence unless
//! asked, and kills by PID when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{ms, ChildGuard};

pub struct RedisServer {
    pub port: u16,
    guard: Option<ChildGuard>,
    args: Vec<String>,
    dir: PathBuf,
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address").port()
}

impl RedisServer {
    /// A server with no persistence (`--save ""`).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with these extra arguments, e.g. `["--appendonly", "yes"]`, working in a
    /// directory of its own.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        super::init_test_log();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("distq-redis-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = RedisServer {
            port,
            guard: None,
            args,
            dir,
        };
        server.restart();
        server
    }

    /// (Re)starts the server on the same port and directory, after a [`stop`](Self::stop).
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(&self.args)
            .arg("--dir")
            .arg(&self.dir);
        self.guard = Some(ChildGuard::spawn("redis-server", &mut cmd));
        let end = Instant::now() + Duration::from_secs(20);
        while !ping(self.addr()) {
            let guard = self.guard.as_mut().expect("just started");
            assert!(
                guard.running() && Instant::now() < end,
                "redis-server did not come up: {}",
                guard.stderr_so_far() + &guard.stdout_so_far()
            );
            std::thread::sleep(ms(20));
        }
    }

    /// Kills the server (SIGKILL: what it persisted is what a crash leaves).
    pub fn stop(&mut self) {
        drop(self.guard.take());
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis server answers PING at `addr`.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, ms(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(ms(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

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

impl RedisServer {
    /// Runs `redis-cli` against this server with `args`; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// Runs `redis-cli -p PORT ARGS…`; its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three primaries made one Redis Cluster with `redis-cli --cluster create`, every slot
/// served; each killed by PID when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let ready = super::wait_until(Duration::from_secs(30), || {
            cluster
                .nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        assert!(ready, "the cluster never reached cluster_state:ok");
        cluster
    }

    /// The index of the node serving the slot of `key`.
    pub fn node_of(&self, key: &str) -> usize {
        let slot: u32 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot number");
        self.nodes
            .iter()
            .position(|n| {
                // The node's own line of CLUSTER NODES ends with the slot ranges it serves.
                let nodes = n.cli(&["CLUSTER", "NODES"]);
                let me = nodes.lines().find(|l| l.contains("myself")).unwrap_or_default();
                me.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
                })
            })
            .expect("some node serves every slot")
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
    // A server with a password answers -NOAUTH: it is up all the same.
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
}

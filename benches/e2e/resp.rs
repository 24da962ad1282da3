//! A minimal blocking RESP client for the benches' Redis peers: one command, one whole
//! reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Reaped;

/// A `redis-server` on a free loopback port with `args` beside `--bind` and `--port`, once it
/// answers PING (it accepts connections before it has loaded its files); and its port.
pub(super) fn start_redis(args: &[&str]) -> (Reaped, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--daemonize", "no"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server");
    let child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pong = TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|s| Resp::new(s).command(&[b"PING"]).ok());
        if matches!(pong, Some(Reply::Text(ref t)) if t == "PONG") {
            return (child, port);
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A RESP reply.
pub(super) enum Reply {
    Text(String),
    Int,
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

pub(super) struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
}

impl Resp {
    pub(super) fn new(s: TcpStream) -> Resp {
        s.set_nodelay(true).expect("nodelay");
        Resp {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
            out: Vec::new(),
        }
    }

    pub(super) fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.out)?;
        self.reply()
    }

    fn reply(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let line = line.trim_end();
        let bad = || std::io::Error::other(format!("bad RESP line {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        let number = || rest.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            "+" => Reply::Text(rest.to_owned()),
            "-" => return Err(std::io::Error::other(rest.to_owned())),
            ":" => {
                number()?;
                Reply::Int
            }
            "$" if number()? < 0 => Reply::Nil,
            "$" => {
                let mut data = vec![0; number()? as usize + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(data.len() - 2);
                Reply::Bulk(data)
            }
            "*" if number()? < 0 => Reply::Nil,
            "*" => {
                let n = number()?;
                let items = (0..n).map(|_| self.reply()).collect::<Result<_, _>>()?;
                Reply::Array(items)
            }
            _ => return Err(bad()),
        })
    }
}

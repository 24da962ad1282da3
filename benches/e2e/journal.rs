//! The durability section (`--only journal`): durable puts per second for distq under each
//! fsync policy beside beanstalkd's binlog and Redis's append-only file, the recovery of a
//! large journal, and compaction under churn. Its table goes between its own markers in
//! BENCHMARKS.md, also when it runs alone.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, Fsync, JournalConfig, Server};
use serde_bytes::ByteBuf;

use super::resp::{start_redis, Reply, Resp};
use super::{distq_command, median, Plan, Reaped, Report, KEY};

/// Bytes of each item put (a small task or e-mail id with some fields).
const PAYLOAD: usize = 100;

/// No producer puts more than this in one cell, whatever the machine's speed.
const MAX_PUTS: u64 = 2_000_000;

/// How long a server (ours or a peer) may take to start answering.
const START: Duration = Duration::from_secs(30);

/// At most this many interleaved rounds of the put cells (each cell takes seconds).
pub(super) const ROUNDS: usize = 3;

/// One server configuration whose puts are measured.
#[derive(Clone, Copy)]
enum Peer {
    /// `distq serve` with these extra arguments (`--journal DIR` is added when `journal`).
    Distq {
        journal: bool,
        args: &'static [&'static str],
    },
    /// `beanstalkd -b DIR` with these extra arguments.
    Beanstalkd(&'static [&'static str]),
    /// `redis-server` with `appendonly yes` and this `appendfsync`.
    Redis(&'static str),
}

const CELLS: [(&str, Peer); 8] = [
    (
        "distq in-memory (no journal)",
        Peer::Distq {
            journal: false,
            args: &[],
        },
    ),
    (
        "distq --fsync always",
        Peer::Distq {
            journal: true,
            args: &["--fsync", "always"],
        },
    ),
    (
        "distq --fsync 50ms",
        Peer::Distq {
            journal: true,
            args: &["--fsync", "50ms"],
        },
    ),
    (
        "distq --fsync never",
        Peer::Distq {
            journal: true,
            args: &["--fsync", "never"],
        },
    ),
    ("beanstalkd -b DIR -f0", Peer::Beanstalkd(&["-f0"])),
    ("beanstalkd -b DIR (-f50)", Peer::Beanstalkd(&[])),
    ("Redis appendfsync always", Peer::Redis("always")),
    ("Redis appendfsync everysec", Peer::Redis("everysec")),
];

impl Peer {
    fn binary(self) -> &'static str {
        match self {
            Peer::Distq { .. } => env!("CARGO_BIN_EXE_distq"),
            Peer::Beanstalkd(_) => "beanstalkd",
            Peer::Redis(_) => "redis-server",
        }
    }

    fn installed(self) -> bool {
        match self {
            Peer::Distq { .. } => true,
            _ => Command::new("sh")
                .args(["-c", &format!("command -v {}", self.binary())])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    fn package(self) -> &'static str {
        match self {
            Peer::Redis(_) => "redis-server",
            _ => "beanstalkd",
        }
    }

    /// Starts the server on loopback with its data in `dir`; returns it once it answers.
    fn start(self, dir: &Path) -> (Reaped, SocketAddr) {
        let data = dir.to_str().expect("a UTF-8 temp dir");
        match self {
            Peer::Distq { journal, args } => {
                let mut all = vec!["--journal", data];
                all.truncate(if journal { 2 } else { 0 });
                all.extend_from_slice(args);
                let (child, addr, _) = serve_logged(&all);
                (child, addr)
            }
            Peer::Beanstalkd(args) => {
                let port = free_port();
                let child = Command::new("beanstalkd")
                    .args(["-l", "127.0.0.1", "-p", &port.to_string(), "-b", data])
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn beanstalkd");
                let child = Reaped(child);
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                wait_connectable(addr);
                (child, addr)
            }
            Peer::Redis(fsync) => {
                let (child, port) = start_redis(&[
                    "--dir",
                    data,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    fsync,
                    "--protected-mode",
                    "no",
                ]);
                (child, SocketAddr::from(([127, 0, 0, 1], port)))
            }
        }
    }

    /// One producer's connection, made before the clock starts.
    fn connect(self, addr: SocketAddr) -> Conn {
        match self {
            Peer::Distq { .. } => {
                let client = Client::connect(addr, KEY).expect("connect to distq");
                let q = client.queue::<ByteBuf>("tasks").expect("queue");
                Conn::Distq(client, q)
            }
            Peer::Beanstalkd(_) => {
                let s = TcpStream::connect(addr).expect("connect to beanstalkd");
                s.set_nodelay(true).expect("nodelay");
                Conn::Beanstalkd(BufReader::new(s.try_clone().expect("clone")), s)
            }
            Peer::Redis(_) => Conn::Redis(Resp::new(
                TcpStream::connect(addr).expect("connect to redis"),
            )),
        }
    }
}

/// A producer's connection to one of the servers.
enum Conn {
    Distq(Client, distq::Queue<ByteBuf>),
    Beanstalkd(BufReader<TcpStream>, TcpStream),
    Redis(Resp),
}

impl Conn {
    /// Waits for the other producers, then puts synchronously, one item a request, until
    /// `secs` have passed; returns the puts confirmed.
    fn produce(self, start: &Barrier, secs: Duration) -> u64 {
        let payload = vec![0x5A_u8; PAYLOAD];
        let mut count = 0;
        match self {
            Conn::Distq(_client, q) => {
                let item = ByteBuf::from(payload);
                start.wait();
                let deadline = Instant::now() + secs;
                while Instant::now() < deadline && count < MAX_PUTS {
                    q.put(&item).expect("distq put");
                    count += 1;
                }
            }
            Conn::Beanstalkd(mut reader, mut writer) => {
                let mut put = format!("put 0 0 60 {PAYLOAD}\r\n").into_bytes();
                put.extend_from_slice(&payload);
                put.extend_from_slice(b"\r\n");
                let mut line = String::new();
                start.wait();
                let deadline = Instant::now() + secs;
                while Instant::now() < deadline && count < MAX_PUTS {
                    writer.write_all(&put).expect("beanstalkd put");
                    line.clear();
                    reader.read_line(&mut line).expect("beanstalkd reply");
                    assert!(line.starts_with("INSERTED "), "beanstalkd: {line:?}");
                    count += 1;
                }
            }
            Conn::Redis(mut c) => {
                start.wait();
                let deadline = Instant::now() + secs;
                while Instant::now() < deadline && count < MAX_PUTS {
                    let reply = c.command(&[b"LPUSH", b"q", &payload]).expect("LPUSH");
                    assert!(matches!(reply, Reply::Int), "redis: not an integer reply");
                    count += 1;
                }
            }
        }
        count
    }
}

/// A port free on 127.0.0.1 a moment ago, for a peer that cannot report the one it got.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_connectable(addr: SocketAddr) {
    let deadline = Instant::now() + START;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "distq-bench-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `distq serve --bind 127.0.0.1:0 ARGS` at info level: the process, its address and the
/// log lines up to the one that says it listens.
pub(super) fn serve_logged(args: &[&str]) -> (Reaped, SocketAddr, Vec<String>) {
    let mut child = distq_command()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut before = Vec::new();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let addr = l.split("listening on ").nth(1).map(str::to_owned);
            if addr.is_none() {
                before.push(l);
            }
            addr
        })
        .and_then(|a| a.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the server's address; its log: {before:#?}"));
    // Keep draining its log so it never blocks on a full pipe.
    thread::spawn(move || lines.for_each(drop));
    (Reaped(child), addr, before)
}

/// Puts per second by `producers` connections on a fresh server of `peer`.
fn put_rate(peer: Peer, producers: usize, secs: Duration) -> f64 {
    let dir = TempDir::new("puts");
    let (server, addr) = peer.start(&dir.0);
    let start = Arc::new(Barrier::new(producers + 1));
    // Connected here, so a producer that cannot connect fails before the barrier.
    let conns: Vec<Conn> = (0..producers).map(|_| peer.connect(addr)).collect();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let start = Arc::clone(&start);
            thread::spawn(move || conn.produce(&start, secs))
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let total: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("a producer failed"))
        .sum();
    let rate = total as f64 / began.elapsed().as_secs_f64();
    if let Peer::Distq { journal: true, .. } = peer {
        let stats = Client::connect(addr, KEY).and_then(|c| c.stats());
        if let Some(j) = stats.ok().and_then(|s| s.journal) {
            eprintln!(
                "  {producers} producer(s), fsync {}: {total} puts, {} fsyncs ({:.1} puts per fsync)",
                j.policy,
                j.fsyncs,
                total as f64 / j.fsyncs.max(1) as f64
            );
        }
    }
    drop(server);
    rate
}

/// The whole section.
pub(super) fn journal_report(report: &mut Report, plan: &Plan) {
    let secs = Duration::from_secs_f64(if plan.quick { 1.0 } else { 2.0 });
    let rounds = plan.rounds.min(ROUNDS);
    let missing: Vec<&str> = CELLS
        .iter()
        .filter(|(_, p)| !p.installed())
        .map(|(_, p)| p.package())
        .collect();
    for producers in [1, 16] {
        // Interleaved round by round, since the machine's speed drifts.
        let mut rates = vec![Vec::new(); CELLS.len()];
        for _ in 0..rounds {
            for (i, (_, peer)) in CELLS.iter().enumerate() {
                if peer.installed() {
                    rates[i].push(put_rate(*peer, producers, secs));
                }
            }
        }
        let rates: Vec<Option<f64>> = rates
            .into_iter()
            .map(|r| (!r.is_empty()).then(|| median(r.into_iter())))
            .collect();
        let base = rates[0].expect("distq always runs");
        let of = |name: &str| {
            CELLS
                .iter()
                .position(|(n, _)| *n == name)
                .and_then(|i| rates[i])
        };
        let conns = match producers {
            1 => "1 connection".to_string(),
            n => format!("{n} producers"),
        };
        for (i, (name, peer)) in CELLS.iter().enumerate() {
            let what = format!("durable puts, {name}, {conns}");
            let Some(rate) = rates[i] else {
                report.add(
                    what,
                    "skipped",
                    format!(
                        "{} not installed (apt-get install {})",
                        peer.binary(),
                        peer.package()
                    ),
                );
                continue;
            };
            let mut ratio = match i {
                0 => "baseline".to_string(),
                _ => format!("{:.2}× distq in-memory", rate / base),
            };
            if *name == "distq --fsync always" && producers == 16 {
                for peer in ["Redis appendfsync always", "beanstalkd -b DIR -f0"] {
                    if let Some(p) = of(peer) {
                        let _ = std::fmt::Write::write_fmt(
                            &mut ratio,
                            format_args!(", {:.2}× {peer} (target ≥ 1)", rate / p),
                        );
                    }
                }
            }
            if *name == "distq --fsync 50ms" {
                ratio.push_str(" (target ≥ 0.80)");
            }
            report.add(what, format!("{rate:.0} puts/s"), ratio);
        }
    }
    if !missing.is_empty() {
        println!("skipped peers, not installed: {}", missing.join(", "));
    }

    let items = if plan.quick { 200_000 } else { 1_000_000 };
    let r = recovery(items);
    report.add(
        format!("journal recovery, {items} queued {PAYLOAD}-byte items"),
        format!("{} ms replay", r.replay_ms),
        format!(
            "{} ms from spawn to listening, {} ms to the first stats (target < 3000); {:.0} MiB on disk",
            r.listening_ms,
            r.first_stats_ms,
            r.disk_bytes as f64 / (1 << 20) as f64
        ),
    );

    let churn_secs = Duration::from_secs(if plan.quick { 4 } else { 12 });
    for (label, compact_min) in [
        ("default compact_min 64 MiB", None),
        ("compact_min 1 MiB", Some(1 << 20)),
    ] {
        let c = churn(compact_min, churn_secs);
        report.add(
            format!("compaction under put/ack churn, ~10k live, 1 MiB segments, {label}"),
            format!("{} µs longest pause", c.longest_pause_us),
            format!(
                "{} compaction(s) in {} s at {:.0} put+ack/s; disk at most {:.1} MiB for {:.2} MiB live ({:.1}×); a 500-item put_many p50 {} µs, longest {} µs",
                c.compactions,
                churn_secs.as_secs(),
                c.rate,
                c.max_disk as f64 / (1 << 20) as f64,
                c.max_live as f64 / (1 << 20) as f64,
                c.max_disk as f64 / c.max_live.max(1) as f64,
                c.put_p50_us,
                c.put_max_us
            ),
        );
    }
}

struct Recovery {
    replay_ms: u64,
    listening_ms: u64,
    first_stats_ms: u64,
    disk_bytes: u64,
}

/// Fills a journal with `n` items over the network, SIGKILLs the server, and times a restart
/// on the same journal (warm page cache: dropping it would slow everyone on this machine).
fn recovery(n: usize) -> Recovery {
    let dir = TempDir::new("recovery");
    let data = dir.0.to_str().expect("a UTF-8 temp dir");
    {
        let (server, addr, _) = serve_logged(&["--journal", data, "--fsync", "never"]);
        let client = Client::connect(addr, KEY).expect("connect");
        let q = client.queue::<ByteBuf>("tasks").expect("queue");
        let chunk = 10_000;
        for start in (0..n).step_by(chunk) {
            let items: Vec<ByteBuf> = (start..(start + chunk).min(n))
                .map(|i| {
                    let mut p = vec![0x5A_u8; PAYLOAD];
                    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    ByteBuf::from(p)
                })
                .collect();
            q.put_many(&items).expect("put_many");
        }
        let journal = client.stats().expect("stats").journal.expect("a journal");
        assert_eq!(journal.items, n as u64, "the journal holds every item");
        // A crash: every confirmed put was written, so the page cache has it.
        drop(server);
    }
    let began = Instant::now();
    let (server, addr, log) = serve_logged(&["--journal", data]);
    let listening_ms = began.elapsed().as_millis() as u64;
    let deadline = Instant::now() + START;
    let stats = loop {
        let stats = Client::connect(addr, KEY).and_then(|c| c.stats());
        match stats {
            Ok(stats) => break stats,
            Err(e) => assert!(Instant::now() < deadline, "no stats after restart: {e}"),
        }
    };
    let first_stats_ms = began.elapsed().as_millis() as u64;
    let journal = stats.journal.expect("a journal");
    assert_eq!(journal.recovered_items, n as u64, "every item recovered");
    let line = log
        .iter()
        .find(|l| l.contains("recovered "))
        .unwrap_or_else(|| panic!("no recovery line in {log:#?}"));
    println!("{line}");
    let replay_ms = line
        .rsplit(" in ")
        .next()
        .and_then(|t| t.trim().trim_end_matches("ms").trim().parse().ok())
        .unwrap_or(journal.recovery_ms);
    drop(server);
    Recovery {
        replay_ms,
        listening_ms,
        first_stats_ms,
        disk_bytes: journal.bytes_on_disk,
    }
}

struct Churn {
    longest_pause_us: u64,
    compactions: u64,
    max_disk: u64,
    max_live: u64,
    rate: f64,
    /// The median and longest `put_many` of 500 items, as the client saw them.
    put_p50_us: u64,
    put_max_us: u64,
}

/// Put/ack churn around 10,000 live items for `secs` on an in-process server whose journal
/// has 1 MiB segments (`--journal-segment-size 1MiB`), `--fsync always`.
fn churn(compact_min: Option<u64>, secs: Duration) -> Churn {
    let dir = TempDir::new("churn");
    let mut config = JournalConfig::new(&dir.0)
        .fsync(Fsync::Always)
        .segment_size(1 << 20);
    if let Some(min) = compact_min {
        config = config.compact_min(min);
    }
    let server = Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .journal(config)
        .bind("127.0.0.1:0")
        .expect("bind");
    let client = Client::connect(server.local_addr(), KEY).expect("connect");
    let q = client.queue::<ByteBuf>("tasks").expect("queue");
    let batch: Vec<ByteBuf> = (0..500)
        .map(|_| ByteBuf::from(vec![7u8; PAYLOAD]))
        .collect();
    for _ in 0..20 {
        q.put_many(&batch).expect("fill");
    }
    let (mut max_disk, mut max_live, mut done) = (0, 0, 0u64);
    // The pause a client sees: a put's wait also covers a rollover's syncs and file creation.
    let mut put_times = Vec::new();
    let began = Instant::now();
    while began.elapsed() < secs {
        let t = Instant::now();
        q.put_many(&batch).expect("churn put");
        put_times.push(t.elapsed());
        let taken = q
            .reserve_many(batch.len(), Duration::from_secs(10))
            .expect("churn reserve");
        done += taken.len() as u64;
        q.ack_many(taken).expect("churn ack");
        let j = server.stats().journal.expect("a journal");
        max_disk = max_disk.max(j.bytes_on_disk);
        max_live = max_live.max(j.live_bytes);
    }
    let rate = done as f64 / began.elapsed().as_secs_f64();
    put_times.sort_unstable();
    let j = server.stats().journal.expect("a journal");
    drop(q);
    drop(client);
    drop(server);
    Churn {
        longest_pause_us: j.longest_pause_us,
        compactions: j.compactions,
        max_disk,
        max_live,
        rate,
        put_p50_us: put_times[put_times.len() / 2].as_micros() as u64,
        put_max_us: put_times.last().map_or(0, |t| t.as_micros() as u64),
    }
}

//! The journal over real processes: `distq serve --journal DIR` SIGKILLed under load and
//! restarted, a second server on a held directory, damaged files, a full disk, a failing
//! fdatasync, and what a restart keeps (delays, redelivery counts, dead letters, temporary
//! queues).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::io::Write;

use distq::Client;

use crate::support::raw::{Cbor, Raw};
use crate::support::{distq, ms, wait_until, ChildGuard, Finished, KEY};

const SECS_30: Duration = Duration::from_secs(30);

/// A directory of its own under the system's temporary directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path =
            std::env::temp_dir().join(format!("distq-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a test directory");
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `distq serve --journal DIR` on a free loopback port, not yet waited for.
fn serve(journal: &Path, extra: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "serve --journal",
        distq()
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--authkey",
                KEY,
                "--journal",
            ])
            .arg(journal)
            .args(extra),
    )
}

/// A journaled server that is listening, and its address.
fn serve_up(journal: &Path, extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let child = serve(journal, extra);
    let addr = child.listening_addr();
    (child, addr)
}

/// SIGKILLs a server and reaps it.
fn kill(server: ChildGuard) -> Finished {
    server.signal("KILL");
    server.wait_output(SECS_30)
}

/// Fails unless `out` is a non-zero exit whose stderr contains every one of `needles`.
fn assert_refused(what: &str, out: &Finished, needles: &[&str]) {
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{what}: expected a non-zero exit, got {:?}\nstderr:\n{}",
        out.status,
        out.stderr
    );
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "{what}: stderr does not say {needle:?}:\n{}",
            out.stderr
        );
    }
}

/// Takes everything `queue` holds (for good), in the order the server hands it out.
fn drain<T: serde::Serialize + serde::de::DeserializeOwned>(
    addr: SocketAddr,
    queue: &str,
) -> Vec<T> {
    let client = Client::connect(addr, KEY).expect("connect to drain");
    let q = client.queue::<T>(queue).expect("open the queue");
    let mut all = Vec::new();
    loop {
        match q.get_many(1000, ms(300)) {
            Ok(batch) => all.extend(batch),
            Err(e) if e.is_empty() => return all,
            Err(e) => panic!("draining {queue}: {e}"),
        }
    }
}

/// The journal's segments, in replay order (the names sort so).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list the journal")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("log-") && name.ends_with(".dq")
        })
        .collect();
    found.sort();
    found
}

/// Where the records of a segment end (zeros may follow; frames are `len: u32 LE`, two
/// checksums, then `len` bytes of body).
fn data_end(bytes: &[u8]) -> usize {
    let mut start = 0;
    while let Some(header) = bytes.get(start..start + 12) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        if len == 0 || start + 12 + len > bytes.len() {
            break;
        }
        start += 12 + len;
    }
    start
}

/// Where the record holding byte `at` of a journal file starts.
fn record_start(bytes: &[u8], at: usize) -> usize {
    let mut start = 0;
    loop {
        let len = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
        let end = start + 12 + len;
        if at < end {
            return start;
        }
        start = end;
    }
}

/// A tiny seeded generator (xorshift64*): the runs are repeatable from the printed seed.
struct Rng(u64);

impl Rng {
    /// Seeded from `DISTQ_SEED` when set, else from the clock.
    fn seeded() -> (Rng, u64) {
        let seed = std::env::var("DISTQ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        (Rng(seed.max(1)), seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients of the kill loop saw confirmed, across every cycle.
#[derive(Default)]
struct Ledger {
    /// Puts that returned Ok.
    confirmed: HashSet<u64>,
    /// Items an ack was sent for since their last delivery (confirmed or not: one cut off by
    /// a kill may have landed).
    ack_tried: HashSet<u64>,
    /// Acks that returned Ok, still standing: the cycle and when.
    acked: HashMap<u64, (usize, Instant)>,
    acks_confirmed: u64,
    /// Items delivered again after a confirmed ack, and how long before the kill that ack
    /// was confirmed (its record was still in the buffer when the process died).
    back_after_kill: Vec<(usize, Duration)>,
    /// Items delivered again after a confirmed ack with no kill between: a bug.
    back_without_kill: Vec<u64>,
    deliveries: u64,
    /// When each cycle's server was killed.
    kills: Vec<Instant>,
}

impl Ledger {
    /// Notes a delivery (or a survivor of the final drain) of `id` during `cycle`.
    fn seen(&mut self, id: u64, cycle: usize) {
        // Back again: it must stay unless acknowledged anew.
        self.ack_tried.remove(&id);
        if let Some((acked_in, at)) = self.acked.remove(&id) {
            match self.kills.get(acked_in) {
                Some(kill) if acked_in < cycle => self
                    .back_after_kill
                    .push((acked_in, kill.saturating_duration_since(at))),
                _ => self.back_without_kill.push(id),
            }
        }
    }
}

/// Puts numbered items (single puts and batches of up to 5) until `stop` or an error.
fn produce(
    addr: SocketAddr,
    next: &AtomicU64,
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let Ok(client) = Client::connect(addr, KEY) else {
        return;
    };
    let Ok(tasks) = client.queue::<u64>("tasks") else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let n = if rng.below(2) == 0 {
            1
        } else {
            2 + rng.below(4)
        };
        let first = next.fetch_add(n, Ordering::SeqCst);
        let ids: Vec<u64> = (first..first + n).collect();
        let stored = match n {
            1 => tasks.put(first).is_ok(),
            _ => tasks.put_many(ids.iter().copied()).is_ok(),
        };
        if !stored {
            return;
        }
        ledger.lock().unwrap().confirmed.extend(ids);
    }
}

/// Takes items under leases, acknowledges about half, gives the rest back (some nacked,
/// counting towards the dead-letter threshold), until `stop` or an error.
fn consume(addr: SocketAddr, cycle: usize, ledger: &Mutex<Ledger>, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng(seed);
    let Ok(client) = Client::connect(addr, KEY) else {
        return;
    };
    let Ok(tasks) = client.queue::<u64>("tasks") else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let batch = match tasks.reserve_many(1 + rng.below(8) as usize, ms(100)) {
            Ok(batch) => batch,
            Err(e) if e.is_empty() => continue,
            Err(_) => return,
        };
        for delivery in batch {
            let id = *delivery.item();
            {
                let mut l = ledger.lock().unwrap();
                l.deliveries += 1;
                l.seen(id, cycle);
            }
            let settled = match rng.below(8) {
                0..=3 => {
                    ledger.lock().unwrap().ack_tried.insert(id);
                    let acked = delivery.ack().is_ok();
                    if acked {
                        let mut l = ledger.lock().unwrap();
                        l.acks_confirmed += 1;
                        l.acked.insert(id, (cycle, Instant::now()));
                    }
                    acked
                }
                4 => delivery.nack().is_ok(),
                _ => delivery.give_back().is_ok(),
            };
            if !settled {
                return;
            }
        }
    }
}

/// The kill loop's queue: bounded, so the backlog (and the final drain) stays small however
/// fast the producer is. (The bound is on new puts: recovered items come back beside it, as
/// given-back ones do, so each restart can add up to this many.)
const BACKLOG: &str = "tasks:5000";

/// The proof: a server SIGKILLed at random moments under load, over and over, and
/// restarted on the same journal, loses no confirmed put under any policy.
#[test]
fn a_server_killed_over_and_over_loses_no_confirmed_put() {
    let (mut rng, seed) = Rng::seeded();
    println!("kill loop seed {seed} (DISTQ_SEED={seed} repeats the schedule)");
    let dir = Dir::new("kill-loop");
    let journal = dir.0.join("j");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicU64::new(1));
    let policies = ["always", "20ms", "never"];
    let cycles = 15;
    let started = Instant::now();
    for cycle in 0..cycles {
        let policy = policies[cycle % policies.len()];
        let (server, addr) = serve_up(
            &journal,
            &[
                "--fsync",
                policy,
                "--journal-segment-size",
                "64KiB",
                // Compaction runs, and is killed, too.
                "--journal-compact-min",
                "128KiB",
                "--queue",
                BACKLOG,
            ],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (next, ledger, stop, seed) =
                (next.clone(), ledger.clone(), stop.clone(), rng.next());
            thread::spawn(move || produce(addr, &next, &ledger, &stop, seed))
        };
        let consumer = {
            let (ledger, stop, seed) = (ledger.clone(), stop.clone(), rng.next());
            thread::spawn(move || consume(addr, cycle, &ledger, &stop, seed))
        };
        // A random moment to die at, not a synchronisation.
        thread::sleep(ms(100 + rng.below(500)));
        server.signal("KILL");
        let killed = Instant::now();
        let out = server.wait_output(SECS_30);
        // A torn tail left by the previous kill is the one journal warning a restart may
        // give (items nacked too often are dead-lettered with a warning of their own).
        let warned = out
            .stderr
            .lines()
            .any(|l| l.contains(" WARN  distq::journal") && !l.contains("torn last record"));
        assert!(
            !warned,
            "cycle {cycle} (seed {seed}): the server warned:\n{}",
            out.stderr
        );
        ledger.lock().unwrap().kills.push(killed);
        stop.store(true, Ordering::Relaxed);
        producer.join().expect("the producer panicked");
        consumer.join().expect("the consumer panicked");
    }
    let loop_time = started.elapsed();
    // Some kill found a compaction done (and so others may have hit one under way).
    let snapshots = std::fs::read_dir(&journal)
        .expect("the journal dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("snap-"))
        .count();
    assert!(snapshots > 0, "seed {seed}: the kill loop never compacted");

    let (server, addr) = serve_up(&journal, &["--queue", BACKLOG]);
    let mut present: Vec<u64> = drain(addr, "tasks");
    let dead: Vec<u64> = drain(addr, "tasks.dead");
    present.extend(&dead);
    drop(server);

    let put_next = next.load(Ordering::SeqCst);
    let mut l = ledger.lock().unwrap();
    let mut counted = HashSet::new();
    let twice: Vec<u64> = present
        .iter()
        .copied()
        .filter(|id| !counted.insert(*id))
        .collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: items present twice: {twice:?}"
    );
    let never_put: Vec<u64> = present
        .iter()
        .copied()
        .filter(|&id| id == 0 || id >= put_next)
        .collect();
    assert!(
        never_put.is_empty(),
        "seed {seed}: items never put: {never_put:?}"
    );
    let mut lost: Vec<u64> = l
        .confirmed
        .iter()
        .copied()
        .filter(|id| !l.ack_tried.contains(id) && !counted.contains(id))
        .collect();
    lost.sort_unstable();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} confirmed put(s) never acknowledged are gone: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    for &id in &present {
        l.seen(id, cycles);
    }
    assert!(
        l.back_without_kill.is_empty(),
        "seed {seed}: acknowledged items delivered again with no kill between: {:?}",
        l.back_without_kill
    );
    let unconfirmed_present = present
        .iter()
        .filter(|id| !l.confirmed.contains(id))
        .count();
    let ack_in_flight_gone = l
        .ack_tried
        .iter()
        .filter(|id| !counted.contains(id) && !l.acked.contains_key(id))
        .count();
    let longest = l.back_after_kill.iter().map(|(_, d)| *d).max();
    let by_policy: Vec<String> = policies
        .iter()
        .enumerate()
        .map(|(p, name)| {
            let lost = l
                .back_after_kill
                .iter()
                .filter(|(c, _)| c % policies.len() == p);
            let (n, max) = lost.fold((0, Duration::ZERO), |(n, m), (_, d)| (n + 1, m.max(*d)));
            format!("{name}: {n}, at most {max:?} before the kill")
        })
        .collect();
    println!(
        "kill loop: {cycles} kills in {loop_time:?} (seed {seed}); {} puts confirmed of {} \
         tried, {} deliveries, {} acks confirmed; after the last restart {} present ({} in \
         tasks.dead, {} whose put was not confirmed); acked but redelivered after a kill: {} \
         ({}); acks cut off by a kill whose item is gone: {ack_in_flight_gone}",
        l.confirmed.len(),
        put_next - 1,
        l.deliveries,
        l.acks_confirmed,
        present.len(),
        dead.len(),
        unconfirmed_present,
        l.back_after_kill.len(),
        by_policy.join("; "),
    );
    // An acknowledgement is written within the flush tick (10 ms): one lost to a kill was
    // confirmed just before it. A generous bound, for a loaded machine.
    if let Some(longest) = longest {
        assert!(
            longest < Duration::from_secs(10),
            "seed {seed}: an ack confirmed {longest:?} before a kill was lost"
        );
    }
}

/// A second server on a journal another holds fails at once; the lock of a SIGKILLed server
/// goes with it.
#[test]
fn a_second_server_on_a_held_journal_fails_and_a_killed_ones_lock_is_released() {
    let dir = Dir::new("lock");
    let (first, addr) = serve_up(&dir.0, &[]);
    Client::connect(addr, KEY)
        .unwrap()
        .queue::<u64>("tasks")
        .unwrap()
        .put(7)
        .unwrap();
    let second = serve(&dir.0, &[]).wait_output(SECS_30);
    assert_refused(
        "a second server on the journal",
        &second,
        &[
            "another server holds its lock",
            &dir.0.display().to_string(),
        ],
    );
    kill(first);
    let (_third, addr) = serve_up(&dir.0, &[]);
    assert_eq!(drain::<u64>(addr, "tasks"), vec![7]);
}

/// Puts `count` items of 1000 bytes each, one at a time, and returns them.
fn put_strings(addr: SocketAddr, count: usize) -> Vec<String> {
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<String>("tasks")
        .unwrap();
    let items: Vec<String> = (0..count)
        .map(|i| format!("{i:04}{}", "x".repeat(996)))
        .collect();
    for item in &items {
        tasks.put(item).unwrap();
    }
    items
}

/// A flipped byte in a sealed segment refuses the start, naming the file and the offset of
/// the damaged record; the directory is left as it was.
#[test]
fn a_flipped_byte_in_a_sealed_segment_refuses_to_start() {
    let dir = Dir::new("flip");
    let (server, addr) = serve_up(&dir.0, &["--journal-segment-size", "64KiB"]);
    put_strings(addr, 250);
    kill(server);
    let files = segments(&dir.0);
    assert!(files.len() >= 3, "expected several segments: {files:?}");
    let sealed = &files[1];
    let mut bytes = std::fs::read(sealed).unwrap();
    let middle = bytes.len() / 2;
    let offset = record_start(&bytes, middle);
    bytes[middle] ^= 0x10;
    std::fs::write(sealed, &bytes).unwrap();

    let out = serve(&dir.0, &["--journal-segment-size", "64KiB"]).wait_output(SECS_30);
    assert_refused(
        "a start on a corrupt journal",
        &out,
        &[
            &sealed.display().to_string(),
            &format!("corrupt at byte offset {offset}:"),
        ],
    );
    assert_eq!(
        std::fs::read(sealed).unwrap(),
        bytes,
        "the refused start changed the damaged file"
    );
}

/// The last record cut short (the process died writing it; under `always`, zeros where the rest
/// of it would be) is trimmed with one warning naming
/// the file, the bytes of the partial record and its offset; every item before it is there,
/// and the trimmed file reads as whole on later starts.
#[test]
fn a_torn_tail_is_trimmed_with_one_warning_and_the_rest_recovered() {
    let dir = Dir::new("torn");
    let (server, addr) = serve_up(&dir.0, &[]);
    let items = put_strings(addr, 20);
    kill(server);
    let last = segments(&dir.0).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).unwrap();
    // Under `always` the segment is written over zeros: its records end before the file.
    let end = data_end(&bytes);
    assert!(end < bytes.len(), "no zeros after the records");
    let start = record_start(&bytes, end - 1);
    let mut kept = end - 3;
    while bytes[kept - 1] == 0 {
        kept -= 1;
    }
    assert!(kept > start);
    // The last record's tail never reached the disk: zeros where it would be.
    bytes[kept..].fill(0);
    std::fs::write(&last, &bytes).unwrap();

    let (server, addr) = serve_up(&dir.0, &[]);
    let recovered: Vec<String> = drain(addr, "tasks");
    let stderr = server.stderr_so_far();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "expected one warning:\n{stderr}");
    let trimmed = format!("trimmed {} byte(s)", kept - start);
    let offset = format!("at byte offset {start} ");
    for needle in [&last.display().to_string(), &trimmed, &offset] {
        assert!(
            warnings[0].contains(needle),
            "{needle:?} missing: {}",
            warnings[0]
        );
    }
    assert_eq!(recovered, items[..19], "the items before the torn record");

    // The trim is on disk: killed again, the trimmed file is no longer the last one, and
    // still reads as whole.
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<String>("tasks")
        .unwrap();
    tasks
        .put_many(recovered.iter().chain(&items[19..]))
        .unwrap();
    kill(server);
    let (server, addr) = serve_up(&dir.0, &[]);
    assert_eq!(drain::<String>(addr, "tasks"), items);
    let stderr = server.stderr_so_far();
    assert!(!stderr.contains(" WARN "), "{stderr}");
}

/// Whether this process may mount file systems (CI runs as root).
fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs mounted for the test, unmounted when dropped (even when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk stops the server with an error that says so; no confirmed put is missing
/// after a restart with more room.
#[test]
fn a_full_disk_stops_the_server_and_loses_no_confirmed_put() {
    if !root() {
        println!("skipped: mounting a size-limited tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = Dir::new("full");
    let Some(mount) = Tmpfs::mount(&dir.0, "1m") else {
        println!("skipped: mount -t tmpfs failed (no mount permission in this container)");
        return;
    };
    let journal = mount.0.join("j");
    let (server, addr) = serve_up(&journal, &[]);
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<String>("tasks")
        .unwrap();
    let mut confirmed = Vec::new();
    let mut refused = None;
    for i in 0..2000 {
        let item = format!("{i:05}{}", "y".repeat(4000));
        match tasks.put(&item) {
            Ok(()) => confirmed.push(item),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(refused.is_some(), "2000 puts of 4 KB fit in 1 MiB");
    let out = server.wait_output(SECS_30);
    assert_refused(
        "a server on a full disk",
        &out,
        &["No space left on device", "the disk is full"],
    );
    assert!(!confirmed.is_empty(), "not one put fit");

    mount.resize("8m");
    let (server, addr) = serve_up(&journal, &[]);
    let recovered: Vec<String> = drain(addr, "tasks");
    drop(server);
    assert!(
        recovered.len() >= confirmed.len() && recovered[..confirmed.len()] == confirmed[..],
        "{} put(s) confirmed, {} recovered",
        confirmed.len(),
        recovered.len()
    );
    println!(
        "disk full: {} puts confirmed before the server stopped, {} recovered",
        confirmed.len(),
        recovered.len()
    );
}

/// Whether this strace can inject errors (`-e inject`, strace 4.16 and later).
fn strace_injects() -> bool {
    Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "-e", "trace=getpid", "-e"])
        .args(["inject=getpid:error=EIO", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether every thread of process `pid` is traced now.
fn traced_threads(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim() != "0")
        })
    })
}

/// An fdatasync that fails (EIO) stops the server: the put it was for is not confirmed, and
/// every put confirmed before is there after a restart.
#[test]
fn a_failed_fdatasync_stops_the_server_and_confirms_nothing_unsynced() {
    if !strace_injects() {
        println!("skipped: no strace that can inject errors (apt-get install strace)");
        return;
    }
    let dir = Dir::new("eio");
    let server = serve(&dir.0, &["--fsync", "always"]);
    // strace attaches to the running server rather than starting it, so the server stays
    // this test's own child: killed and reaped by its guard whatever happens to strace.
    // Counting from the attach, each put is one fdatasync: the fifth fails.
    let strace = ChildGuard::spawn(
        "strace",
        Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync"])
            .args(["-e", "inject=fdatasync:error=EIO:when=5+", "-p"])
            .arg(server.id().to_string()),
    );
    let pid = server.id();
    let attached = wait_until(SECS_30, || traced_threads(pid));
    assert!(
        attached,
        "strace did not attach:\n{}",
        strace.stderr_so_far()
    );
    let addr = server.listening_addr();
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<u64>("tasks")
        .unwrap();
    let mut confirmed = Vec::new();
    let mut refused = None;
    for i in 0..100u64 {
        match tasks.put(i) {
            Ok(()) => confirmed.push(i),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (failed, error) =
        refused.expect("100 puts under --fsync always passed a failing fdatasync");
    let out = server.wait_output(SECS_30);
    assert_refused(
        "a server whose fdatasync failed",
        &out,
        &["journal fdatasync of", "Input/output error"],
    );
    assert!(!confirmed.is_empty(), "the first puts should have synced");
    println!(
        "fdatasync EIO: {} put(s) confirmed, put {failed} refused with: {error}",
        confirmed.len()
    );

    let (_server, addr) = serve_up(&dir.0, &[]);
    let recovered: Vec<u64> = drain(addr, "tasks");
    // The refused put was written (only its sync failed): it may be there, unconfirmed.
    assert!(
        recovered.starts_with(&confirmed) && recovered.len() <= confirmed.len() + 1,
        "confirmed {confirmed:?}, recovered {recovered:?}"
    );
}

/// A restart keeps what the queues' items were: delays, redelivery counts (a lease in flight
/// at the kill is not counted), dead letters, a temporary queue and its items; and `stats`
/// carries the journal.
#[test]
fn a_restart_keeps_delays_redeliveries_dead_letters_and_temporary_queues() {
    let dir = Dir::new("state");
    let args = [
        "--queue",
        "tasks",
        "--queue",
        "retry",
        "--queue",
        "poison",
        "--max-redeliveries",
        "2",
    ];
    let (server, addr) = serve_up(&dir.0, &args);
    let client = Client::connect(addr, KEY).unwrap();
    let delay = Duration::from_secs(10);
    let put_at = Instant::now();
    let tasks = client.queue::<String>("tasks").unwrap();
    tasks.put_delayed("late".to_string(), delay).unwrap();

    let retry = client.queue::<String>("retry").unwrap();
    retry.put("again".to_string()).unwrap();
    for _ in 0..2 {
        retry.reserve_timeout(SECS_30).unwrap().nack().unwrap();
    }
    // Held at the kill: this lease does not count.
    let held = retry.reserve_timeout(SECS_30).unwrap();
    assert_eq!(held.redeliveries(), 2);

    let poison = client.queue::<String>("poison").unwrap();
    poison.put("bad".to_string()).unwrap();
    let mut nacks = 0;
    while let Ok(d) = poison.reserve_timeout(ms(500)) {
        d.nack().unwrap();
        nacks += 1;
        assert!(nacks < 10, "poison never went to poison.dead");
    }
    let mut before = None;
    assert!(
        wait_until(SECS_30, || {
            let stats = client.stats().unwrap();
            let dead = stats
                .queues
                .iter()
                .find(|q| q.name == "poison")
                .unwrap()
                .dead;
            before = stats.journal;
            dead == 1
        }),
        "poison.dead never held the item"
    );
    let before = before.expect("stats carry the journal");
    assert_eq!(before.policy, "always");
    assert!(
        before.bytes_on_disk > 0 && before.live_bytes > 0,
        "{before:?}"
    );
    assert!(before.live_bytes <= before.bytes_on_disk, "{before:?}");
    assert!(before.last_fsync_ms.is_some(), "{before:?}");
    assert_eq!(before.dir, dir.0.display().to_string());

    let submitter = Client::connect(addr, KEY).unwrap();
    let mine = submitter
        .temporary_queue::<String>("results-7f3a", Duration::from_secs(3600))
        .unwrap();
    mine.put("r1".to_string()).unwrap();
    mine.put("r2".to_string()).unwrap();
    kill(server);
    drop((held, client, submitter));

    let (_server, addr) = serve_up(&dir.0, &args);
    let client = Client::connect(addr, KEY).unwrap();
    let stats = client.stats().unwrap();
    let journal = stats.journal.clone().expect("stats carry the journal");
    assert_eq!(
        (journal.recovered_items, journal.items),
        (5, 5),
        "{journal:?}"
    );
    let tasks_stats = stats.queues.iter().find(|q| q.name == "tasks").unwrap();
    if put_at.elapsed() < delay {
        assert_eq!(tasks_stats.delayed, 1, "{tasks_stats:?}");
    }

    let retry = client.queue::<String>("retry").unwrap();
    let again = retry.reserve_timeout(SECS_30).unwrap();
    assert_eq!((again.item().as_str(), again.redeliveries()), ("again", 2));
    again.ack().unwrap();
    assert_eq!(
        drain::<String>(addr, "poison.dead"),
        vec!["bad".to_string()]
    );
    assert!(drain::<String>(addr, "poison").is_empty());

    // What `distq submit --resume` relies on: the next declare adopts the queue.
    let resumed = Client::connect(addr, KEY).unwrap();
    let mine = resumed
        .temporary_queue::<String>("results-7f3a", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(mine.get_many(10, SECS_30).unwrap(), vec!["r1", "r2"]);

    let tasks = client.queue::<String>("tasks").unwrap();
    let late = tasks.get_timeout(SECS_30).unwrap();
    assert_eq!(late, "late");
    assert!(
        put_at.elapsed() >= delay,
        "the delayed item came out after {:?}, before its {delay:?}",
        put_at.elapsed()
    );
}

/// Under `always` a put's reply is sent by the thread whose sync covered it, while the
/// connection's own thread goes on reading; it settles a reply before sending any other. A
/// peer that pipelines puts and other requests, and reads the replies through a small
/// window behind its writes, gets every reply, in the order of its requests: each put
/// `done` and each `len` counting exactly the puts before it.
#[test]
fn pipelined_durable_puts_and_lens_are_answered_in_order() {
    let dir = Dir::new("pipelined");
    let (_server, addr) = serve_up(&dir.0, &[]);
    let raw = Raw::authenticated(addr, KEY);
    // A small window: the server's sends meet a full socket now and then.
    socket2::SockRef::from(&raw.stream)
        .set_recv_buffer_size(4096)
        .unwrap();
    const ROUNDS: u64 = 300;
    const PUTS: u64 = 20;
    let mut out = raw.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for round in 0..ROUNDS {
            batch.clear();
            for i in 0..PUTS {
                let n = round * PUTS + i;
                let put = Cbor::variant(
                    "put",
                    vec![
                        ("queue", Cbor::Text("tasks".into())),
                        (
                            "items",
                            Cbor::Array(vec![Cbor::Bytes(Cbor::Uint(n).encode())]),
                        ),
                        ("timeout_ms", Cbor::Null),
                    ],
                );
                frame_into(&mut batch, &put);
            }
            let len = Cbor::variant("len", vec![("queue", Cbor::Text("tasks".into()))]);
            frame_into(&mut batch, &len);
            out.write_all(&batch).expect("pipelined requests");
        }
    });
    let mut raw = raw;
    for round in 0..ROUNDS {
        for i in 0..PUTS {
            let reply = raw.recv();
            assert_eq!(
                reply,
                Some(Cbor::Text("done".into())),
                "put {i} of round {round}"
            );
        }
        let reply = raw.recv().expect("a len reply");
        let len = reply.get("len").and_then(|l| l.get("len"));
        assert_eq!(len, Some(&Cbor::Uint((round + 1) * PUTS)), "{reply:?}");
    }
    writer.join().unwrap();
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<u64>("tasks")
        .unwrap();
    for n in 0..ROUNDS * PUTS {
        assert_eq!(tasks.get_timeout(SECS_30).unwrap(), n, "in put order");
    }
}

/// Appends one frame holding `value` to `out`.
fn frame_into(out: &mut Vec<u8>, value: &Cbor) {
    let body = value.encode();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
}

/// A peer that pipelines durable puts and closes its side of the connection right after still
/// gets a reply for each (while other producers keep the journal's writer busy, so most of
/// those puts go on without waiting for their sync): a put confirmed to the journal is
/// confirmed to its client, whose retry would otherwise put it twice.
#[test]
fn pipelined_puts_then_a_half_close_still_get_every_reply() {
    let dir = Dir::new("halfclose");
    let (_server, addr) = serve_up(&dir.0, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let q = Client::connect(addr, KEY)
                    .unwrap()
                    .queue::<u64>("results")
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    q.put(0).unwrap();
                }
            })
        })
        .collect();
    for round in 0..20u64 {
        let mut raw = Raw::authenticated(addr, KEY);
        let mut batch = Vec::new();
        for n in 0..50u64 {
            let item = Cbor::Bytes(Cbor::Uint(round * 50 + n).encode());
            let put = Cbor::variant(
                "put",
                vec![
                    ("queue", Cbor::Text("tasks".into())),
                    ("items", Cbor::Array(vec![item])),
                    ("timeout_ms", Cbor::Null),
                ],
            );
            frame_into(&mut batch, &put);
        }
        raw.write(&batch);
        raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
        for n in 0..50 {
            let reply = raw.recv();
            assert_eq!(
                reply,
                Some(Cbor::Text("done".into())),
                "round {round}, put {n}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.into_iter().for_each(|t| t.join().unwrap());
    let tasks = Client::connect(addr, KEY)
        .unwrap()
        .queue::<u64>("tasks")
        .unwrap();
    for n in 0..20 * 50 {
        assert_eq!(tasks.get_timeout(SECS_30).unwrap(), n, "in put order");
    }
}

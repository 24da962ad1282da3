//! The journal: an append-only log in a directory that makes a server's queues survive the
//! server (`--journal DIR`).
//!
//! Every change to an item is a record, appended to a buffer in memory under one lock, in
//! the order the changes happen: a put's record before the item can be taken, a return's
//! before it can be taken again. Putting threads then *commit*: whichever finds no write in
//! progress becomes the writer for everyone, writes the whole buffer with one `write`, syncs
//! it if the policy says so, and wakes the others, whose records went out with it (group
//! commit). A network put does not even wait: if another thread is writing, it hands its
//! encoded reply over and its connection goes on, and the writer sends the reply straight
//! after the sync that covers it (see `early`); if only such detached puts are left when a
//! writer stops, the background thread takes over writing. Acknowledgements and returns
//! never wait: losing one only redelivers an item. The background thread also writes what
//! they left in the buffer, and syncs on the interval policy's timer even when nothing else
//! happens.
//!
//! The journal also keeps the live items (payloads shared with the queues), so compaction
//! writes them to a snapshot without reading old files; see `compact`. Any write or sync
//! error is final: the journal refuses every commit from then on and the server stops, since
//! a failed `fdatasync` retried can report success for data that is gone.

mod compact;
mod early;
mod frame;
mod record;
mod recover;
mod segment;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::mem;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use crate::blob::Blob;
use crate::config::{Fsync, JournalConfig};
use crate::error::JournalError;
use crate::stats::JournalStats;
use crate::sync::lock;
use record::{Header, Record, DEL_CHUNK, NOT_DUE};
use segment::FileName;
use storage::{Append, Disk, OpenError, Storage};

pub(crate) use early::{Armed, EarlyReply};
pub(crate) use record::QueueDef;
pub(crate) use recover::Live;

/// Under `always`, how long acknowledgements and returns stay written but not synced at most.
const ACK_SYNC: Duration = Duration::from_secs(1);

/// How often the background thread writes what acknowledgements left in the buffer.
const FLUSH_TICK: Duration = Duration::from_millis(10);

/// A buffer this large is written by the thread that filled it, so it stays bounded however
/// many acknowledgements arrive between ticks.
const MAX_BUFFER: usize = 4 << 20;

/// Writes a leader does in a row for committers that arrived while it wrote, before it hands
/// over: enough to save the wake-ups under load, few enough that its own caller is not kept.
const LEAD_ROUNDS: u32 = 2;

/// A start that finds this many segments compacts at once.
const START_COMPACT_SEGMENTS: usize = 8;

/// Zeros written ahead of a segment's end under `always`, at a time (about a millisecond's
/// write and sync here, once per this many bytes of records).
const ZERO_AHEAD: u64 = 1 << 20;

/// The smallest segment size accepted.
const MIN_SEGMENT: u64 = 4096;

/// A position in the stream of bytes appended since the journal opened; a put waits until
/// the position after its records is written (and synced, under `always`).
pub(crate) type Ticket = u64;

/// A server's journal.
pub(crate) struct Journal {
    /// Itself, for the compaction thread.
    me: Weak<Journal>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    fsync: Fsync,
    segment_size: u64,
    compact_min: u64,
    instance: [u8; 16],
    state: Mutex<State>,
    io: Mutex<Io>,
    /// Bytes written to the journal files, and of them synced, since it opened.
    written: AtomicU64,
    synced: AtomicU64,
    /// A write or sync failed (`Io::failure` says which).
    failed: AtomicBool,
    /// `fdatasync`s of segments since the journal opened.
    fsyncs: AtomicU64,
    /// The size of the segment being appended to (kept apart from `files`, so a write takes
    /// no lock for it).
    current_size: AtomicU64,
    writer: Mutex<Writer>,
    files: Mutex<Files>,
    stopping: AtomicBool,
    tick: (Mutex<Tick>, Condvar),
    background: Mutex<Option<JoinHandle<()>>>,
    /// Items recovered at start, of them leased at the crash, and the time it took in ms.
    recovered: (u64, u64, u64),
}

/// What is appended and not yet written, and what the journal holds.
struct State {
    buf: Vec<u8>,
    /// Bytes taken out of `buf` to be written, since the journal opened.
    taken: u64,
    next_id: u64,
    next_queue: u32,
    live: FxHashMap<u64, Live>,
    /// The size of a snapshot of `live` and `queues`.
    live_bytes: u64,
    queues: BTreeMap<u32, QueueDef>,
}

/// Who is writing, who waits, and what went wrong. How far the writes and syncs got is in
/// atomics beside it, so a committer already covered returns without the lock.
struct Io {
    /// A thread is writing (it holds `writer`).
    leading: bool,
    /// Committers waiting for a write or sync someone else does, in arrival order.
    waiters: Vec<Waiter>,
    failure: Option<Failure>,
    last_sync: Option<Instant>,
    /// When the oldest written byte not yet synced was written.
    unsynced_since: Option<Instant>,
}

/// A committer parked until its bytes are written (and synced, if `sync`).
struct Waiter {
    upto: Ticket,
    sync: bool,
    thread: Thread,
    /// Its reply, sent by the writer that covers it.
    early: Option<Armed>,
    /// Not parked: it went on (see [`Committed::Detached`]); its reply is the writer's to send.
    detached: bool,
}

/// What the background thread is asked to do between ticks.
#[derive(Default)]
struct Tick {
    stop: bool,
    /// Write for detached committers (see [`Role::Syncer`]).
    lead: bool,
}

/// Who drives a write (see `Journal::drive`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Waits for its bytes; writes them itself, and a few rounds more for others, if no
    /// other thread is writing.
    Committer,
    /// A put whose reply a writer sends for it: a committer that, if another thread is
    /// writing, goes on at once instead of waiting.
    Replying,
    /// The background thread, called when only detached committers are left: writes until
    /// none is.
    Syncer,
}

/// What [`Journal::commit_replying`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Committed {
    /// The put is committed; its reply is to be sent (or finished) by the caller.
    Done,
    /// Another thread is writing and sends the reply when its sync covers the put; the
    /// caller must settle before it sends anything else.
    Detached,
}

/// Committers a writer covered (with their replies to send) and the one it hands over to,
/// woken once the writer has released the lock; detached ones are not parked, so are not
/// woken.
type Wake = Vec<(Option<Thread>, Option<Armed>)>;

/// The segment being appended to.
struct Writer {
    file: Box<dyn Append>,
    generation: u64,
    seq: u64,
    size: u64,
}

impl Writer {
    fn name(&self) -> FileName {
        FileName::Segment {
            generation: self.generation,
            seq: self.seq,
        }
    }

    /// Creates segment `seq` of `generation` with its header, synced, and syncs the
    /// directory, so the segment exists before anything is written to it.
    fn start(
        storage: &dyn Storage,
        generation: u64,
        seq: u64,
        next_id: u64,
        instance: [u8; 16],
    ) -> Result<Writer, Failure> {
        let name = FileName::Segment { generation, seq }.to_string();
        let fail = |action, e: &std::io::Error| Failure::new(storage.path(&name), action, e);
        let bytes = Header::segment(generation, seq, next_id, instance);
        let mut file = storage
            .create_segment(&name)
            .map_err(|e| fail("creation", &e))?;
        file.append(&bytes).map_err(|e| fail("write", &e))?;
        file.sync().map_err(|e| fail("fdatasync", &e))?;
        storage.sync_dir().map_err(|e| fail("directory sync", &e))?;
        Ok(Writer {
            file,
            generation,
            seq,
            size: bytes.len() as u64,
        })
    }
}

/// The journal's files and their sizes (but the segment being appended to: `current_size`),
/// and the compaction in progress.
struct Files {
    sizes: BTreeMap<FileName, u64>,
    compacting: bool,
    /// No compaction before this, after one failed.
    retry_at: Option<Instant>,
    failures: u32,
    compactions: u64,
    longest_pause: Duration,
    thread: Option<JoinHandle<()>>,
}

/// A write or sync that failed: every commit from then on fails with it.
#[derive(Clone, Debug)]
struct Failure {
    path: PathBuf,
    action: &'static str,
    os: Option<i32>,
    message: String,
}

impl Failure {
    fn new(path: PathBuf, action: &'static str, e: &std::io::Error) -> Self {
        Failure {
            path,
            action,
            os: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    fn error(&self) -> JournalError {
        JournalError::Io {
            path: self.path.clone(),
            action: self.action,
            source: match self.os {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::other(self.message.clone()),
            },
        }
    }
}

/// The items a journal recovered for one queue, in id order.
pub(crate) struct Restored {
    pub(crate) no: u32,
    pub(crate) def: QueueDef,
    pub(crate) items: Vec<(u64, Live)>,
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A due instant as the journal stores it.
fn due_ms(due: Option<Instant>) -> u64 {
    match due {
        None => NOT_DUE,
        Some(due) => {
            (unix_ms() + crate::time::millis(due.saturating_duration_since(Instant::now()))).max(1)
        }
    }
}

/// Recovers a journal whose only segment holds `data`, as it is and after a valid header;
/// must return normally (an error is fine) whatever the bytes. For the fuzz target and tests.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn recover_bytes(data: &[u8]) {
    let name = FileName::Segment {
        generation: 1,
        seq: 1,
    }
    .to_string();
    let mut headed = Header::segment(1, 1, 1, [0; 16]);
    headed.extend_from_slice(data);
    for bytes in [data.to_vec(), headed] {
        let disk = storage::sim::SimDisk::from_files(&[(name.clone(), bytes)]);
        let _ = recover::recover(&disk);
    }
}

/// The instant a stored due time stands for now (`None`: ready).
pub(crate) fn due_instant(due_ms: u64) -> Option<Instant> {
    let now = unix_ms();
    (due_ms != NOT_DUE && due_ms > now)
        .then(|| crate::core::due_after(Duration::from_millis(due_ms - now)))
}

/// What a put record of this payload takes in a snapshot.
fn put_size(payload: &[u8]) -> u64 {
    frame::size(1 + 4 + 8 + 4 + 8 + payload.len())
}

impl Journal {
    /// Opens (and locks) the journal `config` names, recovers what it holds and starts a new
    /// segment. `instance` is the server id to keep when the journal holds none yet.
    pub(crate) fn open(
        config: &JournalConfig,
        instance: [u8; 16],
    ) -> Result<(Arc<Journal>, Vec<Restored>), JournalError> {
        // Only a sync on every commit gains from writing over zeros (see `Disk::open`).
        let zero_ahead = match config.fsync {
            Fsync::Always => ZERO_AHEAD.min(config.segment_size),
            _ => 0,
        };
        let disk = Disk::open(&config.dir, zero_ahead).map_err(|e| match e {
            OpenError::Locked => JournalError::Locked {
                dir: config.dir.clone(),
            },
            OpenError::Io(path, action, source) => JournalError::Io {
                path,
                action,
                source,
            },
        })?;
        Journal::open_on(Arc::new(disk), config, instance)
    }

    /// [`open`](Journal::open) on any storage (a simulated disk in tests).
    fn open_on(
        storage: Arc<dyn Storage>,
        config: &JournalConfig,
        instance: [u8; 16],
    ) -> Result<(Arc<Journal>, Vec<Restored>), JournalError> {
        let recovered = recover::recover(&*storage)?;
        let instance = recovered.instance.unwrap_or(instance);
        // Each start begins a segment: after many starts (a supervisor's restart loop), the
        // first thing done is a compaction, so the files do not pile up below the size
        // that would trigger one.
        let segments = recovered
            .files
            .iter()
            .filter(|(n, _)| matches!(n, FileName::Segment { .. }))
            .count();
        let compact_at_start = segments >= START_COMPACT_SEGMENTS;
        let (generation, seq) = match compact_at_start {
            true => (recovered.next_segment().0 + 1, 1),
            false => recovered.next_segment(),
        };
        let next_queue = recovered.next_queue.max(1);
        let live_bytes = recovered
            .items
            .values()
            .map(|l| put_size(l.payload.as_bytes()))
            .sum::<u64>()
            + recovered
                .queues
                .iter()
                .map(|(&no, def)| {
                    Record::Queue {
                        no,
                        def: def.clone(),
                    }
                    .frame_size()
                })
                .sum::<u64>();
        let writer = Writer::start(&*storage, generation, seq, recovered.next_id, instance)
            .map_err(|f| f.error())?;
        let sizes: BTreeMap<FileName, u64> = recovered.files.iter().copied().collect();
        let current_size = AtomicU64::new(writer.size);
        let mut by_queue: BTreeMap<u32, Vec<(u64, Live)>> = BTreeMap::new();
        for (&id, live) in &recovered.items {
            by_queue
                .entry(live.queue)
                .or_default()
                .push((id, live.clone()));
        }
        let restored = recovered
            .queues
            .iter()
            .map(|(&no, def)| {
                let mut items = by_queue.remove(&no).unwrap_or_default();
                items.sort_unstable_by_key(|(id, _)| *id);
                Restored {
                    no,
                    def: def.clone(),
                    items,
                }
            })
            .collect();
        if !recovered.files.is_empty() {
            let in_flight = match recovered.in_flight {
                0 => String::new(),
                n => format!(
                    "; {n} of them were leased out and are ready again, not counted as a \
                     delivery"
                ),
            };
            log::info!(
                "journal {}: recovered {} item(s) in {} queue(s) from {} file(s) ({} bytes) in {} \
                 ms{in_flight}",
                config.dir.display(),
                recovered.items.len(),
                recovered.queues.len(),
                recovered.files.len(),
                recovered.bytes,
                recovered.millis
            );
        }
        let recovered_items = recovered.items.len() as u64;
        let journal = Arc::new_cyclic(|me| Journal {
            me: me.clone(),
            storage,
            dir: config.dir.clone(),
            fsync: config.fsync,
            segment_size: config.segment_size.max(MIN_SEGMENT),
            compact_min: config.compact_min,
            instance,
            state: Mutex::new(State {
                buf: Vec::new(),
                taken: 0,
                next_id: recovered.next_id,
                next_queue,
                live_bytes,
                live: recovered.items,
                queues: recovered.queues,
            }),
            io: Mutex::new(Io {
                leading: false,
                waiters: Vec::new(),
                failure: None,
                last_sync: None,
                unsynced_since: None,
            }),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            current_size,
            writer: Mutex::new(writer),
            files: Mutex::new(Files {
                sizes,
                compacting: false,
                retry_at: None,
                failures: 0,
                compactions: 0,
                longest_pause: Duration::ZERO,
                thread: None,
            }),
            stopping: AtomicBool::new(false),
            tick: (Mutex::new(Tick::default()), Condvar::new()),
            background: Mutex::new(None),
            recovered: (recovered_items, recovered.in_flight, recovered.millis),
        });
        let runner = Arc::clone(&journal);
        let thread = std::thread::Builder::new()
            .name("distq-journal".into())
            .spawn(move || runner.background_loop())
            .map_err(|source| JournalError::Io {
                path: config.dir.clone(),
                action: "starting the journal thread",
                source,
            })?;
        *lock(&journal.background) = Some(thread);
        if compact_at_start {
            let cut = {
                let st = lock(&journal.state);
                compact::Cut::take(&st.live, &st.queues, st.next_id)
            };
            lock(&journal.files).compacting = true;
            journal.start_compaction(cut, generation);
        }
        Ok((journal, restored))
    }

    /// The server instance id the journal keeps.
    pub(crate) fn instance(&self) -> [u8; 16] {
        self.instance
    }

    /// The number of queue `def.name`: the one the journal knows it by (updated to `def`),
    /// or a new one. A temporary queue is always new when declared (restored ones keep
    /// theirs): one of the same name may still await its drain, whose `Drop` must not take
    /// the new queue's items with it.
    pub(crate) fn queue(&self, def: QueueDef) -> u32 {
        let mut st = lock(&self.state);
        let known = match def.temporary {
            true => None,
            false => st.queues.iter().find(|(_, d)| d.name == def.name),
        };
        if let Some((&no, known)) = known {
            if *known != def {
                st.queues.insert(no, def.clone());
                Record::Queue { no, def }.push(&mut st.buf);
            }
            return no;
        }
        let no = st.next_queue;
        st.next_queue += 1;
        let record = Record::Queue {
            no,
            def: def.clone(),
        };
        st.live_bytes += record.frame_size();
        record.push(&mut st.buf);
        st.queues.insert(no, def);
        no
    }

    /// Forgets queue `no`, a temporary queue removed (its items deleted before).
    pub(crate) fn drop_queue(&self, no: u32) {
        let mut st = lock(&self.state);
        if let Some(def) = st.queues.remove(&no) {
            st.live_bytes -= Record::Queue { no, def }.frame_size();
            Record::Drop { no }.push(&mut st.buf);
        }
    }

    /// Records a new item of queue `queue`; returns its id and the ticket to commit.
    pub(crate) fn put(&self, queue: u32, payload: &Blob, due: Option<Instant>) -> (u64, Ticket) {
        let due_ms = due_ms(due);
        let mut st = lock(&self.state);
        let id = st.next_id;
        st.next_id += 1;
        st.record_put(id, queue, 0, due_ms, payload);
        (id, st.appended())
    }

    /// Records again an item that was deleted (taken for good, then given back).
    pub(crate) fn put_again(
        &self,
        id: u64,
        queue: u32,
        redeliveries: u32,
        payload: &Blob,
    ) -> Ticket {
        let mut st = lock(&self.state);
        st.record_put(id, queue, redeliveries, NOT_DUE, payload);
        st.appended()
    }

    /// Records that these items are gone.
    pub(crate) fn delete(&self, ids: &[u64]) {
        let big = {
            let mut st = lock(&self.state);
            let mut gone = Vec::with_capacity(ids.len().min(DEL_CHUNK));
            for &id in ids {
                if let Some(live) = st.live.remove(&id) {
                    st.live_bytes -= put_size(live.payload.as_bytes());
                    gone.push(id);
                }
                if gone.len() == DEL_CHUNK {
                    Record::Del(mem::take(&mut gone)).push(&mut st.buf);
                }
            }
            if !gone.is_empty() {
                Record::Del(gone).push(&mut st.buf);
            }
            st.full()
        };
        if big {
            self.write_out();
        }
    }

    /// Records that these items were leased out. Not waited for: a crash that loses it only
    /// makes recovery report fewer items in flight (they come back ready either way).
    pub(crate) fn leased(&self, ids: &[u64]) {
        let big = {
            let mut st = lock(&self.state);
            for chunk in ids.chunks(DEL_CHUNK) {
                for id in chunk {
                    if let Some(live) = st.live.get_mut(id) {
                        live.leased = true;
                    }
                }
                Record::Lease(chunk.to_vec()).push(&mut st.buf);
            }
            st.full()
        };
        if big {
            self.write_out();
        }
    }

    /// Records that item `id` came back: to `queue`, with `redeliveries`, ready at `due`.
    pub(crate) fn moved(&self, id: u64, queue: u32, redeliveries: u32, due: Option<Instant>) {
        let due_ms = due_ms(due);
        let big = {
            let mut st = lock(&self.state);
            let Some(live) = st.live.get_mut(&id) else {
                return;
            };
            (live.queue, live.redeliveries, live.due_ms) = (queue, redeliveries, due_ms);
            live.leased = false;
            Record::Move {
                id,
                queue,
                redeliveries,
                due_ms,
            }
            .push(&mut st.buf);
            st.full()
        };
        if big {
            self.write_out();
        }
    }

    /// Waits until everything up to `ticket` is as durable as the policy promises: written
    /// to the file, and synced under [`Fsync::Always`]. Fails once any write or sync failed.
    pub(crate) fn commit(&self, ticket: Ticket) -> Result<(), JournalError> {
        match self.fsync {
            Fsync::Always => self.drive(ticket, true, None, Role::Committer).map(drop),
            _ => self.write_through(ticket),
        }
    }

    /// Whether [`commit_replying`](Journal::commit_replying) may hand a reply over (under
    /// the other policies a commit is a write of microseconds: nothing to gain).
    pub(crate) fn replies_early(&self) -> bool {
        self.fsync == Fsync::Always
    }

    /// [`commit`](Journal::commit) for a put whose reply `early` holds. Under
    /// [`Fsync::Always`], if another thread is writing, the caller does not wait: the writer
    /// whose sync covers `ticket` sends the reply (see [`EarlyReply`]), and the caller goes
    /// on ([`Committed::Detached`]) and settles with [`commit`](Journal::commit) before it
    /// sends anything else. Else it commits as `commit` does.
    pub(crate) fn commit_replying(
        &self,
        ticket: Ticket,
        early: &Armed,
    ) -> Result<Committed, JournalError> {
        match self.fsync {
            Fsync::Always => self.drive(ticket, true, Some(early), Role::Replying),
            _ => self.write_through(ticket).map(|()| Committed::Done),
        }
    }

    /// A commit that needs a write but no sync: the committer writes what the buffer holds
    /// itself, under the writer's lock, instead of waiting to be woken by another writer (a
    /// write takes microseconds; a hand-off between threads costs more).
    fn write_through(&self, upto: Ticket) -> Result<(), JournalError> {
        if self.reached(upto, false) {
            return Ok(());
        }
        let mut w = lock(&self.writer);
        if self.failed.load(Ordering::Acquire) || self.reached(upto, false) {
            drop(w);
            return self.failure().map_or(Ok(()), Err);
        }
        let result = self.write_locked(&mut w, false, false);
        drop(w);
        // Anyone parked waits for a leader, which wakes whom this write covered as well.
        let mut io = lock(&self.io);
        match result {
            Ok((end, synced)) => {
                self.publish(&mut io, end, synced);
                Ok(())
            }
            Err(failure) => {
                let error = failure.error();
                self.fail(&mut io, failure);
                Err(error)
            }
        }
    }

    /// Writes what the buffer holds (a full buffer, or the background thread's tick).
    fn write_out(&self) {
        let upto = lock(&self.state).appended();
        let _ = self.drive(upto, false, None, Role::Committer);
    }

    /// The failure that stopped the journal, if one did.
    pub(crate) fn failure(&self) -> Option<JournalError> {
        lock(&self.io).failure.as_ref().map(Failure::error)
    }

    /// Whether bytes up to `upto` are written (and synced if `sync`).
    fn reached(&self, upto: Ticket, sync: bool) -> bool {
        match sync {
            true => self.synced.load(Ordering::Acquire) >= upto,
            false => self.written.load(Ordering::Acquire) >= upto,
        }
    }

    /// Waits until bytes up to `upto` are written (and synced if `sync`), writing them itself
    /// when no other thread is. The writer wakes exactly the committers its write covered
    /// (sending the replies they handed over), and hands over to the first parked one it did
    /// not cover, or to the background thread if only detached ones are left: no committer
    /// is woken for nothing, and none waits for a writer that will not come.
    fn drive(
        &self,
        upto: Ticket,
        sync: bool,
        early: Option<&Armed>,
        role: Role,
    ) -> Result<Committed, JournalError> {
        if self.reached(upto, sync) {
            return Ok(Committed::Done);
        }
        let mut io = lock(&self.io);
        loop {
            // Covered first: bytes synced before a later write failed are on disk, and their
            // put stands whatever failed after.
            if self.reached(upto, sync) {
                return Ok(Committed::Done);
            }
            if let Some(failure) = &io.failure {
                return Err(failure.error());
            }
            if !io.leading {
                io.leading = true;
                let mut sync = sync;
                let mut wake = Wake::new();
                let mut own = early;
                for round in 0.. {
                    drop(io);
                    self.wake(&mut wake);
                    let unsynced =
                        self.synced.load(Ordering::Acquire) < self.written.load(Ordering::Acquire);
                    let result = self.lead(sync, unsynced);
                    io = lock(&self.io);
                    // Committers that arrived during this write go out with the next one, by
                    // this thread while it runs anyway (a hand-off costs a wake-up), for a
                    // few rounds at most if its own caller waits meanwhile.
                    let keep = role == Role::Syncer || round < LEAD_ROUNDS;
                    let next = self.led(&mut io, result, keep, &mut wake);
                    // Its own reply too goes out now, not after the rounds it leads next.
                    if let (Some(reply), true) = (own, self.reached(upto, sync)) {
                        wake.push((None, Some(reply.clone())));
                        own = None;
                    }
                    match next {
                        Some(next_sync) => sync = next_sync,
                        None => break,
                    }
                }
                drop(io);
                self.wake(&mut wake);
                io = lock(&self.io);
                continue;
            }
            let me = std::thread::current();
            let id = me.id();
            let detached = role == Role::Replying && early.is_some();
            io.waiters.push(Waiter {
                upto,
                sync,
                thread: me,
                early: early.cloned(),
                detached,
            });
            if detached {
                return Ok(Committed::Detached);
            }
            drop(io);
            // Woken when covered, or when it is this one's turn to write; `park` may also
            // return for nothing, and the loop above tells which.
            loop {
                std::thread::park();
                // Covered: the writer took it off the list (a stray wake-up meanwhile is
                // harmless: `park` may always return early).
                if self.reached(upto, sync) {
                    return Ok(Committed::Done);
                }
                let io = lock(&self.io);
                let waiting = io
                    .waiters
                    .iter()
                    .any(|w| w.thread.id() == id && !w.detached);
                // Not leading: it is this one's turn (or anyone's) to write.
                if !waiting || !io.leading || io.failure.is_some() {
                    break;
                }
            }
            io = lock(&self.io);
            io.waiters.retain(|w| w.thread.id() != id || w.detached);
        }
    }

    /// Publishes what a leader wrote and collects in `wake` the committers it covered. If
    /// some were not covered: with `keep`, the leader stays leader and this returns whether
    /// the next write must sync; else the first parked one is to write next, or, if all are
    /// detached, the background thread is called to.
    fn led(
        &self,
        io: &mut Io,
        result: Result<(u64, bool), Failure>,
        keep: bool,
        wake: &mut Wake,
    ) -> Option<bool> {
        io.leading = false;
        match result {
            Ok((end, synced)) => self.publish(io, end, synced),
            Err(failure) => {
                self.fail(io, failure);
                return None;
            }
        }
        let mut left = false;
        let mut parked = None;
        let mut next_sync = false;
        io.waiters.retain_mut(|w| {
            if self.reached(w.upto, w.sync) {
                wake.push(((!w.detached).then(|| w.thread.clone()), w.early.take()));
                return false;
            }
            left = true;
            if !w.detached {
                parked.get_or_insert_with(|| w.thread.clone());
            }
            next_sync |= w.sync;
            true
        });
        if !left {
            return None;
        }
        if keep {
            io.leading = true;
            return Some(next_sync);
        }
        match parked {
            Some(next) => wake.push((Some(next), None)),
            None => self.call_syncer(),
        }
        None
    }

    /// Asks the background thread to write for the detached committers left.
    fn call_syncer(&self) {
        lock(&self.tick.0).lead = true;
        self.tick.1.notify_one();
    }

    /// Sends the replies of the committers a write covered, then wakes them (and the next
    /// writer), outside the lock: committers arriving meanwhile need not wait for it.
    fn wake(&self, wake: &mut Wake) {
        for (_, early) in wake.iter() {
            if let Some(early) = early {
                early.send();
            }
        }
        for (thread, _) in wake.drain(..) {
            if let Some(thread) = thread {
                thread.unpark();
            }
        }
    }

    /// Records how far a write (and sync) got.
    fn publish(&self, io: &mut Io, end: u64, synced: bool) {
        self.written.fetch_max(end, Ordering::AcqRel);
        if synced {
            self.synced.fetch_max(end, Ordering::AcqRel);
            io.last_sync = Some(Instant::now());
            io.unsynced_since = None;
        } else if io.unsynced_since.is_none() && self.synced.load(Ordering::Acquire) < end {
            io.unsynced_since = Some(Instant::now());
        }
    }

    /// A write or sync failed: every commit from now on fails, and every waiter is woken to
    /// see it.
    fn fail(&self, io: &mut Io, failure: Failure) {
        log::warn!(
            "{} (the server stops: it cannot persist puts)",
            failure.error()
        );
        io.failure = Some(failure);
        self.failed.store(true, Ordering::Release);
        for waiter in io.waiters.drain(..) {
            waiter.thread.unpark();
        }
    }

    /// One write for everyone: the buffer to the segment, a sync if asked (or if the
    /// segment is full and rolls over). Returns the position written and whether it is
    /// synced.
    fn lead(&self, sync: bool, unsynced: bool) -> Result<(u64, bool), Failure> {
        let mut w = lock(&self.writer);
        self.write_locked(&mut w, sync, unsynced)
    }

    /// [`lead`](Journal::lead) with the writer held. The buffer is taken under the writer's
    /// lock, so whoever writes, the file gets the records in the order they were appended.
    fn write_locked(
        &self,
        w: &mut Writer,
        sync: bool,
        unsynced: bool,
    ) -> Result<(u64, bool), Failure> {
        let (buf, end) = {
            let mut st = lock(&self.state);
            let buf = mem::take(&mut st.buf);
            st.taken += buf.len() as u64;
            (buf, st.taken)
        };
        let fail = |w: &Writer, action, e: &std::io::Error| {
            Failure::new(self.storage.path(&w.name().to_string()), action, e)
        };
        if !buf.is_empty() {
            w.file.append(&buf).map_err(|e| fail(w, "write", &e))?;
            w.size += buf.len() as u64;
            self.current_size.store(w.size, Ordering::Relaxed);
        }
        if w.size >= self.segment_size {
            return self.roll(w).map(|end| (end, true));
        }
        if sync && (unsynced || !buf.is_empty()) {
            w.file.sync().map_err(|e| fail(w, "fdatasync", &e))?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok((end, sync))
    }

    /// Starts the next segment: the rest of the buffer goes to the old one, which is synced
    /// (so only the last segment can ever have a torn tail). If the journal is due for
    /// compaction, the new segment starts a new generation and the live items at this instant
    /// go to a snapshot, written by another thread.
    fn roll(&self, w: &mut Writer) -> Result<u64, Failure> {
        let due = self.compaction_due();
        let cut_started = Instant::now();
        let (rest, end, next_id, cut) = {
            let mut st = lock(&self.state);
            let cut = due.then(|| compact::Cut::take(&st.live, &st.queues, st.next_id));
            let rest = mem::take(&mut st.buf);
            st.taken += rest.len() as u64;
            (rest, st.taken, st.next_id, cut)
        };
        let pause = cut_started.elapsed();
        let old = w.name().to_string();
        let fail = |action, e: &std::io::Error| Failure::new(self.storage.path(&old), action, e);
        w.file.append(&rest).map_err(|e| fail("write", &e))?;
        w.file.seal().map_err(|e| fail("truncation", &e))?;
        w.file.sync().map_err(|e| fail("fdatasync", &e))?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let sealed = (w.name(), w.size + rest.len() as u64);
        let (generation, seq) = match cut {
            Some(_) => (w.generation + 1, 1),
            None => (w.generation, w.seq + 1),
        };
        *w = Writer::start(&*self.storage, generation, seq, next_id, self.instance)?;
        let mut files = lock(&self.files);
        files.sizes.insert(sealed.0, sealed.1);
        self.current_size.store(w.size, Ordering::Relaxed);
        if let Some(cut) = cut {
            files.longest_pause = files.longest_pause.max(pause);
            files.compacting = true;
            drop(files);
            self.start_compaction(cut, generation);
        }
        Ok(end)
    }

    /// Bytes the journal's files take: the sealed ones and the one being appended to.
    fn disk_bytes(&self, files: &Files) -> u64 {
        files.sizes.values().sum::<u64>() + self.current_size.load(Ordering::Relaxed)
    }

    /// Whether the journal takes more than twice its live data and more than the minimum,
    /// with no compaction running or backing off.
    fn compaction_due(&self) -> bool {
        let live = lock(&self.state).live_bytes;
        let files = lock(&self.files);
        let disk = self.disk_bytes(&files);
        !files.compacting
            && files.retry_at.is_none_or(|t| Instant::now() >= t)
            && disk > self.compact_min.max(2 * live)
    }

    /// Writes the snapshot of `cut` as generation `generation` on a thread of its own, then
    /// removes the files it replaces.
    fn start_compaction(&self, cut: compact::Cut, generation: u64) {
        let Some(me) = self.me.upgrade() else { return };
        let spawned = std::thread::Builder::new()
            .name("distq-compact".into())
            .spawn(move || {
                let result = compact::write_snapshot(&*me.storage, generation, cut, me.instance);
                me.compaction_done(generation, result);
            });
        let mut files = lock(&self.files);
        match spawned {
            Ok(thread) => {
                if let Some(done) = files.thread.replace(thread) {
                    let _ = done.join();
                }
            }
            Err(e) => {
                files.compacting = false;
                log::warn!("journal compaction could not start a thread: {e}");
            }
        }
    }

    fn compaction_done(&self, generation: u64, result: Result<u64, (PathBuf, std::io::Error)>) {
        let mut files = lock(&self.files);
        match result {
            Ok(size) => {
                files.failures = 0;
                files.retry_at = None;
                files.compactions += 1;
                files.sizes.insert(FileName::Snapshot { generation }, size);
                let old: Vec<FileName> = files
                    .sizes
                    .keys()
                    .filter(|name| name.generation() < generation)
                    .copied()
                    .collect();
                drop(files);
                // The snapshot is durable: the files it replaces are garbage (a removal that
                // fails leaves a file the next start removes).
                for name in &old {
                    if let Err(e) = self.storage.remove(&name.to_string()) {
                        log::warn!("journal: cannot remove {name} after compaction: {e}");
                    }
                }
                let _ = self.storage.sync_dir();
                let mut files = lock(&self.files);
                for name in &old {
                    files.sizes.remove(name);
                }
                files.compacting = false;
            }
            Err((path, e)) => {
                files.compacting = false;
                files.failures += 1;
                let backoff = Duration::from_secs(10 << files.failures.min(6));
                files.retry_at = Some(Instant::now() + backoff);
                log::warn!(
                    "journal compaction failed writing {}: {e} (the journal keeps growing; \
                     retrying in {} s)",
                    path.display(),
                    backoff.as_secs()
                );
            }
        }
    }

    /// The background thread: writes what the buffer holds every tick, and syncs within the
    /// interval policy's interval of the first unsynced write.
    fn background_loop(&self) {
        let tick = match self.fsync {
            Fsync::Every(d) => d.min(FLUSH_TICK),
            _ => FLUSH_TICK,
        };
        loop {
            let called = {
                let (tick_state, wake) = &self.tick;
                let state = lock(tick_state);
                let (mut state, _) = wake
                    .wait_timeout_while(state, tick, |t| !t.stop && !t.lead)
                    .unwrap_or_else(|e| e.into_inner());
                if state.stop {
                    return;
                }
                mem::take(&mut state.lead)
            };
            let upto = lock(&self.state).appended();
            if called {
                if self.drive(upto, true, None, Role::Syncer).is_err() {
                    return;
                }
                continue;
            }
            // Synced once the oldest unsynced write is about to be an interval old; under
            // `always`, the acknowledgements and returns no put's sync covered, within a
            // second (so a power cut redelivers at most a second of them).
            let within = match self.fsync {
                Fsync::Every(d) => Some(d),
                Fsync::Always => Some(ACK_SYNC),
                Fsync::Never => None,
            };
            let sync = within.is_some_and(|d| {
                lock(&self.io)
                    .unsynced_since
                    .is_some_and(|t| t.elapsed() + tick >= d)
            });
            if self.drive(upto, sync, None, Role::Committer).is_err() {
                return;
            }
        }
    }

    /// Writes and syncs everything, then stops the background thread: a clean shutdown
    /// loses nothing whatever the policy.
    pub(crate) fn close(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        let upto = lock(&self.state).appended();
        let _ = self.drive(upto, true, None, Role::Committer);
        lock(&self.tick.0).stop = true;
        self.tick.1.notify_all();
        if let Some(thread) = lock(&self.background).take() {
            let _ = thread.join();
        }
        let compactor = lock(&self.files).thread.take();
        if let Some(thread) = compactor {
            let _ = thread.join();
        }
    }

    /// Waits for the compaction running now, if any, to finish.
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        let thread = lock(&self.files).thread.take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The figures `stats` shows.
    pub(crate) fn stats(&self) -> JournalStats {
        let (live_bytes, items) = {
            let st = lock(&self.state);
            (st.live_bytes, st.live.len() as u64)
        };
        let last_sync = lock(&self.io).last_sync;
        let unsynced = self.written.load(Ordering::Acquire) - self.synced.load(Ordering::Acquire);
        let files = lock(&self.files);
        JournalStats {
            dir: self.dir.display().to_string(),
            policy: self.fsync.to_string(),
            bytes_on_disk: self.disk_bytes(&files),
            live_bytes,
            items,
            last_fsync_ms: last_sync.map(|t| t.elapsed().as_millis() as u64),
            unsynced_bytes: unsynced,
            compactions: files.compactions,
            longest_pause_us: files.longest_pause.as_micros() as u64,
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            recovered_items: self.recovered.0,
            recovered_in_flight: self.recovered.1,
            recovery_ms: self.recovered.2,
        }
    }
}

impl State {
    fn record_put(&mut self, id: u64, queue: u32, redeliveries: u32, due_ms: u64, payload: &Blob) {
        Record::Put {
            queue,
            id,
            redeliveries,
            due_ms,
            payload: payload.as_bytes(),
        }
        .push(&mut self.buf);
        self.live_bytes += put_size(payload.as_bytes());
        let old = self.live.insert(
            id,
            Live {
                queue,
                redeliveries,
                due_ms,
                leased: false,
                payload: payload.clone(),
            },
        );
        if let Some(old) = old {
            self.live_bytes -= put_size(old.payload.as_bytes());
        }
    }

    /// The position after the last byte appended.
    fn appended(&self) -> u64 {
        self.taken + self.buf.len() as u64
    }

    /// Whether the buffer should be written by the thread that filled it.
    fn full(&self) -> bool {
        self.buf.len() > MAX_BUFFER
    }
}

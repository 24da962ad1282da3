//! One named queue. It holds encoded items in two crossbeam channels — `ready`
//! for new items, `back` for items that came back (expired or abandoned leases, batch
//! overflow), served first — plus the table of items leased out, a dead-letter queue and
//! counters.
//!
//! Blocking waits select on the channels and on a stop channel that is never sent on: the
//! server drops its sender at shutdown, which wakes every waiter at once.

use std::borrow::Cow;
use std::cmp::{Ordering as Order, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{self as channel, Receiver, Select, Sender, TryRecvError, TrySendError};
use rustc_hash::FxHashSet;

use super::lease::{Item, LeaseTable, Owner};
use super::memory::{self, ChargeEnd, Memory, LEASE_COST};
use crate::blob::Blob;
use crate::config::QueueConfig;
use crate::error::JournalError;
use crate::journal::{Armed, Committed, Journal, Ticket};
use crate::stats::QueueStats;
use crate::sync::lock;
use crate::wire::message::ITEM_OVERHEAD;

/// How often a waiting get checks that its taker is still connected.
const WAIT_SLICE: Duration = Duration::from_millis(500);

/// Lease ids handled per hold of the lease lock: a request naming a million ids lets other
/// clients and the lease reaper in between its chunks.
const CHUNK: usize = 1024;

/// Requests up to this many ids are checked for repeats pairwise, without a hash set.
const FEW: usize = 16;

/// One named queue.
pub(crate) struct QueueCore {
    name: String,
    config: QueueConfig,
    /// Redeliveries after which an item is dead-lettered; `None` for a dead-letter queue.
    max_redeliveries: Option<u32>,
    max_item: usize,
    ready_tx: Sender<Item>,
    ready_rx: Receiver<Item>,
    back_tx: Sender<Item>,
    back_rx: Receiver<Item>,
    leases: Mutex<LeaseTable>,
    /// Items held back until a due time (a delayed put or nack), earliest first.
    delayed: Mutex<BinaryHeap<Reverse<Delayed>>>,
    /// Orders delayed items due at the same instant by arrival.
    delayed_seq: AtomicU64,
    dead: Option<Arc<QueueCore>>,
    /// The server's journal and this queue's number in it, when the server keeps one.
    journal: Option<Journaled>,
    /// The server-wide budget every stored item is charged to.
    memory: Arc<Memory>,
    stop: Receiver<()>,
    put_total: AtomicU64,
    acked_total: AtomicU64,
    redelivered_total: AtomicU64,
    dead_total: AtomicU64,
}

/// A queue's place in the server's journal.
#[derive(Clone)]
pub(crate) struct Journaled {
    pub(crate) journal: Arc<Journal>,
    pub(crate) no: u32,
}

/// A put's outcome once the journal has its records (on disk under `always`): a commit that
/// failed refuses it.
pub(crate) fn committed(outcome: PutOutcome, pending: Option<Pending>) -> PutOutcome {
    match pending.map(|p| p.commit()) {
        Some(Err(_)) => PutOutcome::Closed { accepted: 0 },
        _ => outcome,
    }
}

/// Records of a put the journal must commit before the put may be confirmed.
#[must_use = "a put is confirmed only once its records are committed"]
pub(crate) struct Pending {
    journal: Arc<Journal>,
    ticket: Ticket,
}

impl Pending {
    /// Whether the journal's writer sends the reply of this put (`--fsync always`; see
    /// [`commit_replying`](Pending::commit_replying)).
    pub(crate) fn replies_early(&self) -> bool {
        self.journal.replies_early()
    }

    /// Waits for the commit.
    pub(crate) fn commit(&self) -> Result<(), JournalError> {
        self.journal.commit(self.ticket)
    }

    /// Commits, or goes on while another thread's write covers it and sends `early`'s
    /// reply (see [`Journal::commit_replying`]); then [`commit`](Pending::commit) settles.
    pub(crate) fn commit_replying(&self, early: &Armed) -> Result<Committed, JournalError> {
        self.journal.commit_replying(self.ticket, early)
    }
}

/// How a put ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    Done,
    Full {
        accepted: usize,
    },
    TooLarge {
        accepted: usize,
    },
    /// The memory budget stayed used up until the deadline.
    OverBudget {
        accepted: usize,
    },
    Closed {
        accepted: usize,
    },
}

/// A put's leave to wait for room, taken from the memory budget's share for waiting
/// requests on its first wait and given back when the put ends.
struct Parking<'a> {
    memory: &'a Memory,
    held: u64,
    /// Whether the put may wait: parked already, or holding nothing of the server's.
    parked: bool,
    deadline: Option<Instant>,
}

impl Parking<'_> {
    fn may_wait(&mut self) -> bool {
        // A put whose deadline has passed waits for nothing: it needs no leave.
        if self.parked || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return true;
        }
        self.parked = self.memory.park(self.held);
        self.parked
    }
}

impl Drop for Parking<'_> {
    fn drop(&mut self) {
        if self.parked && self.held > 0 {
            self.memory.unpark(self.held);
        }
    }
}

/// An item in the delayed lane: it joins the front lane at `due`.
struct Delayed {
    due: Instant,
    seq: u64,
    item: Item,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Order {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The instant `delay` from now, capped at a year (a lease's longest) so it always fits.
pub(crate) fn due_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay.min(crate::config::MAX_LEASE_TIMEOUT))
        .unwrap_or(now)
}

/// How a get ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GetOutcome<T> {
    Items(Vec<T>),
    Empty,
    Closed,
}

/// An item handed out under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leased {
    pub(crate) lease: u64,
    pub(crate) payload: Blob,
    pub(crate) redeliveries: u32,
}

/// Why one item of a put was not stored.
enum Refused {
    Full,
    OverBudget,
    Closed,
}

enum WaitEnd {
    Timeout,
    Stopped,
}

impl QueueCore {
    pub(super) fn new(
        name: &str,
        config: QueueConfig,
        dead: Option<Arc<QueueCore>>,
        max_item: usize,
        memory: Arc<Memory>,
        stop: Receiver<()>,
        journal: Option<Journaled>,
    ) -> Self {
        let (ready_tx, ready_rx) = match config.capacity {
            Some(n) => channel::bounded(n),
            None => channel::unbounded(),
        };
        let (back_tx, back_rx) = channel::unbounded();
        QueueCore {
            name: name.to_owned(),
            max_redeliveries: dead.as_ref().map(|_| config.max_redeliveries),
            config,
            max_item,
            ready_tx,
            ready_rx,
            back_tx,
            back_rx,
            leases: Mutex::new(LeaseTable::default()),
            delayed: Mutex::new(BinaryHeap::new()),
            delayed_seq: AtomicU64::new(0),
            dead,
            journal,
            memory,
            stop,
            put_total: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            redelivered_total: AtomicU64::new(0),
            dead_total: AtomicU64::new(0),
        }
    }

    /// The queue's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Items in the delayed lane.
    pub(crate) fn delayed_len(&self) -> usize {
        lock(&self.delayed).len()
    }

    /// Items leased out now.
    pub(crate) fn leased(&self) -> usize {
        self.lock_leases().len()
    }

    /// Drops every item waiting or delayed, releasing their memory; returns how many. For a
    /// temporary queue being removed (nothing is leased then).
    pub(crate) fn drain(&self) -> usize {
        let mut freed = 0;
        let mut ids = Vec::new();
        while let Some(item) = self.try_next() {
            freed += memory::cost(&item.payload);
            ids.push(item.id);
        }
        let delayed = std::mem::take(&mut *lock(&self.delayed));
        for Reverse(d) in delayed {
            freed += memory::cost(&d.item.payload);
            ids.push(d.item.id);
        }
        self.memory.release(freed);
        if let Some(j) = &self.journal {
            j.journal.delete(&ids);
            j.journal.drop_queue(j.no);
        }
        ids.len()
    }

    /// Puts items a journal recovered back, in the order given (id order, which is the order
    /// they were put): ready ones at the front lane, delayed ones in the delayed lane. They are
    /// charged to the memory budget whatever it says: they were stored before.
    ///
    /// A bounded queue's newest ready items fill its bound (so a queue that was full is full
    /// again, and puts wait); only what is beyond the bound, the oldest (served first), goes
    /// to the lane for returned items: items leased at the crash can make it one bound's worth
    /// over, never more with every restart.
    pub(crate) fn restore(&self, items: Vec<(Item, Option<Instant>)>) {
        let ready = items.iter().filter(|(_, due)| due.is_none()).count();
        let mut over = ready.saturating_sub(self.config.capacity.unwrap_or(usize::MAX));
        for (item, due) in items {
            self.memory.force_charge(memory::cost(&item.payload));
            match due {
                Some(due) => self.hold(item, due),
                None if over > 0 => {
                    over -= 1;
                    let _ = self.back_tx.send(item);
                }
                None => {
                    if let Err(e) = self.ready_tx.try_send(item) {
                        let _ = self.back_tx.send(e.into_inner());
                    }
                }
            }
        }
    }

    /// Records in the journal that these items are gone.
    fn journal_delete(&self, items: &[Item]) {
        if let Some(j) = &self.journal {
            let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
            j.journal.delete(&ids);
        }
    }

    /// Records in the journal that `item` now sits in `queue` with its count, due at `due`.
    fn journal_move(&self, item: &Item, queue: &QueueCore, due: Option<Instant>) {
        if let Some(j) = &queue.journal {
            j.journal.moved(item.id, j.no, item.redeliveries, due);
        }
    }

    /// Items waiting to be taken (not counting leased or delayed ones).
    pub(crate) fn len(&self) -> usize {
        self.ready_rx.len() + self.back_rx.len()
    }

    /// The bound on new items of a bounded queue.
    pub(crate) fn capacity(&self) -> Option<usize> {
        self.config.capacity
    }

    /// How long a lease lasts unless extended.
    pub(crate) fn lease_timeout(&self) -> Duration {
        self.config.lease_timeout
    }

    /// Returns after which an item is dead-lettered; `None` for a dead-letter queue.
    pub(crate) fn max_redeliveries(&self) -> Option<u32> {
        self.max_redeliveries
    }

    /// The server-wide memory budget.
    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The largest item this queue accepts: one that a reply frame can always carry.
    pub(crate) fn max_item(&self) -> usize {
        self.max_item
    }

    /// When a lease granted or extended now ends. The builder caps the lease timeout, so this
    /// always fits; the fallback only keeps a bad value from ever panicking.
    fn lease_deadline(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.config.lease_timeout)
            .or_else(|| now.checked_add(crate::config::MAX_LEASE_TIMEOUT))
            .unwrap_or(now)
    }

    fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Appends new items in order, waiting until `deadline` (`None`: for ever) for room in
    /// the queue and in the memory budget, while the putter is still there (`alive`).
    ///
    /// `held` is what the request's decoded items take in memory while it waits (0 for an
    /// in-process put, whose items are the caller's own): a request may wait only while the
    /// requests already waiting hold less than their share of the budget
    /// ([`Memory::park`]); past it, it answers at once with what it stored.
    pub(crate) fn put<I>(
        &self,
        items: I,
        deadline: Option<Instant>,
        alive: &dyn Fn() -> bool,
        held: u64,
    ) -> PutOutcome
    where
        I: IntoIterator<Item = Blob>,
    {
        let (outcome, pending) = self.put_staged(items, None, deadline, alive, held);
        committed(outcome, pending)
    }

    /// [`put`](QueueCore::put) into the delayed lane when `due` is given (the items join
    /// the front lane at that instant: they take memory like any stored item but no place in
    /// a bounded queue, which bounds the items ready to be taken), without the commit: the
    /// outcome, and what the journal must commit before it may be confirmed, if anything
    /// (see [`committed`]).
    pub(crate) fn put_staged<I>(
        &self,
        items: I,
        due: Option<Instant>,
        deadline: Option<Instant>,
        alive: &dyn Fn() -> bool,
        held: u64,
    ) -> (PutOutcome, Option<Pending>)
    where
        I: IntoIterator<Item = Blob>,
    {
        if self.stopped() {
            return (PutOutcome::Closed { accepted: 0 }, None);
        }
        let mut accepted = 0;
        let mut parking = Parking {
            memory: &self.memory,
            held,
            parked: held == 0,
            deadline,
        };
        let mut ticket = None;
        let outcome = self.put_each(items, due, &mut parking, alive, &mut accepted, &mut ticket);
        self.put_total.fetch_add(accepted as u64, Ordering::Relaxed);
        let pending = match (&self.journal, ticket) {
            (Some(j), Some(ticket)) => Some(Pending {
                journal: Arc::clone(&j.journal),
                ticket,
            }),
            _ => None,
        };
        (outcome, pending)
    }

    fn put_each<I>(
        &self,
        items: I,
        due: Option<Instant>,
        parking: &mut Parking<'_>,
        alive: &dyn Fn() -> bool,
        accepted: &mut usize,
        ticket: &mut Option<Ticket>,
    ) -> PutOutcome
    where
        I: IntoIterator<Item = Blob>,
    {
        for payload in items {
            let accepted_so_far = *accepted;
            if payload.len() > self.max_item {
                return PutOutcome::TooLarge {
                    accepted: accepted_so_far,
                };
            }
            // A put that may not wait into a full queue records nothing (a producer polling
            // a full queue must not fill the journal with puts and their deletions).
            let expired = parking.deadline.is_some_and(|d| Instant::now() >= d);
            if due.is_none() && expired && self.ready_tx.is_full() {
                return PutOutcome::Full {
                    accepted: accepted_so_far,
                };
            }
            let cost = memory::cost(&payload);
            let mut item = Item::new(payload);
            // Recorded before it can be taken, so its acknowledgement always comes after it.
            if let Some(j) = &self.journal {
                let (id, at) = j.journal.put(j.no, &item.payload, due);
                item.id = id;
                *ticket = Some(at);
            }
            if let Err((refused, item)) = self.put_one(item, cost, due, parking, alive) {
                self.journal_delete(std::slice::from_ref(&item));
                let accepted = accepted_so_far;
                return match refused {
                    Refused::Full => PutOutcome::Full { accepted },
                    Refused::OverBudget => PutOutcome::OverBudget { accepted },
                    Refused::Closed => PutOutcome::Closed { accepted },
                };
            }
            *accepted += 1;
        }
        PutOutcome::Done
    }

    /// Stores one item, waiting for room as [`put`](QueueCore::put) says; on failure hands
    /// the item back with why it was not stored.
    fn put_one(
        &self,
        mut item: Item,
        cost: u64,
        due: Option<Instant>,
        parking: &mut Parking<'_>,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), (Refused, Item)> {
        let deadline = parking.deadline;
        let go_on = || !self.stopped() && alive();
        loop {
            // The common case charges at once; only a put that must wait needs leave to.
            let charged = match self.memory.try_charge(cost) {
                true => Ok(()),
                false if !parking.may_wait() => Err(ChargeEnd::OverBudget),
                false => self.memory.charge(cost, deadline, &go_on),
            };
            if let Err(end) = charged {
                return Err(match end {
                    ChargeEnd::OverBudget => (Refused::OverBudget, item),
                    ChargeEnd::Stopped => (Refused::Closed, item),
                });
            }
            if let Some(due) = due {
                self.hold(item, due);
                return Ok(());
            }
            match self.ready_tx.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    // Hold no budget while waiting for a slot; charge again once one frees.
                    item = back;
                    self.memory.release(cost);
                    if !parking.may_wait() {
                        return Err((Refused::Full, item));
                    }
                    if let Err(end) = self.wait_to_send(deadline, alive) {
                        return Err(match end {
                            WaitEnd::Timeout => (Refused::Full, item),
                            WaitEnd::Stopped => (Refused::Closed, item),
                        });
                    }
                }
                Err(TrySendError::Disconnected(back)) => {
                    self.memory.release(cost);
                    return Err((Refused::Closed, back));
                }
            }
        }
    }

    /// Waits in slices until the queue has room, checking between slices and before
    /// storing that the putter is still there (`alive`): the item of a client that left
    /// while it waited must not be stored.
    fn wait_to_send(
        &self,
        deadline: Option<Instant>,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), WaitEnd> {
        loop {
            let slice = Instant::now() + WAIT_SLICE;
            let until = deadline.map_or(slice, |d| d.min(slice));
            let mut sel = Select::new();
            sel.send(&self.ready_tx);
            let stop = sel.recv(&self.stop);
            match sel.ready_deadline(until) {
                Ok(i) if i == stop => return Err(WaitEnd::Stopped),
                // Room now (another putter may still be quicker: the caller tries again).
                Ok(_) => {
                    return if alive() {
                        Ok(())
                    } else {
                        Err(WaitEnd::Stopped)
                    }
                }
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(WaitEnd::Timeout)
                }
                Err(_) => {
                    if !alive() {
                        return Err(WaitEnd::Stopped);
                    }
                }
            }
        }
    }

    /// Takes up to `max` items for good, without a lease: the master's in-process `get`,
    /// where nothing can die between taking and acknowledging.
    pub(crate) fn take(&self, max: usize, deadline: Option<Instant>) -> GetOutcome<Item> {
        let outcome = self.take_items(max, deadline, usize::MAX, &|| true);
        if let GetOutcome::Items(items) = &outcome {
            self.journal_delete(items);
            self.acked_total
                .fetch_add(items.len() as u64, Ordering::Relaxed);
            self.memory
                .release(items.iter().map(|i| memory::cost(&i.payload)).sum());
        }
        outcome
    }

    /// Puts back items taken for good that could not be used (they did not decode).
    pub(crate) fn give_back(&self, items: Vec<Item>) {
        // Deleted from the journal when taken: recorded again, and waited for, since the
        // taker's deletion may be on disk already.
        if let Some(j) = &self.journal {
            let mut ticket = None;
            for item in &items {
                ticket = Some(
                    j.journal
                        .put_again(item.id, j.no, item.redeliveries, &item.payload),
                );
            }
            if let Some(ticket) = ticket {
                let _ = j.journal.commit(ticket);
            }
        }
        self.acked_total
            .fetch_sub(items.len() as u64, Ordering::Relaxed);
        // Still in memory: charged again whatever the budget says.
        self.memory
            .force_charge(items.iter().map(|i| memory::cost(&i.payload)).sum());
        items.into_iter().for_each(|item| self.redeliver(item));
    }

    /// Takes up to `max` items and leases them to `owner`: waits until `deadline` (`None`:
    /// for ever) for the first, then takes those ready while their encoded size stays within
    /// `budget` bytes.
    pub(crate) fn take_leased(
        &self,
        owner: Owner,
        max: usize,
        deadline: Option<Instant>,
        budget: usize,
        alive: &dyn Fn() -> bool,
    ) -> GetOutcome<Leased> {
        let items = match self.take_items(max, deadline, budget, alive) {
            GetOutcome::Items(items) => items,
            GetOutcome::Empty => return GetOutcome::Empty,
            GetOutcome::Closed => return GetOutcome::Closed,
        };
        if let Some(j) = &self.journal {
            let ids: Vec<u64> = items.iter().map(|i| i.id).collect();
            j.journal.leased(&ids);
        }
        let until = self.lease_deadline();
        // A lease costs its table entry on top of the item, already in memory: never waits.
        self.memory.force_charge(items.len() as u64 * LEASE_COST);
        let mut leased = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut table = self.lock_leases();
            leased.extend(items.by_ref().take(CHUNK).map(|item| Leased {
                payload: item.payload.clone(),
                redeliveries: item.redeliveries,
                lease: table.insert(item, owner, until),
            }));
        }
        GetOutcome::Items(leased)
    }

    fn take_items(
        &self,
        max: usize,
        deadline: Option<Instant>,
        budget: usize,
        alive: &dyn Fn() -> bool,
    ) -> GetOutcome<Item> {
        if self.stopped() {
            return GetOutcome::Closed;
        }
        let first = match self.try_next() {
            Some(item) => item,
            None => match self.wait_to_recv(deadline, alive) {
                Ok(item) => item,
                Err(WaitEnd::Timeout) => return GetOutcome::Empty,
                Err(WaitEnd::Stopped) => return GetOutcome::Closed,
            },
        };
        let mut used = first.payload.len() + ITEM_OVERHEAD;
        let mut items = vec![first];
        while items.len() < max {
            let Some(item) = self.try_next() else { break };
            used += item.payload.len() + ITEM_OVERHEAD;
            if used > budget {
                // No room in this reply: it goes to the front lane, first for the next taker.
                let _ = self.back_tx.send(item);
                break;
            }
            items.push(item);
        }
        GetOutcome::Items(items)
    }

    fn try_next(&self) -> Option<Item> {
        self.back_rx
            .try_recv()
            .or_else(|_| self.ready_rx.try_recv())
            .ok()
    }

    /// Waits for an item in slices, checking between slices and before taking that the taker
    /// is still there (`alive`): a client killed while it waits must not be handed items,
    /// which would only come back later marked as redelivered.
    fn wait_to_recv(
        &self,
        deadline: Option<Instant>,
        alive: &dyn Fn() -> bool,
    ) -> Result<Item, WaitEnd> {
        loop {
            let now = Instant::now();
            let slice = now + WAIT_SLICE;
            let until = deadline.map_or(slice, |d| d.min(slice));
            let mut sel = Select::new();
            sel.recv(&self.back_rx);
            sel.recv(&self.ready_rx);
            let stop = sel.recv(&self.stop);
            match sel.ready_deadline(until) {
                Ok(i) if i == stop => return Err(WaitEnd::Stopped),
                Ok(_) => {
                    if !alive() {
                        return Err(WaitEnd::Stopped);
                    }
                    // Another taker may have been quicker; then wait again.
                    if let Some(item) = self.try_next() {
                        return Ok(item);
                    }
                }
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Err(WaitEnd::Timeout)
                }
                Err(_) => {
                    if !alive() {
                        return Err(WaitEnd::Stopped);
                    }
                }
            }
        }
    }

    /// Acknowledges `owner`'s leases; returns the ids it does not hold (expired, unknown).
    pub(crate) fn ack(&self, owner: Owner, ids: &[u64]) -> Vec<u64> {
        let mut refused = Vec::new();
        let mut acked = 0u64;
        let mut freed = 0;
        let mut gone = Vec::new();
        for chunk in distinct(ids).chunks(CHUNK) {
            let mut table = self.lock_leases();
            for &id in chunk {
                match table.remove(owner, id) {
                    Some(item) => {
                        acked += 1;
                        freed += memory::cost(&item.payload) + LEASE_COST;
                        if self.journal.is_some() {
                            gone.push(item.id);
                        }
                    }
                    None => refused.push(id),
                }
            }
        }
        if let Some(j) = &self.journal {
            j.journal.delete(&gone);
        }
        self.memory.release(freed);
        self.acked_total.fetch_add(acked, Ordering::Relaxed);
        refused
    }

    /// Gives `owner`'s leased items back to the queue now; returns the ids it does not hold.
    pub(crate) fn nack(&self, owner: Owner, ids: &[u64]) -> Vec<u64> {
        self.nack_due(owner, ids, None, true)
    }

    /// [`nack`](QueueCore::nack), the items coming back only at `due` (from the delayed
    /// lane) when given; one past the poison limit goes to the dead letters at once. Without
    /// `count` the items go back with their redelivery count unchanged and are never
    /// dead-lettered for it (a give-back: graceful shutdown, the wrong host).
    pub(crate) fn nack_due(
        &self,
        owner: Owner,
        ids: &[u64],
        due: Option<Instant>,
        count: bool,
    ) -> Vec<u64> {
        let mut refused = Vec::new();
        for chunk in distinct(ids).chunks(CHUNK) {
            let mut back = Vec::with_capacity(chunk.len());
            let mut table = self.lock_leases();
            for &id in chunk {
                match table.remove(owner, id) {
                    Some(item) => back.push(item),
                    None => refused.push(id),
                }
            }
            drop(table);
            self.memory.release(back.len() as u64 * LEASE_COST);
            for item in back {
                match count {
                    true => self.redeliver_at(item, due),
                    false => self.return_uncounted(item, due),
                }
            }
        }
        refused
    }

    /// Extends `owner`'s leases by a full lease timeout from now; returns the ids it does not
    /// hold.
    pub(crate) fn touch(&self, owner: Owner, ids: &[u64]) -> Vec<u64> {
        // One deadline for the whole request, however many chunks it takes.
        let until = self.lease_deadline();
        let mut refused = Vec::new();
        for chunk in distinct(ids).chunks(CHUNK) {
            let mut table = self.lock_leases();
            refused.extend(
                chunk
                    .iter()
                    .copied()
                    .filter(|&id| !table.extend(owner, id, until)),
            );
        }
        refused
    }

    /// Acknowledges every item `owner` holds (a Python client released the proxy it took
    /// them through).
    pub(crate) fn ack_owner(&self, owner: Owner) {
        // Under one lock: a take by the same owner cannot slip in between.
        let items = self.lock_leases().remove_owner(owner);
        let freed: u64 = items
            .iter()
            .map(|item| memory::cost(&item.payload) + LEASE_COST)
            .sum();
        if let Some(j) = &self.journal {
            let gone: Vec<u64> = items.iter().map(|item| item.id).collect();
            j.journal.delete(&gone);
        }
        self.memory.release(freed);
        self.acked_total
            .fetch_add(items.len() as u64, Ordering::Relaxed);
    }

    /// Gives back every item `owner` holds: its connection ended.
    ///
    /// Only the oldest lease counts as a failed delivery (towards `max_redeliveries`): it is
    /// the one a worker that runs its tasks in order was running, so a task that crashes its
    /// worker every time still ends in the dead letters. The others were most likely
    /// prefetched and never started, so they go back with their count unchanged: killing a
    /// worker must not dead-letter the healthy tasks it held.
    pub(crate) fn release(&self, owner: Owner) {
        // Oldest lease first: only that one counts as a failed delivery.
        let ids = self.lock_leases().take_owner(owner);
        let mut returned = 0;
        for chunk in ids.chunks(CHUNK) {
            let mut table = self.lock_leases();
            let items: Vec<Item> = chunk
                .iter()
                .filter_map(|&id| table.remove(owner, id))
                .collect();
            drop(table);
            self.memory.release(items.len() as u64 * LEASE_COST);
            for item in items {
                match returned {
                    0 => self.redeliver(item),
                    _ => self.requeue_unstarted(item),
                }
                returned += 1;
            }
        }
        if returned > 0 {
            log::debug!(
                "queue {}: {returned} lease(s) returned by a closed connection",
                self.name
            );
        }
    }

    /// Puts an item a closed connection held but most likely never started back at the front
    /// lane, without counting it towards the poison limit (it still counts in `redelivered`).
    fn requeue_unstarted(&self, item: Item) {
        self.redelivered_total.fetch_add(1, Ordering::Relaxed);
        self.journal_move(&item, self, None);
        let _ = self.back_tx.send(item);
    }

    /// Puts an item given back without counting at the front lane (or in the delayed lane
    /// until `due`), its redelivery count unchanged; it still counts in `redelivered`.
    fn return_uncounted(&self, item: Item, due: Option<Instant>) {
        self.redelivered_total.fetch_add(1, Ordering::Relaxed);
        match due {
            Some(due) => {
                self.journal_move(&item, self, Some(due));
                self.hold(item, due)
            }
            None => {
                self.journal_move(&item, self, None);
                let _ = self.back_tx.send(item);
            }
        }
    }

    /// Gives back every item whose lease ran out by `now`.
    pub(crate) fn expire(&self, now: Instant) {
        let mut expired = 0;
        loop {
            let items = self.lock_leases().expire(now, CHUNK);
            let more = items.len() == CHUNK;
            expired += items.len();
            self.memory.release(items.len() as u64 * LEASE_COST);
            items.into_iter().for_each(|item| self.redeliver(item));
            if !more {
                break;
            }
        }
        if expired > 0 {
            log::debug!("queue {}: {expired} lease(s) expired", self.name);
        }
    }

    /// Puts an item back at the front lane, or into the dead-letter queue once it has come
    /// back more than `max_redeliveries` times.
    fn redeliver(&self, item: Item) {
        self.redeliver_at(item, None);
    }

    /// [`redeliver`](QueueCore::redeliver), into the delayed lane until `due` if given.
    fn redeliver_at(&self, mut item: Item, due: Option<Instant>) {
        item.redeliveries = item.redeliveries.saturating_add(1);
        self.redelivered_total.fetch_add(1, Ordering::Relaxed);
        match (&self.dead, self.max_redeliveries) {
            (Some(dead), Some(max)) if item.redeliveries > max => {
                log::warn!(
                    "queue {}: an item came back {} times; moved to {}",
                    self.name,
                    item.redeliveries,
                    dead.name
                );
                self.dead_total.fetch_add(1, Ordering::Relaxed);
                dead.put_total.fetch_add(1, Ordering::Relaxed);
                self.journal_move(&item, dead, None);
                // The dead-letter queue is unbounded: this never blocks.
                let _ = dead.back_tx.send(item);
            }
            _ => {
                // Its count changed: recorded before it can be taken again.
                self.journal_move(&item, self, due);
                match due {
                    Some(due) => self.hold(item, due),
                    None => {
                        let _ = self.back_tx.send(item);
                    }
                }
            }
        }
    }

    /// Puts an item in the delayed lane until `due`.
    fn hold(&self, item: Item, due: Instant) {
        let seq = self.delayed_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.delayed).push(Reverse(Delayed { due, seq, item }));
    }

    /// Moves the delayed items due by `now` to the front lane, earliest first, in chunks so
    /// the lane's lock is never held long.
    pub(crate) fn release_due(&self, now: Instant) {
        loop {
            let mut due = Vec::new();
            let mut lane = lock(&self.delayed);
            while due.len() < CHUNK && lane.peek().is_some_and(|Reverse(d)| d.due <= now) {
                if let Some(Reverse(d)) = lane.pop() {
                    due.push(d.item);
                }
            }
            drop(lane);
            let more = due.len() == CHUNK;
            for item in due {
                let _ = self.back_tx.send(item);
            }
            if !more {
                return;
            }
        }
    }

    /// Counters and sizes for `stats`.
    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            name: self.name.clone(),
            len: self.len() as u64,
            leased: self.lock_leases().len() as u64,
            delayed: self.delayed_len() as u64,
            capacity: self.config.capacity.map(|c| c as u64),
            dead: self.dead.as_ref().map_or(0, |d| d.len() as u64),
            put: self.put_total.load(Ordering::Relaxed),
            acked: self.acked_total.load(Ordering::Relaxed),
            redelivered: self.redelivered_total.load(Ordering::Relaxed),
            dead_lettered: self.dead_total.load(Ordering::Relaxed),
            temporary: false,
        }
    }

    fn lock_leases(&self) -> MutexGuard<'_, LeaseTable> {
        lock(&self.leases)
    }
}

/// `ids` with repeats dropped, in order of first appearance: a request naming one id many
/// times handles it once. Linear in `ids` (small requests without repeats are not copied).
fn distinct(ids: &[u64]) -> Cow<'_, [u64]> {
    if ids.len() <= FEW {
        if ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id)) {
            return Cow::Borrowed(ids);
        }
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        return Cow::Owned(out);
    }
    let mut seen = FxHashSet::default();
    Cow::Owned(ids.iter().copied().filter(|&id| seen.insert(id)).collect())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn distinct_keeps_first_appearances_in_order() {
        assert!(matches!(distinct(&[3, 1, 2]), Cow::Borrowed(_)));
        assert_eq!(&*distinct(&[3, 1, 3, 2, 1]), &[3, 1, 2]);
        let many: Vec<u64> = (0..100).chain(0..100).chain([7; 1000]).collect();
        assert_eq!(&*distinct(&many), &(0..100).collect::<Vec<u64>>()[..]);
        assert!(distinct(&[]).is_empty());
    }
}

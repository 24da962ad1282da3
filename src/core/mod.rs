//! The server's storage: named queues with their lease tables and dead-letter queues. Both
//! the server's sessions and the in-process queue handles use it; it knows neither.

mod lease;
mod memory;
mod queue;
mod temporary;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::config::QueueConfig;
use crate::error::JournalError;
use crate::journal::{due_instant, Journal, QueueDef, Restored};
use lease::Item;
use queue::Journaled;

pub(crate) use lease::{Owner, LOCAL};
pub(crate) use memory::{cost as memory_cost, Memory};
pub(crate) use queue::{committed, due_after, GetOutcome, Pending, PutOutcome, QueueCore};
pub(crate) use temporary::{DeclareError, Declared, InUse, DEFAULT_IDLE_TTL, MAX_CAPACITY};

/// The suffix naming a queue's dead-letter queue: `tasks` → `tasks.dead`.
pub(crate) const DEAD_SUFFIX: &str = ".dead";

/// The queues a server hosts by name: the fixed set it was started with, with their
/// dead-letter queues, and the temporary queues its clients declare.
pub(crate) struct Registry {
    /// Primary queues first, in the order they were named, then their dead-letter queues.
    queues: Vec<Arc<QueueCore>>,
    primaries: usize,
    index: HashMap<String, usize>,
    memory: Arc<Memory>,
    temporaries: temporary::Temporaries,
    max_item: usize,
    stop: Receiver<()>,
    journal: Option<Arc<Journal>>,
}

/// A queue found by [`Registry::lookup`]: a fixed one borrowed, or a temporary one held in
/// use for as long as this lives.
pub(crate) enum Found<'a> {
    Fixed(&'a Arc<QueueCore>),
    Temporary(InUse),
}

impl Deref for Found<'_> {
    type Target = QueueCore;

    fn deref(&self) -> &QueueCore {
        match self {
            Found::Fixed(core) => core,
            Found::Temporary(held) => held,
        }
    }
}

impl Registry {
    /// Creates the queues; `specs` holds unique names, none ending in [`DEAD_SUFFIX`]. Their
    /// items share a budget of `max_memory` bytes.
    #[cfg(test)]
    pub(crate) fn new(
        specs: &[(String, QueueConfig)],
        max_item: usize,
        max_memory: u64,
        stop: &Receiver<()>,
    ) -> Self {
        match Registry::journaled(specs, max_item, max_memory, stop, None) {
            Ok(registry) => registry,
            Err(_) => unreachable!("only a journal fails"),
        }
    }

    /// [`new`](Registry::new), every queue recorded in `journal` when given, with the items
    /// it recovered put back (temporary queues included, waiting to be adopted). Fails when
    /// the journal holds items of a queue not in `specs`.
    pub(crate) fn journaled(
        specs: &[(String, QueueConfig)],
        max_item: usize,
        max_memory: u64,
        stop: &Receiver<()>,
        journal: Option<(Arc<Journal>, Vec<Restored>)>,
    ) -> Result<Self, JournalError> {
        let (journal, restored) = match journal {
            Some((journal, restored)) => (Some(journal), restored),
            None => (None, Vec::new()),
        };
        let place = |name: &str, config: &QueueConfig| {
            journal.as_ref().map(|journal| Journaled {
                journal: Arc::clone(journal),
                no: journal.queue(QueueDef {
                    name: name.to_owned(),
                    temporary: false,
                    capacity: config.capacity.map(|c| c as u64),
                    idle_ttl_ms: 0,
                }),
            })
        };
        let memory = Arc::new(Memory::new(max_memory));
        let mut primaries = Vec::new();
        let mut deads = Vec::new();
        for (name, config) in specs {
            let dead_config = QueueConfig {
                capacity: None,
                ..config.clone()
            };
            let dead_name = format!("{name}{DEAD_SUFFIX}");
            let dead = Arc::new(QueueCore::new(
                &dead_name,
                dead_config.clone(),
                None,
                max_item,
                Arc::clone(&memory),
                stop.clone(),
                place(&dead_name, &dead_config),
            ));
            let primary = QueueCore::new(
                name,
                config.clone(),
                Some(Arc::clone(&dead)),
                max_item,
                Arc::clone(&memory),
                stop.clone(),
                place(name, config),
            );
            primaries.push(Arc::new(primary));
            deads.push(dead);
        }
        let count = primaries.len();
        let queues: Vec<_> = primaries.into_iter().chain(deads).collect();
        let index = queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name().to_owned(), i))
            .collect();
        let registry = Registry {
            queues,
            primaries: count,
            index,
            memory,
            temporaries: temporary::Temporaries::default(),
            max_item,
            stop: stop.clone(),
            journal,
        };
        registry.restore(restored)?;
        Ok(registry)
    }

    /// Puts the items a journal recovered back in their queues, re-creating the temporary
    /// queues it knew (their creators are gone: the next to declare one adopts it).
    fn restore(&self, restored: Vec<Restored>) -> Result<(), JournalError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        // A temporary name twice: the server stopped between declaring it again and draining
        // the evicted queue of that name (the older number). That removal is finished here.
        let mut newest: HashMap<String, u32> = HashMap::new();
        for r in restored.iter().filter(|r| r.def.temporary) {
            let no = newest.entry(r.def.name.clone()).or_insert(r.no);
            *no = (*no).max(r.no);
        }
        for Restored { no, def, items } in restored {
            if def.temporary && newest.get(&def.name).is_some_and(|&n| n != no) {
                let ids: Vec<u64> = items.iter().map(|(id, _)| *id).collect();
                journal.delete(&ids);
                journal.drop_queue(no);
                continue;
            }
            let entries: Vec<_> = items
                .into_iter()
                .map(|(id, live)| {
                    let item = Item {
                        payload: live.payload,
                        redeliveries: live.redeliveries,
                        id,
                    };
                    (item, due_instant(live.due_ms))
                })
                .collect();
            if let Some(core) = self.lookup_fixed(&def.name) {
                core.restore(entries);
            } else if def.temporary {
                let capacity = def.capacity.map(|c| c.min(MAX_CAPACITY) as usize);
                let reserved = capacity.map_or(0, |n| n as u64 * memory::SLOT_COST);
                self.memory.force_charge(reserved);
                let config = QueueConfig {
                    capacity,
                    ..QueueConfig::default()
                };
                let core = Arc::new(QueueCore::new(
                    &def.name,
                    config,
                    None,
                    self.max_item,
                    Arc::clone(&self.memory),
                    self.stop.clone(),
                    Some(Journaled {
                        journal: Arc::clone(journal),
                        no,
                    }),
                ));
                core.restore(entries);
                let idle_ttl = Duration::from_millis(def.idle_ttl_ms);
                self.temporaries
                    .restore(&def.name, core, reserved, idle_ttl);
            } else if !entries.is_empty() {
                return Err(JournalError::UnknownQueue {
                    queue: def.name,
                    items: entries.len() as u64,
                });
            } else {
                // A queue this server no longer hosts, empty: forgotten.
                journal.drop_queue(no);
            }
        }
        Ok(())
    }

    /// The memory budget the queues share.
    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The fixed queue called `name` (one the server was started with, or its dead letters).
    pub(crate) fn lookup_fixed(&self, name: &str) -> Option<&Arc<QueueCore>> {
        self.index.get(name).map(|&i| &self.queues[i])
    }

    /// The queue called `name`, fixed or temporary. Fixed queues are found without a lock.
    pub(crate) fn lookup(&self, name: &str) -> Option<Found<'_>> {
        match self.lookup_fixed(name) {
            Some(core) => Some(Found::Fixed(core)),
            None => self.temporaries.lookup(name).map(Found::Temporary),
        }
    }

    /// Every fixed queue, dead-letter queues included.
    pub(crate) fn all(&self) -> &[Arc<QueueCore>] {
        &self.queues
    }

    /// Every temporary queue now, by name.
    pub(crate) fn temporaries(&self) -> Vec<Arc<QueueCore>> {
        self.temporaries.snapshot()
    }

    /// Declares the temporary queue `name` for connection `owner`: creates it (with at most
    /// `capacity` waiting items), adopts it if its creator is gone, or finds it declared by
    /// `owner` already (then its bound stays what it was). At most `limit` exist at once.
    pub(crate) fn declare(
        &self,
        name: &str,
        owner: Owner,
        capacity: Option<u64>,
        idle_ttl: Duration,
        limit: usize,
    ) -> Result<Declared, DeclareError> {
        if name.is_empty() || name.len() > crate::wire::message::MAX_QUEUE_NAME {
            return Err(DeclareError::Name(format!(
                "a queue name takes 1 to {} bytes",
                crate::wire::message::MAX_QUEUE_NAME
            )));
        }
        if name.ends_with(DEAD_SUFFIX) {
            return Err(DeclareError::Name(format!(
                "names ending in {DEAD_SUFFIX:?} are kept for dead-letter queues (pick another)"
            )));
        }
        if self.lookup_fixed(name).is_some() {
            return Err(DeclareError::Name(format!(
                "{name:?} is a queue the server was started with, not a temporary one (pick \
                 another name)"
            )));
        }
        let capacity = match capacity {
            None => None,
            Some(0) => {
                return Err(DeclareError::Limit(
                    "a bounded queue holds at least 1 item".into(),
                ))
            }
            Some(n) if n > MAX_CAPACITY => {
                return Err(DeclareError::Limit(format!(
                    "a temporary queue holds at most {MAX_CAPACITY} items (ask for fewer)"
                )))
            }
            Some(n) => Some(n as usize),
        };
        let create = || {
            // A bounded channel allocates its slots up front: they take budget at once.
            let reserved = capacity.map_or(0, |n| n as u64 * memory::SLOT_COST);
            if !self.memory.try_charge(reserved) {
                return Err(DeclareError::Limit(format!(
                    "the server's memory budget has no room for a queue of {} slots (ask for \
                     fewer, or none)",
                    capacity.unwrap_or(0)
                )));
            }
            let config = QueueConfig {
                capacity,
                ..QueueConfig::default()
            };
            let journaled = self.journal.as_ref().map(|journal| Journaled {
                journal: Arc::clone(journal),
                no: journal.queue(QueueDef {
                    name: name.to_owned(),
                    temporary: true,
                    capacity: capacity.map(|c| c as u64),
                    idle_ttl_ms: crate::time::millis(idle_ttl),
                }),
            });
            let core = QueueCore::new(
                name,
                config,
                None,
                self.max_item,
                Arc::clone(&self.memory),
                self.stop.clone(),
                journaled,
            );
            Ok((Arc::new(core), reserved))
        };
        self.temporaries
            .declare(name, owner, idle_ttl, limit, create)
    }

    /// Gives back every lease connection `owner` holds, on every queue: it closed.
    pub(crate) fn release(&self, owner: Owner) {
        for queue in &self.queues {
            queue.release(owner);
        }
        // Held in use meanwhile: between taking an item out of the lease table and putting it
        // back, a queue looks empty and unused, and the reaper must not remove it then.
        for queue in self.temporaries.all_in_use() {
            queue.release(owner);
        }
    }

    /// Connection `owner` closed: the temporary queues it created lose their creator.
    pub(crate) fn disconnected(&self, owner: Owner) {
        self.temporaries.disconnected(owner);
    }

    /// Removes the temporary queues whose time is up (see the `temporary` module), logging
    /// each with the items it dropped.
    pub(crate) fn sweep_temporaries(&self, now: Instant) {
        for (name, dropped) in self.temporaries.sweep_evicted() {
            // A person should raise the cap: abandoned results were dropped early.
            log::warn!(
                "temporary queue {name} removed before its idle TTL to make room for a new one \
                 ({dropped} item(s) dropped; its client had left; raise --max-temporary-queues)"
            );
        }
        for (name, dropped) in self.temporaries.sweep(now) {
            log::info!("temporary queue {name} removed ({dropped} item(s) dropped)");
        }
    }

    /// The queues that were named when the server started.
    pub(crate) fn primaries(&self) -> &[Arc<QueueCore>] {
        &self.queues[..self.primaries]
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::blob::Blob;
    use crate::wire::message::ITEM_OVERHEAD;
    use crossbeam_channel::{self as channel, Sender};
    use queue::Leased;
    use std::time::{Duration, Instant};

    fn registry(capacity: Option<usize>, max_redeliveries: u32) -> (Registry, Sender<()>) {
        let (stop_tx, stop_rx) = channel::bounded(0);
        let config = QueueConfig {
            capacity,
            max_redeliveries,
            lease_timeout: Duration::from_millis(50),
        };
        (
            Registry::new(&[("q".into(), config)], 100, u64::MAX, &stop_rx),
            stop_tx,
        )
    }

    fn blob(b: u8) -> Blob {
        Blob::from(vec![b])
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(20))
    }

    fn leased(outcome: GetOutcome<Leased>) -> Vec<Leased> {
        match outcome {
            GetOutcome::Items(items) => items,
            other => panic!("expected items, got {other:?}"),
        }
    }

    #[test]
    fn smoke() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup_fixed("q").unwrap();
        assert_eq!(
            q.put([blob(1), blob(2)], None, &|| true, 0),
            PutOutcome::Done
        );
        let got = leased(q.take_leased(1, 10, soon(), usize::MAX, &|| true));
        assert_eq!(got.len(), 2);
        assert_eq!(q.ack(1, &[got[0].lease, got[1].lease]), Vec::<u64>::new());
        assert_eq!(
            q.take_leased(1, 10, soon(), usize::MAX, &|| true),
            GetOutcome::Empty
        );
        let s = q.stats();
        assert_eq!((s.put, s.acked, s.leased, s.len), (2, 2, 0, 0));
    }

    #[test]
    fn bounded_put_reports_what_it_accepted() {
        let (r, _stop) = registry(Some(2), 5);
        let q = r.lookup_fixed("q").unwrap();
        assert_eq!(
            q.put([blob(1), blob(2), blob(3)], soon(), &|| true, 0),
            PutOutcome::Full { accepted: 2 }
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.stats().put, 2);
    }

    #[test]
    fn oversized_item_is_refused() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup_fixed("q").unwrap();
        let big = Blob::from(vec![0; 101]);
        assert_eq!(
            q.put([blob(1), big], None, &|| true, 0),
            PutOutcome::TooLarge { accepted: 1 }
        );
    }

    #[test]
    fn budget_leaves_the_overflow_item_first_in_line() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup_fixed("q").unwrap();
        q.put((1..=3).map(|b| Blob::from(vec![b; 50])), None, &|| true, 0);
        let budget = 2 * (50 + ITEM_OVERHEAD);
        let first = leased(q.take_leased(1, 10, soon(), budget, &|| true));
        assert_eq!(first.len(), 2);
        let rest = leased(q.take_leased(2, 10, soon(), budget, &|| true));
        assert_eq!(rest[0].payload, Blob::from(vec![3; 50]));
        assert_eq!(rest[0].redeliveries, 0, "overflow is not a redelivery");
    }

    #[test]
    fn a_closed_connection_returns_its_leases_first_in_line() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup_fixed("q").unwrap();
        q.put([blob(1), blob(2)], None, &|| true, 0);
        leased(q.take_leased(7, 1, soon(), usize::MAX, &|| true));
        q.release(7);
        let again = leased(q.take_leased(8, 1, soon(), usize::MAX, &|| true));
        assert_eq!(
            (again[0].payload.clone(), again[0].redeliveries),
            (blob(1), 1)
        );
        assert_eq!(q.stats().redelivered, 1);
    }

    #[test]
    fn an_expired_lease_returns_and_its_late_ack_is_refused() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup_fixed("q").unwrap();
        q.put([blob(1)], None, &|| true, 0);
        let first = leased(q.take_leased(1, 1, soon(), usize::MAX, &|| true));
        q.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(q.len(), 1);
        assert_eq!(q.ack(1, &[first[0].lease]), vec![first[0].lease]);
        assert_eq!(q.touch(1, &[first[0].lease]), vec![first[0].lease]);
    }

    #[test]
    fn touch_postpones_expiry() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup_fixed("q").unwrap();
        q.put([blob(1)], None, &|| true, 0);
        let got = leased(q.take_leased(1, 1, soon(), usize::MAX, &|| true));
        std::thread::sleep(Duration::from_millis(30));
        assert!(q.touch(1, &[got[0].lease]).is_empty());
        q.expire(Instant::now() + Duration::from_millis(30));
        assert_eq!(q.len(), 0, "the touch moved the deadline past this instant");
    }

    #[test]
    fn poison_items_move_to_the_dead_letter_queue() {
        let (r, _stop) = registry(None, 2);
        let q = r.lookup_fixed("q").unwrap();
        q.put([blob(1)], None, &|| true, 0);
        for round in 0..3 {
            let got = leased(q.take_leased(1, 1, soon(), usize::MAX, &|| true));
            assert_eq!(got[0].redeliveries, round);
            assert!(q.nack(1, &[got[0].lease]).is_empty());
        }
        assert_eq!(q.len(), 0);
        let dead = r.lookup_fixed("q.dead").unwrap();
        assert_eq!(dead.len(), 1);
        let s = q.stats();
        assert_eq!((s.dead, s.dead_lettered, s.redelivered), (1, 1, 3));
        // A dead-letter queue never dead-letters: its items keep coming back to it.
        let got = leased(dead.take_leased(1, 1, soon(), usize::MAX, &|| true));
        dead.nack(1, &[got[0].lease]);
        assert_eq!(dead.len(), 1);
    }

    #[test]
    fn the_memory_budget_follows_items_until_they_leave_for_good() {
        let (stop_tx, stop_rx) = channel::bounded::<()>(0);
        let config = QueueConfig {
            max_redeliveries: 0,
            ..QueueConfig::default()
        };
        let item = memory::cost(&Blob::from(vec![0u8; 1000]));
        let r = Registry::new(&[("q".into(), config)], 2000, 3 * item, &stop_rx);
        let q = r.lookup_fixed("q").unwrap();
        let big = || Blob::from(vec![0u8; 1000]);
        assert_eq!(
            q.put([big(), big(), big(), big()], soon(), &|| true, 0),
            PutOutcome::OverBudget { accepted: 3 }
        );
        assert_eq!(r.memory().used(), 3 * item);
        let got = leased(q.take_leased(1, 1, soon(), usize::MAX, &|| true));
        assert_eq!(r.memory().used(), 3 * item + memory::LEASE_COST);
        // Nacked past max_redeliveries: in the dead-letter queue, still charged.
        q.nack(1, &[got[0].lease]);
        assert_eq!((r.memory().used(), q.stats().dead), (3 * item, 1));
        let dead = r.lookup_fixed("q.dead").unwrap();
        let got = leased(dead.take_leased(1, 1, soon(), usize::MAX, &|| true));
        assert!(dead.ack(1, &[got[0].lease]).is_empty());
        assert_eq!(r.memory().used(), 2 * item);
        let GetOutcome::Items(taken) = q.take(2, soon()) else {
            panic!("two items wait")
        };
        assert_eq!(r.memory().used(), 0);
        q.give_back(taken);
        assert_eq!(r.memory().used(), 2 * item);
        drop(stop_tx);
    }

    #[test]
    fn a_put_waiting_on_a_full_queue_stops_when_its_putter_leaves() {
        let (r, _stop) = registry(Some(1), 5);
        let q = r.lookup_fixed("q").unwrap();
        q.put([blob(1)], None, &|| true, 0);
        let start = Instant::now();
        assert_eq!(
            q.put(
                [blob(2)],
                None,
                &|| start.elapsed() < Duration::from_millis(100),
                0
            ),
            PutOutcome::Closed { accepted: 0 }
        );
        assert_eq!(q.len(), 1);
        assert_eq!(r.memory().used(), memory::cost(&blob(1)));
    }

    #[test]
    fn restored_items_fill_a_bounded_queue_again_in_order() {
        let (r, _stop) = registry(Some(2), 5);
        let q = r.lookup_fixed("q").unwrap();
        let items = (1..=3).map(|b| (Item::new(blob(b)), None)).collect();
        q.restore(items);
        assert_eq!(q.len(), 3);
        // Full again: a put waits (here: refused at once), however many restarts there were.
        let now = Some(Instant::now());
        assert_eq!(
            q.put([blob(9)], now, &|| true, 0),
            PutOutcome::Full { accepted: 0 }
        );
        let got = leased(q.take_leased(1, 10, soon(), usize::MAX, &|| true));
        let order: Vec<Blob> = got.into_iter().map(|l| l.payload).collect();
        assert_eq!(order, vec![blob(1), blob(2), blob(3)]);
    }

    /// A crash between declaring a temporary queue again and draining the evicted one of
    /// the same name leaves both in the journal: the older was being removed.
    #[test]
    fn a_temporary_queue_in_the_journal_twice_comes_back_once_with_the_newer_items() {
        use crate::config::JournalConfig;
        let dir = std::env::temp_dir().join(format!("distq-core-twice-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = JournalConfig::new(&dir);
        let def = QueueDef {
            name: "t".into(),
            temporary: true,
            capacity: None,
            idle_ttl_ms: 3_600_000,
        };
        let (journal, _) = Journal::open(&config, [1; 16]).unwrap();
        for b in [1, 2] {
            let q = journal.queue(def.clone());
            let (_, ticket) = journal.put(q, &blob(b), None);
            journal.commit(ticket).unwrap();
        }
        journal.close();
        drop(journal);
        let (_stop, stop_rx) = channel::bounded::<()>(0);
        for _restart in 0..2 {
            let opened = Journal::open(&config, [1; 16]).unwrap();
            let journal = Arc::clone(&opened.0);
            let r = Registry::journaled(&[], 100, u64::MAX, &stop_rx, Some(opened)).unwrap();
            assert_eq!(r.memory().used(), memory::cost(&blob(2)));
            let t = r.lookup("t").unwrap();
            let got = leased(t.take_leased(1, 10, soon(), usize::MAX, &|| true));
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].payload, blob(2));
            t.release(1);
            drop(t);
            journal.close();
            drop((r, journal));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stop_wakes_a_blocked_get() {
        let (r, stop) = registry(None, 5);
        let q = Arc::clone(r.lookup_fixed("q").unwrap());
        let waiter = std::thread::spawn(move || q.take_leased(1, 1, None, usize::MAX, &|| true));
        drop(stop);
        assert_eq!(waiter.join().unwrap(), GetOutcome::Closed);
    }
}

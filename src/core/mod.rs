//! The server's storage: named queues with their lease tables and dead-letter queues. Both
//! the server's sessions and the in-process queue handles use it; it knows neither.

mod lease;
mod memory;
mod queue;

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::config::QueueConfig;

pub(crate) use lease::{Owner, LOCAL};
pub(crate) use memory::{cost as memory_cost, Memory};
pub(crate) use queue::{due_after, GetOutcome, PutOutcome, QueueCore};

/// The suffix naming a queue's dead-letter queue: `tasks` → `tasks.dead`.
pub(crate) const DEAD_SUFFIX: &str = ".dead";

/// The fixed set of queues a server hosts, with their dead-letter queues, by name.
pub(crate) struct Registry {
    /// Primary queues first, in the order they were named, then their dead-letter queues.
    queues: Vec<Arc<QueueCore>>,
    primaries: usize,
    index: HashMap<String, usize>,
    memory: Arc<Memory>,
}

impl Registry {
    /// Creates the queues; `specs` holds unique names, none ending in [`DEAD_SUFFIX`]. Their
    /// items share a budget of `max_memory` bytes.
    pub(crate) fn new(
        specs: &[(String, QueueConfig)],
        max_item: usize,
        max_memory: u64,
        stop: &Receiver<()>,
    ) -> Self {
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
                dead_config,
                None,
                max_item,
                Arc::clone(&memory),
                stop.clone(),
            ));
            let primary = QueueCore::new(
                name,
                config.clone(),
                Some(Arc::clone(&dead)),
                max_item,
                Arc::clone(&memory),
                stop.clone(),
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
        Registry {
            queues,
            primaries: count,
            index,
            memory,
        }
    }

    /// The memory budget the queues share.
    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The queue called `name`.
    pub(crate) fn lookup(&self, name: &str) -> Option<&Arc<QueueCore>> {
        self.index.get(name).map(|&i| &self.queues[i])
    }

    /// Every queue, dead-letter queues included.
    pub(crate) fn all(&self) -> &[Arc<QueueCore>] {
        &self.queues
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
        let q = r.lookup("q").unwrap();
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
        let q = r.lookup("q").unwrap();
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
        let q = r.lookup("q").unwrap();
        let big = Blob::from(vec![0; 101]);
        assert_eq!(
            q.put([blob(1), big], None, &|| true, 0),
            PutOutcome::TooLarge { accepted: 1 }
        );
    }

    #[test]
    fn budget_leaves_the_overflow_item_first_in_line() {
        let (r, _stop) = registry(None, 5);
        let q = r.lookup("q").unwrap();
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
        let q = r.lookup("q").unwrap();
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
        let q = r.lookup("q").unwrap();
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
        let q = r.lookup("q").unwrap();
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
        let q = r.lookup("q").unwrap();
        q.put([blob(1)], None, &|| true, 0);
        for round in 0..3 {
            let got = leased(q.take_leased(1, 1, soon(), usize::MAX, &|| true));
            assert_eq!(got[0].redeliveries, round);
            assert!(q.nack(1, &[got[0].lease]).is_empty());
        }
        assert_eq!(q.len(), 0);
        let dead = r.lookup("q.dead").unwrap();
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
        let q = r.lookup("q").unwrap();
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
        let dead = r.lookup("q.dead").unwrap();
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
        let q = r.lookup("q").unwrap();
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
    fn stop_wakes_a_blocked_get() {
        let (r, stop) = registry(None, 5);
        let q = Arc::clone(r.lookup("q").unwrap());
        let waiter = std::thread::spawn(move || q.take_leased(1, 1, None, usize::MAX, &|| true));
        drop(stop);
        assert_eq!(waiter.join().unwrap(), GetOutcome::Closed);
    }
}

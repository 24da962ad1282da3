//! The lease table of one queue: which items are out with which connection, until when.
//!
//! A lease ends by acknowledgement, by its owner going away, or by its deadline passing;
//! in the last two cases the item goes back to the queue. Leases live in a map by id; their
//! deadlines in a queue in the order they were set (a queue's lease timeout is fixed, so that
//! is deadline order). Ending a lease leaves its deadline entry behind to be skipped later;
//! the queue is compacted once such stale entries outnumber the live ones, so memory tracks
//! what is out, and every operation stays O(1) amortised on the hot path.

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::blob::Blob;

/// Who holds a lease: a connection id, or [`LOCAL`] for the server's own process.
pub(crate) type Owner = u64;

/// The owner of leases taken in-process through `Server::queue`.
pub(crate) const LOCAL: Owner = u64::MAX;

/// An item as a queue holds it: the payload and how many times it went back to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) payload: Blob,
    pub(crate) redeliveries: u32,
}

impl Item {
    pub(crate) fn new(payload: Blob) -> Self {
        Item {
            payload,
            redeliveries: 0,
        }
    }
}

struct Lease {
    item: Item,
    owner: Owner,
    deadline: Instant,
}

/// The leases of one queue.
#[derive(Default)]
pub(crate) struct LeaseTable {
    by_id: FxHashMap<u64, Lease>,
    /// `(deadline, id)` in the order deadlines were set; entries whose lease ended or moved
    /// are stale and skipped.
    deadlines: VecDeque<(Instant, u64)>,
    last_id: u64,
}

impl LeaseTable {
    /// Leases `item` to `owner` until `deadline` (never earlier than the deadlines set
    /// before it); returns the lease id.
    pub(crate) fn insert(&mut self, item: Item, owner: Owner, deadline: Instant) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        self.by_id.insert(
            id,
            Lease {
                item,
                owner,
                deadline,
            },
        );
        self.push_deadline(deadline, id);
        id
    }

    /// How many leases are out.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Ends `owner`'s lease `id` and hands back its item; `None` if `owner` holds no such
    /// lease (it expired, was never theirs, or ended already).
    pub(crate) fn remove(&mut self, owner: Owner, id: u64) -> Option<Item> {
        match self.by_id.get(&id) {
            Some(lease) if lease.owner == owner => self.by_id.remove(&id).map(|l| l.item),
            _ => None,
        }
    }

    /// Moves the deadline of `owner`'s lease `id` to `deadline`; `false` if it holds no such
    /// lease.
    pub(crate) fn extend(&mut self, owner: Owner, id: u64, deadline: Instant) -> bool {
        match self.by_id.get_mut(&id) {
            Some(lease) if lease.owner == owner => {
                lease.deadline = deadline;
                self.push_deadline(deadline, id);
                true
            }
            _ => false,
        }
    }

    /// Ends every lease `owner` holds and hands back their items, oldest lease first.
    pub(crate) fn remove_owner(&mut self, owner: Owner) -> Vec<Item> {
        let mut ids: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, lease)| lease.owner == owner)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.by_id.remove(&id))
            .map(|l| l.item)
            .collect()
    }

    /// Ends every lease whose deadline is at or before `now` and hands back their items.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.by_id.get(&id).is_some_and(|l| l.deadline == deadline) {
                items.extend(self.by_id.remove(&id).map(|l| l.item));
            }
        }
        items
    }

    fn push_deadline(&mut self, deadline: Instant, id: u64) {
        self.deadlines.push_back((deadline, id));
        if self.deadlines.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.deadlines
                .retain(|(deadline, id)| by_id.get(id).is_some_and(|l| l.deadline == *deadline));
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::time::Duration;

    fn item(b: u8) -> Item {
        Item::new(Blob::from(vec![b]))
    }

    #[test]
    fn smoke() {
        let mut t = LeaseTable::default();
        let now = Instant::now();
        let id = t.insert(item(1), 7, now + Duration::from_secs(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(8, id), None, "another owner cannot end it");
        assert_eq!(t.remove(7, id), Some(item(1)));
        assert_eq!(t.remove(7, id), None, "a lease ends once");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn expiry_follows_deadlines_and_extensions() {
        let mut t = LeaseTable::default();
        let now = Instant::now();
        let a = t.insert(item(1), 1, now + Duration::from_secs(1));
        let _b = t.insert(item(2), 1, now + Duration::from_secs(2));
        assert!(t.extend(1, a, now + Duration::from_secs(3)));
        assert!(
            !t.extend(2, a, now + Duration::from_secs(9)),
            "only the owner extends"
        );
        assert_eq!(t.expire(now + Duration::from_millis(1500)), vec![]);
        assert_eq!(t.expire(now + Duration::from_millis(2500)), vec![item(2)]);
        assert_eq!(t.expire(now + Duration::from_secs(3)), vec![item(1)]);
        assert_eq!(t.len(), 0);
        assert!(t.deadlines.is_empty());
    }

    #[test]
    fn an_owner_leaving_returns_all_its_leases_in_order() {
        let mut t = LeaseTable::default();
        let later = Instant::now() + Duration::from_secs(60);
        for b in 1..=3 {
            t.insert(item(b), 5, later);
        }
        t.insert(item(9), 6, later);
        assert_eq!(t.remove_owner(5), vec![item(1), item(2), item(3)]);
        assert_eq!(t.len(), 1);
        assert!(t.remove_owner(5).is_empty());
    }

    #[test]
    fn stale_deadlines_do_not_pile_up() {
        let mut t = LeaseTable::default();
        let later = Instant::now() + Duration::from_secs(60);
        let held = t.insert(item(0), 1, later);
        for _ in 0..10_000 {
            let id = t.insert(item(1), 1, later);
            t.remove(1, id);
        }
        assert!(
            t.deadlines.len() <= 2 * t.len() + 64,
            "{} entries",
            t.deadlines.len()
        );
        assert_eq!(t.remove(1, held), Some(item(0)));
    }
}

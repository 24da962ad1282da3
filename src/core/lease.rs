//! The lease table of one queue: which items are out with which connection, until when.
//!
//! A lease ends by acknowledgement, by its owner going away, or by its deadline passing;
//! in the last two cases the item goes back to the queue. Leases live in a map by id; their
//! deadlines in a queue in the order they were set (a queue's lease timeout is fixed, so that
//! is deadline order), and their ids in a list per owner, so a closing connection finds its
//! own leases without scanning everyone's. Ending a lease leaves its entries in those lists
//! behind to be skipped later; a list is compacted once such stale entries outnumber the live
//! ones, and the next compaction waits until as many entries again have gone stale, so memory
//! tracks what is out and every operation stays O(1) amortised, whatever the order of calls.

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;

use crate::blob::Blob;

/// Who holds a lease: a connection id, or [`LOCAL`] for the server's own process.
pub(crate) type Owner = u64;

/// The owner of leases taken in-process through `Server::queue`.
pub(crate) const LOCAL: Owner = u64::MAX;

/// Entries a list may hold beyond twice its live ones before it is compacted.
const SLACK: usize = 64;

/// An item as a queue holds it: the payload, how many times it went back to the queue, and
/// its id in the server's journal (0 without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) payload: Blob,
    pub(crate) redeliveries: u32,
    pub(crate) id: u64,
}

impl Item {
    pub(crate) fn new(payload: Blob) -> Self {
        Item {
            payload,
            redeliveries: 0,
            id: 0,
        }
    }
}

struct Lease {
    item: Item,
    owner: Owner,
    deadline: Instant,
}

/// The ids of one owner's leases, oldest first; some may have ended already.
#[derive(Default)]
struct Held {
    ids: Vec<u64>,
    /// How many of `ids` are still leased.
    live: usize,
}

/// The leases of one queue.
#[derive(Default)]
pub(crate) struct LeaseTable {
    by_id: FxHashMap<u64, Lease>,
    /// `(deadline, id)` in the order deadlines were set; entries whose lease ended or moved
    /// are stale and skipped.
    deadlines: VecDeque<(Instant, u64)>,
    /// The length `deadlines` may reach before it is compacted.
    compact_at: usize,
    by_owner: FxHashMap<Owner, Held>,
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
        let held = self.by_owner.entry(owner).or_default();
        held.ids.push(id);
        held.live += 1;
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
            Some(lease) if lease.owner == owner => self.end(id),
            _ => None,
        }
    }

    /// Moves the deadline of `owner`'s lease `id` to `deadline`; `false` if it holds no such
    /// lease.
    pub(crate) fn extend(&mut self, owner: Owner, id: u64, deadline: Instant) -> bool {
        match self.by_id.get_mut(&id) {
            Some(lease) if lease.owner == owner => {
                // The same deadline again (one id named twice in a touch) needs no new entry.
                if lease.deadline != deadline {
                    lease.deadline = deadline;
                    self.push_deadline(deadline, id);
                }
                true
            }
            _ => false,
        }
    }

    /// Ends every lease `owner` holds, at once, and hands back their items.
    pub(crate) fn remove_owner(&mut self, owner: Owner) -> Vec<Item> {
        let ids = self.take_owner(owner);
        ids.into_iter()
            .filter_map(|id| self.remove(owner, id))
            .collect()
    }

    /// Stops tracking `owner` and hands back the ids of the leases it may still hold, oldest
    /// first, for [`LeaseTable::remove`] (its connection ended). Cost: that owner's leases.
    pub(crate) fn take_owner(&mut self, owner: Owner) -> Vec<u64> {
        self.by_owner
            .remove(&owner)
            .map_or_else(Vec::new, |h| h.ids)
    }

    /// Ends every lease whose deadline is at or before `now`, at most `max` of them, and
    /// hands back their items.
    pub(crate) fn expire(&mut self, now: Instant, max: usize) -> Vec<Item> {
        let mut items = Vec::new();
        while items.len() < max {
            let Some(&(deadline, id)) = self.deadlines.front() else {
                break;
            };
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.by_id.get(&id).is_some_and(|l| l.deadline == deadline) {
                items.extend(self.end(id));
            }
        }
        items
    }

    /// Ends lease `id`, whoever holds it.
    fn end(&mut self, id: u64) -> Option<Item> {
        let lease = self.by_id.remove(&id)?;
        // No entry: the owner's connection ended and its leases are being returned.
        if let Some(held) = self.by_owner.get_mut(&lease.owner) {
            // Saturating: a release racing a take by the same owner must not wrap.
            held.live = held.live.saturating_sub(1);
            if held.live == 0 {
                held.ids.clear();
            } else if held.ids.len() > 2 * held.live + SLACK {
                let by_id = &self.by_id;
                // Ids are never reused, so an id still in the map is still this owner's.
                held.ids.retain(|id| by_id.contains_key(id));
            }
        }
        Some(lease.item)
    }

    fn push_deadline(&mut self, deadline: Instant, id: u64) {
        self.deadlines.push_back((deadline, id));
        if self.deadlines.len() > self.compact_at {
            let by_id = &self.by_id;
            self.deadlines
                .retain(|(deadline, id)| by_id.get(id).is_some_and(|l| l.deadline == *deadline));
            // What remains may all be live: wait for as many pushes again before the next
            // scan, so compaction costs O(1) per push whatever the entries are.
            self.compact_at = 2 * self.deadlines.len().max(self.by_id.len()) + SLACK;
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
    fn remove_owner_ends_that_owners_leases_only_and_a_later_take_is_tracked() {
        let mut t = LeaseTable::default();
        let at = Instant::now() + Duration::from_secs(60);
        t.insert(item(1), 7, at);
        t.insert(item(2), 7, at);
        let other = t.insert(item(3), 8, at);
        let gone = t.remove_owner(7);
        assert_eq!(gone.len(), 2);
        assert_eq!(t.len(), 1);
        // The owner takes again afterwards: that lease is its own, and ends normally.
        let again = t.insert(item(4), 7, at);
        assert!(t.remove(7, again).is_some());
        assert!(t.remove(8, other).is_some());
        assert_eq!(t.len(), 0);
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
        assert_eq!(t.expire(now + Duration::from_millis(1500), 9), vec![]);
        assert_eq!(
            t.expire(now + Duration::from_millis(2500), 9),
            vec![item(2)]
        );
        assert_eq!(t.expire(now + Duration::from_secs(3), 9), vec![item(1)]);
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
        let ids = t.take_owner(5);
        let items: Vec<Item> = ids.iter().filter_map(|&id| t.remove(5, id)).collect();
        assert_eq!(items, vec![item(1), item(2), item(3)]);
        assert_eq!(t.len(), 1);
        assert!(t.take_owner(5).is_empty());
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

    #[test]
    fn one_id_extended_80000_times_leaves_one_deadline_entry() {
        let mut t = LeaseTable::default();
        let later = Instant::now() + Duration::from_secs(60);
        let id = t.insert(item(1), 1, later);
        // One touch naming the id 80,000 times: every copy asks for the same deadline.
        for _ in 0..80_000 {
            assert!(t.extend(1, id, later));
        }
        assert_eq!(t.deadlines.len(), 1);
        // Distinct deadlines leave stale entries, compacted as they go.
        for ms in 1..=80_000 {
            assert!(t.extend(1, id, later + Duration::from_millis(ms)));
        }
        assert!(
            t.deadlines.len() <= 2 + SLACK,
            "{} entries",
            t.deadlines.len()
        );
        assert_eq!(t.expire(later + Duration::from_secs(81), 9), vec![item(1)]);
    }

    #[test]
    fn an_owner_list_tracks_its_live_leases() {
        let mut t = LeaseTable::default();
        let later = Instant::now() + Duration::from_secs(60);
        let kept = t.insert(item(0), 3, later);
        for _ in 0..10_000 {
            let id = t.insert(item(1), 3, later);
            assert_eq!(t.remove(3, id), Some(item(1)));
        }
        let held = &t.by_owner[&3];
        assert_eq!(held.live, 1);
        assert!(held.ids.len() <= 2 + SLACK, "{} ids", held.ids.len());
        let ids = t.take_owner(3);
        assert!(ids.contains(&kept));
        let items: Vec<Item> = ids.iter().filter_map(|&id| t.remove(3, id)).collect();
        assert_eq!(items, vec![item(0)]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn expiry_hands_back_at_most_max_items_at_a_time() {
        let mut t = LeaseTable::default();
        let now = Instant::now();
        for b in 0..5 {
            t.insert(item(b), 1, now);
        }
        assert_eq!(t.expire(now, 2), vec![item(0), item(1)]);
        assert_eq!(t.expire(now, 9), vec![item(2), item(3), item(4)]);
        assert_eq!(t.by_owner[&1].live, 0);
    }
}

//! The lease table of one queue: which items are out with which connection, until when.
//!
//! A lease ends by acknowledgement, by its owner going away, or by its deadline passing;
//! in the last two cases the item goes back to the queue. Deadlines are kept in an ordered
//! set beside the map, so expiry costs O(log n) per lease and memory tracks only what is out.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

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
    by_id: HashMap<u64, Lease>,
    by_owner: HashMap<Owner, HashSet<u64>>,
    by_deadline: BTreeSet<(Instant, u64)>,
    last_id: u64,
}

impl LeaseTable {
    /// Leases `item` to `owner` until `deadline`; returns the lease id.
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
        self.by_owner.entry(owner).or_default().insert(id);
        self.by_deadline.insert((deadline, id));
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
            Some(lease) if lease.owner == owner => {}
            _ => return None,
        }
        self.take(id)
    }

    /// Moves the deadline of `owner`'s lease `id`; `false` if it holds no such lease.
    pub(crate) fn extend(&mut self, owner: Owner, id: u64, deadline: Instant) -> bool {
        match self.by_id.get_mut(&id) {
            Some(lease) if lease.owner == owner => {
                self.by_deadline.remove(&(lease.deadline, id));
                lease.deadline = deadline;
                self.by_deadline.insert((deadline, id));
                true
            }
            _ => false,
        }
    }

    /// Ends every lease `owner` holds and hands back their items, oldest lease first.
    pub(crate) fn remove_owner(&mut self, owner: Owner) -> Vec<Item> {
        let mut ids: Vec<u64> = self
            .by_owner
            .remove(&owner)
            .unwrap_or_default()
            .into_iter()
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Ends every lease whose deadline is at or before `now` and hands back their items.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            if deadline > now {
                break;
            }
            if let Some(item) = self.take(id) {
                items.push(item);
            }
        }
        items
    }

    fn take(&mut self, id: u64) -> Option<Item> {
        let lease = self.by_id.remove(&id)?;
        self.by_deadline.remove(&(lease.deadline, id));
        if let Some(ids) = self.by_owner.get_mut(&lease.owner) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_owner.remove(&lease.owner);
            }
        }
        Some(lease.item)
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
        assert!(t.by_deadline.is_empty() && t.by_owner.is_empty());
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
}

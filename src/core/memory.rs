//! The server-wide memory budget: bytes held by stored items, counted against a limit.
//!
//! Charging and releasing are one atomic operation each, so an unblocked put takes no lock.
//! Only a put that finds the budget used up waits, on a condition variable that releases
//! signal only while someone waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::blob::Blob;
use crate::sync::lock;

/// What a queued item costs beyond a shared payload: its slot in the queue's crossbeam
/// channel (the 64-byte `Item`, inline payload and journal id included, plus the slot's
/// state word). Measured with the 56-byte `Item` before the journal id: 1,000,000 queued
/// 16-byte items cost 64.9 bytes of RSS each (BENCHMARKS.md); the id adds 8.
pub(crate) const SLOT_COST: u64 = 72;

/// What a payload of more than 46 bytes costs beyond its bytes: the `Arc` header (two
/// counters) and the allocator's header and rounding.
pub(crate) const SHARED_COST: u64 = 32;

/// What a lease costs while it is out, on top of the item: its lease-table entry (id and
/// 80-byte lease in a hash map between 7/16 and 7/8 full) and its deadline entries.
/// Measured: 500,000 leased 16-byte items cost 264 bytes of RSS each, 64 of them the slot.
pub(crate) const LEASE_COST: u64 = 200;

/// Requests waiting for room may hold at most a quarter of the budget (1 / this) in
/// decoded items on top of it.
pub(crate) const PARKED_SHARE: u64 = 4;

/// How often a waiting charge re-checks that its putter is still there.
const WAIT_SLICE: Duration = Duration::from_millis(500);

/// The bytes one stored item costs.
pub(crate) fn cost(payload: &Blob) -> u64 {
    match payload {
        Blob::Inline { .. } => SLOT_COST,
        Blob::Shared(bytes) => SLOT_COST + SHARED_COST + bytes.len() as u64,
    }
}

/// Why a charge did not happen.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChargeEnd {
    /// The budget stayed used up until the deadline (or the item can never fit).
    OverBudget,
    /// The putter left or the server is stopping.
    Stopped,
}

/// The memory budget shared by every queue of a server.
pub(crate) struct Memory {
    limit: u64,
    used: AtomicU64,
    /// Bytes of decoded requests waiting for room (in a full queue or the budget), which
    /// hold their items in memory meanwhile, and their cap ([`PARKED_SHARE`] of the limit).
    parked: AtomicU64,
    park_limit: u64,
    /// Charges waiting for room; releases notify only when there are some.
    waiting: AtomicUsize,
    room: Mutex<()>,
    freed: Condvar,
}

impl Memory {
    pub(crate) fn new(limit: u64) -> Self {
        Memory {
            limit,
            used: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            park_limit: limit / PARKED_SHARE,
            waiting: AtomicUsize::new(0),
            room: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    /// The budget, in bytes.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Charges `bytes` if they fit the budget now.
    pub(crate) fn try_charge(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    /// Lets a request holding `bytes` of items wait for room, if the requests waiting
    /// already hold less than their share of the budget; `false` means it must answer at
    /// once instead (the client retries), so waiting requests cannot hold unbounded memory.
    pub(crate) fn park(&self, bytes: u64) -> bool {
        self.parked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |parked| {
                parked
                    .checked_add(bytes)
                    .filter(|&after| after <= self.park_limit)
            })
            .is_ok()
    }

    /// Ends a [`park`](Memory::park).
    pub(crate) fn unpark(&self, bytes: u64) {
        let _ = self
            .parked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |parked| {
                Some(parked.saturating_sub(bytes))
            });
    }

    /// Charges `bytes` even past the budget: for what is already in memory and only changes
    /// hands (a lease taken, an item given back).
    pub(crate) fn force_charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Returns `bytes` to the budget and wakes the charges waiting for room, if any.
    pub(crate) fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                Some(used.saturating_sub(bytes))
            });
        // SeqCst on both sides: either a waiter sees the room, or we see the waiter.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.wake_all();
        }
    }

    /// Wakes every waiting charge to look again (room freed, or the server is stopping).
    pub(crate) fn wake_all(&self) {
        let _guard = lock(&self.room);
        self.freed.notify_all();
    }

    /// Charges `bytes`, waiting until `deadline` (`None`: for ever) for room while `go_on`
    /// holds (checked at least every half second).
    pub(crate) fn charge(
        &self,
        bytes: u64,
        deadline: Option<Instant>,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), ChargeEnd> {
        if self.try_charge(bytes) {
            return Ok(());
        }
        if bytes > self.limit {
            return Err(ChargeEnd::OverBudget); // It would never fit.
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let end = self.wait_to_charge(bytes, deadline, go_on);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        end
    }

    fn wait_to_charge(
        &self,
        bytes: u64,
        deadline: Option<Instant>,
        go_on: &dyn Fn() -> bool,
    ) -> Result<(), ChargeEnd> {
        loop {
            if !go_on() {
                return Err(ChargeEnd::Stopped);
            }
            let guard = lock(&self.room);
            // Looked at under the lock a release notifies under: no wake-up is lost.
            if self.try_charge(bytes) {
                return Ok(());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(ChargeEnd::OverBudget);
            }
            let wait = deadline.map_or(WAIT_SLICE, |d| (d - now).min(WAIT_SLICE));
            let (guard, _) = self
                .freed
                .wait_timeout(guard, wait)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            drop(guard);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn charges_fit_the_limit_and_releases_wake_a_waiter() {
        let memory = Arc::new(Memory::new(100));
        assert!(memory.try_charge(60));
        assert!(!memory.try_charge(41));
        assert_eq!(
            memory.charge(41, Some(Instant::now()), &|| true),
            Err(ChargeEnd::OverBudget)
        );
        assert_eq!(
            memory.charge(101, None, &|| true),
            Err(ChargeEnd::OverBudget)
        );
        let waiter = {
            let memory = Arc::clone(&memory);
            std::thread::spawn(move || memory.charge(80, None, &|| true))
        };
        while memory.waiting.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        memory.release(60);
        assert_eq!(waiter.join().unwrap(), Ok(()));
        assert_eq!(memory.used(), 80);
        assert_eq!(memory.charge(30, None, &|| false), Err(ChargeEnd::Stopped));
    }

    #[test]
    fn costs_count_the_slot_and_a_shared_payload() {
        assert_eq!(cost(&Blob::from(vec![0u8; 10])), SLOT_COST);
        assert_eq!(
            cost(&Blob::from(vec![0u8; 1000])),
            SLOT_COST + SHARED_COST + 1000
        );
    }
}

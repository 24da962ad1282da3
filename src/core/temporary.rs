//! Temporary queues: created at run time by a connection (`declare`), removed by the reaper
//! once their creator is gone and they are empty, or idle past their TTL. They live in a map
//! beside the fixed queues, so looking up a fixed queue never touches its lock.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::lease::Owner;
use super::queue::QueueCore;
use crate::sync::lock;

/// How long an empty temporary queue outlives its creator: a client that reconnects after a
/// blip declares it again (adopts it) within this.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// The idle TTL of a `declare` that names none.
pub(crate) const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(3600);

/// The longest idle TTL a `declare` may ask for; longer ones are capped.
pub(crate) const MAX_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most temporary queues one connection may be the creator of at once, so one client
/// cannot take the whole server-wide cap.
pub(crate) const MAX_PER_CONNECTION: usize = 64;

/// The largest bound a temporary queue may have (its slots are allocated up front).
pub(crate) const MAX_CAPACITY: u64 = 1 << 20;

/// One temporary queue and who owns it.
pub(crate) struct Temporary {
    pub(super) core: Arc<QueueCore>,
    /// Bytes of the memory budget its bounded channel's slots take, released on removal.
    pub(super) reserved: u64,
    state: Mutex<State>,
}

struct State {
    /// The connection that declared (or last adopted) it, while it is connected.
    creator: Option<Owner>,
    /// When the last request on it ended (or its creator left).
    last_used: Instant,
    idle_ttl: Duration,
    /// Requests on it being served now: a queue in use is never removed.
    active: usize,
}

/// How a `declare` went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Declared {
    /// A new queue.
    Created,
    /// An existing queue whose creator was gone: this connection is its creator now.
    Adopted,
    /// This connection had declared it already.
    Already,
}

/// Why a `declare` was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DeclareError {
    /// Another connection, still open, created it.
    InUse,
    /// Empty, too long, ends in `.dead` or names a queue the server was started with.
    Name(String),
    /// The server-wide cap, the per-connection cap, a bound too large or no memory for it.
    Limit(String),
}

/// A temporary queue looked up for one request; while it lives the queue counts as in use.
pub(crate) struct InUse {
    temp: Arc<Temporary>,
    /// Whether its end counts as a use (a client's request), restarting the idle time.
    request: bool,
}

impl Deref for InUse {
    type Target = Arc<QueueCore>;

    fn deref(&self) -> &Arc<QueueCore> {
        &self.temp.core
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut state = lock(&self.temp.state);
        state.active -= 1;
        if self.request {
            state.last_used = Instant::now();
        }
    }
}

/// Every temporary queue, by name.
#[derive(Default)]
pub(crate) struct Temporaries {
    map: RwLock<HashMap<String, Arc<Temporary>>>,
    /// Queues a `declare` took out of the map to make room, for the reaper to empty: only
    /// its thread moves delayed items, so only it may drain them without losing one.
    evicted: Mutex<Vec<Arc<Temporary>>>,
}

/// What the reaper removed: name, items dropped.
pub(crate) type Removed = (String, usize);

impl Temporaries {
    /// The temporary queue `name`, marked in use until the guard drops.
    pub(crate) fn lookup(&self, name: &str) -> Option<InUse> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let temp = map.get(name)?;
        lock(&temp.state).active += 1;
        Some(InUse {
            temp: Arc::clone(temp),
            request: true,
        })
    }

    /// Declares `name` for `owner`; `create` makes the queue (with what it reserved of the
    /// memory budget) when it is new, and may refuse. At the cap, a new queue takes the place
    /// of the abandoned one idle the longest (see [`evictable`]), which the reaper's next
    /// [`sweep`](Temporaries::sweep) empties.
    pub(crate) fn declare(
        &self,
        name: &str,
        owner: Owner,
        idle_ttl: Duration,
        limit: usize,
        create: impl FnOnce() -> Result<(Arc<QueueCore>, u64), DeclareError>,
    ) -> Result<Declared, DeclareError> {
        let idle_ttl = idle_ttl.min(MAX_IDLE_TTL);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let owned = || {
            map.values()
                .filter(|t| lock(&t.state).creator == Some(owner))
                .count()
        };
        let per_connection = || {
            DeclareError::Limit(format!(
                "this connection already created {MAX_PER_CONNECTION} temporary queues, the most \
                 one connection may hold (use another connection, or fewer queues)"
            ))
        };
        if let Some(temp) = map.get(name) {
            let mut state = lock(&temp.state);
            return match state.creator {
                Some(c) if c == owner => {
                    state.idle_ttl = idle_ttl;
                    Ok(Declared::Already)
                }
                Some(_) => Err(DeclareError::InUse),
                None => {
                    drop(state);
                    if owned() >= MAX_PER_CONNECTION {
                        return Err(per_connection());
                    }
                    let mut state = lock(&temp.state);
                    state.creator = Some(owner);
                    state.idle_ttl = idle_ttl;
                    state.last_used = Instant::now();
                    Ok(Declared::Adopted)
                }
            };
        }
        if owned() >= MAX_PER_CONNECTION {
            return Err(per_connection());
        }
        if map.len() >= limit {
            // Abandoned queues must not lock the feature for everyone until their TTL (up to
            // 7 days): one client declaring, filling and leaving could. Only queues held by
            // connections still open (64 each at most) can keep a newcomer out.
            let now = Instant::now();
            let oldest = map
                .iter()
                .filter_map(|(n, t)| evictable(t, now).map(|idle| (idle, n)))
                .max_by_key(|&(idle, _)| idle)
                .map(|(_, n)| n.clone());
            match oldest.and_then(|n| map.remove(&n)) {
                Some(temp) => lock(&self.evicted).push(temp),
                None => {
                    return Err(DeclareError::Limit(format!(
                        "the server holds {limit} temporary queues, its limit, all of them \
                         declared by clients still connected (wait for some to be removed, or \
                         raise --max-temporary-queues)"
                    )))
                }
            }
        }
        let (core, reserved) = create()?;
        let temp = Temporary {
            core,
            reserved,
            state: Mutex::new(State {
                creator: Some(owner),
                last_used: Instant::now(),
                idle_ttl,
                active: 0,
            }),
        };
        map.insert(name.to_owned(), Arc::new(temp));
        Ok(Declared::Created)
    }

    /// Puts back a temporary queue a journal recovered, with no creator: the next connection
    /// to declare it adopts it.
    pub(crate) fn restore(
        &self,
        name: &str,
        core: Arc<QueueCore>,
        reserved: u64,
        idle_ttl: Duration,
    ) {
        let temp = Temporary {
            core,
            reserved,
            state: Mutex::new(State {
                creator: None,
                last_used: Instant::now(),
                idle_ttl: idle_ttl.min(MAX_IDLE_TTL),
                active: 0,
            }),
        };
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_owned(), Arc::new(temp));
    }

    /// `owner`'s connection closed: the queues it created have no creator from now on.
    pub(crate) fn disconnected(&self, owner: Owner) {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        for temp in map.values() {
            let mut state = lock(&temp.state);
            if state.creator == Some(owner) {
                state.creator = None;
                state.last_used = Instant::now();
            }
        }
    }

    /// Every temporary queue now, each held in use while the guard lives (so none is removed
    /// meanwhile), without counting as a use of it: its idle time goes on.
    pub(crate) fn all_in_use(&self) -> Vec<InUse> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|temp| {
                lock(&temp.state).active += 1;
                InUse {
                    temp: Arc::clone(temp),
                    request: false,
                }
            })
            .collect()
    }

    /// Every temporary queue now, sorted by name.
    pub(crate) fn snapshot(&self) -> Vec<Arc<QueueCore>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.values().map(|t| Arc::clone(&t.core)).collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Empties the queues a `declare` took out to make room, dropping their items and
    /// releasing their memory; returns what they held. On the reaper's thread only.
    pub(crate) fn sweep_evicted(&self) -> Vec<Removed> {
        let evicted = std::mem::take(&mut *lock(&self.evicted));
        evicted.iter().map(|temp| remove(temp)).collect()
    }

    /// Removes the queues whose creator is gone that are empty and unused for [`GRACE`], or
    /// unused for their idle TTL; none with items leased or a request being served. Their
    /// items are dropped and their memory released; returns what was removed. On the
    /// reaper's thread only (it alone moves delayed items, which draining must not race).
    pub(crate) fn sweep(&self, now: Instant) -> Vec<Removed> {
        let removable = |temp: &Temporary| {
            let state = lock(&temp.state);
            if state.creator.is_some() || state.active > 0 || temp.core.leased() > 0 {
                return false;
            }
            let idle = now.saturating_duration_since(state.last_used);
            let empty = temp.core.len() == 0 && temp.core.delayed_len() == 0;
            (empty && idle >= GRACE) || idle >= state.idle_ttl
        };
        // Most ticks remove nothing: check under the read lock first.
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if !map.values().any(|t| removable(t)) {
                return Vec::new();
            }
        }
        let mut gone = Vec::new();
        {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, temp| match removable(temp) {
                true => {
                    gone.push(Arc::clone(temp));
                    false
                }
                false => true,
            });
        }
        gone.iter().map(|temp| remove(temp)).collect()
    }
}

/// How long `temp` has been idle if a new queue may take its place at the cap: its creator
/// gone past the [`GRACE`] (so a client reconnecting after a blip keeps it), no lease out and
/// no request being served.
fn evictable(temp: &Temporary, now: Instant) -> Option<Duration> {
    let state = lock(&temp.state);
    let idle = now.saturating_duration_since(state.last_used);
    let unused = state.creator.is_none() && state.active == 0 && temp.core.leased() == 0;
    (unused && idle >= GRACE).then_some(idle)
}

/// Drops the items of a queue taken out of the map and releases its memory.
fn remove(temp: &Temporary) -> Removed {
    let dropped = temp.core.drain();
    temp.core.memory().release(temp.reserved);
    (temp.core.name().to_owned(), dropped)
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::config::QueueConfig;
    use crate::core::memory::Memory;

    fn declared(temps: &Temporaries, name: &str, owner: Owner) {
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        std::mem::forget(stop_tx);
        let create = || {
            let memory = Arc::new(Memory::new(u64::MAX));
            let core = QueueCore::new(
                name,
                QueueConfig::default(),
                None,
                100,
                memory,
                stop_rx,
                None,
            );
            Ok((Arc::new(core), 0))
        };
        let outcome = temps.declare(name, owner, Duration::from_secs(3600), 8, create);
        assert_eq!(outcome, Ok(Declared::Created));
    }

    #[test]
    fn a_queue_held_while_a_closed_connection_returns_its_leases_is_not_removed_nor_refreshed() {
        let temps = Temporaries::default();
        declared(&temps, "r", 1);
        temps.disconnected(1);
        let left = Instant::now();
        let held = temps.all_in_use();
        assert!(temps.sweep(left + GRACE * 2).is_empty(), "held in use");
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        // Holding it was no request: its idle time still runs from its creator's leaving.
        let removed = temps.sweep(left + GRACE + Duration::from_millis(10));
        assert_eq!(removed, vec![("r".to_owned(), 0)]);
    }
}

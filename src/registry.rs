//! The server's named queues: each a crossbeam channel of opaque encoded payloads.
//!
//! Blocking waits select on the queue and on a stop channel that is never sent on: the server
//! drops its sender at shutdown, which wakes every waiter at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{self as channel, Receiver, Select, Sender, TryRecvError, TrySendError};

/// An item as the server stores it: the encoded bytes, never decoded here.
pub(crate) type Payload = Vec<u8>;

/// CBOR overhead of one item inside a reply (a byte string header is at most 9 bytes).
pub(crate) const ITEM_OVERHEAD: usize = 9;
/// CBOR overhead of a reply around its items, with room to spare.
pub(crate) const REPLY_OVERHEAD: usize = 64;

/// One named queue.
pub(crate) struct QueueCore {
    name: String,
    tx: Sender<Payload>,
    rx: Receiver<Payload>,
    capacity: Option<usize>,
    max_item: usize,
    stop: Receiver<()>,
}

/// How a put ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    Done,
    Full { accepted: usize },
    TooLarge { accepted: usize },
    Closed { accepted: usize },
}

/// How a get ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GetOutcome {
    Items(Vec<Payload>),
    Empty,
    Closed,
}

impl QueueCore {
    fn new(name: &str, capacity: Option<usize>, max_item: usize, stop: Receiver<()>) -> Self {
        let (tx, rx) = match capacity {
            Some(n) => channel::bounded(n),
            None => channel::unbounded(),
        };
        QueueCore {
            name: name.to_owned(),
            tx,
            rx,
            capacity,
            max_item,
            stop,
        }
    }

    /// The queue's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Items waiting in the queue.
    pub(crate) fn len(&self) -> usize {
        self.rx.len()
    }

    /// The bound of a bounded queue.
    pub(crate) fn capacity(&self) -> Option<usize> {
        self.capacity
    }

    /// The largest item this queue accepts: one that a reply frame can always carry.
    pub(crate) fn max_item(&self) -> usize {
        self.max_item
    }

    fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Appends `items` in order, waiting until `deadline` (`None`: for ever) for room.
    pub(crate) fn put<I>(&self, items: I, deadline: Option<Instant>) -> PutOutcome
    where
        I: IntoIterator<Item = Payload>,
    {
        if self.stopped() {
            return PutOutcome::Closed { accepted: 0 };
        }
        for (accepted, item) in items.into_iter().enumerate() {
            if item.len() > self.max_item {
                return PutOutcome::TooLarge { accepted };
            }
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => match self.wait_to_send(item, deadline) {
                    Ok(()) => {}
                    Err(WaitEnd::Timeout) => return PutOutcome::Full { accepted },
                    Err(WaitEnd::Stopped) => return PutOutcome::Closed { accepted },
                },
                Err(TrySendError::Disconnected(_)) => return PutOutcome::Closed { accepted },
            }
        }
        PutOutcome::Done
    }

    fn wait_to_send(&self, item: Payload, deadline: Option<Instant>) -> Result<(), WaitEnd> {
        let mut sel = Select::new();
        let send = sel.send(&self.tx);
        sel.recv(&self.stop);
        let oper = match deadline {
            Some(d) => sel.select_deadline(d).map_err(|_| WaitEnd::Timeout)?,
            None => sel.select(),
        };
        if oper.index() == send {
            oper.send(&self.tx, item).map_err(|_| WaitEnd::Stopped)
        } else {
            let _ = oper.recv(&self.stop);
            Err(WaitEnd::Stopped)
        }
    }

    /// Takes up to `max` items: waits until `deadline` (`None`: for ever) for the first, then
    /// takes those ready while their encoded size stays within `budget` bytes.
    ///
    /// `carry` is the caller's slot for an item taken but left out for lack of budget; it is
    /// served first next time, so nothing is lost or reordered.
    pub(crate) fn get(
        &self,
        max: usize,
        deadline: Option<Instant>,
        budget: usize,
        carry: &mut Option<Payload>,
    ) -> GetOutcome {
        if self.stopped() {
            return GetOutcome::Closed;
        }
        let first = match carry.take() {
            Some(item) => item,
            None => match self.rx.try_recv() {
                Ok(item) => item,
                Err(_) => match self.wait_to_recv(deadline) {
                    Ok(item) => item,
                    Err(WaitEnd::Timeout) => return GetOutcome::Empty,
                    Err(WaitEnd::Stopped) => return GetOutcome::Closed,
                },
            },
        };
        let mut used = first.len() + ITEM_OVERHEAD;
        let mut items = vec![first];
        while items.len() < max {
            let Ok(item) = self.rx.try_recv() else { break };
            used += item.len() + ITEM_OVERHEAD;
            if used > budget {
                *carry = Some(item);
                break;
            }
            items.push(item);
        }
        GetOutcome::Items(items)
    }

    fn wait_to_recv(&self, deadline: Option<Instant>) -> Result<Payload, WaitEnd> {
        let mut sel = Select::new();
        let recv = sel.recv(&self.rx);
        sel.recv(&self.stop);
        let oper = match deadline {
            Some(d) => sel.select_deadline(d).map_err(|_| WaitEnd::Timeout)?,
            None => sel.select(),
        };
        if oper.index() == recv {
            oper.recv(&self.rx).map_err(|_| WaitEnd::Stopped)
        } else {
            let _ = oper.recv(&self.stop);
            Err(WaitEnd::Stopped)
        }
    }

    /// Puts back an item that was taken but could not be delivered, waiting for room if
    /// needed; it is only dropped when the server is shutting down.
    pub(crate) fn requeue(&self, item: Payload) {
        if let PutOutcome::Closed { .. } = self.put([item], None) {
            log::debug!("queue {}: shutdown dropped an undelivered item", self.name);
        }
    }
}

enum WaitEnd {
    Timeout,
    Stopped,
}

/// The fixed set of queues a server hosts, by name and by index.
pub(crate) struct Registry {
    queues: Vec<Arc<QueueCore>>,
    index: HashMap<String, usize>,
}

impl Registry {
    /// Creates the queues; `specs` holds unique names with optional bounds.
    pub(crate) fn new(
        specs: &[(String, Option<usize>)],
        max_item: usize,
        stop: &Receiver<()>,
    ) -> Self {
        let queues: Vec<_> = specs
            .iter()
            .map(|(name, cap)| Arc::new(QueueCore::new(name, *cap, max_item, stop.clone())))
            .collect();
        let index = specs
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        Registry { queues, index }
    }

    /// The queue called `name` and its index.
    pub(crate) fn lookup(&self, name: &str) -> Option<(usize, &Arc<QueueCore>)> {
        self.index.get(name).map(|&i| (i, &self.queues[i]))
    }

    /// The queue at `index`.
    pub(crate) fn get(&self, index: usize) -> &Arc<QueueCore> {
        &self.queues[index]
    }

    /// How many queues there are.
    pub(crate) fn len(&self) -> usize {
        self.queues.len()
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use std::time::Duration;

    fn core(capacity: Option<usize>) -> (QueueCore, Sender<()>) {
        let (stop_tx, stop_rx) = channel::bounded(0);
        (QueueCore::new("q", capacity, 100, stop_rx), stop_tx)
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(20))
    }

    #[test]
    fn smoke() {
        let (q, _stop) = core(None);
        assert_eq!(q.put([vec![1], vec![2]], None), PutOutcome::Done);
        let mut carry = None;
        assert_eq!(
            q.get(10, soon(), usize::MAX, &mut carry),
            GetOutcome::Items(vec![vec![1], vec![2]])
        );
        assert_eq!(q.get(10, soon(), usize::MAX, &mut carry), GetOutcome::Empty);
    }

    #[test]
    fn bounded_put_reports_what_it_accepted() {
        let (q, _stop) = core(Some(2));
        assert_eq!(
            q.put([vec![1], vec![2], vec![3]], soon()),
            PutOutcome::Full { accepted: 2 }
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn oversized_item_is_refused() {
        let (q, _stop) = core(None);
        assert_eq!(
            q.put([vec![0; 101]], None),
            PutOutcome::TooLarge { accepted: 0 }
        );
    }

    #[test]
    fn budget_carries_the_overflow_item_in_order() {
        let (q, _stop) = core(None);
        q.put([vec![1; 50], vec![2; 50], vec![3; 50]], None);
        let mut carry = None;
        let GetOutcome::Items(first) = q.get(10, soon(), 120, &mut carry) else {
            panic!()
        };
        assert_eq!(first.len(), 2);
        assert_eq!(carry.as_deref(), Some(&[3u8; 50][..]));
        let GetOutcome::Items(rest) = q.get(10, soon(), 120, &mut carry) else {
            panic!()
        };
        assert_eq!(rest, vec![vec![3; 50]]);
        assert!(carry.is_none());
    }

    #[test]
    fn stop_wakes_a_blocked_get() {
        let (q, stop) = core(None);
        let waiter = std::thread::spawn(move || q.get(1, None, usize::MAX, &mut None));
        drop(stop);
        assert_eq!(waiter.join().unwrap(), GetOutcome::Closed);
    }
}

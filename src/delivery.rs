//! `Delivery<T>`: an item taken under a lease that the caller acknowledges explicitly.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use crate::backend::Backend;
use crate::connection::{Generation, Settle};
use crate::error::{Error, Result};

/// An item taken with [`Queue::reserve`](crate::Queue::reserve) and its forms, leased to this
/// client until [`ack`](Delivery::ack) says it is done.
///
/// Dropping a delivery without acknowledging it gives the item back to the queue, as
/// [`nack`](Delivery::nack) does. A lease that outlives the queue's lease timeout ends and
/// the item is delivered again; a client with `auto_touch` (the default) extends its leases
/// while it holds them, and [`touch`](Delivery::touch) does so by hand.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// # let server = distq::Server::builder().authkey("k").queue("tasks").bind("127.0.0.1:0")?;
/// # let client = distq::Client::connect(server.local_addr(), "k")?;
/// let tasks = client.queue::<u64>("tasks")?;
/// tasks.put(21)?;
/// let task = tasks.reserve_timeout(Duration::from_secs(1))?;
/// let answer = *task * 2; // the work
/// assert_eq!(answer, 42);
/// task.ack()?; // done: the item is gone for good
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Delivery<T> {
    item: T,
    redeliveries: u32,
    /// `None` once settled.
    lease: Option<LeaseRef>,
}

/// The server-side lease behind a delivery.
pub(crate) struct LeaseRef {
    backend: Backend,
    id: u64,
    generation: Generation,
}

impl<T> Delivery<T> {
    pub(crate) fn new(item: T, redeliveries: u32, lease: LeaseRef) -> Self {
        Delivery {
            item,
            redeliveries,
            lease: Some(lease),
        }
    }

    /// The item.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<String>("q")?;
    /// q.put("hello".to_string())?;
    /// let delivery = q.reserve()?;
    /// assert_eq!(delivery.item(), "hello");
    /// assert_eq!(delivery.len(), 5); // a delivery also derefs to its item
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn item(&self) -> &T {
        &self.item
    }

    /// How many earlier deliveries of this item failed (0 the first time): its lease expired,
    /// it was nacked (dropped unsettled, or given back because it did not decode), or its
    /// connection broke while this was the oldest lease that connection held on the queue
    /// (the task a worker running its batch in order was on). The other leases a broken
    /// connection held were most likely prefetched and never started: they come back without
    /// adding to this count. It is the count compared with
    /// [`QueueConfig::max_redeliveries`](crate::QueueConfig::max_redeliveries), and a count
    /// of 0 does not prove this is the first delivery.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(7)?;
    /// let first = q.reserve()?;
    /// assert_eq!(first.redeliveries(), 0);
    /// first.nack()?; // back to the queue
    /// assert_eq!(q.reserve()?.redeliveries(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn redeliveries(&self) -> u32 {
        self.redeliveries
    }

    /// Marks the item done; it leaves the queue for good. Fails with
    /// [`Error::LeaseExpired`] if the lease ended first (the item is delivered again).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("jobs").bind("127.0.0.1:0")?;
    /// # server.queue::<u32>("jobs")?.put(3)?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let jobs = client.queue::<u32>("jobs")?;
    /// let job = jobs.reserve_timeout(Duration::from_secs(5))?;
    /// let answer = *job * 2; // the work
    /// job.ack()?; // only now is the job gone for good
    /// assert_eq!((answer, jobs.len()?), (6, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ack(mut self) -> Result<()> {
        self.settle(Settle::Ack)
    }

    /// Gives the item back to the queue now, to be delivered again (this counts towards the
    /// queue's poison threshold).
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(1)?;
    /// let d = q.reserve()?;
    /// d.nack()?; // cannot do it now: someone else may
    /// assert_eq!(q.len()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn nack(mut self) -> Result<()> {
        self.settle(Settle::Nack)
    }

    /// Gives the item back to come back only after `delay` (beanstalkd's release with a
    /// delay): a retry's backoff that holds no worker meanwhile. It counts towards the poison
    /// threshold like [`nack`](Delivery::nack); an item past it goes to `NAME.dead` at once.
    /// A server too old to delay items is refused with [`Error::Unsupported`]: the lease is
    /// then still held (and given back on drop).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(1)?;
    /// q.reserve()?.nack_delayed(Duration::from_millis(100))?; // try again in 100 ms
    /// assert_eq!((q.len()?, server.stats().queues[0].delayed), (0, 1));
    /// assert_eq!(q.reserve_timeout(Duration::from_secs(5))?.redeliveries(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn nack_delayed(self, delay: Duration) -> Result<()> {
        self.nack_with(Some(delay), true)
    }

    /// Gives the item back to the front of the queue **without** counting a failed delivery:
    /// its [`redeliveries`](Delivery::redeliveries) stay as they were, so an item given back
    /// however often is never dead-lettered for it. For work this client will not do that is
    /// not the item's fault: a graceful shutdown, a task meant for another host. A server
    /// too old for it is refused with [`Error::Unsupported`] (the lease is then still held).
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(1)?;
    /// q.reserve()?.give_back()?; // shutting down: someone else takes it
    /// assert_eq!(q.reserve()?.redeliveries(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn give_back(self) -> Result<()> {
        self.nack_with(None, false)
    }

    /// [`give_back`](Delivery::give_back), the item coming back only after `delay`: its
    /// redeliveries unchanged, from the delayed lane meanwhile (as
    /// [`nack_delayed`](Delivery::nack_delayed), but not counted).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(1)?;
    /// q.reserve()?.give_back_delayed(Duration::from_millis(100))?; // not now, not my fault
    /// assert_eq!(q.reserve_timeout(Duration::from_secs(5))?.redeliveries(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn give_back_delayed(self, delay: Duration) -> Result<()> {
        self.nack_with(Some(delay), false)
    }

    fn nack_with(mut self, delay: Option<Duration>, count: bool) -> Result<()> {
        let Some(lease) = self.lease.take() else {
            return Err(Error::LeaseExpired);
        };
        match lease
            .backend
            .nack_with(lease.generation, &[lease.id], delay, count)
        {
            Ok(refused) if refused.is_empty() => Ok(()),
            Ok(_) => Err(Error::LeaseExpired),
            Err(e) => {
                self.lease = Some(lease);
                Err(e)
            }
        }
    }

    /// Extends the lease by a full lease timeout from now. Fails with
    /// [`Error::LeaseExpired`] if it had ended.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # server.queue::<u32>("q")?.put(1)?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let q = client.queue::<u32>("q")?;
    /// let long_job = q.reserve()?;
    /// // ... part of a long computation ...
    /// long_job.touch()?; // a full lease timeout from now again
    /// long_job.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn touch(&self) -> Result<()> {
        let lease = self.lease.as_ref().ok_or(Error::LeaseExpired)?;
        match lease
            .backend
            .touch(lease.generation, &[lease.id])?
            .is_empty()
        {
            true => Ok(()),
            false => Err(Error::LeaseExpired),
        }
    }

    pub(crate) fn into_lease(mut self) -> Option<LeaseRef> {
        self.lease.take()
    }

    fn settle(&mut self, settle: Settle) -> Result<()> {
        match self.lease.take() {
            Some(lease) => LeaseRef::settle_all(settle, [lease]),
            None => Err(Error::LeaseExpired),
        }
    }
}

impl<T> Deref for Delivery<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.item
    }
}

impl<T: fmt::Debug> fmt::Debug for Delivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("item", &self.item)
            .field("redeliveries", &self.redeliveries)
            .field("settled", &self.lease.is_none())
            .finish()
    }
}

impl<T> Drop for Delivery<T> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease
                .backend
                .defer(Settle::Nack, lease.generation, &[lease.id]);
        }
    }
}

impl LeaseRef {
    pub(crate) fn new(backend: Backend, id: u64, generation: Generation) -> Self {
        LeaseRef {
            backend,
            id,
            generation,
        }
    }

    /// Settles leases with one request per queue and connection generation; fails with
    /// [`Error::LeaseExpired`] if any had ended (the others are settled).
    pub(crate) fn settle_all(
        settle: Settle,
        leases: impl IntoIterator<Item = LeaseRef>,
    ) -> Result<()> {
        // Leases settle on the connection (and queue) they came from: deliveries from two
        // clients may share a call, and the same lease id can mean different items on each.
        let mut groups: HashMap<(usize, String, Generation), (Backend, Vec<u64>)> = HashMap::new();
        for lease in leases {
            let key = (
                lease.backend.route_id(),
                lease.backend.name().to_owned(),
                lease.generation,
            );
            groups
                .entry(key)
                .or_insert_with(|| (lease.backend, Vec::new()))
                .1
                .push(lease.id);
        }
        // Every group is settled even if one fails, so no lease is left neither acked nor
        // nacked; the first failure is reported.
        let mut expired = false;
        let mut failure = None;
        for ((_, _, generation), (backend, ids)) in groups {
            match backend.settle(settle, generation, &ids) {
                Ok(refused) => expired |= !refused.is_empty(),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None if expired => Err(Error::LeaseExpired),
            None => Ok(()),
        }
    }
}

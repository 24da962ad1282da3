//! `Queue<T>`: the typed handle on a named queue, local to the server or across the network.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, Fetched, Pending};
use crate::blob::Blob;
use crate::connection::{Connection, Settle};
use crate::core::QueueCore;
use crate::delivery::{Delivery, LeaseRef};
use crate::error::{Error, GetError, PutError, Result};
use crate::payload::{decode_all, encode, encode_all};
use crate::sync::lock;
use crate::time::deadline;
use crate::wire::message::{PutFirst, ITEM_OVERHEAD};

/// A handle on one named queue of items of type `T`, shaped like Python's `queue.Queue` and
/// crossbeam's channels.
///
/// The same type comes from [`Server::queue`](crate::Server::queue) (in-process, no network
/// hop) and [`Client::queue`](crate::Client::queue) (over TCP). Each operation comes in a
/// blocking form, a `try_` form that never waits and a `_timeout` form. A get that finds
/// nothing in time is [`GetError::Empty`]; a put that finds no room in a bounded queue in time
/// is [`PutError::Full`]. Items are encoded as CBOR on `put` and decoded on `get`; the server
/// stores the bytes without looking at them.
///
/// # Delivery: at least once
///
/// An item taken over the network is *leased* to its taker until acknowledged. With
/// [`get`](Queue::get) and its forms, the acknowledgement is implicit: it goes with this
/// handle's next get, or when the handle is dropped. If the connection breaks first, or the
/// lease outlives the queue's lease timeout without being extended, the item goes back to the
/// queue and is delivered again. So an item can be processed twice (at least once), never
/// silently dropped. [`reserve`](Queue::reserve) and its forms hand out a [`Delivery`] to
/// acknowledge explicitly instead. Items taken in-process through `Server::queue` with `get`
/// are taken for good.
///
/// # About threads and cloning
///
/// A `Queue` is `Send + Sync` and cheap to clone. Each clone is its own handle for implicit
/// acknowledgement: give each thread its own clone, or one thread's get acknowledges another
/// thread's item. Remote handles share their client's single connection, which serves one
/// request at a time: see [`Client`](crate::Client).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use distq::{GetError, Server};
///
/// let server = Server::builder().authkey("abc").queue("tasks").bind("127.0.0.1:0")?;
/// let tasks = server.queue::<u32>("tasks")?;
/// tasks.put(1)?;
/// tasks.put_many([2, 3])?;
/// assert_eq!(tasks.get()?, 1);
/// assert_eq!(tasks.get_many(10, Duration::from_millis(10))?, vec![2, 3]);
/// assert!(matches!(tasks.get_timeout(Duration::from_millis(10)), Err(GetError::Empty)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    backend: Backend,
    /// Leases of this handle's last get, acknowledged by its next get or its drop.
    pending: Mutex<Pending>,
    /// The redelivery counts of the items this handle's last get took, in order.
    redeliveries: Mutex<Vec<u32>>,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue::new(self.backend.clone())
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        let pending = std::mem::take(
            &mut *self
                .pending
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !pending.ids.is_empty() {
            self.backend
                .defer(Settle::Ack, pending.generation, &pending.ids);
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.backend.is_local() {
            "local"
        } else {
            "remote"
        };
        f.debug_struct("Queue")
            .field("name", &self.name())
            .field("kind", &kind)
            .finish()
    }
}

impl<T> Queue<T> {
    fn new(backend: Backend) -> Self {
        Queue {
            backend,
            pending: Mutex::new(Pending::default()),
            redeliveries: Mutex::new(Vec::new()),
            _items: PhantomData,
        }
    }

    pub(crate) fn local(core: Arc<QueueCore>) -> Self {
        Queue::new(Backend::Local(core))
    }

    pub(crate) fn remote(conn: Arc<Connection>, name: &str) -> Self {
        Queue::new(Backend::Remote {
            conn,
            name: name.to_owned(),
        })
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(conn: Arc<crate::backend::redis::RedisConn>, name: &str) -> Self {
        Queue::new(Backend::Redis {
            conn,
            name: name.to_owned(),
        })
    }

    /// The queue's name on the server.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").bind("127.0.0.1:0")?;
    /// assert_eq!(server.queue::<u32>("tasks")?.name(), "tasks");
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        self.backend.name()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Puts `item`, waiting as long as a bounded queue stays full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<String>("q")?;
    /// q.put("hello".to_string())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put(&self, item: impl Borrow<T>) -> Result<(), PutError> {
        self.put_encoded(vec![encode(item.borrow())?], None)
    }

    /// Puts `item`, waiting at most `timeout` for room; [`PutError::Full`] after that.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").bounded_queue("q", 1).bind("127.0.0.1:0")?;
    /// let q = server.queue::<u8>("q")?;
    /// q.put_timeout(1, Duration::from_millis(10))?;
    /// assert!(q.put_timeout(2, Duration::from_millis(10)).unwrap_err().is_full());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_timeout(&self, item: impl Borrow<T>, timeout: Duration) -> Result<(), PutError> {
        self.put_encoded(vec![encode(item.borrow())?], Some(timeout))
    }

    /// Puts `item` to be taken only after `delay` (beanstalkd's delayed state): scheduled
    /// work, or a retry's backoff that holds no worker. The item waits in the queue's
    /// delayed lane, counted by [`QueueStats::delayed`](crate::QueueStats::delayed), not by
    /// [`len`](Queue::len), and joins the front of the queue when due (within 100 ms). It
    /// takes memory like any stored item but no place in a bounded queue. A server too old
    /// to delay items is refused with [`Error::Unsupported`] before anything is sent.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("mail").bind("127.0.0.1:0")?;
    /// let mail = server.queue::<String>("mail")?;
    /// mail.put_delayed("reminder".to_string(), Duration::from_millis(200))?;
    /// assert!(mail.try_get().unwrap_err().is_empty()); // not yet
    /// assert_eq!(mail.get_timeout(Duration::from_secs(5))?, "reminder");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_delayed(&self, item: impl Borrow<T>, delay: Duration) -> Result<(), PutError> {
        self.put_many_delayed([item], delay)
    }

    /// [`put_delayed`](Queue::put_delayed) for a batch: every item is due after `delay`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put_many_delayed([1, 2, 3], Duration::from_millis(100))?;
    /// assert_eq!(server.stats().queues[0].delayed, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_many_delayed<I>(&self, items: I, delay: Duration) -> Result<(), PutError>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        self.backend.put_delayed(encode_all(items)?, None, delay)
    }

    /// Puts `item` only if there is room now.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").bounded_queue("q", 1).bind("127.0.0.1:0")?;
    /// let q = server.queue::<u8>("q")?;
    /// q.try_put(1)?;
    /// assert!(q.try_put(2).unwrap_err().is_full());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_put(&self, item: impl Borrow<T>) -> Result<(), PutError> {
        self.put_encoded(vec![encode(item.borrow())?], Some(Duration::ZERO))
    }

    /// Puts every item in order, in as few round trips as the frame size allows (one for
    /// most batches), waiting as long as a bounded queue stays full.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put_many(0..100)?;
    /// assert_eq!(q.len()?, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_many<I>(&self, items: I) -> Result<(), PutError>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        self.put_streamed(items, None)
    }

    /// Puts every item in order like [`put_many`](Queue::put_many), waiting at most `timeout`
    /// in all for room. On [`PutError::Full`], `accepted` says how many items from the front
    /// of the batch were stored.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use distq::PutError;
    /// # let server = distq::Server::builder().authkey("k").bounded_queue("q", 2).bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// let err = q.put_many_timeout([1, 2, 3], Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, PutError::Full { accepted: 2 }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_many_timeout<I>(&self, items: I, timeout: Duration) -> Result<(), PutError>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        self.put_streamed(items, Some(timeout))
    }

    /// Takes the next item, waiting as long as the queue stays empty.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(5)?;
    /// assert_eq!(q.get()?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.get_implicit(1, None, None).map(first)
    }

    /// Takes the next item, waiting at most `timeout`; [`GetError::Empty`] after that.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// assert!(q.get_timeout(Duration::from_millis(10)).unwrap_err().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_implicit(1, Some(timeout), None).map(first)
    }

    /// Takes the next item, waiting until `deadline` at the latest.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// let deadline = Instant::now() + Duration::from_millis(10);
    /// assert!(q.get_deadline(deadline).unwrap_err().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_deadline(&self, deadline: Instant) -> Result<T, GetError> {
        self.get_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// Takes the next item only if one is there now.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// assert!(q.try_get().unwrap_err().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_timeout(Duration::ZERO)
    }

    /// Takes up to `max` items in one round trip: waits at most `timeout` for the first, then
    /// takes whatever else is ready without waiting. [`GetError::Empty`] if none came.
    ///
    /// If an item does not decode as `T`, the call fails with [`Error::Payload`] and the
    /// whole batch goes back to the queue (after `max_redeliveries` such returns, to the
    /// dead-letter queue).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put_many([1, 2, 3])?;
    /// assert_eq!(q.get_many(2, Duration::from_secs(1))?, vec![1, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_many(&self, max: usize, timeout: Duration) -> Result<Vec<T>, GetError> {
        self.get_implicit(max, Some(timeout), None)
    }

    /// Puts `items` on `into`, then takes up to `max` items from this queue like
    /// [`get_many`](Queue::get_many), in one round trip: a worker's whole cycle. The
    /// previous items this handle took are acknowledged between the two, so only once their
    /// results are stored. `into` must come from the same client (or both from the same
    /// server, in-process).
    ///
    /// The put does not wait for room beyond `timeout`; if `into` stays full, nothing is taken
    /// and the call fails with [`Error::ResultsFull`] saying how many items were stored. The
    /// items this handle took before are then still leased to it: call it again, or
    /// [`give_back`](Queue::give_back) them.
    ///
    /// With a [`Reconnect`](crate::Reconnect) policy, if the server shuts down while the call
    /// waits for items after storing the results, it fails with [`Error::Closed`]: the
    /// results are stored and the tasks acknowledged, so there is nothing left to send again.
    /// (Without one, any `Error::Closed` ends the connection, and the server's leases on the
    /// tasks with it.)
    /// An item larger than the server accepts fails the call with [`Error::TooLarge`]
    /// before anything is sent.
    ///
    /// The items are taken to answer the items this handle took with its last get. If the
    /// connection has since reached a different server instance (the server restarted),
    /// that server never had those items: `items` are dropped unsent, as are the
    /// acknowledgements, and the call just takes (the client logs the new instance once).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").queue("results").bind("127.0.0.1:0")?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let tasks = client.queue::<u32>("tasks")?;
    /// let results = client.queue::<u32>("results")?;
    /// tasks.put_many([1, 2])?;
    /// let first = tasks.get_many(1, Duration::from_secs(1))?;
    /// let answers: Vec<u32> = first.iter().map(|n| n * 10).collect();
    /// let next = tasks.get_many_after_put(&results, &answers, 1, Duration::from_secs(1))?;
    /// assert_eq!((next, results.len()?), (vec![2], 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_many_after_put<R, I>(
        &self,
        into: &Queue<R>,
        items: I,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<T>, GetError>
    where
        R: Serialize + DeserializeOwned,
        I: IntoIterator,
        I::Item: Borrow<R>,
    {
        let encoded = encode_all(items)?;
        if !self.backend.same_route(&into.backend) {
            return Err(GetError::Failed(Error::Config(
                "get_many_after_put needs both queues from the same client".into(),
            )));
        }
        if let Some(budget) = self.backend.frame_budget() {
            let size: usize = encoded.iter().map(|b| b.len() + ITEM_OVERHEAD).sum();
            if size <= budget {
                let first = PutFirst {
                    queue: into.name().to_owned(),
                    items: encoded,
                };
                return self.get_implicit(max, Some(timeout), Some(first));
            }
        }
        // In-process, or too much for one frame: put on its own first.
        self.put_answers(into, encoded, Some(timeout))
            .map_err(|e| put_failure(e, into.name()))?;
        self.get_implicit(max, Some(timeout), None)
    }

    /// Puts `items` on `into`, the results of the items this handle took with its last get,
    /// waiting at most `timeout` in all for room, like
    /// [`put_many_timeout`](Queue::put_many_timeout) on `into`. Unlike it, nothing is sent
    /// if the connection has since reached a different server instance (the server
    /// restarted, and never had those items): the results are dropped and the call returns
    /// `Ok`. Use it when results cannot go with the next get
    /// ([`get_many_after_put`](Queue::get_many_after_put)), e.g. into a bounded queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("tasks").bounded_queue("results", 10).bind("127.0.0.1:0")?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let tasks = client.queue::<u32>("tasks")?;
    /// let results = client.queue::<u32>("results")?;
    /// tasks.put(4)?;
    /// let taken = tasks.get_many(1, Duration::from_secs(1))?;
    /// tasks.put_results_timeout(&results, taken.iter().map(|n| n * n), Duration::from_secs(1))?;
    /// assert_eq!(results.len()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_results_timeout<R, I>(
        &self,
        into: &Queue<R>,
        items: I,
        timeout: Duration,
    ) -> Result<(), PutError>
    where
        R: Serialize + DeserializeOwned,
        I: IntoIterator,
        I::Item: Borrow<R>,
    {
        if !self.backend.same_route(&into.backend) {
            return Err(PutError::Failed(Error::Config(
                "put_results_timeout needs both queues from the same client".into(),
            )));
        }
        self.put_answers(into, encode_all(items)?, Some(timeout))
    }

    /// Stores results on `into` unless the connection moved to another server instance since
    /// this handle's pending items were taken.
    fn put_answers<R>(
        &self,
        into: &Queue<R>,
        encoded: Vec<Blob>,
        timeout: Option<Duration>,
    ) -> Result<(), PutError> {
        let taken = {
            let pending = lock(&self.pending);
            (!pending.ids.is_empty()).then_some(pending.generation)
        };
        match taken {
            Some(generation) => into
                .backend
                .put_answering(encoded, timeout, generation)
                .map(drop),
            None => into.backend.put(encoded, timeout),
        }
    }

    /// Takes the next item under a lease that [`Delivery::ack`] ends, waiting as long as the
    /// queue stays empty. Dropping the delivery without acknowledging it gives the item back.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(6)?;
    /// let delivery = q.reserve()?;
    /// assert_eq!(*delivery, 6);
    /// delivery.ack()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve(&self) -> Result<Delivery<T>, GetError> {
        self.reserve_batch(1, None).map(first)
    }

    /// Like [`reserve`](Queue::reserve), waiting at most `timeout`; [`GetError::Empty`] after.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(6)?;
    /// let delivery = q.reserve_timeout(Duration::from_secs(1))?;
    /// delivery.nack()?; // give it back
    /// assert_eq!(q.len()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve_timeout(&self, timeout: Duration) -> Result<Delivery<T>, GetError> {
        self.reserve_batch(1, Some(timeout)).map(first)
    }

    /// Like [`reserve`](Queue::reserve), only if an item is there now.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// assert!(q.try_reserve().unwrap_err().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_reserve(&self) -> Result<Delivery<T>, GetError> {
        self.reserve_batch(1, Some(Duration::ZERO)).map(first)
    }

    /// Takes up to `max` items under leases in one round trip, like
    /// [`get_many`](Queue::get_many); acknowledge them with [`ack_many`](Queue::ack_many).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put_many([1, 2, 3])?;
    /// let batch = q.reserve_many(10, Duration::from_secs(1))?;
    /// assert_eq!(batch.len(), 3);
    /// q.ack_many(batch)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reserve_many(
        &self,
        max: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery<T>>, GetError> {
        self.reserve_batch(max, Some(timeout))
    }

    /// Acknowledges deliveries in one round trip per queue and connection: each delivery
    /// settles on the connection it came from, whichever handle this is. Fails with
    /// [`Error::LeaseExpired`] if any lease had ended; the others are acknowledged. If a
    /// connection fails, the deliveries of every other connection are still acknowledged
    /// and the first failure is returned (the failed connection's leases return to their
    /// queue, as for any broken connection).
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put_many([1, 2])?;
    /// let batch = vec![q.reserve()?, q.reserve()?];
    /// q.ack_many(batch)?;
    /// assert_eq!(q.len()?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ack_many(&self, deliveries: impl IntoIterator<Item = Delivery<T>>) -> Result<()> {
        LeaseRef::settle_all(
            Settle::Ack,
            deliveries.into_iter().filter_map(Delivery::into_lease),
        )
    }

    /// Gives back the items this handle's last get took, unacknowledged: they go back to the
    /// queue now (counting as a redelivery) instead of being acknowledged by the next get or
    /// the handle's drop. For a worker that could not store its results.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let q = client.queue::<u32>("q")?;
    /// q.put(1)?;
    /// assert_eq!(q.get_timeout(Duration::from_secs(1))?, 1);
    /// q.give_back()?;
    /// assert_eq!(q.len()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn give_back(&self) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.ids.is_empty() {
            return Ok(());
        }
        self.backend
            .settle(Settle::Nack, pending.generation, &pending.ids)
            .map(drop)
    }

    /// Like [`give_back`](Queue::give_back), **without** counting a failed delivery, as
    /// [`Delivery::give_back`] does for a reserved item: for work this client will not do
    /// that is not the items' fault (it is shutting down, or misconfigured). A server too old
    /// for it refuses with [`Error::Unsupported`]; the items are then still this handle's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let q = client.queue::<u32>("q")?;
    /// q.put(1)?;
    /// q.get_timeout(Duration::from_secs(1))?;
    /// q.give_back_uncounted()?;
    /// q.get_timeout(Duration::from_secs(1))?;
    /// assert_eq!(q.redeliveries(), vec![0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn give_back_uncounted(&self) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.ids.is_empty() {
            return Ok(());
        }
        match self
            .backend
            .nack_with(pending.generation, &pending.ids, None, false)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                *lock(&self.pending) = pending;
                Err(e)
            }
        }
    }

    /// How many earlier deliveries failed, for each item this handle's last get (or
    /// [`get_many_after_put`](Queue::get_many_after_put)) took, in order; the count
    /// [`Delivery::redeliveries`] gives for a reserved item. Empty after a get that failed,
    /// and for gets in-process (through `Server::queue`), which take items for good.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// # let client = distq::Client::connect(server.local_addr(), "k")?;
    /// let q = client.queue::<u32>("q")?;
    /// q.put(1)?;
    /// q.get_timeout(Duration::from_secs(1))?;
    /// assert_eq!(q.redeliveries(), vec![0]);
    /// q.give_back()?; // a failed delivery
    /// q.get_timeout(Duration::from_secs(1))?;
    /// assert_eq!(q.redeliveries(), vec![1]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn redeliveries(&self) -> Vec<u32> {
        lock(&self.redeliveries).clone()
    }

    /// How many items wait in the queue now (leased items not counted).
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// let q = server.queue::<u32>("q")?;
    /// q.put(1)?;
    /// assert_eq!(q.len()?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> Result<usize> {
        Ok(self.len_and_capacity()?.0)
    }

    /// `true` when no item waits in the queue now.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").queue("q").bind("127.0.0.1:0")?;
    /// assert!(server.queue::<u32>("q")?.is_empty()?);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The bound of a bounded queue, `None` for an unbounded one.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("k").bounded_queue("q", 8).bind("127.0.0.1:0")?;
    /// assert_eq!(server.queue::<u32>("q")?.capacity()?, Some(8));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn capacity(&self) -> Result<Option<usize>> {
        Ok(self.len_and_capacity()?.1)
    }

    /// Gets with an implicit lease: this handle's previous leases are acknowledged, the new
    /// ones wait for its next get or its drop.
    fn get_implicit(
        &self,
        max: usize,
        timeout: Option<Duration>,
        put: Option<PutFirst>,
    ) -> Result<Vec<T>, GetError> {
        lock(&self.redeliveries).clear();
        if let Some(taken) = self.backend.take_decoded(max, timeout) {
            return taken;
        }
        let (delivered, generation) = self.fetch(max, timeout, put)?;
        let ids: Vec<u64> = delivered.iter().map(|d| d.0).collect();
        match decode_all(delivered.iter().map(|d| &d.1)) {
            Ok(items) => {
                *lock(&self.redeliveries) = delivered.iter().map(|d| d.2).collect();
                *lock(&self.pending) = Pending { generation, ids };
                Ok(items)
            }
            Err(e) => {
                self.backend.defer(Settle::Nack, generation, &ids);
                Err(GetError::Failed(e))
            }
        }
    }

    fn reserve_batch(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Delivery<T>>, GetError> {
        let (delivered, generation) = self.fetch(max, timeout, None)?;
        let items = match decode_all::<T>(delivered.iter().map(|d| &d.1)) {
            Ok(items) => items,
            Err(e) => {
                let ids: Vec<u64> = delivered.iter().map(|d| d.0).collect();
                self.backend.defer(Settle::Nack, generation, &ids);
                return Err(GetError::Failed(e));
            }
        };
        Ok(items
            .into_iter()
            .zip(delivered)
            .map(|(item, d)| {
                let lease = LeaseRef::new(self.backend.clone(), d.0, generation);
                Delivery::new(item, d.2, lease)
            })
            .collect())
    }

    /// Takes up to `max` items under leases, acknowledging this handle's pending ones.
    fn fetch(
        &self,
        max: usize,
        timeout: Option<Duration>,
        put: Option<PutFirst>,
    ) -> Result<Fetched, GetError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        self.backend
            .fetch(max, timeout, put, pending)
            .map_err(|(e, kept)| {
                if let Some(kept) = kept {
                    *lock(&self.pending) = kept;
                }
                e
            })
    }

    /// Encodes and stores a batch a chunk at a time, so the first items are on the queue
    /// (and workers busy) while the rest are still being encoded. If an item fails to
    /// encode, the chunks before it are stored already.
    fn put_streamed<I>(&self, items: I, timeout: Option<Duration>) -> Result<(), PutError>
    where
        I: IntoIterator,
        I::Item: Borrow<T>,
    {
        const CHUNK: usize = 1024;
        let deadline = deadline(timeout);
        let mut items = items.into_iter().peekable();
        let mut accepted = 0;
        while items.peek().is_some() {
            let chunk = items
                .by_ref()
                .take(CHUNK)
                .map(|item| encode(item.borrow()))
                .collect::<Result<Vec<_>>>()?;
            let sent = chunk.len();
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.put_encoded(chunk, left.or(timeout)) {
                Ok(()) => accepted += sent,
                Err(e) => return Err(e.after(accepted)),
            }
        }
        Ok(())
    }

    fn put_encoded(&self, items: Vec<Blob>, timeout: Option<Duration>) -> Result<(), PutError> {
        self.backend.put(items, timeout)
    }

    fn len_and_capacity(&self) -> Result<(usize, Option<usize>)> {
        self.backend.len_and_capacity()
    }
}

/// A put inside a get: its failure is the get's.
pub(crate) fn put_failure(e: PutError, queue: &str) -> GetError {
    match e {
        PutError::Failed(e) | PutError::Partial { error: e, .. } => GetError::Failed(e),
        PutError::Full { accepted } => GetError::Failed(Error::ResultsFull {
            queue: queue.to_owned(),
            accepted,
        }),
        PutError::OverBudget { accepted, limit } => GetError::Failed(Error::OverBudget {
            queue: queue.to_owned(),
            accepted,
            limit,
        }),
    }
}

fn first<X>(mut items: Vec<X>) -> X {
    // A get that returns `Ok` carries at least one item (checked in `fetch`).
    items.swap_remove(0)
}

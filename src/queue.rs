//! `Queue<T>`: the typed handle on a named queue, local to the server or across the network.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::client::Connection;
use crate::codec;
use crate::error::{Error, GetError, PutError, Result};
use crate::message::{ErrorKind, Reply, Request};
use crate::registry::{GetOutcome, Payload, PutOutcome, QueueCore, ITEM_OVERHEAD, REPLY_OVERHEAD};

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
/// # About threads and cloning
///
/// A `Queue` is `Send + Sync` and cheap to clone. Remote handles share their client's single
/// connection, which serves one request at a time: see [`Client`](crate::Client).
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
    _items: PhantomData<fn(T) -> T>,
}

#[derive(Clone)]
enum Backend {
    Local(Arc<QueueCore>),
    Remote { conn: Arc<Connection>, name: String },
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            backend: self.backend.clone(),
            _items: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.backend {
            Backend::Local(_) => "local",
            Backend::Remote { .. } => "remote",
        };
        f.debug_struct("Queue")
            .field("name", &self.name())
            .field("kind", &kind)
            .finish()
    }
}

impl<T> Queue<T> {
    pub(crate) fn local(core: Arc<QueueCore>) -> Self {
        Queue {
            backend: Backend::Local(core),
            _items: PhantomData,
        }
    }

    pub(crate) fn remote(conn: Arc<Connection>, name: &str) -> Self {
        Queue {
            backend: Backend::Remote {
                conn,
                name: name.to_owned(),
            },
            _items: PhantomData,
        }
    }

    /// The queue's name on the server.
    pub fn name(&self) -> &str {
        match &self.backend {
            Backend::Local(core) => core.name(),
            Backend::Remote { name, .. } => name,
        }
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
        self.put_encoded(encode_all(items)?, None)
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
        self.put_encoded(encode_all(items)?, Some(timeout))
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
        self.get_one(None)
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
        self.get_one(Some(timeout))
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
        self.get_one(Some(deadline.saturating_duration_since(Instant::now())))
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
        self.get_one(Some(Duration::ZERO))
    }

    /// Takes up to `max` items in one round trip: waits at most `timeout` for the first, then
    /// takes whatever else is ready without waiting. [`GetError::Empty`] if none came.
    ///
    /// If an item does not decode as `T`, the call fails with [`Error::Payload`] and the
    /// whole batch is consumed.
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
        let items = self.get_encoded(max, Some(timeout))?;
        items
            .iter()
            .map(|p| decode(p))
            .collect::<Result<_>>()
            .map_err(GetError::Failed)
    }

    /// How many items wait in the queue now.
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

    fn get_one(&self, timeout: Option<Duration>) -> Result<T, GetError> {
        let items = self.get_encoded(1, timeout)?;
        // The server sends at least one item, and at most `max`.
        let first = items.first().ok_or_else(no_items)?;
        Ok(decode(first)?)
    }

    fn put_encoded(&self, items: Vec<Payload>, timeout: Option<Duration>) -> Result<(), PutError> {
        match &self.backend {
            Backend::Local(core) => put_local(core, items, timeout),
            Backend::Remote { conn, name } => put_remote(conn, name, items, timeout),
        }
    }

    fn get_encoded(&self, max: usize, timeout: Option<Duration>) -> Result<Vec<Payload>, GetError> {
        let outcome = match &self.backend {
            Backend::Local(core) => {
                let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
                core.get(max, deadline, usize::MAX, &mut None)
            }
            Backend::Remote { conn, name } => {
                let request = Request::Get {
                    queue: name.clone(),
                    max: u32::try_from(max).unwrap_or(u32::MAX),
                    timeout_ms: timeout.map(millis),
                };
                match conn.call(&request, timeout)? {
                    Reply::Items { items } if !items.is_empty() => {
                        GetOutcome::Items(items.into_iter().map(ByteBuf::into_vec).collect())
                    }
                    Reply::Empty => GetOutcome::Empty,
                    other => return Err(reply_error(other, name).into()),
                }
            }
        };
        match outcome {
            GetOutcome::Items(items) => Ok(items),
            GetOutcome::Empty => Err(GetError::Empty),
            GetOutcome::Closed => Err(GetError::Failed(Error::Closed)),
        }
    }

    fn len_and_capacity(&self) -> Result<(usize, Option<usize>)> {
        match &self.backend {
            Backend::Local(core) => Ok((core.len(), core.capacity())),
            Backend::Remote { conn, name } => {
                let request = Request::Len {
                    queue: name.clone(),
                };
                match conn.call(&request, Some(Duration::ZERO))? {
                    Reply::Len { len, capacity } => Ok((
                        usize::try_from(len).unwrap_or(usize::MAX),
                        capacity.map(|c| usize::try_from(c).unwrap_or(usize::MAX)),
                    )),
                    other => Err(reply_error(other, name)),
                }
            }
        }
    }
}

fn put_local(
    core: &QueueCore,
    items: Vec<Payload>,
    timeout: Option<Duration>,
) -> Result<(), PutError> {
    let sizes: Vec<usize> = items.iter().map(Vec::len).collect();
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    match core.put(items, deadline) {
        PutOutcome::Done => Ok(()),
        PutOutcome::Full { accepted } => Err(PutError::Full { accepted }),
        PutOutcome::TooLarge { accepted } => Err(PutError::Failed(Error::FrameTooLarge {
            len: sizes[accepted],
            max: core.max_item(),
        })),
        PutOutcome::Closed { .. } => Err(PutError::Failed(Error::Closed)),
    }
}

/// Sends `items` in frames that each fit the frame limit, stopping at the first that is not
/// stored whole.
fn put_remote(
    conn: &Connection,
    name: &str,
    items: Vec<Payload>,
    timeout: Option<Duration>,
) -> Result<(), PutError> {
    let budget = conn
        .config()
        .max_frame_size
        .saturating_sub(REPLY_OVERHEAD + name.len());
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut accepted = 0;
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let mut batch = Vec::new();
        let mut used = 0;
        while let Some(item) =
            items.next_if(|i| batch.is_empty() || used + i.len() + ITEM_OVERHEAD <= budget)
        {
            used += item.len() + ITEM_OVERHEAD;
            batch.push(ByteBuf::from(item));
        }
        let sent = batch.len();
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let request = Request::Put {
            queue: name.to_owned(),
            items: batch,
            timeout_ms: left.map(millis),
        };
        match conn.call(&request, left)? {
            Reply::Done => accepted += sent,
            Reply::Full { accepted: n } => {
                return Err(PutError::Full {
                    accepted: accepted + usize::try_from(n).unwrap_or(sent),
                })
            }
            other => return Err(reply_error(other, name).into()),
        }
    }
    Ok(())
}

fn encode<T: Serialize>(item: &T) -> Result<Payload> {
    codec::encode(item).map_err(Error::Encode)
}

fn encode_all<T, I>(items: I) -> Result<Vec<Payload>>
where
    T: Serialize,
    I: IntoIterator,
    I::Item: Borrow<T>,
{
    items
        .into_iter()
        .map(|item| encode(item.borrow()))
        .collect()
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    codec::decode(payload).map_err(Error::Payload)
}

/// A timeout in whole milliseconds for the wire, rounded up so that a short wait never
/// becomes a no-wait `try_`.
fn millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

fn no_items() -> GetError {
    GetError::Failed(Error::Protocol("the server sent an empty batch".into()))
}

/// The error a reply stands for when it is not the expected one.
fn reply_error(reply: Reply, queue: &str) -> Error {
    match reply {
        Reply::Error { kind, message } => match kind {
            ErrorKind::UnknownQueue => Error::UnknownQueue(queue.to_owned()),
            ErrorKind::Closed => Error::Closed,
            ErrorKind::TooLarge => Error::Server(message),
            ErrorKind::Protocol => Error::Protocol(format!("the server says: {message}")),
        },
        Reply::Done
        | Reply::Full { .. }
        | Reply::Items { .. }
        | Reply::Empty
        | Reply::Len { .. } => {
            Error::Protocol("the server's reply does not answer the request".into())
        }
    }
}

#[cfg(test)]
mod test {
    use super::millis;
    use std::time::Duration;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}

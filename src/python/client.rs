//! A client of a Python `BaseManager` server, as `manager.connect()` is: distq workers join
//! an unchanged Python master (the seed's `taskmanager.py`).

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::challenge::{answer_challenge, deliver_challenge};
use super::connection::{read_frame, write_frame};
use super::pickle::{self, decode_reply, Dialect, Limits, Value};
use super::rpc;
use crate::error::{AuthFailure, Error, GetError, PutError, Result};
use crate::sync::lock;

/// How long connecting and each handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long past a call's own timeout its reply may take to arrive.
const REPLY_GRACE: Duration = Duration::from_secs(10);

/// The largest reply read: Python's own default has none; 64 MiB bounds what a server can
/// make us hold.
const MAX_REPLY: usize = 64 << 20;

/// What a reply's pickle may cost.
const REPLY_LIMITS: Limits = Limits {
    nodes: 1 << 20,
    depth: 100,
    bytes: MAX_REPLY,
};

/// A connection to a Python `multiprocessing.managers.BaseManager` server, like
/// `manager.connect()`: [`queue`](Manager::queue) stands for `manager.get_task_queue()`.
///
/// Items cross as plain data: any `T` that serializes to None, bool, 64-bit ints, floats,
/// strings, bytes, sequences and maps (a struct is a dict, a tuple or `Vec` a list). Calls
/// from several threads take turns on one connection, as a Python thread's proxies do;
/// give each thread that blocks in `get` its own `Manager`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use distq::python::Manager;
///
/// # let server = distq::Server::builder().authkey("abc").queue("tasks").queue("results")
/// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
/// # let addr = server.python_addr().unwrap();
/// // A Python master (here a distq server's Python listener) at `addr`, authkey b'abc'.
/// let manager = Manager::connect(addr, "abc")?;
/// let tasks = manager.queue::<i64>("get_task_queue")?;
/// let results = manager.queue::<String>("get_result_queue")?;
/// tasks.put(7)?;
/// let n = tasks.get_timeout(Duration::from_secs(1))?;
/// results.put(format!("{n} * {n} = {}", n * n))?;
/// assert_eq!(results.get_timeout(Duration::from_secs(1))?, "7 * 7 = 49");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Manager {
    inner: Arc<Inner>,
}

/// A queue of a Python manager, like the proxy `manager.get_task_queue()` returns; from
/// [`Manager::queue`]. Dropping it releases the proxy (`decref`), as Python does.
///
/// A timed-out `get` is [`GetError::Empty`] (Python's `queue.Empty`) and a put into a full
/// queue [`PutError::Full`] (`queue.Full`); anything else the server raises is
/// [`Error::Python`].
///
/// # Examples
///
/// ```
/// # let server = distq::Server::builder().authkey("abc").queue("tasks").queue("results")
/// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
/// # let addr = server.python_addr().unwrap();
/// let manager = distq::python::Manager::connect(addr, "abc")?;
/// let tasks = manager.queue::<Vec<u32>>("get_task_queue")?;
/// tasks.put(vec![1, 2])?;
/// assert_eq!(tasks.len()?, 1);
/// assert_eq!(tasks.try_get()?, vec![1, 2]);
/// assert!(tasks.try_get().unwrap_err().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ManagedQueue<T> {
    inner: Arc<Inner>,
    ident: String,
    _items: PhantomData<fn(T) -> T>,
}

struct Inner {
    addr: SocketAddr,
    authkey: Vec<u8>,
    /// Which Python the server is, from its first reply: requests are written for it.
    dialect: Dialect,
    /// The connection proxy calls go over (`accept_connection`), opened at the first.
    conn: Mutex<Option<TcpStream>>,
}

impl Manager {
    /// Connects to the Python manager at `addr` with its `authkey` (Python's
    /// `BaseManager(address, authkey).connect()`), checking both the address and the key.
    /// A wrong key is [`Error::Auth`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let addr = server.python_addr().unwrap();
    /// assert!(distq::python::Manager::connect(addr, "abc").is_ok());
    /// let wrong = distq::python::Manager::connect(addr, "xyz");
    /// assert!(matches!(wrong, Err(distq::Error::Auth(_))));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn connect(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        authkey: impl AsRef<[u8]>,
    ) -> Result<Manager> {
        let addr = crate::client::resolve_all(&addr)?[0];
        // Until the server's first reply says which it is: protocol 2, which every Python
        // reads.
        let mut inner = Inner {
            addr,
            authkey: authkey.as_ref().to_vec(),
            dialect: Dialect::Python2,
            conn: Mutex::new(None),
        };
        // `connect()` sends `dummy`; its reply tells which Python the server is.
        let mut stream = inner.open()?;
        let request = inner.request(None, "dummy", Vec::new(), Vec::new());
        write_frame(&mut stream, &request)?;
        let mut buf = Vec::new();
        read_frame(&mut stream, MAX_REPLY, &mut buf)?;
        inner.dialect = pickle::writer(&buf).0;
        returned(&buf)?;
        Ok(Manager {
            inner: Arc::new(inner),
        })
    }

    /// The queue the server registers as `typeid` (`'get_task_queue'` for
    /// `manager.get_task_queue()`); an unknown name is [`Error::Python`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let addr = server.python_addr().unwrap();
    /// let manager = distq::python::Manager::connect(addr, "abc")?;
    /// assert!(manager.queue::<u32>("get_task_queue").is_ok());
    /// assert!(matches!(manager.queue::<u32>("get_nothing"), Err(distq::Error::Python(_))));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn queue<T: Serialize + DeserializeOwned>(&self, typeid: &str) -> Result<ManagedQueue<T>> {
        let created = self
            .inner
            .call_once("create", vec![Value::Text(typeid.into())])?;
        // (ident, exposed): the reference `create` made is ours until the drop.
        let ident = match created {
            Value::Tuple(parts) | Value::List(parts) => parts.first().and_then(rpc::string),
            _ => None,
        }
        .ok_or_else(|| Error::Protocol("a Python manager's create returned no ident".into()))?;
        Ok(ManagedQueue {
            inner: Arc::clone(&self.inner),
            ident,
            _items: PhantomData,
        })
    }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl<T> std::fmt::Debug for ManagedQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedQueue")
            .field("addr", &self.inner.addr)
            .field("ident", &self.ident)
            .finish()
    }
}

impl Inner {
    /// A new connection, through both halves of the handshake.
    fn open(&self) -> Result<TcpStream> {
        let mut stream =
            crate::wire::socket::connect(self.addr, Some(CONNECT_TIMEOUT)).map_err(|source| {
                Error::Connect {
                    addr: self.addr.to_string(),
                    source,
                }
            })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
        answer_challenge(&mut stream, &self.authkey)?;
        deliver_challenge(&mut stream, &self.authkey).map_err(|e| match e {
            Error::Auth(_) => Error::Auth(AuthFailure::ServerUnproven),
            other => other,
        })?;
        Ok(stream)
    }

    fn request(
        &self,
        ident: Option<&str>,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(&str, Value)>,
    ) -> Vec<u8> {
        let ident = ident.map_or(Value::None, |i| Value::Text(i.into()));
        let kwds = kwds
            .into_iter()
            .map(|(k, v)| (Value::Text(k.into()), v))
            .collect();
        let request = Value::Tuple(vec![
            ident,
            Value::Text(method.into()),
            Value::Tuple(args),
            Value::Dict(kwds),
        ]);
        pickle::encode(&request, self.dialect)
    }

    /// A server call on a connection of its own, as Python makes them.
    fn call_once(&self, method: &str, args: Vec<Value>) -> Result<Value> {
        let mut stream = self.open()?;
        write_frame(&mut stream, &self.request(None, method, args, Vec::new()))?;
        let mut buf = Vec::new();
        read_frame(&mut stream, MAX_REPLY, &mut buf)?;
        returned(&buf)
    }

    /// A call on the proxy `ident`, over the proxy connection, waiting up to `wait` (plus a
    /// grace) for the reply; `None` waits as long as it takes.
    fn call(
        &self,
        ident: &str,
        method: &str,
        args: Vec<Value>,
        kwds: Vec<(&str, Value)>,
        wait: Option<Duration>,
    ) -> Result<Value> {
        let mut conn = lock(&self.conn);
        if conn.is_none() {
            let mut stream = self.open()?;
            let name = format!("MainProcess|distq-{}", std::process::id());
            let accept = self.request(None, "accept_connection", vec![Value::Text(name)], vec![]);
            write_frame(&mut stream, &accept)?;
            let mut buf = Vec::new();
            read_frame(&mut stream, MAX_REPLY, &mut buf)?;
            returned(&buf)?;
            *conn = Some(stream);
        }
        let Some(stream) = conn.as_mut() else {
            return Err(Error::Closed);
        };
        let request = self.request(Some(ident), method, args, kwds);
        let mut buf = Vec::new();
        let exchanged = (|| {
            stream.set_read_timeout(wait.map(|w| w.saturating_add(REPLY_GRACE)))?;
            write_frame(stream, &request)?;
            read_frame(stream, MAX_REPLY, &mut buf)
        })();
        if let Err(e) = exchanged {
            // Out of step or gone: the next call opens a new connection.
            *conn = None;
            return Err(e);
        }
        returned(&buf)
    }
}

/// The result of a `#RETURN` reply; an exception or traceback is [`Error::Python`], with
/// `queue.Empty` and `queue.Full` told apart by [`is_queue_error`].
fn returned(reply: &[u8]) -> Result<Value> {
    let value = decode_reply(reply, REPLY_LIMITS)
        .map_err(|e| Error::Protocol(format!("a Python manager's reply: {e}")))?;
    let Value::Tuple(mut parts) = value else {
        return Err(Error::Protocol(
            "a Python manager's reply is not a (kind, result) pair".into(),
        ));
    };
    let (Some(result), Some(kind)) = (parts.pop(), parts.pop()) else {
        return Err(Error::Protocol(
            "a Python manager's reply is not a (kind, result) pair".into(),
        ));
    };
    match rpc::string(&kind).as_deref() {
        Some("#RETURN") => Ok(result),
        Some("#ERROR") => Err(Error::Python(match result {
            Value::Object(name) => name,
            other => format!("{other:?}"),
        })),
        Some(kind @ ("#TRACEBACK" | "#UNSERIALIZABLE")) => Err(Error::Python(
            rpc::string(&result).unwrap_or_else(|| kind.to_owned()),
        )),
        _ => Err(Error::Protocol(
            "a Python manager's reply is of no known kind".into(),
        )),
    }
}

/// Whether `e` is the queue exception `name` (`Empty`, `Full`) of any Python.
fn is_queue_error(e: &Error, name: &str) -> bool {
    match e {
        Error::Python(class) => ["queue.", "_queue.", "Queue."]
            .iter()
            .any(|m| class.strip_prefix(m) == Some(name)),
        _ => false,
    }
}

/// `value` as plain Python data, through its CBOR.
fn to_value<T: Serialize>(item: &T) -> Result<Value> {
    let mut cbor = Vec::new();
    crate::codec::encode_into(item, &mut cbor).map_err(Error::Encode)?;
    crate::codec::decode::<Value>(&cbor).map_err(Error::Encode)
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T> {
    let mut cbor = Vec::new();
    crate::codec::encode_into(value, &mut cbor).map_err(Error::Payload)?;
    crate::codec::decode(&cbor).map_err(Error::Payload)
}

/// A timeout as Python's seconds.
fn seconds(d: Duration) -> Value {
    Value::Float(d.as_secs_f64())
}

impl<T: Serialize + DeserializeOwned> ManagedQueue<T> {
    /// `queue.get(timeout=...)`: the next item, waiting up to `timeout`;
    /// [`GetError::Empty`] if none came.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// let tasks = manager.queue::<u32>("get_task_queue")?;
    /// let empty = tasks.get_timeout(Duration::from_millis(50));
    /// assert!(matches!(empty, Err(distq::GetError::Empty)));
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let kwds = vec![("timeout", seconds(timeout))];
        self.take("get", kwds, Some(timeout))
    }

    /// `queue.get()`: the next item, waiting as long as it takes.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// let tasks = manager.queue::<String>("get_task_queue")?;
    /// tasks.put("hello".to_string())?;
    /// assert_eq!(tasks.get()?, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.take("get", Vec::new(), None)
    }

    /// `queue.get_nowait()`: an item waiting now, or [`GetError::Empty`].
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// let tasks = manager.queue::<u32>("get_task_queue")?;
    /// assert!(tasks.try_get().unwrap_err().is_empty());
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<T, GetError> {
        self.take("get_nowait", Vec::new(), Some(Duration::ZERO))
    }

    fn take(
        &self,
        method: &str,
        kwds: Vec<(&str, Value)>,
        wait: Option<Duration>,
    ) -> Result<T, GetError> {
        match self.inner.call(&self.ident, method, Vec::new(), kwds, wait) {
            Ok(value) => from_value(&value).map_err(GetError::Failed),
            Err(e) if is_queue_error(&e, "Empty") => Err(GetError::Empty),
            Err(e) => Err(GetError::Failed(e)),
        }
    }

    /// `queue.put(item)`: stores `item`, waiting as long as a bounded queue needs.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// let tasks = manager.queue::<(u32, String)>("get_task_queue")?;
    /// tasks.put((1, "one".to_string()))?;
    /// # Ok::<(), distq::PutError>(())
    /// ```
    pub fn put(&self, item: impl Borrow<T>) -> Result<(), PutError> {
        self.store(item.borrow(), None)
    }

    /// `queue.put(item, True, timeout)`: [`PutError::Full`] if a bounded queue had no room
    /// within `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let server = distq::Server::builder().authkey("abc").bounded_queue("tasks", 1)
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// let tasks = manager.queue::<u32>("tasks")?;
    /// tasks.put(1)?;
    /// assert!(tasks.put_timeout(2, Duration::from_millis(20)).unwrap_err().is_full());
    /// # Ok::<(), distq::PutError>(())
    /// ```
    pub fn put_timeout(&self, item: impl Borrow<T>, timeout: Duration) -> Result<(), PutError> {
        self.store(item.borrow(), Some(timeout))
    }

    fn store(&self, item: &T, timeout: Option<Duration>) -> Result<(), PutError> {
        let value = to_value(item).map_err(PutError::Failed)?;
        let args = match timeout {
            Some(t) => vec![value, Value::Bool(true), seconds(t)],
            None => vec![value],
        };
        match self
            .inner
            .call(&self.ident, "put", args, Vec::new(), timeout)
        {
            Ok(_) => Ok(()),
            Err(e) if is_queue_error(&e, "Full") => Err(PutError::Full { accepted: 0 }),
            Err(e) => Err(PutError::Failed(e)),
        }
    }

    /// `queue.qsize()`: the number of items waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// assert_eq!(manager.queue::<u32>("get_task_queue")?.len()?, 0);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn len(&self) -> Result<usize> {
        match self.inner.call(
            &self.ident,
            "qsize",
            Vec::new(),
            Vec::new(),
            Some(Duration::ZERO),
        )? {
            Value::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            other => Err(Error::Protocol(format!(
                "a Python manager's qsize() returned {other:?}"
            ))),
        }
    }

    /// Whether no item is waiting (`queue.empty()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # let server = distq::Server::builder().authkey("abc").queue("tasks")
    /// #     .python_bind("127.0.0.1:0").bind("127.0.0.1:0")?;
    /// # let manager = distq::python::Manager::connect(server.python_addr().unwrap(), "abc")?;
    /// assert!(manager.queue::<u32>("get_task_queue")?.is_empty()?);
    /// # Ok::<(), distq::Error>(())
    /// ```
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl<T> Drop for ManagedQueue<T> {
    fn drop(&mut self) {
        // Best effort, as Python's finalizer: the server forgets the proxy.
        let _ = self
            .inner
            .call_once("decref", vec![Value::Text(self.ident.clone())]);
    }
}

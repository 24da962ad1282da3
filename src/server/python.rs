//! The Python listener: unchanged `multiprocessing.managers.BaseManager.connect()` clients
//! (the seed's `task_worker.py`) on the server's queues.
//!
//! A client opens one connection per server call (`dummy`, `create`, `incref`, `decref`) and
//! one persistent connection per thread (`accept_connection`) for its proxies' calls. The
//! name a client registers (`get_task_queue`) maps to a queue ([`PythonQueues`]); `create`
//! hands out a proxy ident unique to that proxy, so its reference count tells a client that
//! finished with it (it sends `decref` at exit) from one that died.
//!
//! Delivery: an item a `get` hands out is leased to the proxy it was taken through, and
//! acknowledged by the client's next request on that connection (one request, one reply:
//! it read the reply), or when the client releases the proxy (`decref`, which its exit
//! sends). Meanwhile the connection extends the lease. A client that dies holding it (killed
//! mid-task) never does either: the lease runs out (the queue's lease timeout, after its
//! connection is gone) and the item goes back. A thread's connection closes when the thread
//! ends, while its process goes on, so the close alone proves nothing either way. A client
//! killed while blocked in `get` is seen leaving and takes nothing. CPython's own server
//! loses the item in both cases.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind as IoKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::session::peer_alive;
use super::shared::Shared;
use crate::core::{committed, memory_cost, GetOutcome, Owner, PutOutcome, QueueCore};
use crate::error::{Error, Result};
use crate::python::challenge::{answer_challenge, deliver_challenge};
use crate::python::connection::{read_frame, write_frame};
use crate::python::pickle::{self, builtins, queue_module, Dialect, Limits, Refused, Value};
use crate::python::rpc::{self, QueueCall, Request, ServerCall, EXPOSED};
use crate::sync::lock;
use crate::time::deadline;
use crate::wire::socket::DeadlineStream;

/// The registered names Python clients may ask for, and the queues they stand for.
pub(crate) struct PythonQueues {
    typeids: HashMap<String, Arc<QueueCore>>,
    proxies: Mutex<Proxies>,
    /// The next proxy's lease owner: from [`FIRST_OWNER`] up, apart from connection ids.
    next_owner: AtomicU64,
}

/// Proxies' lease owners start here; connection ids count up from 0.
const FIRST_OWNER: Owner = 1 << 62;

/// The proxies handed out and not yet released by every client.
#[derive(Default)]
struct Proxies {
    live: HashMap<String, Arc<Proxy>>,
    /// Idents in the order they were made, for evicting the oldest past [`MAX_PROXIES`].
    order: VecDeque<String>,
    next: u64,
}

/// One proxy a client holds.
struct Proxy {
    core: Arc<QueueCore>,
    /// References the clients hold (`create`, `incref`, less `decref`).
    refs: AtomicI64,
    /// The lease owner of the items taken through it.
    owner: Owner,
}

/// The most proxies tracked. A client that dies never releases its proxies; past this the
/// oldest are forgotten. One still in use then works on (its ident names its queue), but
/// its release is not seen: its items are acknowledged by the next call or come back at
/// their lease timeout (a possible second delivery, never a loss).
const MAX_PROXIES: usize = 65_536;

/// What one request's pickle may cost: values, and nesting below the CBOR decoder's own
/// limit of 128, so whatever is stored reads back as an item; its bytes of text are capped
/// at the frame cap (a memo can repeat one string many times over).
const LIMITS: Limits = Limits {
    nodes: 1 << 18,
    depth: 100,
    bytes: 0,
};

/// The longest ident a request may name (ours are a 16-digit prefix and a queue name).
const MAX_IDENT: usize = 16 + 1 + crate::wire::message::MAX_QUEUE_NAME;

/// A read buffer grown past this by a large request is let go after it.
const KEEP_BUFFER: usize = 64 << 10;

/// How often `join` looks at its queue again.
const JOIN_POLL: Duration = Duration::from_millis(20);

impl PythonQueues {
    /// `typeids` pairs each registered name with its queue; the server's queue names are
    /// registered names too.
    pub(crate) fn new(typeids: HashMap<String, Arc<QueueCore>>) -> Self {
        PythonQueues {
            typeids,
            proxies: Mutex::default(),
            next_owner: AtomicU64::new(FIRST_OWNER),
        }
    }

    /// The names clients may register, sorted, each with its queue's name.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<_> = self
            .typeids
            .iter()
            .map(|(t, q)| match t == q.name() {
                true => t.clone(),
                false => format!("{t} (queue {})", q.name()),
            })
            .collect();
        names.sort();
        names
    }

    fn create(&self, typeid: &str) -> Option<String> {
        let core = self.typeids.get(typeid)?;
        let mut proxies = lock(&self.proxies);
        proxies.next += 1;
        // Unguessable, so one client cannot release (and acknowledge) another's items.
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let prefix = u64::from_le_bytes(random) ^ proxies.next;
        let ident = format!("{prefix:016x}:{}", core.name());
        let proxy = self.new_proxy(core);
        proxies.live.insert(ident.clone(), proxy);
        proxies.order.push_back(ident.clone());
        // Forgets the oldest (and drops the idents of released proxies from the order).
        while proxies.live.len() > MAX_PROXIES || proxies.order.len() > 2 * MAX_PROXIES {
            match proxies.order.pop_front() {
                Some(old) => {
                    proxies.live.remove(&old);
                }
                None => break,
            }
        }
        Some(ident)
    }

    /// The proxy `ident` names. One forgotten (or made by an earlier server) gets a new,
    /// untracked proxy for the queue its ident names: the caller's connection keeps it.
    fn proxy(&self, ident: &str, registry: &crate::core::Registry) -> Option<Arc<Proxy>> {
        if let Some(p) = lock(&self.proxies).live.get(ident) {
            return Some(Arc::clone(p));
        }
        if ident.len() > MAX_IDENT {
            return None;
        }
        let (_, queue) = ident.split_once(':')?;
        registry
            .lookup_fixed(queue)
            .map(|core| self.new_proxy(core))
    }

    fn new_proxy(&self, core: &Arc<QueueCore>) -> Arc<Proxy> {
        Arc::new(Proxy {
            core: Arc::clone(core),
            refs: AtomicI64::new(1),
            owner: self.next_owner.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Adds `delta` to the references of `ident`; at none it is released, with every item
    /// taken through it (its client is done with them). Never fails, as a client's
    /// `register` would raise on a failed `decref`.
    fn count(&self, ident: &str, delta: i64) {
        // One not tracked (forgotten, or never made) has nothing to count.
        let Some(proxy) = lock(&self.proxies).live.get(ident).cloned() else {
            return;
        };
        if proxy.refs.fetch_add(delta, Ordering::SeqCst) + delta <= 0 {
            lock(&self.proxies).live.remove(ident);
            proxy.core.ack_owner(proxy.owner);
        }
    }
}

/// Serves one connection on the Python listener until the client leaves.
pub(crate) fn serve(stream: Arc<TcpStream>, peer: SocketAddr, owner: Owner, shared: &Shared) {
    let Some(python) = &shared.python else {
        return;
    };
    let mut session = Session {
        stream: DeadlineStream::new(stream),
        shared,
        python,
        owner,
        buf: Vec::new(),
        dialect: Dialect::Python3,
        protocol: 4,
        delivered: None,
        unsent: None,
        proxies: HashMap::new(),
        stopped: false,
    };
    let authenticated = session.handshake();
    shared.handshake_done(owner);
    match authenticated {
        Ok(()) => match session.run() {
            Ok(()) | Err(Error::Closed) => log::debug!("{peer}: Python client disconnected"),
            Err(e) => log::warn!("{peer}: closing a Python client's connection: {e}"),
        },
        Err(Error::Closed) => log::debug!("{peer}: Python client left in the handshake"),
        Err(Error::Auth(_)) => shared.warn_unauthenticated(&format!(
            "{peer}: a Python client presented the wrong authkey"
        )),
        Err(e) => shared.warn_unauthenticated(&format!(
            "{peer}: closing a Python client's connection in the handshake: {e}"
        )),
    }
    session.lost_reply();
    shared.registry.release(owner);
    shared.registry.disconnected(owner);
}

/// Tells a Python client why it is refused: the frame a client reads as its challenge.
/// Python prints it (`AssertionError: message = b'distq: too many connections ...'`, or
/// `AuthenticationError: Protocol error, expected challenge: ...`).
pub(crate) fn send_refusal(mut stream: &TcpStream, reason: &str) -> Result<()> {
    let mut text = format!("distq refused the connection: {reason}");
    // Python reads this frame with a cap of 256 bytes.
    while text.len() > 250 {
        text.pop();
    }
    write_frame(&mut stream, text.as_bytes())
}

struct Session<'a> {
    stream: DeadlineStream,
    shared: &'a Shared,
    python: &'a PythonQueues,
    owner: Owner,
    buf: Vec<u8>,
    /// Who wrote the current request, and in which protocol: replies are written for it.
    dialect: Dialect,
    protocol: u8,
    /// The item the last reply handed out, until the client shows it read it.
    delivered: Option<Delivered>,
    /// The item the reply being written hands out.
    unsent: Option<Delivered>,
    /// The proxies this connection's calls named.
    proxies: HashMap<String, Arc<Proxy>>,
    /// The server is stopping: this connection ends without answering.
    stopped: bool,
}

struct Delivered {
    proxy: Arc<Proxy>,
    lease: u64,
}

/// What a request gets: a reply, and whether the connection goes on.
enum Next {
    Reply(Vec<u8>),
    /// `accept_connection`: the reply, then proxy calls until the client leaves.
    Persist(Vec<u8>),
}

impl Session<'_> {
    fn handshake(&mut self) -> Result<()> {
        let config = &self.shared.config;
        self.stream.set_write_timeout(config.write_timeout)?;
        // The server challenges first; the client's answer and its own challenge follow at
        // once. A real client takes two round trips.
        self.stream
            .set_deadline(deadline(config.handshake_timeout))?;
        let key = &self.shared.authkey;
        deliver_challenge(&mut self.stream, key)?;
        self.shared.hello_started(self.owner);
        answer_challenge(&mut self.stream, key)?;
        if !self.shared.admit(self.owner) {
            return Err(Error::Closed);
        }
        self.stream.set_deadline(None)?;
        Ok(())
    }

    fn run(&mut self) -> Result<()> {
        // One server call, and the connection closes, unless it was `accept_connection`.
        let first = self.next_request()?;
        match self.server_call(first) {
            Next::Reply(reply) => return self.send(&reply),
            Next::Persist(reply) => self.send(&reply)?,
        }
        loop {
            let request = self.next_request()?;
            let reply = self.proxy_call(request);
            if self.stopped {
                // As CPython's server ends: no reply, the client sees `EOFError`.
                return Err(Error::Closed);
            }
            self.send(&reply)?;
            // Written: the item it carried is out with the client.
            self.delivered = self.unsent.take();
        }
    }

    /// Reads the next request: waits for it as long as it takes (a worker may idle for
    /// hours; the protocol has no ping), extending the lease of an item handed out
    /// meanwhile, then bounds the rest of its frame by the frame timeout. Its arrival shows
    /// the client read the last reply, so the item that reply handed out is acknowledged.
    fn next_request(&mut self) -> Result<std::result::Result<Request, Vec<u8>>> {
        self.await_frame()?;
        let config = &self.shared.config;
        self.stream.set_deadline(deadline(config.frame_timeout))?;
        let read = read_frame(&mut self.stream, config.max_frame_size, &mut self.buf);
        self.stream.set_deadline(None)?;
        read?;
        if let Some(done) = self.delivered.take() {
            done.proxy.core.ack(done.proxy.owner, &[done.lease]);
        }
        (self.dialect, self.protocol) = pickle::writer(&self.buf);
        let limits = Limits {
            bytes: config.max_frame_size,
            ..LIMITS
        };
        let request = match pickle::decode(&self.buf, limits) {
            Ok(value) => rpc::request(value).map_err(|e| self.traceback(&e)),
            Err(refused) => Err(self.refusal(&refused)),
        };
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        Ok(request)
    }

    /// Waits for the first byte of a request.
    fn await_frame(&mut self) -> Result<()> {
        loop {
            let touch = self
                .delivered
                .as_ref()
                .map(|d| (d.proxy.core.lease_timeout() / 3).max(Duration::from_millis(10)));
            self.stream.set_idle_timeout(touch)?;
            match self.stream.stream().peek(&mut [0u8; 1]) {
                Ok(0) => return Err(Error::Closed),
                Ok(_) => break,
                Err(e) if matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut) => {
                    if let Some(d) = &self.delivered {
                        d.proxy.core.touch(d.proxy.owner, &[d.lease]);
                    }
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.stream.set_idle_timeout(None)?;
        Ok(())
    }

    fn send(&mut self, reply: &[u8]) -> Result<()> {
        self.stream.start_reply()?;
        write_frame(&mut self.stream, reply)
    }

    /// The connection ended. An item handed out stays leased (see the module's docs),
    /// unless the reply carrying it was never written: then it goes back now.
    fn lost_reply(&mut self) {
        if let Some(d) = self.unsent.take() {
            d.proxy.core.nack(d.proxy.owner, &[d.lease]);
        }
    }

    fn server_call(&mut self, request: std::result::Result<Request, Vec<u8>>) -> Next {
        let request = match request {
            Ok(r) => r,
            Err(reply) => return Next::Reply(reply),
        };
        if request.ident.is_some() {
            return Next::Reply(self.traceback(&format!(
                "a call on a proxy ({:?}) before accept_connection",
                request.method
            )));
        }
        let call = match request.server_call() {
            Ok(call) => call,
            Err(e) => return Next::Reply(self.traceback(&e)),
        };
        let ident = || request.args.first().and_then(rpc::string);
        let reply = match call {
            ServerCall::Dummy | ServerCall::Shutdown => self.returned(Value::None),
            ServerCall::Create(typeid) => match self.python.create(&typeid) {
                Some(ident) => rpc::created(&ident, self.dialect),
                None => self.traceback(&format!(
                    "KeyError: {typeid:?}: this distq server registers {}",
                    self.python.names().join(", ")
                )),
            },
            ServerCall::Incref => {
                if let Some(ident) = ident() {
                    self.python.count(&ident, 1);
                }
                self.returned(Value::None)
            }
            ServerCall::Decref => {
                if let Some(ident) = ident() {
                    self.python.count(&ident, -1);
                }
                self.returned(Value::None)
            }
            ServerCall::AcceptConnection => return Next::Persist(self.returned(Value::None)),
            ServerCall::NumberOfObjects => {
                let n = lock(&self.python.proxies).live.len();
                self.returned(Value::Int(n as i64))
            }
            ServerCall::DebugInfo => {
                let proxies = lock(&self.python.proxies);
                let mut lines: Vec<_> = proxies
                    .live
                    .iter()
                    .map(|(ident, p)| {
                        let refs = p.refs.load(Ordering::SeqCst);
                        format!("  {ident}: refcount={refs}\n    queue {:?}", p.core.name())
                    })
                    .collect();
                lines.sort();
                self.returned(Value::Text(lines.join("\n")))
            }
            ServerCall::GetMethods => self.returned(Value::Tuple(
                EXPOSED.iter().map(|m| Value::Text((*m).into())).collect(),
            )),
        };
        Next::Reply(reply)
    }

    fn proxy_call(&mut self, request: std::result::Result<Request, Vec<u8>>) -> Vec<u8> {
        let request = match request {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        let Some(ident) = request.ident.clone() else {
            return self.traceback(&format!(
                "server call {:?} on a proxy connection (one per connection)",
                request.method
            ));
        };
        let Some(proxy) = self.lookup(&ident) else {
            return self.traceback(&format!("KeyError: {ident:?}: no such proxy"));
        };
        let call = match request.queue_call() {
            Ok(call) => call,
            Err(e) => return self.traceback(&e),
        };
        let core = &proxy.core;
        match call {
            QueueCall::Put { item, wait } => self.put(core, &item, wait),
            QueueCall::Get { wait } => self.get(&proxy, wait),
            QueueCall::Qsize => self.returned(Value::Int(core.len() as i64)),
            QueueCall::Empty => self.returned(Value::Bool(core.len() == 0)),
            QueueCall::Full => {
                let full = core.capacity().is_some_and(|c| core.len() >= c);
                self.returned(Value::Bool(full))
            }
            QueueCall::TaskDone => self.returned(Value::None),
            QueueCall::Join => self.join(core),
            QueueCall::Repr => {
                let name = core.name();
                self.returned(Value::Text(format!("<distq queue {name:?}>")))
            }
        }
    }

    /// The proxy `ident`, remembered for this connection (a few per client thread).
    fn lookup(&mut self, ident: &str) -> Option<Arc<Proxy>> {
        if let Some(p) = self.proxies.get(ident) {
            return Some(Arc::clone(p));
        }
        let proxy = self.python.proxy(ident, &self.shared.registry)?;
        if self.proxies.len() >= 64 {
            self.proxies.clear();
        }
        self.proxies.insert(ident.to_owned(), Arc::clone(&proxy));
        Some(proxy)
    }

    fn put(&mut self, core: &QueueCore, item: &Value, wait: Option<Duration>) -> Vec<u8> {
        let blob = match crate::payload::encode(item) {
            Ok(blob) => blob,
            Err(e) => return self.exception("ValueError", &e.to_string()),
        };
        let held = memory_cost(&blob);
        let stream = self.stream.stream();
        let alive = || peer_alive(stream);
        let (outcome, pending) = core.put_staged([blob], None, deadline(wait), &alive, held);
        match committed(outcome, pending) {
            PutOutcome::Done => self.returned(Value::None),
            PutOutcome::Full { .. } => self.queue_error("Full", None),
            PutOutcome::OverBudget { .. } => {
                let memory = core.memory();
                let why = format!(
                    "the server's memory budget is used up ({} of {} bytes)",
                    memory.used(),
                    memory.limit()
                );
                self.queue_error("Full", Some(why))
            }
            PutOutcome::TooLarge { .. } => self.exception(
                "ValueError",
                &format!(
                    "the item exceeds the largest item of {} bytes",
                    core.max_item()
                ),
            ),
            PutOutcome::Closed { .. } => self.stop(),
        }
    }

    fn get(&mut self, proxy: &Arc<Proxy>, wait: Option<Duration>) -> Vec<u8> {
        let core = &proxy.core;
        let stream = self.stream.stream();
        let alive = || peer_alive(stream);
        let budget = self.shared.config.max_frame_size;
        let taken = core.take_leased(proxy.owner, 1, deadline(wait), budget, &alive);
        let leased = match taken {
            GetOutcome::Items(mut items) => match items.pop() {
                Some(l) => l,
                None => return self.queue_error("Empty", None),
            },
            GetOutcome::Empty => return self.queue_error("Empty", None),
            GetOutcome::Closed => return self.stop(),
        };
        match crate::codec::decode::<Value>(leased.payload.as_bytes()) {
            Ok(value) => {
                self.unsent = Some(Delivered {
                    proxy: Arc::clone(proxy),
                    lease: leased.lease,
                });
                self.returned(value)
            }
            Err(e) => {
                // A failed delivery: after the queue's redeliveries it is a dead letter.
                core.nack(proxy.owner, &[leased.lease]);
                self.exception(
                    "TypeError",
                    &format!(
                        "the next item of queue {:?} is not plain data a Python client can \
                         read ({e}); it was returned to the queue",
                        core.name()
                    ),
                )
            }
        }
    }

    /// `Queue.join`: returns once nothing is waiting, delayed or leased.
    fn join(&self, core: &QueueCore) -> Vec<u8> {
        let stream = self.stream.stream();
        while core.len() + core.delayed_len() + core.leased() > 0 {
            if !peer_alive(stream) || self.shared.stopping.load(Ordering::SeqCst) {
                return self.traceback("join() ended: the client left or the server stopped");
            }
            std::thread::sleep(JOIN_POLL);
        }
        self.returned(Value::None)
    }

    /// The server is stopping: the connection ends without a reply.
    fn stop(&mut self) -> Vec<u8> {
        self.stopped = true;
        Vec::new()
    }

    fn returned(&self, value: Value) -> Vec<u8> {
        rpc::returned(value, self.dialect)
    }

    fn traceback(&self, text: &str) -> Vec<u8> {
        rpc::traceback(&format!("distq: {text}"), self.dialect)
    }

    /// A built-in exception (`TypeError`, `ValueError`) raised on the client.
    fn exception(&self, name: &str, message: &str) -> Vec<u8> {
        let args = [Value::Text(format!("distq: {message}"))];
        pickle::error(builtins(self.dialect), name, &args, self.dialect)
    }

    /// `queue.Empty` or `queue.Full`, as the client's own interpreter names it.
    fn queue_error(&self, name: &str, why: Option<String>) -> Vec<u8> {
        let args: Vec<_> = why.map(Value::Text).into_iter().collect();
        let module = queue_module(name, self.dialect, self.protocol);
        pickle::error(module, name, &args, self.dialect)
    }

    /// A request whose pickle was refused: `TypeError` for what is not plain data,
    /// `ValueError` for the rest. Nothing of it was stored.
    fn refusal(&self, refused: &Refused) -> Vec<u8> {
        match refused {
            Refused::NotPlain(_) => self.exception("TypeError", &refused.to_string()),
            _ => self.exception("ValueError", &refused.to_string()),
        }
    }
}

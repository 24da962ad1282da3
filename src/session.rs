//! One server-side connection: the handshake, then read a request, serve it, write the reply.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use crate::auth;
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::frame::Framed;
use crate::message::{ErrorKind, Reply, Request};
use crate::registry::{GetOutcome, Payload, PutOutcome, Registry, REPLY_OVERHEAD};
use crate::socket::DeadlineStream;

/// Serves one connection until the peer leaves, breaks the protocol, or the server stops.
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    registry: &Registry,
    authkey: &[u8],
    config: &ServerConfig,
) {
    let mut session = Session {
        conn: Framed::new(DeadlineStream::new(stream), config.max_frame_size),
        registry,
        budget: config.max_frame_size.saturating_sub(REPLY_OVERHEAD),
        carries: vec![None; registry.len()],
        last_get: None,
    };
    match session.run(authkey, config) {
        Ok(()) | Err(Error::Closed) => log::debug!("{peer}: disconnected"),
        Err(e @ (Error::Auth(_) | Error::Version { .. })) => {
            log::warn!("{peer}: handshake rejected: {e}")
        }
        Err(e) => log::warn!("{peer}: closing connection: {e}"),
    }
    session.return_carries();
}

struct Session<'a> {
    conn: Framed<DeadlineStream>,
    registry: &'a Registry,
    /// Bytes of payload one reply may carry.
    budget: usize,
    /// Per queue, an item taken but not yet sent for lack of room in a reply.
    carries: Vec<Option<Payload>>,
    /// The queue the latest get took from, to return its items if the reply cannot be sent.
    last_get: Option<usize>,
}

impl Session<'_> {
    fn run(&mut self, authkey: &[u8], config: &ServerConfig) -> Result<()> {
        self.conn
            .get_ref()
            .stream()
            .set_write_timeout(config.write_timeout)?;
        // A peer that never finishes authenticating cannot hold a thread past the deadline.
        let deadline = config
            .handshake_timeout
            .and_then(|t| Instant::now().checked_add(t));
        self.conn.get_mut().set_deadline(deadline)?;
        auth::server_handshake(&mut self.conn, authkey)?;
        self.conn.get_mut().set_deadline(None)?;
        loop {
            let request = match self.conn.recv::<Request>() {
                Ok(r) => r,
                Err(e @ Error::Protocol(_)) => {
                    let _ = self.conn.send(&error_reply(ErrorKind::Protocol, &e));
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            log::trace!("request {request:?}");
            let reply = self.handle(request);
            if let Err(e) = self.conn.send(&reply) {
                self.requeue(reply);
                return Err(e);
            }
        }
    }

    fn handle(&mut self, request: Request) -> Reply {
        let (Request::Put { queue, .. } | Request::Get { queue, .. } | Request::Len { queue }) =
            &request;
        let Some((index, core)) = self.registry.lookup(queue) else {
            return error_reply(ErrorKind::UnknownQueue, &Error::UnknownQueue(queue.clone()));
        };
        match request {
            Request::Put {
                items, timeout_ms, ..
            } => match core.put(
                items.into_iter().map(ByteBuf::into_vec),
                deadline(timeout_ms),
            ) {
                PutOutcome::Done => Reply::Done,
                PutOutcome::Full { accepted } => Reply::Full {
                    accepted: accepted as u64,
                },
                PutOutcome::TooLarge { accepted } => Reply::Error {
                    kind: ErrorKind::TooLarge,
                    message: format!(
                        "item {accepted} of the batch exceeds the largest item of {} bytes \
                         (the {accepted} before it were stored)",
                        core.max_item()
                    ),
                },
                PutOutcome::Closed { .. } => closed_reply(),
            },
            Request::Get {
                max, timeout_ms, ..
            } => {
                self.last_get = Some(index);
                let max = (max as usize).max(1);
                match core.get(
                    max,
                    deadline(timeout_ms),
                    self.budget,
                    &mut self.carries[index],
                ) {
                    GetOutcome::Items(items) => Reply::Items {
                        items: items.into_iter().map(ByteBuf::from).collect(),
                    },
                    GetOutcome::Empty => Reply::Empty,
                    GetOutcome::Closed => closed_reply(),
                }
            }
            Request::Len { .. } => Reply::Len {
                len: core.len() as u64,
                capacity: core.capacity().map(|c| c as u64),
            },
        }
    }

    /// Items of a reply that could not be written go back to the queue they came from.
    fn requeue(&mut self, reply: Reply) {
        if let (Reply::Items { items }, Some(index)) = (reply, self.last_get) {
            let core = self.registry.get(index);
            for item in items {
                core.requeue(item.into_vec());
            }
        }
    }

    fn return_carries(&mut self) {
        for (i, carry) in self.carries.iter_mut().enumerate() {
            if let Some(item) = carry.take() {
                self.registry.get(i).requeue(item);
            }
        }
    }
}

/// The instant a relative timeout from the wire ends; `None` (wait for ever) when absent or
/// too far away to represent.
fn deadline(timeout_ms: Option<u64>) -> Option<Instant> {
    timeout_ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

fn error_reply(kind: ErrorKind, error: &Error) -> Reply {
    Reply::Error {
        kind,
        message: error.to_string(),
    }
}

fn closed_reply() -> Reply {
    error_reply(ErrorKind::Closed, &Error::Closed)
}

//! The manager RPC: a request is `(ident, method, args, kwds)`, a reply `(kind, result)`.
//!
//! A connection either carries one server call (`ident` is `None`: `dummy`, `create`,
//! `incref`, `decref`, `accept_connection`, ...) and is closed after its reply, or, after
//! `accept_connection`, carries calls on the proxies of every queue its client holds, told
//! apart by `ident` (here the distq queue's name). This module reads requests into typed
//! calls and writes the replies that need no queue; the listener runs the queue calls.

use std::time::Duration;

use super::pickle::{encode, Dialect, Value};

/// The methods a queue proxy has: the client defines exactly these (leave one out and its
/// proxy lacks it), in the order CPython's server sends them.
pub(crate) const EXPOSED: [&str; 9] = [
    "empty",
    "full",
    "get",
    "get_nowait",
    "join",
    "put",
    "put_nowait",
    "qsize",
    "task_done",
];

/// One request, with its strings as text (Python 2 sends them as its `str`).
#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    pub(crate) ident: Option<String>,
    pub(crate) method: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwds: Vec<(String, Value)>,
}

/// A call on the server itself.
#[derive(Debug, PartialEq)]
pub(crate) enum ServerCall {
    Dummy,
    /// The proxy for the registered name (`get_task_queue`, ...).
    Create(String),
    Incref,
    Decref,
    /// This connection carries proxy calls from now on.
    AcceptConnection,
    NumberOfObjects,
    DebugInfo,
    GetMethods,
    Shutdown,
}

/// A call on a queue's proxy (`queue` is the proxy's ident).
#[derive(Debug, PartialEq)]
pub(crate) enum QueueCall {
    Put {
        item: Value,
        /// `None`: as long as it takes; zero: not at all (`put_nowait`, `block=False`).
        wait: Option<Duration>,
    },
    Get {
        wait: Option<Duration>,
    },
    Qsize,
    Empty,
    Full,
    TaskDone,
    Join,
    Repr,
}

/// A string as either Python sends it.
pub(crate) fn string(v: &Value) -> Option<String> {
    match v {
        Value::Text(t) => Some(t.clone()),
        Value::Str2(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// Reads a request tuple.
pub(crate) fn request(v: Value) -> Result<Request, String> {
    let Value::Tuple(mut parts) = v else {
        return Err("a request is not a tuple".into());
    };
    if parts.len() != 4 {
        return Err(format!("a request has {} parts, not 4", parts.len()));
    }
    let kwds = parts.pop().unwrap_or(Value::None);
    let args = parts.pop().unwrap_or(Value::None);
    let method = parts.pop().unwrap_or(Value::None);
    let ident = parts.pop().unwrap_or(Value::None);
    let ident = match ident {
        Value::None => None,
        other => Some(string(&other).ok_or("an ident is not a str")?),
    };
    let method = string(&method).ok_or("a method name is not a str")?;
    let args = match args {
        Value::Tuple(a) | Value::List(a) => a,
        _ => return Err("arguments are not a tuple".into()),
    };
    let kwds = match kwds {
        Value::Dict(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Ok((string(&k).ok_or("a keyword is not a str")?, v)))
            .collect::<Result<Vec<_>, String>>()?,
        _ => return Err("keywords are not a dict".into()),
    };
    Ok(Request {
        ident,
        method,
        args,
        kwds,
    })
}

impl Request {
    /// The argument at `position`, or the keyword `name`.
    fn arg(&self, position: usize, name: &str) -> Option<&Value> {
        self.args
            .get(position)
            .or_else(|| self.kwds.iter().find(|(k, _)| k == name).map(|(_, v)| v))
    }

    /// The call on the server this request makes (`ident` is `None`).
    pub(crate) fn server_call(&self) -> Result<ServerCall, String> {
        Ok(match self.method.as_str() {
            "dummy" => ServerCall::Dummy,
            "create" => ServerCall::Create(
                self.args
                    .first()
                    .and_then(string)
                    .ok_or("create names no registered type")?,
            ),
            "incref" => ServerCall::Incref,
            "decref" => ServerCall::Decref,
            "accept_connection" => ServerCall::AcceptConnection,
            "number_of_objects" => ServerCall::NumberOfObjects,
            "debug_info" => ServerCall::DebugInfo,
            "get_methods" => ServerCall::GetMethods,
            "shutdown" => ServerCall::Shutdown,
            other => return Err(format!("{other:?} unrecognized")),
        })
    }

    /// The call on a queue proxy this request makes.
    pub(crate) fn queue_call(&self) -> Result<QueueCall, String> {
        let nowait = self.method.ends_with("_nowait");
        Ok(match self.method.as_str() {
            "put" | "put_nowait" => {
                let item = self.arg(0, "item").cloned().ok_or("put() of no item")?;
                QueueCall::Put {
                    item,
                    wait: self.wait(1, nowait)?,
                }
            }
            "get" | "get_nowait" => QueueCall::Get {
                wait: self.wait(0, nowait)?,
            },
            "qsize" => QueueCall::Qsize,
            "empty" => QueueCall::Empty,
            "full" => QueueCall::Full,
            "task_done" => QueueCall::TaskDone,
            "join" => QueueCall::Join,
            "__repr__" | "__str__" => QueueCall::Repr,
            other => return Err(format!("method {other:?} of a queue is not exposed")),
        })
    }

    /// How long a put or get may wait: `block` (at `position`, or by keyword) and
    /// `timeout` (after it), as `queue.Queue` reads them.
    fn wait(&self, position: usize, nowait: bool) -> Result<Option<Duration>, String> {
        if nowait {
            return Ok(Some(Duration::ZERO));
        }
        let block = match self.arg(position, "block") {
            None | Some(Value::Bool(true)) => true,
            Some(Value::Bool(false)) => false,
            Some(Value::Int(n)) => *n != 0,
            Some(Value::None) => false,
            Some(_) => return Err("block is not a bool".into()),
        };
        if !block {
            return Ok(Some(Duration::ZERO));
        }
        let seconds = match self.arg(position + 1, "timeout") {
            None | Some(Value::None) => return Ok(None),
            Some(Value::Int(n)) => *n as f64,
            Some(Value::Float(f)) => *f,
            Some(_) => return Err("timeout is not a number".into()),
        };
        // As queue.Queue: a negative timeout is an error.
        if seconds.is_nan() || seconds < 0.0 {
            return Err("'timeout' must be a non-negative number".into());
        }
        Ok(Some(
            Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX),
        ))
    }
}

/// `('#RETURN', value)`.
pub(crate) fn returned(value: Value, dialect: Dialect) -> Vec<u8> {
    encode(
        &Value::Tuple(vec![Value::Text("#RETURN".into()), value]),
        dialect,
    )
}

/// `('#TRACEBACK', text)`: the client raises `RemoteError` with it.
pub(crate) fn traceback(text: &str, dialect: Dialect) -> Vec<u8> {
    encode(
        &Value::Tuple(vec![
            Value::Text("#TRACEBACK".into()),
            Value::Text(text.into()),
        ]),
        dialect,
    )
}

/// The reply to `create`: the proxy's ident (the queue's name) and its methods.
pub(crate) fn created(queue: &str, dialect: Dialect) -> Vec<u8> {
    let exposed = EXPOSED.iter().map(|m| Value::Text((*m).into())).collect();
    returned(
        Value::Tuple(vec![Value::Text(queue.into()), Value::Tuple(exposed)]),
        dialect,
    )
}

#[cfg(test)]
mod test {
    use super::super::pickle::{decode, Limits};
    use super::*;
    use crate::python::hex;

    const LIMITS: Limits = Limits {
        nodes: 1000,
        depth: 16,
        bytes: 1 << 16,
    };

    fn read(bytes: &[u8]) -> Request {
        request(decode(bytes, LIMITS).unwrap()).unwrap()
    }

    /// The requests of the seed's worker, captured from CPython 3.11, and one from 2.7.
    #[test]
    fn captured_requests_become_calls() {
        let create = read(&hex(
            "8004952300000000000000284e8c06637265617465948c0e6765745f7461736b5f71756575659485947d9474942e",
        ));
        assert_eq!(create.ident, None);
        assert_eq!(
            create.server_call(),
            Ok(ServerCall::Create("get_task_queue".into()))
        );
        let get = read(&hex(concat!(
            "8004952900000000000000288c0c376666383835636335653530948c0367657494",
            "297d948c0774696d656f7574944b017374942e"
        )));
        assert_eq!(get.ident.as_deref(), Some("7ff885cc5e50"));
        assert_eq!(
            get.queue_call(),
            Ok(QueueCall::Get {
                wait: Some(Duration::from_secs(1))
            })
        );
        let put = read(&hex(
            "8004951f00000000000000288c0c376666383835636335653530948c03707574944b0785947d9474942e",
        ));
        assert_eq!(
            put.queue_call(),
            Ok(QueueCall::Put {
                item: Value::Int(7),
                wait: None
            })
        );
        let py2 =
            read(b"\x80\x02(U\x0c7ff885cc5e50q\x01U\x03getq\x02)}q\x03U\x07timeoutq\x04K\x01st.");
        assert_eq!(py2.queue_call(), get.queue_call());
    }

    #[test]
    fn block_and_timeout_are_read_as_queue_queue_reads_them() {
        let call = |method: &str, args: Vec<Value>, kwds: Vec<(&str, Value)>| {
            Request {
                ident: Some("q".into()),
                method: method.into(),
                args,
                kwds: kwds.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            }
            .queue_call()
        };
        let get = |wait| Ok(QueueCall::Get { wait });
        assert_eq!(call("get", vec![], vec![]), get(None));
        assert_eq!(
            call("get", vec![Value::Bool(false)], vec![]),
            get(Some(Duration::ZERO))
        );
        assert_eq!(
            call("get", vec![Value::Bool(true), Value::Float(0.5)], vec![]),
            get(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            call("get_nowait", vec![], vec![]),
            get(Some(Duration::ZERO))
        );
        assert_eq!(
            call(
                "get",
                vec![],
                vec![("block", Value::Bool(true)), ("timeout", Value::Int(2))]
            ),
            get(Some(Duration::from_secs(2)))
        );
        assert!(call("get", vec![], vec![("timeout", Value::Int(-1))]).is_err());
        assert_eq!(
            call("put_nowait", vec![Value::Text("x".into())], vec![]),
            Ok(QueueCall::Put {
                item: Value::Text("x".into()),
                wait: Some(Duration::ZERO)
            })
        );
        assert!(call("put", vec![], vec![]).is_err());
        assert!(call("no_such_method", vec![], vec![]).is_err());
    }

    /// The replies load in CPython as the captured ones do (byte-identical is not needed:
    /// any protocol up to the client's loads).
    #[test]
    fn replies_decode_to_what_the_client_expects() {
        let r = decode(&created("tasks", Dialect::Python3), LIMITS).unwrap();
        let Value::Tuple(parts) = r else { panic!() };
        assert_eq!(parts[0], Value::Text("#RETURN".into()));
        let Value::Tuple(created) = &parts[1] else {
            panic!()
        };
        assert_eq!(created[0], Value::Text("tasks".into()));
        assert_eq!(
            created[1],
            Value::Tuple(EXPOSED.iter().map(|m| Value::Text((*m).into())).collect())
        );
        assert_eq!(
            decode(&traceback("boom", Dialect::Python2), LIMITS).unwrap(),
            // ASCII goes to Python 2 as its str.
            Value::Tuple(vec![
                Value::Str2(b"#TRACEBACK".to_vec()),
                Value::Str2(b"boom".to_vec())
            ])
        );
    }
}

//! The records a journal holds, each the body of one frame: a type byte, then fixed
//! little-endian fields (no native structs, so a journal reads the same on any machine), a
//! variable field last.

use super::frame;

/// Marks a distq journal file in its header record.
pub(crate) const MAGIC: &[u8; 8] = b"distqjnl";

/// The journal format this build writes and reads.
pub(crate) const VERSION: u16 = 1;

/// No due time: the item is ready.
pub(crate) const NOT_DUE: u64 = 0;

/// No bound on a queue.
const UNBOUNDED: u64 = u64::MAX;

/// Ids per `Del` or `Lease` record: a large acknowledgement is split, so no record is huge.
pub(crate) const DEL_CHUNK: usize = 1024;

const T_HEADER: u8 = 1;
const T_QUEUE: u8 = 2;
const T_PUT: u8 = 3;
const T_DEL: u8 = 4;
const T_MOVE: u8 = 5;
const T_DROP: u8 = 6;
const T_END: u8 = 7;
const T_LEASE: u8 = 8;

/// What kind of file a header opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Records appended as they happen.
    Segment = 1,
    /// The live items at a cut, ending in an `End` record.
    Snapshot = 2,
}

/// The first record of every file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: Kind,
    pub(crate) generation: u64,
    pub(crate) seq: u64,
    /// The next item id when the file was started: ids never go back, even once the files
    /// that held the largest ones are gone.
    pub(crate) next_id: u64,
    /// The server instance id, kept across restarts.
    pub(crate) instance: [u8; 16],
}

impl Header {
    /// The frame of the header opening segment `seq` of `generation`.
    pub(crate) fn segment(generation: u64, seq: u64, next_id: u64, instance: [u8; 16]) -> Vec<u8> {
        let mut bytes = Vec::new();
        Record::Header(Header {
            kind: Kind::Segment,
            generation,
            seq,
            next_id,
            instance,
        })
        .push(&mut bytes);
        bytes
    }
}

/// A queue's definition: the journal refers to queues by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueDef {
    pub(crate) name: String,
    pub(crate) temporary: bool,
    pub(crate) capacity: Option<u64>,
    /// A temporary queue's idle TTL.
    pub(crate) idle_ttl_ms: u64,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record<'a> {
    Header(Header),
    /// Queue number `no` is `def` from here on.
    Queue {
        no: u32,
        def: QueueDef,
    },
    /// Item `id` is in queue `queue` (a later `Put` of the same id replaces it).
    Put {
        queue: u32,
        id: u64,
        redeliveries: u32,
        /// Unix time in ms when a delayed item becomes ready; [`NOT_DUE`] when ready.
        due_ms: u64,
        payload: &'a [u8],
    },
    /// These items are gone (acknowledged, taken for good, or a put not stored after all).
    Del(Vec<u64>),
    /// These items were leased out (taken under a lease): a crash finds them in flight.
    Lease(Vec<u64>),
    /// Item `id` came back: now in `queue`, with this count, ready at `due_ms`.
    Move {
        id: u64,
        queue: u32,
        redeliveries: u32,
        due_ms: u64,
    },
    /// Temporary queue `no` was removed with its items.
    Drop {
        no: u32,
    },
    /// The end of a snapshot of `count` items.
    End {
        count: u64,
        next_id: u64,
    },
}

impl Record<'_> {
    /// Appends this record as one frame to `out`.
    pub(crate) fn push(&self, out: &mut Vec<u8>) {
        frame::push_with(out, |b| self.encode(b));
    }

    /// The size of this record's frame.
    pub(crate) fn frame_size(&self) -> u64 {
        let mut body = Vec::new();
        self.encode(&mut body);
        frame::size(body.len())
    }

    fn encode(&self, b: &mut Vec<u8>) {
        match self {
            Record::Header(h) => {
                b.push(T_HEADER);
                b.extend_from_slice(MAGIC);
                b.extend_from_slice(&VERSION.to_le_bytes());
                b.push(h.kind as u8);
                b.extend_from_slice(&h.generation.to_le_bytes());
                b.extend_from_slice(&h.seq.to_le_bytes());
                b.extend_from_slice(&h.next_id.to_le_bytes());
                b.extend_from_slice(&h.instance);
            }
            Record::Queue { no, def } => {
                b.push(T_QUEUE);
                b.extend_from_slice(&no.to_le_bytes());
                b.push(def.temporary as u8);
                b.extend_from_slice(&def.capacity.unwrap_or(UNBOUNDED).to_le_bytes());
                b.extend_from_slice(&def.idle_ttl_ms.to_le_bytes());
                b.extend_from_slice(def.name.as_bytes());
            }
            Record::Put {
                queue,
                id,
                redeliveries,
                due_ms,
                payload,
            } => {
                b.push(T_PUT);
                b.extend_from_slice(&queue.to_le_bytes());
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&redeliveries.to_le_bytes());
                b.extend_from_slice(&due_ms.to_le_bytes());
                b.extend_from_slice(payload);
            }
            Record::Del(ids) | Record::Lease(ids) => {
                b.push(match self {
                    Record::Del(_) => T_DEL,
                    _ => T_LEASE,
                });
                ids.iter()
                    .for_each(|id| b.extend_from_slice(&id.to_le_bytes()));
            }
            Record::Move {
                id,
                queue,
                redeliveries,
                due_ms,
            } => {
                b.push(T_MOVE);
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&queue.to_le_bytes());
                b.extend_from_slice(&redeliveries.to_le_bytes());
                b.extend_from_slice(&due_ms.to_le_bytes());
            }
            Record::Drop { no } => {
                b.push(T_DROP);
                b.extend_from_slice(&no.to_le_bytes());
            }
            Record::End { count, next_id } => {
                b.push(T_END);
                b.extend_from_slice(&count.to_le_bytes());
                b.extend_from_slice(&next_id.to_le_bytes());
            }
        }
    }

    /// Reads one record from a frame's body; the error says what is wrong with it.
    pub(crate) fn decode(body: &[u8]) -> Result<Record<'_>, String> {
        let (&kind, rest) = body.split_first().ok_or("an empty record")?;
        let mut r = Reader(rest);
        let record = match kind {
            T_HEADER => {
                if r.take(8)? != MAGIC {
                    return Err("not a distq journal header".into());
                }
                let version = r.u16()?;
                if version != VERSION {
                    return Err(format!(
                        "journal format {version}; this distq reads format {VERSION} (use the \
                         distq that wrote it)"
                    ));
                }
                let kind = match r.u8()? {
                    1 => Kind::Segment,
                    2 => Kind::Snapshot,
                    k => return Err(format!("unknown file kind {k}")),
                };
                Record::Header(Header {
                    kind,
                    generation: r.u64()?,
                    seq: r.u64()?,
                    next_id: r.u64()?,
                    instance: r.take(16)?.try_into().map_err(|_| "short instance")?,
                })
            }
            T_QUEUE => {
                let no = r.u32()?;
                let temporary = match r.u8()? {
                    0 => false,
                    1 => true,
                    f => return Err(format!("unknown queue flags {f}")),
                };
                let capacity = Some(r.u64()?).filter(|&c| c != UNBOUNDED);
                let idle_ttl_ms = r.u64()?;
                let name = std::str::from_utf8(r.rest())
                    .map_err(|_| "a queue name that is not UTF-8")?
                    .to_owned();
                Record::Queue {
                    no,
                    def: QueueDef {
                        name,
                        temporary,
                        capacity,
                        idle_ttl_ms,
                    },
                }
            }
            T_PUT => Record::Put {
                queue: r.u32()?,
                id: r.u64()?,
                redeliveries: r.u32()?,
                due_ms: r.u64()?,
                payload: r.rest(),
            },
            T_DEL | T_LEASE => {
                let rest = r.rest();
                if rest.is_empty() || rest.len() % 8 != 0 {
                    return Err(format!("a list of ids of {} bytes", rest.len()));
                }
                let ids = rest
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect();
                match kind {
                    T_DEL => Record::Del(ids),
                    _ => Record::Lease(ids),
                }
            }
            T_MOVE => Record::Move {
                id: r.u64()?,
                queue: r.u32()?,
                redeliveries: r.u32()?,
                due_ms: r.u64()?,
            },
            T_DROP => Record::Drop { no: r.u32()? },
            T_END => Record::End {
                count: r.u64()?,
                next_id: r.u64()?,
            },
            other => return Err(format!("unknown record type {other}")),
        };
        if !r.0.is_empty() {
            return Err(format!("{} bytes left over in the record", r.0.len()));
        }
        Ok(record)
    }
}

/// Reads fixed fields off the front of a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a record shorter than its fields".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut word = [0; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn every_record_round_trips() {
        let records = [
            Record::Header(Header {
                kind: Kind::Snapshot,
                generation: 3,
                seq: 4,
                next_id: 5,
                instance: [7; 16],
            }),
            Record::Queue {
                no: 2,
                def: QueueDef {
                    name: "r.run".into(),
                    temporary: true,
                    capacity: Some(10),
                    idle_ttl_ms: 3_600_000,
                },
            },
            Record::Put {
                queue: 2,
                id: 9,
                redeliveries: 1,
                due_ms: 1234,
                payload: b"task",
            },
            Record::Del(vec![1, 2, 3]),
            Record::Lease(vec![4]),
            Record::Move {
                id: 9,
                queue: 3,
                redeliveries: 6,
                due_ms: NOT_DUE,
            },
            Record::Drop { no: 2 },
            Record::End {
                count: 1,
                next_id: 10,
            },
        ];
        for record in records {
            let mut out = Vec::new();
            record.push(&mut out);
            assert_eq!(out.len() as u64, record.frame_size());
            let (body, _) = frame::parse(&out).unwrap();
            assert_eq!(Record::decode(body).unwrap(), record);
        }
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            &[T_PUT, 1, 2],
            &[T_DEL, 1, 2, 3],
            &[99],
            &[T_DROP, 0, 0, 0, 0, 9],
        ] {
            assert!(Record::decode(body).is_err(), "{body:?}");
        }
    }
}

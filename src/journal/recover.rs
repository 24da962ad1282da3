//! Recovery: the state a journal directory describes, read before the server listens.
//!
//! The newest snapshot is read, then every segment of its generation or later in order.
//! A record cut short or garbled at the very end of the last segment is a torn tail (the
//! process or the machine died while writing it): it is trimmed with a warning. Any other bad
//! record is corruption and recovery refuses, naming the file and byte offset, rather than
//! drop what follows it. Files older than the snapshot, and unfinished snapshots, are removed.

use std::collections::BTreeMap;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::frame;
use super::record::{Header, Kind, QueueDef, Record};
use super::segment::FileName;
use super::storage::Storage;
use crate::blob::Blob;
use crate::error::JournalError;

/// An item as the journal knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    pub(crate) queue: u32,
    pub(crate) redeliveries: u32,
    /// Unix ms when it becomes ready; `NOT_DUE` when ready.
    pub(crate) due_ms: u64,
    /// Leased out (and not returned since).
    pub(crate) leased: bool,
    pub(crate) payload: Blob,
}

/// What a journal directory holds.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) queues: BTreeMap<u32, QueueDef>,
    /// The live items by id.
    pub(crate) items: FxHashMap<u64, Live>,
    pub(crate) next_id: u64,
    pub(crate) instance: Option<[u8; 16]>,
    /// The files kept, in replay order, with their sizes.
    pub(crate) files: Vec<(FileName, u64)>,
    /// Bytes read.
    pub(crate) bytes: u64,
    /// Bytes trimmed off a torn tail.
    pub(crate) trimmed: u64,
    /// Items that were leased out when the journal was last written.
    pub(crate) in_flight: u64,
    /// The number after every queue number any record used: never given out again.
    pub(crate) next_queue: u32,
    pub(crate) millis: u64,
}

impl Recovered {
    /// The generation and sequence number a new segment takes: after every file kept.
    pub(crate) fn next_segment(&self) -> (u64, u64) {
        match self.files.last() {
            Some((FileName::Segment { generation, seq }, _)) => (*generation, seq + 1),
            Some((name, _)) => (name.generation(), 1),
            None => (1, 1),
        }
    }
}

/// Reads the journal in `storage`, trimming a torn tail and removing stale files.
pub(crate) fn recover(storage: &dyn Storage) -> Result<Recovered, JournalError> {
    let started = Instant::now();
    let io = |name: &str, action: &'static str| {
        let path = storage.path(name);
        move |source| JournalError::Io {
            path,
            action,
            source,
        }
    };
    let mut names: Vec<FileName> = storage
        .list()
        .map_err(io(".", "listing"))?
        .iter()
        .filter_map(|n| FileName::parse(n))
        .collect();
    names.sort();
    let snapshot = names
        .iter()
        .filter_map(|n| match n {
            FileName::Snapshot { generation } => Some(*generation),
            _ => None,
        })
        .max();
    let (keep, stale): (Vec<FileName>, Vec<FileName>) = names.into_iter().partition(|n| match n {
        FileName::Temp { .. } => false,
        FileName::Snapshot { generation } => Some(*generation) == snapshot,
        FileName::Segment { generation, .. } => snapshot.is_none_or(|s| *generation >= s),
    });
    check_complete(storage, snapshot, &keep)?;
    let mut out = Recovered {
        next_id: 1,
        ..Recovered::default()
    };
    let last = keep
        .iter()
        .rev()
        .find(|n| matches!(n, FileName::Segment { .. }))
        .copied();
    for name in keep {
        let file = name.to_string();
        let bytes = storage.read(&file).map_err(io(&file, "read"))?;
        out.bytes += bytes.len() as u64;
        let end = replay(storage, name, &bytes, Some(name) == last, &mut out)?;
        if end < bytes.len() {
            // Zeros after the records are the ones a segment is written over (`Disk::open`):
            // nothing to say. Else a torn record: its bytes are counted, not the zeros after.
            let tail = &bytes[end..];
            let torn = tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if torn == 0 {
                log::debug!(
                    "journal {file}: {} byte(s) of zeros after byte {end}",
                    tail.len()
                );
            } else {
                out.trimmed += torn as u64;
                log::warn!(
                    "journal file {}: trimmed {torn} byte(s) of a torn last record at byte \
                     offset {end} (the server stopped while writing it; under --fsync always \
                     a record still being written had not been confirmed to its client)",
                    storage.path(&file).display()
                );
            }
            // Cut off either way: this segment will not be the last one.
            if end == 0 {
                storage.remove(&file).map_err(io(&file, "removal"))?;
                continue;
            }
            storage
                .truncate(&file, end as u64)
                .map_err(io(&file, "truncation"))?;
        } else if bytes.is_empty() {
            // Created just before the server stopped: it holds nothing.
            storage.remove(&file).map_err(io(&file, "removal"))?;
            continue;
        }
        out.files.push((name, end as u64));
    }
    // Items of removed temporary queues (queue numbers are never reused: `next_queue`).
    out.items
        .retain(|_, item| out.queues.contains_key(&item.queue));
    out.in_flight = out.items.values().filter(|i| i.leased).count() as u64;
    if let Some(max) = out.items.keys().max() {
        out.next_id = out.next_id.max(max + 1);
    }
    for name in stale {
        let file = name.to_string();
        storage.remove(&file).map_err(io(&file, "removal"))?;
    }
    storage.sync_dir().map_err(io(".", "sync"))?;
    out.millis = started.elapsed().as_millis() as u64;
    Ok(out)
}

/// Segments follow each other without a gap: from segment 1 of the snapshot's generation
/// (or of generation 1 when there is no snapshot), each is the next of its generation or the
/// first of the next one. A segment missing (deleted, or moved away by hand) would otherwise
/// lose its items in silence.
fn check_complete(
    storage: &dyn Storage,
    snapshot: Option<u64>,
    keep: &[FileName],
) -> Result<(), JournalError> {
    let mut expected = (snapshot.unwrap_or(1), 1);
    let mut first = true;
    for name in keep {
        let FileName::Segment { generation, seq } = *name else {
            continue;
        };
        let next = (expected.0 + 1, 1);
        let fits = (generation, seq) == expected || (!first && (generation, seq) == next);
        if !fits {
            let missing = FileName::Segment {
                generation: expected.0,
                seq: expected.1,
            };
            return Err(JournalError::Missing {
                file: storage.path(&missing.to_string()),
                before: storage.path(&name.to_string()),
            });
        }
        first = false;
        expected = (generation, seq + 1);
    }
    Ok(())
}

/// Whether `bytes` are all zeros.
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Replays one file into `out`; returns where its good records end (its length unless the
/// tail of the last segment is torn).
fn replay(
    storage: &dyn Storage,
    name: FileName,
    bytes: &[u8],
    last: bool,
    out: &mut Recovered,
) -> Result<usize, JournalError> {
    let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
        file: storage.path(&name.to_string()),
        offset: offset as u64,
        reason,
    };
    let mut at = 0;
    let mut puts = 0u64;
    let mut ended = false;
    while at < bytes.len() {
        let (body, used) = match frame::parse(&bytes[at..]) {
            Ok(frame) => frame,
            // Zeros (cheap to tell) or no valid frame after: the end of the last segment.
            Err(bad) if last && (zeros(&bytes[at..]) || !frame::any_valid_after(bytes, at)) => {
                log::debug!("journal {name}: torn tail at {at}: {bad}");
                return Ok(at);
            }
            Err(bad) => return Err(corrupt(at, bad.to_string())),
        };
        let record = Record::decode(body).map_err(|why| corrupt(at, why))?;
        if ended {
            return Err(corrupt(at, "a record after the end of a snapshot".into()));
        }
        match (at, record) {
            (0, Record::Header(header)) => {
                check_header(name, &header).map_err(|why| corrupt(0, why))?;
                out.next_id = out.next_id.max(header.next_id);
                out.instance = Some(header.instance);
            }
            (0, _) => {
                return Err(corrupt(
                    0,
                    "the file does not start with a journal header".into(),
                ))
            }
            (_, Record::Header(_)) => return Err(corrupt(at, "a second file header".into())),
            (_, record) => {
                if let Record::Put { .. } = record {
                    puts += 1;
                }
                if let Record::End { count, .. } = record {
                    if name_kind(name) != Kind::Snapshot || count != puts {
                        return Err(corrupt(
                            at,
                            format!("a snapshot end after {puts} items claims {count}"),
                        ));
                    }
                    ended = true;
                }
                apply(record, out).map_err(|why| corrupt(at, why))?;
            }
        }
        at += used;
    }
    if name_kind(name) == Kind::Snapshot && !ended {
        return Err(corrupt(at, "the snapshot has no end record".into()));
    }
    Ok(at)
}

fn name_kind(name: FileName) -> Kind {
    match name {
        FileName::Segment { .. } => Kind::Segment,
        _ => Kind::Snapshot,
    }
}

fn check_header(name: FileName, header: &Header) -> Result<(), String> {
    let (kind, generation, seq) = match name {
        FileName::Segment { generation, seq } => (Kind::Segment, generation, seq),
        FileName::Snapshot { generation } | FileName::Temp { generation } => {
            (Kind::Snapshot, generation, 0)
        }
    };
    if header.next_id == u64::MAX {
        return Err(LARGEST.into());
    }
    if (header.kind, header.generation, header.seq) != (kind, generation, seq) {
        return Err(format!(
            "the header says {:?} {}.{}, the name {name}",
            header.kind, header.generation, header.seq
        ));
    }
    Ok(())
}

const LARGEST: &str = "an id or queue number no journal writes (the largest there is)";

/// Applies one record. Replay sets state and never counts, so replaying twice is harmless.
fn apply(record: Record<'_>, out: &mut Recovered) -> Result<(), String> {
    let known = |queue: u32, out: &Recovered| match out.queues.contains_key(&queue) {
        true => Ok(()),
        false => Err(format!(
            "an item of queue number {queue}, which no record defines"
        )),
    };
    match record {
        Record::Header(_) => return Err("a second file header".into()),
        // The largest numbers are never written (the next one would overflow): a crafted file.
        Record::Queue { no: u32::MAX, .. }
        | Record::Put { id: u64::MAX, .. }
        | Record::End {
            next_id: u64::MAX, ..
        } => return Err(LARGEST.into()),
        Record::Queue { no, def } => {
            out.next_queue = out.next_queue.max(no + 1);
            out.queues.insert(no, def);
        }
        Record::Put {
            queue,
            id,
            redeliveries,
            due_ms,
            payload,
        } => {
            known(queue, out)?;
            // Ids never go back, also past items deleted since the last file header.
            out.next_id = out.next_id.max(id.saturating_add(1));
            out.items.insert(
                id,
                Live {
                    queue,
                    redeliveries,
                    due_ms,
                    leased: false,
                    payload: Blob::from(payload),
                },
            );
        }
        Record::Del(ids) => {
            for id in ids {
                out.items.remove(&id);
            }
        }
        Record::Lease(ids) => {
            for id in ids {
                if let Some(item) = out.items.get_mut(&id) {
                    item.leased = true;
                }
            }
        }
        Record::Move {
            id,
            queue,
            redeliveries,
            due_ms,
        } => {
            known(queue, out)?;
            if let Some(item) = out.items.get_mut(&id) {
                (item.queue, item.redeliveries, item.due_ms) = (queue, redeliveries, due_ms);
                item.leased = false;
            }
        }
        Record::Drop { no } => {
            out.queues.remove(&no);
        }
        Record::End { next_id, .. } => out.next_id = out.next_id.max(next_id),
    }
    Ok(())
}

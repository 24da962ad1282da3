//! Compaction: the live items at a cut, written to a snapshot that replaces every older file.
//!
//! At a segment roll the journal takes the cut (a copy of its live items and queues, under
//! the lock appenders take: the only pause writers see) and starts a new generation, so
//! every record after the cut goes to the new generation's segments. This thread then writes
//! `snap-G.tmp`, syncs it, renames it to `snap-G.dq` and syncs the directory; only then are
//! older files removed. A crash at any step leaves either the old files (plus the new
//! generation's segments) or the snapshot complete (Redis 7's multi-part AOF).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use rustc_hash::FxHashMap;

use super::record::{Header, Kind, QueueDef, Record, DEL_CHUNK};
use super::recover::Live;
use super::segment::FileName;
use super::storage::Storage;

/// Bytes gathered before each write of a snapshot.
const CHUNK: usize = 1 << 20;

/// The live state at a cut.
pub(crate) struct Cut {
    items: Vec<(u64, Live)>,
    queues: Vec<(u32, QueueDef)>,
    next_id: u64,
}

impl Cut {
    /// Copies the live state (payloads are shared, not copied).
    pub(crate) fn take(
        live: &FxHashMap<u64, Live>,
        queues: &BTreeMap<u32, QueueDef>,
        next_id: u64,
    ) -> Cut {
        Cut {
            items: live.iter().map(|(&id, l)| (id, l.clone())).collect(),
            queues: queues.iter().map(|(&no, d)| (no, d.clone())).collect(),
            next_id,
        }
    }
}

/// Writes `cut` as the snapshot of `generation`; returns its size, or the file and error
/// that stopped it (the unfinished file is removed).
pub(crate) fn write_snapshot(
    storage: &dyn Storage,
    generation: u64,
    mut cut: Cut,
    instance: [u8; 16],
) -> Result<u64, (PathBuf, io::Error)> {
    let tmp = FileName::Temp { generation }.to_string();
    let result = write(storage, &tmp, generation, &mut cut, instance);
    if result.is_err() {
        let _ = storage.remove(&tmp);
    }
    result
}

fn write(
    storage: &dyn Storage,
    tmp: &str,
    generation: u64,
    cut: &mut Cut,
    instance: [u8; 16],
) -> Result<u64, (PathBuf, io::Error)> {
    let at = |name: &str| {
        let path = storage.path(name);
        move |e| (path, e)
    };
    // Id order is queue order: recovery pushes items back in it.
    cut.items.sort_unstable_by_key(|(id, _)| *id);
    let mut file = storage.create(tmp).map_err(at(tmp))?;
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    Record::Header(Header {
        kind: Kind::Snapshot,
        generation,
        seq: 0,
        next_id: cut.next_id,
        instance,
    })
    .push(&mut buf);
    for (no, def) in &cut.queues {
        Record::Queue {
            no: *no,
            def: def.clone(),
        }
        .push(&mut buf);
    }
    let mut size = 0u64;
    for (id, live) in &cut.items {
        Record::Put {
            queue: live.queue,
            id: *id,
            redeliveries: live.redeliveries,
            due_ms: live.due_ms,
            payload: live.payload.as_bytes(),
        }
        .push(&mut buf);
        if buf.len() >= CHUNK {
            file.append(&buf).map_err(at(tmp))?;
            size += buf.len() as u64;
            buf.clear();
        }
    }
    // Which items were out at the cut, so a crash after it still finds them in flight.
    let leased: Vec<u64> = cut
        .items
        .iter()
        .filter(|(_, l)| l.leased)
        .map(|(id, _)| *id)
        .collect();
    for chunk in leased.chunks(DEL_CHUNK) {
        Record::Lease(chunk.to_vec()).push(&mut buf);
    }
    Record::End {
        count: cut.items.len() as u64,
        next_id: cut.next_id,
    }
    .push(&mut buf);
    file.append(&buf).map_err(at(tmp))?;
    size += buf.len() as u64;
    file.sync().map_err(at(tmp))?;
    drop(file);
    let done = FileName::Snapshot { generation }.to_string();
    storage.rename(tmp, &done).map_err(at(&done))?;
    storage.sync_dir().map_err(at("."))?;
    Ok(size)
}

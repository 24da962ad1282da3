//! Recovery against damage and power loss, on the simulated disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::storage::sim::SimDisk;
use super::*;

fn config(fsync: Fsync) -> JournalConfig {
    JournalConfig::new("sim").fsync(fsync)
}

fn open(
    disk: &SimDisk,
    config: &JournalConfig,
) -> Result<(Arc<Journal>, Vec<Restored>), JournalError> {
    Journal::open_on(Arc::new(disk.clone()), config, [9; 16])
}

fn tasks() -> QueueDef {
    QueueDef {
        name: "tasks".into(),
        temporary: false,
        capacity: None,
        idle_ttl_ms: 0,
    }
}

/// The recovered items as (id, payload).
fn items(restored: &[Restored]) -> BTreeMap<u64, Vec<u8>> {
    restored
        .iter()
        .flat_map(|r| {
            r.items
                .iter()
                .map(|(id, l)| (*id, l.payload.as_bytes().to_vec()))
        })
        .collect()
}

/// A small journal: ten puts, three deleted, one moved; returns the disk and the ids.
fn small() -> (SimDisk, Vec<u64>) {
    let disk = SimDisk::default();
    let (journal, _) = open(&disk, &config(Fsync::Always)).unwrap();
    let q = journal.queue(tasks());
    let mut ids = Vec::new();
    for n in 0..10u8 {
        let (id, ticket) = journal.put(q, &Blob::from(vec![n; 3 + n as usize]), None);
        journal.commit(ticket).unwrap();
        ids.push(id);
    }
    journal.delete(&ids[2..5]);
    journal.moved(ids[6], q, 2, None);
    // The newest item is gone too: the next id must still not repeat it.
    let (gone, ticket) = journal.put(q, &Blob::from(vec![0xFF]), None);
    journal.commit(ticket).unwrap();
    journal.delete(&[gone]);
    ids.push(gone);
    journal.close();
    (disk, ids)
}

#[test]
fn a_journal_reopens_with_what_it_held() {
    let (disk, ids) = small();
    let (journal, restored) = open(&disk, &config(Fsync::Always)).unwrap();
    let got = items(&restored);
    let want: BTreeSet<u64> = ids[..10]
        .iter()
        .copied()
        .filter(|id| !ids[2..5].contains(id))
        .collect();
    assert_eq!(got.keys().copied().collect::<BTreeSet<_>>(), want);
    let moved = restored[0]
        .items
        .iter()
        .find(|(id, _)| *id == ids[6])
        .unwrap();
    assert_eq!(moved.1.redeliveries, 2);
    // Ids go on from where they were (past deleted ones too); the instance id is kept.
    let (id, _) = journal.put(journal.queue(tasks()), &Blob::from(vec![1]), None);
    assert!(id > *ids.last().unwrap());
    assert_eq!(journal.instance(), [9; 16]);
    journal.close();
}

#[test]
fn leases_in_flight_at_a_crash_are_reported_and_not_counted() {
    let disk = SimDisk::default();
    let (journal, _) = open(&disk, &config(Fsync::Always)).unwrap();
    let q = journal.queue(tasks());
    let ids: Vec<u64> = (0..4u8)
        .map(|n| {
            let (id, ticket) = journal.put(q, &Blob::from(vec![n]), None);
            journal.commit(ticket).unwrap();
            id
        })
        .collect();
    journal.leased(&ids[..3]);
    // One came back (nacked): no longer in flight, its count as recorded.
    journal.moved(ids[0], q, 1, None);
    journal.close();
    let (journal, restored) = open(&disk, &config(Fsync::Always)).unwrap();
    assert_eq!(journal.stats().recovered_in_flight, 2);
    let counts: Vec<u32> = restored[0]
        .items
        .iter()
        .map(|(_, l)| l.redeliveries)
        .collect();
    assert_eq!(counts, vec![1, 0, 0, 0]);
    journal.close();
}

/// Frame boundaries of a file: (start, end) of each frame.
fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (_, used) = frame::parse(&bytes[at..]).unwrap();
        out.push((at, at + used));
        at += used;
    }
    out
}

/// The one segment of a small journal: the last file (the reopen above may add a segment).
fn only_segment(disk: &SimDisk) -> (String, Vec<u8>) {
    let files = disk.files();
    let segments: Vec<_> = files
        .into_iter()
        .filter(|(n, _)| n.starts_with("log-"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.into_iter().next().unwrap()
}

#[test]
fn every_torn_tail_is_trimmed_to_the_records_before_it() {
    let (disk, _) = small();
    let (name, bytes) = only_segment(&disk);
    let bounds = frames(&bytes);
    // Cut short, and cut short over the zeros a segment is written over.
    for (cut, pad) in (0..bytes.len()).flat_map(|cut| [(cut, 0), (cut, 300)]) {
        let mut file = bytes[..cut].to_vec();
        file.resize(cut + pad, 0);
        let disk = SimDisk::from_files(&[(name.clone(), file)]);
        let (journal, restored) =
            open(&disk, &config(Fsync::Always)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        // What survives is what the whole frames before the cut say; over zeros, also a
        // frame whose missing bytes were zeros: it is whole again, byte for byte.
        let whole = bounds
            .iter()
            .filter(|(_, end)| *end <= cut || (*end <= cut + pad && zeros(&bytes[cut..*end])))
            .count();
        let prefix = SimDisk::from_files(&[(
            name.clone(),
            bytes[..bounds.get(whole.wrapping_sub(1)).map_or(0, |b| b.1)].to_vec(),
        )]);
        let expected = match whole {
            0 => BTreeMap::new(),
            _ => {
                let (j, r) = open(&prefix, &config(Fsync::Always)).unwrap();
                j.close();
                items(&r)
            }
        };
        assert_eq!(items(&restored), expected, "cut at {cut}");
        // A put after the trimmed recovery is found by the next one.
        let q = journal.queue(tasks());
        let (id, ticket) = journal.put(q, &Blob::from(vec![0xEE]), None);
        journal.commit(ticket).unwrap();
        journal.close();
        let (again, restored) = open(&disk, &config(Fsync::Always)).unwrap();
        assert!(items(&restored).contains_key(&id), "cut at {cut}");
        again.close();
    }
}

#[test]
fn a_flipped_bit_is_trimmed_in_the_last_record_and_refused_anywhere_else() {
    let (disk, _) = small();
    let (name, bytes) = only_segment(&disk);
    let bounds = frames(&bytes);
    let last = *bounds.last().unwrap();
    for byte in 0..bytes.len() {
        for bit in [0, 3, 7] {
            let mut bad = bytes.clone();
            bad[byte] ^= 1 << bit;
            let disk = SimDisk::from_files(&[(name.clone(), bad)]);
            let frame = bounds
                .iter()
                .find(|(s, e)| (*s..*e).contains(&byte))
                .unwrap();
            match open(&disk, &config(Fsync::Always)) {
                Ok((journal, _)) => {
                    journal.close();
                    assert_eq!(
                        *frame, last,
                        "flip at {byte}.{bit} accepted outside the last record"
                    );
                    let (_, kept) = &disk.files().into_iter().find(|(n, _)| *n == name).unwrap();
                    assert_eq!(kept.len(), last.0, "trimmed to the last good record");
                }
                Err(JournalError::Corrupt { file, offset, .. }) => {
                    assert_ne!(
                        *frame, last,
                        "flip at {byte}.{bit}: the last record is a torn tail"
                    );
                    assert_eq!(offset as usize, frame.0, "flip at {byte}.{bit}");
                    assert!(file.ends_with(&name));
                }
                Err(e) => panic!("flip at {byte}.{bit}: {e}"),
            }
        }
    }
}

/// Zeros after the last record are where the segment ended, not a torn record: every item
/// is kept, and the zeros are cut off (the segment will not be the last one again). A bit
/// flipped among them is a torn tail: trimmed, and still every item kept.
#[test]
fn zeros_after_the_last_record_end_the_segment() {
    let (disk, _) = small();
    let (name, bytes) = only_segment(&disk);
    let (journal, whole) = open(&disk, &config(Fsync::Always)).unwrap();
    journal.close();
    for flip in [None, Some(0), Some(17), Some(4095)] {
        let mut file = bytes.clone();
        file.resize(bytes.len() + 4096, 0);
        if let Some(at) = flip {
            file[bytes.len() + at] ^= 0x10;
        }
        let disk = SimDisk::from_files(&[(name.clone(), file)]);
        let (journal, restored) =
            open(&disk, &config(Fsync::Always)).unwrap_or_else(|e| panic!("flip {flip:?}: {e}"));
        journal.close();
        assert_eq!(items(&restored), items(&whole), "flip {flip:?}");
        let (_, kept) = disk.files().into_iter().find(|(n, _)| *n == name).unwrap();
        assert_eq!(kept, bytes, "flip {flip:?}: cut back to its records");
    }
}

/// `damaged` as the first segment, with a later one after it (so it is sealed and its tail is
/// no torn tail): the offset recovery refuses it at.
fn refused_as_sealed(name: &str, damaged: Vec<u8>) -> u64 {
    let later = FileName::Segment {
        generation: 1,
        seq: 2,
    }
    .to_string();
    let header = Header::segment(1, 2, 100, [9; 16]);
    let disk = SimDisk::from_files(&[(name.to_owned(), damaged), (later, header)]);
    match open(&disk, &config(Fsync::Always)) {
        Err(JournalError::Corrupt { offset, .. }) => offset,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a damaged sealed segment was accepted"),
    }
}

#[test]
fn a_damaged_sealed_segment_is_refused_even_at_its_end() {
    let (disk, _) = small();
    let (name, bytes) = only_segment(&disk);
    let cut = bytes.len() - 3;
    let offset = refused_as_sealed(&name, bytes[..cut].to_vec());
    assert_eq!(offset as usize, frames(&bytes).last().unwrap().0);
}

/// Zeros are the end only of the last segment: a sealed one was cut back to its records.
#[test]
fn zeros_after_a_sealed_segment_are_refused() {
    let (disk, _) = small();
    let (name, bytes) = only_segment(&disk);
    let mut file = bytes.clone();
    file.resize(bytes.len() + 100, 0);
    assert_eq!(refused_as_sealed(&name, file) as usize, bytes.len());
}

/// A tiny deterministic generator (xorshift), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random puts, deletions, moves, temporary queues and compactions under `always`; a power
/// cut at every sync point must keep every put confirmed before it that was not deleted,
/// whether the unsynced bytes after it are lost, kept, or kept in part.
#[test]
fn a_power_cut_at_any_sync_point_keeps_every_confirmed_put() {
    for seed in 1..=4u64 {
        let disk = SimDisk::default();
        disk.record_images();
        let config = config(Fsync::Always).segment_size(4096).compact_min(4096);
        let (journal, _) = open(&disk, &config).unwrap();
        let q = journal.queue(tasks());
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // id → sync count once its put was confirmed; every id ever deleted; every payload.
        let mut confirmed: BTreeMap<u64, u64> = BTreeMap::new();
        let mut deleted = BTreeSet::new();
        let mut payloads = BTreeMap::new();
        let mut live = Vec::new();
        for _ in 0..600 {
            match rng.below(10) {
                0..=3 => {
                    let batch = 1 + rng.below(4);
                    let mut ticket = 0;
                    let mut ids = Vec::new();
                    for _ in 0..batch {
                        let payload = vec![rng.below(256) as u8; rng.below(200) as usize];
                        let (id, t) = journal.put(q, &Blob::from(payload.clone()), None);
                        payloads.insert(id, payload);
                        ids.push(id);
                        ticket = t;
                    }
                    journal.commit(ticket).unwrap();
                    let syncs = disk.syncs();
                    for id in ids {
                        confirmed.insert(id, syncs);
                        live.push(id);
                    }
                }
                4..=7 if !live.is_empty() => {
                    let mut ids = Vec::new();
                    for _ in 0..3.min(live.len()) {
                        ids.push(live.swap_remove(rng.below(live.len() as u64) as usize));
                    }
                    journal.delete(&ids);
                    deleted.extend(ids);
                }
                8 if !live.is_empty() => {
                    let id = live[rng.below(live.len() as u64) as usize];
                    journal.moved(id, q, rng.below(5) as u32, None);
                }
                _ => {
                    let temp = journal.queue(QueueDef {
                        name: format!("t{}", rng.below(3)),
                        temporary: true,
                        capacity: None,
                        idle_ttl_ms: 1000,
                    });
                    journal.drop_queue(temp);
                }
            }
        }
        journal.settle();
        let compactions = journal.stats().compactions;
        assert!(compactions > 0, "seed {seed}: no compaction to crash in");
        journal.close();
        let images = disk.images();
        assert!(
            images.len() > 50,
            "seed {seed}: only {} sync points",
            images.len()
        );
        for image in &images {
            for keep in [Keep::Durable, Keep::All, Keep::Part] {
                let files: Vec<(String, Vec<u8>)> = image
                    .files
                    .iter()
                    .map(|(n, durable, volatile)| {
                        let mut bytes = durable.clone();
                        bytes.extend_from_slice(match keep {
                            Keep::Durable => &[][..],
                            Keep::All => volatile,
                            Keep::Part => &volatile[..volatile.len() / 2],
                        });
                        (n.clone(), bytes)
                    })
                    .collect();
                let crashed = SimDisk::from_files(&files);
                let (j, restored) = open(&crashed, &config).unwrap_or_else(|e| {
                    panic!("seed {seed}, sync {} ({keep:?}): {e}", image.at_sync)
                });
                j.close();
                let got = items(&restored);
                for (id, &at) in &confirmed {
                    if at <= image.at_sync && !deleted.contains(id) {
                        assert!(
                            got.contains_key(id),
                            "seed {seed}, sync {} ({keep:?}): confirmed item {id} lost",
                            image.at_sync
                        );
                    }
                }
                for (id, payload) in &got {
                    assert_eq!(
                        payloads.get(id),
                        Some(payload),
                        "seed {seed}: item {id} invented"
                    );
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Keep {
    Durable,
    All,
    Part,
}

/// Under `always`, an acknowledgement no put's sync covers is synced within about a second
/// by the background thread, also when nothing else happens.
#[test]
fn an_idle_journal_syncs_its_acknowledgements_within_a_second() {
    let disk = SimDisk::default();
    let (journal, _) = open(&disk, &config(Fsync::Always)).unwrap();
    let q = journal.queue(tasks());
    let (id, ticket) = journal.put(q, &Blob::from(vec![1]), None);
    journal.commit(ticket).unwrap();
    let synced = disk.syncs();
    journal.delete(&[id]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while journal.stats().unsynced_bytes > 0 || disk.syncs() == synced {
        assert!(
            Instant::now() < deadline,
            "the acknowledgement was never synced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    journal.close();
}

#[test]
fn a_failed_sync_fails_every_commit_from_then_on() {
    let disk = SimDisk::default();
    let (journal, _) = open(&disk, &config(Fsync::Always)).unwrap();
    let q = journal.queue(tasks());
    let (_, ticket) = journal.put(q, &Blob::from(vec![1]), None);
    journal.commit(ticket).unwrap();
    disk.fail_from_sync(disk.syncs());
    let (_, ticket) = journal.put(q, &Blob::from(vec![2]), None);
    assert!(matches!(
        journal.commit(ticket),
        Err(JournalError::Io { .. })
    ));
    assert!(journal.failure().is_some());
    // Never retried into a success: a later put fails too, even with the disk back.
    let (_, ticket) = journal.put(q, &Blob::from(vec![3]), None);
    assert!(journal.commit(ticket).is_err());
    journal.close();
}

#[test]
fn compaction_bounds_the_journal_and_keeps_the_live_items() {
    let disk = SimDisk::default();
    let config = config(Fsync::Never).segment_size(4096).compact_min(8192);
    let (journal, _) = open(&disk, &config).unwrap();
    let q = journal.queue(tasks());
    let mut kept = Vec::new();
    for round in 0..2000u32 {
        let (id, ticket) = journal.put(q, &Blob::from(vec![7u8; 100]), None);
        journal.commit(ticket).unwrap();
        if round % 100 == 0 {
            kept.push(id);
        } else {
            journal.delete(&[id]);
        }
        journal.settle();
        let bytes: u64 = disk.files().iter().map(|(_, b)| b.len() as u64).sum();
        let live = journal.stats().live_bytes;
        assert!(
            bytes <= 3 * live + 8192 + 3 * 4096 + 4096,
            "round {round}: {bytes} bytes on disk for {live} live: {:?} {:?}",
            journal.stats(),
            disk.files()
                .iter()
                .map(|(n, b)| (n.clone(), b.len()))
                .collect::<Vec<_>>()
        );
    }
    let stats = journal.stats();
    assert!(stats.compactions > 0, "{stats:?}");
    journal.close();
    // What stats count on disk is what the files hold, the segment being written included.
    let files: u64 = disk.files().iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(journal.stats().bytes_on_disk, files);
    let (again, restored) = open(&disk, &config).unwrap();
    assert_eq!(items(&restored).keys().copied().collect::<Vec<_>>(), kept);
    again.close();
}

#[test]
fn random_bytes_and_random_damage_never_panic_recovery() {
    let (disk, _) = small();
    let (_, valid) = only_segment(&disk);
    let mut rng = Rng(0x5EED);
    for _ in 0..300 {
        let garbage: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
        recover_bytes(&garbage);
        let mut damaged = valid.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(damaged.len() as u64) as usize;
            damaged[at] = rng.next() as u8;
        }
        let cut = rng.below(damaged.len() as u64 + 1) as usize;
        recover_bytes(&damaged[..cut]);
    }
}

fn temporary(name: &str) -> QueueDef {
    QueueDef {
        name: name.into(),
        temporary: true,
        capacity: None,
        idle_ttl_ms: 60_000,
    }
}

/// A temporary queue evicted at the cap is drained by the reaper later; a client may declare
/// its name again meanwhile. The new queue must not share the old one's number, or the
/// drain's `Drop` forgets the new queue's items (and a put after it makes the journal
/// unreadable).
#[test]
fn a_temporary_queue_declared_again_before_the_old_one_is_drained_keeps_its_items() {
    let disk = SimDisk::default();
    let (journal, _) = open(&disk, &config(Fsync::Always)).unwrap();
    let put = |q: u32, b: u8| {
        let (id, ticket) = journal.put(q, &Blob::from(vec![b]), None);
        journal.commit(ticket).unwrap();
        id
    };
    let old = journal.queue(temporary("t"));
    let dropped = put(old, 1);
    // Evicted (out of the map, not drained yet), then declared again.
    let new = journal.queue(temporary("t"));
    let before = put(new, 2);
    // The reaper drains the evicted queue.
    journal.delete(&[dropped]);
    journal.drop_queue(old);
    let after = put(new, 3);
    journal.close();
    let (again, restored) = open(&disk, &config(Fsync::Always)).expect("the journal reopens");
    assert_eq!(
        items(&restored),
        BTreeMap::from([(before, vec![2]), (after, vec![3])])
    );
    assert!(restored.iter().all(|r| r.def.name == "t"));
    again.close();
}

/// Valid frames holding the largest id and queue number: recovery must refuse (or cope),
/// not overflow, and the journal must never hand out an id or number twice.
#[test]
fn a_crafted_journal_with_the_largest_numbers_never_panics() {
    let mut bytes = Vec::new();
    for no in [u32::MAX, 1] {
        Record::Queue { no, def: tasks() }.push(&mut bytes);
        Record::Put {
            queue: no,
            id: u64::MAX,
            redeliveries: 0,
            due_ms: NOT_DUE,
            payload: b"x",
        }
        .push(&mut bytes);
    }
    recover_bytes(&bytes);
    let header = Header::segment(1, 1, u64::MAX, [0; 16]);
    let name = FileName::Segment {
        generation: 1,
        seq: 1,
    }
    .to_string();
    for body in [header.clone(), [header, bytes].concat()] {
        let disk = SimDisk::from_files(&[(name.clone(), body)]);
        if let Ok((journal, _)) = open(&disk, &config(Fsync::Never)) {
            let q = journal.queue(temporary("new"));
            let _ = journal.put(q, &Blob::from(vec![1]), None);
            journal.close();
        }
    }
}

#[test]
fn a_missing_segment_refuses_to_start_naming_it() {
    let disk = SimDisk::default();
    let config = config(Fsync::Always)
        .segment_size(4096)
        .compact_min(u64::MAX);
    let (journal, _) = open(&disk, &config).unwrap();
    let q = journal.queue(tasks());
    for n in 0..200u8 {
        let (_, ticket) = journal.put(q, &Blob::from(vec![n; 100]), None);
        journal.commit(ticket).unwrap();
    }
    journal.close();
    let files = disk.files();
    let segments: Vec<_> = files
        .iter()
        .filter(|(n, _)| n.starts_with("log-"))
        .collect();
    assert!(segments.len() >= 3, "{segments:?}");
    for gone in [0, 1] {
        let kept: Vec<_> = files
            .iter()
            .filter(|(n, _)| *n != segments[gone].0)
            .cloned()
            .collect();
        match open(&SimDisk::from_files(&kept), &config) {
            Err(JournalError::Missing { file, .. }) => assert!(file.ends_with(&segments[gone].0)),
            Err(e) => panic!("segment {gone} gone: {e}"),
            Ok(_) => panic!("segment {gone} gone, and the journal opened"),
        }
    }
}

#[test]
fn starting_again_and_again_does_not_pile_up_files() {
    let disk = SimDisk::default();
    for start in 0..30u8 {
        let (journal, _) = open(&disk, &config(Fsync::Always)).unwrap();
        let (_, ticket) = journal.put(journal.queue(tasks()), &Blob::from(vec![start]), None);
        journal.commit(ticket).unwrap();
        journal.settle();
        journal.close();
        let files = disk.files().len();
        assert!(
            files <= START_COMPACT_SEGMENTS + 2,
            "start {start}: {files} files"
        );
    }
    let (journal, restored) = open(&disk, &config(Fsync::Always)).unwrap();
    assert_eq!(items(&restored).len(), 30);
    journal.close();
}

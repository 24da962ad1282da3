//! `distq stats`: a server's queues as a table, or as JSON.

use distq::{Client, Stats};

use crate::args::StatsArgs;
use crate::common::{authkey_for, connect_addr};
use crate::Outcome;

pub fn run(args: StatsArgs) -> Outcome {
    let addr = connect_addr(&args.connect)?;
    let key = authkey_for(&addr, &args.key)?;
    let stats = Client::connect(&addr, &key)?.stats()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", table(&stats));
    }
    Ok(())
}

/// A plain, aligned table: one row per queue, then the connection count.
fn table(stats: &Stats) -> String {
    let header = [
        "QUEUE",
        "LEN",
        "LEASED",
        "DELAYED",
        "CAPACITY",
        "DEAD",
        "PUT",
        "ACKED",
        "REDELIVERED",
        "DEAD-LETTERED",
    ];
    let rows: Vec<[String; 10]> = stats
        .queues
        .iter()
        .map(|q| {
            [
                // Temporary queues are a client's own (its results, say): marked as such.
                match q.temporary {
                    true => format!("{} (temporary)", q.name),
                    false => q.name.clone(),
                },
                q.len.to_string(),
                q.leased.to_string(),
                q.delayed.to_string(),
                q.capacity.map_or("-".into(), |c| c.to_string()),
                q.dead.to_string(),
                q.put.to_string(),
                q.acked.to_string(),
                q.redelivered.to_string(),
                q.dead_lettered.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| match i {
                0 => format!("{cell:<w$}"),
                _ => format!("{cell:>w$}"),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("connections: {}\n", stats.connections));
    match stats.memory_limit {
        // Redis without maxmemory.
        0 => out.push_str(&format!(
            "memory: {} used, no limit ({} bytes)\n",
            human(stats.memory_used),
            stats.memory_used
        )),
        limit => out.push_str(&format!(
            "memory: {} of {} used ({} of {} bytes)\n",
            human(stats.memory_used),
            human(limit),
            stats.memory_used,
            limit
        )),
    }
    if let Some(j) = &stats.journal {
        let synced = match j.last_fsync_ms {
            Some(ms) => format!(
                "{} fsync(s), the last {:.1} s ago",
                j.fsyncs,
                ms as f64 / 1000.0
            ),
            None => "no fsync yet".into(),
        };
        out.push_str(&format!(
            "journal: {} (fsync {}): {} on disk, {} live in {} item(s); {synced}, {} unsynced; \
             {} compaction(s), longest pause {:.1} ms\n",
            j.dir,
            j.policy,
            human(j.bytes_on_disk),
            human(j.live_bytes),
            j.items,
            human(j.unsynced_bytes),
            j.compactions,
            j.longest_pause_us as f64 / 1000.0,
        ));
    }
    out
}

/// A byte count as people write it: `512 MiB`, `1.5 GiB`, `300 bytes`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

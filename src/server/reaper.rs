//! The lease reaper: one thread returning expired leases to their queues, moving due
//! delayed items to the front lane and removing temporary queues whose time is up.

use std::time::Duration;

use super::shared::Shared;

/// Returns expired leases to their queues and releases due delayed items until the server
/// stops (so a delay ends within one tick: at most 100 ms late).
pub(super) fn expire_loop(shared: &Shared) {
    let shortest = shared
        .registry
        .all()
        .iter()
        .map(|q| q.lease_timeout())
        .min()
        .unwrap_or(Duration::from_secs(1));
    // Expiry is checked often enough to be late by a small fraction of the lease at most.
    let tick = (shortest / 20).clamp(Duration::from_millis(5), Duration::from_millis(100));
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = shared.stop_rx.recv_timeout(tick)
    {
        let now = std::time::Instant::now();
        for queue in shared.registry.all() {
            queue.expire(now);
            queue.release_due(now);
        }
        for queue in shared.registry.temporaries() {
            queue.expire(now);
            queue.release_due(now);
        }
        shared.registry.sweep_temporaries(now);
        // A journal that failed cannot persist puts: the server stops serving.
        if shared
            .journal
            .as_ref()
            .is_some_and(|j| j.failure().is_some())
        {
            shared.request_stop();
        }
    }
}

//! Where a queue lives in Redis: six keys under one hash tag (see `distq.lua`).
//!
//! The tag is the queue's *family*: its name up to the first `.`. So `jobs.tasks`,
//! `jobs.results` and `jobs.tasks.dead` share a slot (one function may touch them all, on
//! Redis Cluster too), while `tasks` and `results` may sit on different nodes.

/// The Redis key of the set of declared queue names, for stats.
pub(crate) const REGISTRY: &str = "distq:queues";

/// The family of queue `name`: the hash tag its keys share.
pub(crate) fn family(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Queue `name`'s keys, in the order the functions take them.
pub(crate) fn of(name: &str) -> [String; 6] {
    let base = format!("distq:{{{}}}:{name}", family(name));
    [
        base.clone(),
        format!("{base}:meta"),
        format!("{base}:leases"),
        format!("{base}:back"),
        format!("{base}:delayed"),
        format!("{base}:wake"),
    ]
}

/// Why `name` cannot be a queue's on Redis, if it cannot: its keys must be unambiguous
/// (no `:`), its hash tag its own (no braces) and not empty.
pub(crate) fn unfit(name: &str) -> Option<String> {
    let max = crate::wire::message::MAX_QUEUE_NAME;
    if name.is_empty() || name.len() > max {
        return Some(format!("a queue's name is 1 to {max} bytes"));
    }
    if is_dead(name) {
        return Some("NAME.dead is the dead-letter queue of NAME, made with it".into());
    }
    if name.contains([':', '{', '}']) || family(name).is_empty() {
        return Some(
            "a queue's name on Redis has no ':', '{' or '}' and does not start with '.'".into(),
        );
    }
    None
}

/// The name of queue `name`'s dead-letter queue.
pub(crate) fn dead(name: &str) -> String {
    format!("{name}.dead")
}

/// Whether `name` is a dead-letter queue's name (which has no dead-letter queue itself).
pub(crate) fn is_dead(name: &str) -> bool {
    name.ends_with(".dead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_shares_one_hash_tag() {
        assert_eq!(of("jobs.tasks")[0], "distq:{jobs}:jobs.tasks");
        assert_eq!(
            of("jobs.tasks.dead")[1],
            "distq:{jobs}:jobs.tasks.dead:meta"
        );
        assert_eq!(of("tasks")[5], "distq:{tasks}:tasks:wake");
        assert_eq!(family(&dead("tasks")), "tasks");
        assert!(is_dead(&dead("tasks")) && !is_dead("tasks"));
        for bad in ["", "a:b", "{x}", ".tasks", "tasks.dead"] {
            assert!(unfit(bad).is_some(), "{bad:?}");
        }
        assert_eq!(unfit("jobs.tasks"), None);
    }
}

//! File names in a journal directory: `log-G-N.dq` (segment N of generation G),
//! `snap-G.dq` (the live items when generation G began) and `snap-G.tmp` (one being
//! written). Numbers are zero-padded so a listing sorts in replay order.

/// One journal file, by what its name says. Ordered as recovery reads them: by generation,
/// a generation's snapshot before its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileName {
    Segment { generation: u64, seq: u64 },
    Snapshot { generation: u64 },
    Temp { generation: u64 },
}

impl FileName {
    /// Reads a name; `None` for a file that is not the journal's.
    pub(crate) fn parse(name: &str) -> Option<FileName> {
        let number = |s: &str| s.parse::<u64>().ok().filter(|_| s.len() == 10);
        if let Some(rest) = name
            .strip_prefix("log-")
            .and_then(|r| r.strip_suffix(".dq"))
        {
            let (g, n) = rest.split_once('-')?;
            return Some(FileName::Segment {
                generation: number(g)?,
                seq: number(n)?,
            });
        }
        let rest = name.strip_prefix("snap-")?;
        if let Some(g) = rest.strip_suffix(".dq") {
            return Some(FileName::Snapshot {
                generation: number(g)?,
            });
        }
        let g = rest.strip_suffix(".tmp")?;
        Some(FileName::Temp {
            generation: number(g)?,
        })
    }

    fn key(self) -> (u64, u8, u64) {
        match self {
            FileName::Snapshot { generation } => (generation, 0, 0),
            FileName::Segment { generation, seq } => (generation, 1, seq),
            FileName::Temp { generation } => (generation, 2, 0),
        }
    }

    /// The generation the file belongs to.
    pub(crate) fn generation(self) -> u64 {
        match self {
            FileName::Segment { generation, .. }
            | FileName::Snapshot { generation }
            | FileName::Temp { generation } => generation,
        }
    }
}

impl Ord for FileName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for FileName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileName::Segment { generation, seq } => write!(f, "log-{generation:010}-{seq:010}.dq"),
            FileName::Snapshot { generation } => write!(f, "snap-{generation:010}.dq"),
            FileName::Temp { generation } => write!(f, "snap-{generation:010}.tmp"),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_replay_order() {
        let names = [
            FileName::Segment {
                generation: 2,
                seq: 10,
            },
            FileName::Snapshot { generation: 3 },
            FileName::Temp { generation: 4 },
        ];
        for name in names {
            assert_eq!(FileName::parse(&name.to_string()), Some(name));
        }
        assert!(
            FileName::Segment {
                generation: 1,
                seq: 9
            }
            .to_string()
                < FileName::Segment {
                    generation: 1,
                    seq: 10
                }
                .to_string()
        );
        for other in [
            "LOCK",
            "log-1-1.dq",
            "snap-0000000001.dq~",
            "log-0000000001.dq",
        ] {
            assert_eq!(FileName::parse(other), None, "{other}");
        }
    }
}

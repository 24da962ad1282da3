//! Counting N-Queens solutions, split into independent tasks by the placement of the first
//! rows.

/// The largest board this job accepts: bit masks are `u32`, and larger boards run for days.
pub const MAX_N: u8 = 20;

/// Every valid placement of queens in the first `depth` rows of an `n`×`n` board, as the
/// column of each row's queen. Each is one independent task.
pub fn prefixes(n: u8, depth: u8) -> Vec<Vec<u8>> {
    let depth = depth.min(n);
    let mut out = Vec::new();
    let mut prefix = Vec::with_capacity(depth as usize);
    extend(n, depth, &mut prefix, &mut out);
    out
}

fn extend(n: u8, depth: u8, prefix: &mut Vec<u8>, out: &mut Vec<Vec<u8>>) {
    if prefix.len() == depth as usize {
        out.push(prefix.clone());
        return;
    }
    for col in 0..n {
        prefix.push(col);
        if masks(n, prefix).is_some() {
            extend(n, depth, prefix, out);
        }
        prefix.pop();
    }
}

/// The solutions of an `n`×`n` board whose first rows hold queens at `prefix`; 0 for a
/// prefix that is not a valid placement (a worker never trusts its input).
pub fn count_from(n: u8, prefix: &[u8]) -> u64 {
    if n == 0 || n > MAX_N || prefix.len() > n as usize {
        return 0;
    }
    match masks(n, prefix) {
        Some((cols, left, right)) => count(full(n), cols, left, right),
        None => 0,
    }
}

/// All `n` columns as a bit mask.
fn full(n: u8) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// The attacked columns and diagonals after placing `prefix`, or `None` if two of its queens
/// attack each other or one is off the board.
fn masks(n: u8, prefix: &[u8]) -> Option<(u32, u32, u32)> {
    let (mut cols, mut left, mut right) = (0u32, 0u32, 0u32);
    for &col in prefix {
        if col >= n {
            return None;
        }
        let bit = 1u32 << col;
        if (cols | left | right) & bit != 0 {
            return None;
        }
        cols |= bit;
        left = ((left | bit) << 1) & full(n);
        right = (right | bit) >> 1;
    }
    Some((cols, left, right))
}

/// Classic bitmask backtracking over the remaining rows.
fn count(all: u32, cols: u32, left: u32, right: u32) -> u64 {
    if cols == all {
        return 1;
    }
    let mut free = all & !(cols | left | right);
    let mut total = 0;
    while free != 0 {
        let bit = free & free.wrapping_neg();
        free ^= bit;
        total += count(
            all,
            cols | bit,
            ((left | bit) << 1) & all,
            (right | bit) >> 1,
        );
    }
    total
}

#[cfg(test)]
mod test {
    use super::*;

    const KNOWN: [u64; 11] = [0, 1, 0, 0, 2, 10, 4, 40, 92, 352, 724];

    #[test]
    fn whole_boards_match_the_known_counts() {
        for n in 1..=10u8 {
            assert_eq!(count_from(n, &[]), KNOWN[n as usize], "n = {n}");
        }
    }

    #[test]
    fn split_counts_add_up_at_every_depth() {
        for n in 1..=10u8 {
            for depth in 0..=3 {
                let total: u64 = prefixes(n, depth).iter().map(|p| count_from(n, p)).sum();
                assert_eq!(total, KNOWN[n as usize], "n = {n}, depth = {depth}");
            }
        }
    }

    #[test]
    fn invalid_prefixes_count_nothing() {
        assert_eq!(count_from(8, &[0, 0]), 0, "same column");
        assert_eq!(count_from(8, &[0, 1]), 0, "same diagonal");
        assert_eq!(count_from(8, &[9]), 0, "off the board");
        assert_eq!(count_from(0, &[]), 0);
        assert_eq!(count_from(MAX_N + 1, &[]), 0);
    }

    #[test]
    fn prefixes_are_valid_and_distinct() {
        let all = prefixes(8, 2);
        assert_eq!(
            all.len(),
            42,
            "8·8 placements minus 8 same-column and 14 diagonal pairs"
        );
        assert!(all.iter().all(|p| masks(8, p).is_some()));
    }
}

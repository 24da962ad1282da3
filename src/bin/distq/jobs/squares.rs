//! The seed article's job: square a number.

/// `"n * n = n²"`, computed wide enough that no `i64` overflows.
pub fn square(n: i64) -> String {
    match n.checked_mul(n) {
        Some(sq) => format!("{n} * {n} = {sq}"),
        // Formatting an i128 is several times slower: only when the square needs it.
        None => format!("{n} * {n} = {}", i128::from(n) * i128::from(n)),
    }
}

#[cfg(test)]
mod test {
    use super::square;

    #[test]
    fn squares_like_the_seed() {
        assert_eq!(square(3), "3 * 3 = 9");
        assert_eq!(square(-4), "-4 * -4 = 16");
        assert_eq!(
            square(i64::MIN),
            format!(
                "{0} * {0} = 85070591730234615865843651857942052864",
                i64::MIN
            )
        );
    }
}

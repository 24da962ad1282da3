//! Journal framing: `len: u32 | crc32c(body): u32 | crc32c(first 8 bytes): u32 | body`, all
//! little-endian. The body's checksum catches a torn or flipped record; the header's own
//! checksum lets recovery test any offset for the start of a frame in constant time, to tell
//! a torn tail (nothing valid after the bad frame) from corruption (valid frames after it).

/// Bytes before a frame's body.
pub(crate) const HEADER: usize = 12;

/// The largest body recovery accepts; anything longer is a bad length, not a record. Items
/// are bounded by the frame size (at most 4 GiB on the wire, 8 MiB by default).
pub(crate) const MAX_BODY: usize = 1 << 30;

/// Appends one frame holding `body` to `out`.
#[cfg(test)]
pub(crate) fn push(out: &mut Vec<u8>, body: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let head = crc32c::crc32c(&out[start..start + 8]);
    out.extend_from_slice(&head.to_le_bytes());
    out.extend_from_slice(body);
}

/// Appends one frame whose body is written by `body` into `out` directly (no copy of a
/// large payload through a scratch buffer).
pub(crate) fn push_with(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    body(out);
    let len = out.len() - start - HEADER;
    let crc = crc32c::crc32c(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let head = crc32c::crc32c(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&head.to_le_bytes());
}

/// The size of the frame holding a body of `len` bytes.
pub(crate) fn size(len: usize) -> u64 {
    (HEADER + len) as u64
}

/// Why the bytes at an offset are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes remain than a header, or than the body the header announces.
    Short,
    /// The header's checksum does not match (a torn or flipped length).
    Header,
    /// The announced length is 0 or larger than any record.
    Length(usize),
    /// The body's checksum does not match.
    Body,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Short => f.write_str("the record is cut short"),
            Bad::Header => f.write_str("the record's header checksum does not match"),
            Bad::Length(n) => write!(f, "the record announces an impossible length of {n} bytes"),
            Bad::Body => f.write_str("the record's checksum does not match"),
        }
    }
}

/// The frame at the start of `bytes`: its body and its total size.
pub(crate) fn parse(bytes: &[u8]) -> Result<(&[u8], usize), Bad> {
    if bytes.len() < HEADER {
        return Err(Bad::Short);
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if crc32c::crc32c(&bytes[..8]) != word(8) {
        return Err(Bad::Header);
    }
    let len = word(0) as usize;
    if len == 0 || len > MAX_BODY {
        return Err(Bad::Length(len));
    }
    let body = bytes.get(HEADER..HEADER + len).ok_or(Bad::Short)?;
    if crc32c::crc32c(body) != word(4) {
        return Err(Bad::Body);
    }
    Ok((body, HEADER + len))
}

/// Whether any valid frame starts after offset `from` of `bytes`: then a bad frame at `from`
/// is corruption with records after it, not a torn tail. Each offset costs one 8-byte
/// checksum; only a matching header costs a body checksum. The body checksums together may
/// cover at most [`SCAN_BUDGET`] times the bytes scanned (a crafted file of valid headers
/// over bad bodies would otherwise cost quadratic time): past it, the answer is yes, which
/// refuses the file rather than trim it.
pub(crate) fn any_valid_after(bytes: &[u8], from: usize) -> bool {
    let mut budget = SCAN_BUDGET.saturating_mul(bytes.len().saturating_sub(from));
    for at in from + 1..bytes.len().saturating_sub(HEADER - 1) {
        match parse(&bytes[at..]) {
            Ok(_) => return true,
            Err(Bad::Body) => {
                let len =
                    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
                match budget.checked_sub(len as usize) {
                    Some(left) => budget = left,
                    None => return true,
                }
            }
            Err(_) => {}
        }
    }
    false
}

/// How many times its own length the body checksums of a torn-tail scan may cover.
const SCAN_BUDGET: usize = 4;

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn frames_round_trip_and_every_damage_is_caught() {
        let mut out = Vec::new();
        push(&mut out, b"hello");
        push_with(&mut out, |b| b.extend_from_slice(b"world!"));
        let (body, used) = parse(&out).unwrap();
        assert_eq!((body, used), (&b"hello"[..], HEADER + 5));
        assert_eq!(parse(&out[used..]).unwrap().0, b"world!");
        for cut in 0..used {
            assert!(parse(&out[..cut]).is_err(), "cut at {cut}");
        }
        for byte in 0..used {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[byte] ^= 1 << bit;
                assert!(parse(&bad).is_err(), "flip at {byte}.{bit}");
            }
        }
        assert!(any_valid_after(&out, 0));
        assert!(!any_valid_after(&out, used));
    }

    #[test]
    fn a_scan_over_crafted_headers_stays_linear_and_refuses() {
        // Valid headers every 12 bytes, each announcing the rest of the file, bodies wrong:
        // checking every body would cost the square of the length.
        let n = 1 << 16;
        let mut bytes = vec![0u8; n];
        for at in (0..n - HEADER).step_by(HEADER) {
            let len = (n - at - HEADER) as u32;
            bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&1u32.to_le_bytes());
            let head = crc32c::crc32c(&bytes[at..at + 8]);
            bytes[at + 8..at + 12].copy_from_slice(&head.to_le_bytes());
        }
        let started = std::time::Instant::now();
        assert!(
            any_valid_after(&bytes, 0),
            "undecidable within the budget: refused"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_huge_announced_length_is_refused_before_anything_is_read() {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let head = crc32c::crc32c(&out[..8]);
        out.extend_from_slice(&head.to_le_bytes());
        assert_eq!(parse(&out), Err(Bad::Length(u32::MAX as usize)));
    }
}

//! `multiprocessing.connection` framing: a 4-byte big-endian *signed* length, then the
//! payload; a payload over `i32::MAX` bytes is announced by `-1` and an 8-byte big-endian
//! length (Python 3.8+). Lengths are checked against a cap before anything is allocated.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// The largest payload sent with one `write` together with its header, as Python does (so
/// a small frame is one segment; bpo-20540).
const JOINED: usize = 16 << 10;

/// Reads one frame's payload into `buf` (replacing its contents), refusing one announced
/// longer than `max` before reading it. A clean end of stream before a frame is
/// [`Error::Closed`]; one inside a frame is [`Error::Protocol`].
pub(crate) fn read_frame<R: Read>(r: &mut R, max: usize, buf: &mut Vec<u8>) -> Result<()> {
    let mut header = [0u8; 4];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Err(Error::Closed);
    }
    if got < header.len() {
        return Err(truncated());
    }
    let len = match i32::from_be_bytes(header) {
        -1 => {
            let mut long = [0u8; 8];
            if read_full(r, &mut long)? < long.len() {
                return Err(truncated());
            }
            u64::from_be_bytes(long)
        }
        n if n < 0 => {
            return Err(Error::Protocol(format!(
                "a Python frame announces a negative length ({n})"
            )))
        }
        n => n as u64,
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max)
        .ok_or(Error::FrameTooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max,
        })?;
    buf.clear();
    // Grows as bytes arrive: an announced length alone allocates nothing.
    r.take(len as u64).read_to_end(buf)?;
    if buf.len() < len {
        return Err(truncated());
    }
    Ok(())
}

/// Writes `payload` as one frame.
pub(crate) fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<()> {
    let mut header = Vec::with_capacity(12);
    match i32::try_from(payload.len()) {
        Ok(n) => header.extend_from_slice(&n.to_be_bytes()),
        Err(_) => {
            header.extend_from_slice(&(-1i32).to_be_bytes());
            header.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    if payload.len() <= JOINED {
        header.extend_from_slice(payload);
        w.write_all(&header)?;
    } else {
        w.write_all(&header)?;
        w.write_all(payload)?;
    }
    Ok(())
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

fn truncated() -> Error {
    Error::Protocol("a Python peer's frame ends before its announced length".into())
}

#[cfg(test)]
mod test {
    use super::*;

    fn read(bytes: &[u8], max: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        read_frame(&mut &bytes[..], max, &mut buf).map(|()| buf)
    }

    #[test]
    fn frames_round_trip_in_the_short_form() {
        let mut out = Vec::new();
        write_frame(&mut out, b"#WELCOME#").unwrap();
        // Captured from Python 3.11: the header is 00 00 00 09.
        assert_eq!(out, b"\x00\x00\x00\x09#WELCOME#");
        assert_eq!(read(&out, 256).unwrap(), b"#WELCOME#");
        let big = vec![7u8; JOINED + 1];
        let mut out = Vec::new();
        write_frame(&mut out, &big).unwrap();
        assert_eq!(read(&out, big.len()).unwrap(), big);
    }

    #[test]
    fn the_long_form_is_read_and_its_length_checked_before_allocating() {
        let mut frame = vec![0xFF, 0xFF, 0xFF, 0xFF];
        frame.extend_from_slice(&3u64.to_be_bytes());
        frame.extend_from_slice(b"abc");
        assert_eq!(read(&frame, 10).unwrap(), b"abc");
        // 2^40 announced: refused at once, nothing read or allocated.
        let mut huge = vec![0xFF, 0xFF, 0xFF, 0xFF];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(
            read(&huge, 1 << 20),
            Err(Error::FrameTooLarge { max, .. }) if max == 1 << 20
        ));
        assert!(matches!(
            read(&[0xFF, 0xFF, 0xFF, 0xFE], 10),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn a_stream_cut_short_is_told_from_a_clean_end() {
        assert!(matches!(read(b"", 10), Err(Error::Closed)));
        assert!(matches!(read(b"\x00\x00", 10), Err(Error::Protocol(_))));
        assert!(matches!(
            read(b"\x00\x00\x00\x05ab", 10),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            read(b"\x00\x00\x00\x0b#CHALLENGE#", 10),
            Err(Error::FrameTooLarge { .. })
        ));
    }
}

//! Length-prefixed frames over any `Read + Write`: a 4-byte big-endian length, then a CBOR body.
//!
//! The length is checked against the limit before any buffer grows, so a hostile prefix such as
//! `0xFFFFFFFF` costs nothing. Buffers are kept and reused from frame to frame, up to a few KiB.

use std::io::{self, BufRead, BufReader, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};

/// Bytes in the length prefix.
pub(crate) const HEADER_LEN: usize = 4;

/// A stream that sends and receives whole CBOR messages as frames.
pub(crate) struct Framed<S: Read + Write> {
    inner: BufReader<S>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    max_frame_size: usize,
}

impl<S: Read + Write> Framed<S> {
    /// Wraps `stream`; frames whose body exceeds `max_frame_size` bytes are refused both ways.
    pub(crate) fn new(stream: S, max_frame_size: usize) -> Self {
        Framed {
            inner: BufReader::new(stream),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            max_frame_size,
        }
    }

    /// The underlying stream, to set timeouts on.
    pub(crate) fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The underlying stream, unwrapped.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn into_inner(self) -> S {
        self.inner.into_inner()
    }

    /// The underlying stream, mutably.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Changes the largest frame body accepted or sent from now on.
    pub(crate) fn set_max_frame_size(&mut self, bytes: usize) {
        self.max_frame_size = bytes;
    }

    /// Waits until at least one byte of the next frame has arrived and says whether the
    /// whole frame is already buffered. A clean end of stream is [`Error::Closed`].
    pub(crate) fn frame_started(&mut self) -> Result<bool> {
        let buf = loop {
            match self.inner.fill_buf() {
                Ok(buf) => break buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if buf.is_empty() {
            return Err(Error::Closed);
        }
        Ok(match buf.get(..HEADER_LEN) {
            Some(header) => {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                buf.len() - HEADER_LEN >= len
            }
            None => false,
        })
    }

    /// Encodes `msg` and writes it as one frame with a single write call.
    ///
    /// A message over the limit is refused before anything is written, so the connection
    /// stays usable.
    pub(crate) fn send<M: Serialize>(&mut self, msg: &M) -> Result<()> {
        let mut wbuf = std::mem::take(&mut self.wbuf);
        let written = self
            .encode(msg, &mut wbuf)
            .and_then(|()| Ok(self.inner.get_mut().write_all(&wbuf)?));
        shrink(&mut wbuf);
        self.wbuf = wbuf;
        written
    }

    /// Encodes `msg` as one whole frame into `out` (replacing its contents), for a writer
    /// other than this one to send; refused like [`send`](Framed::send) over the limit.
    pub(crate) fn encode<M: Serialize>(&self, msg: &M, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        out.extend_from_slice(&[0; HEADER_LEN]);
        codec::encode_into(msg, out).map_err(Error::Encode)?;
        let len = out.len() - HEADER_LEN;
        if len > self.max_frame_size {
            return Err(Error::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        // Cannot truncate: max_frame_size is capped at u32::MAX by the configs.
        out[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Reads one frame and decodes it as `M`.
    ///
    /// A clean end of stream before a frame starts is [`Error::Closed`]; one inside a frame is
    /// [`Error::Protocol`]; a body that is not an `M` is [`Error::Protocol`] too.
    pub(crate) fn recv<M: DeserializeOwned>(&mut self) -> Result<M> {
        read_frame(&mut self.inner, self.max_frame_size, &mut self.rbuf)?;
        let message = codec::decode(&self.rbuf)
            .map_err(|e| Error::Protocol(format!("undecodable message: {e}")));
        shrink(&mut self.rbuf);
        message
    }
}

/// Reads one frame body into `buf` (replacing its contents).
pub(crate) fn read_frame<R: Read>(r: &mut R, max: usize, buf: &mut Vec<u8>) -> Result<()> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(Error::Closed),
            Ok(0) => return Err(truncated()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len, max });
    }
    buf.clear();
    // The buffer grows as bytes arrive, not to the announced length up front: a peer that
    // announces a large frame and sends nothing costs nothing.
    let got = r.take(len as u64).read_to_end(buf)?;
    if got < len {
        return Err(truncated());
    }
    Ok(())
}

/// The most a frame buffer keeps between frames.
const KEEP: usize = 4 * 1024;

/// Buffers are reused from frame to frame, but one large frame must not leave an idle
/// connection holding its size: a buffer that grew past [`KEEP`] goes back to that. Only a
/// large frame grew it, so reallocating costs little next to moving that frame.
fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP {
        buf.clear();
        buf.shrink_to(KEEP);
    }
}

fn truncated() -> Error {
    Error::Protocol("connection closed in the middle of a frame".into())
}

#[cfg(test)]
mod test {
    use super::*;
    use std::io::Cursor;

    /// A Read + Write over an input cursor and an output vector.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn framed(input: Vec<u8>, max: usize) -> Framed<Pipe> {
        let pipe = Pipe {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        Framed::new(pipe, max)
    }

    #[test]
    fn smoke() {
        let mut tx = framed(Vec::new(), 1024);
        tx.send(&("hello", 42u32)).unwrap();
        let wire = tx.inner.into_inner().output;
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - HEADER_LEN);
        let mut rx = framed(wire, 1024);
        assert_eq!(rx.recv::<(String, u32)>().unwrap(), ("hello".into(), 42));
        assert!(matches!(rx.recv::<u32>(), Err(Error::Closed)));
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut tx = framed(Vec::new(), 1024);
        for i in 0..3u32 {
            tx.send(&i).unwrap();
        }
        let mut rx = framed(tx.inner.into_inner().output, 1024);
        for i in 0..3u32 {
            assert_eq!(rx.recv::<u32>().unwrap(), i);
        }
    }

    #[test]
    fn frame_started_tells_whole_frames_from_partial_ones() {
        let mut tx = framed(Vec::new(), 1024);
        tx.send(&1u32).unwrap();
        let wire = tx.inner.into_inner().output;
        assert!(framed(wire.clone(), 1024).frame_started().unwrap());
        assert!(!framed(wire[..wire.len() - 1].to_vec(), 1024)
            .frame_started()
            .unwrap());
        assert!(!framed(vec![0, 0], 1024).frame_started().unwrap());
        assert!(matches!(
            framed(vec![], 1024).frame_started(),
            Err(Error::Closed)
        ));
    }

    #[test]
    fn an_announced_length_allocates_nothing_until_bytes_arrive() {
        let mut buf = Vec::new();
        let mut input = Cursor::new(vec![0x00, 0x7F, 0xFF, 0x00, 0xA1]);
        let err = read_frame(&mut input, 16 << 20, &mut buf).unwrap_err();
        assert!(err.to_string().contains("middle of a frame"), "{err}");
        assert!(buf.capacity() < 1024, "{} bytes reserved", buf.capacity());
    }

    #[test]
    fn truncated_header() {
        let mut rx = framed(vec![0, 0], 1024);
        assert!(matches!(rx.recv::<u32>(), Err(Error::Protocol(_))));
    }

    #[test]
    fn truncated_body() {
        let mut rx = framed(vec![0, 0, 0, 10, 1, 2, 3], 1024);
        let err = rx.recv::<u32>().unwrap_err();
        assert!(err.to_string().contains("middle of a frame"), "{err}");
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocating() {
        let mut buf = Vec::new();
        let mut input = Cursor::new(vec![0xFF, 0xFF, 0xFF, 0xFF]);
        let err = read_frame(&mut input, 1024, &mut buf).unwrap_err();
        assert!(matches!(
            err,
            Error::FrameTooLarge {
                len: 0xFFFF_FFFF,
                max: 1024
            }
        ));
        assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn oversized_send_is_refused_and_writes_nothing() {
        let mut tx = framed(Vec::new(), 8);
        let err = tx.send(&"a string longer than eight bytes").unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { max: 8, .. }));
        assert!(tx.inner.into_inner().output.is_empty());
    }

    #[test]
    fn garbage_body_is_a_protocol_error() {
        // 0xFF is a CBOR "break" with nothing to break: not a value.
        let mut rx = framed(vec![0, 0, 0, 1, 0xFF], 1024);
        assert!(matches!(rx.recv::<u32>(), Err(Error::Protocol(_))));
    }

    #[test]
    fn empty_frame_is_a_protocol_error() {
        let mut rx = framed(vec![0, 0, 0, 0], 1024);
        assert!(matches!(rx.recv::<u32>(), Err(Error::Protocol(_))));
    }

    #[test]
    fn buffers_shrink_back_after_a_large_frame() {
        let mut tx = framed(Vec::new(), 1 << 20);
        tx.send(&serde_bytes::Bytes::new(&[1u8; 600_000])).unwrap();
        // A literal, not KEEP: a few KiB is the promise.
        assert!(
            tx.wbuf.capacity() <= 4096,
            "{} bytes kept",
            tx.wbuf.capacity()
        );
        let mut rx = framed(tx.inner.into_inner().output, 1 << 20);
        let got: serde_bytes::ByteBuf = rx.recv().unwrap();
        assert_eq!(got.len(), 600_000);
        assert!(
            rx.rbuf.capacity() <= 4096,
            "{} bytes kept",
            rx.rbuf.capacity()
        );
    }
}

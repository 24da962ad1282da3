//! A raw distq peer written from docs/PROTOCOL.md alone: a minimal CBOR encoder and decoder,
//! frames, and the client side of the handshake. Tests use it to send what the real client
//! never would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The CBOR values the protocol uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Cbor {
    Uint(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    Bool(bool),
    Null,
}

impl Cbor {
    /// `{name: {field: value, ...}}`, an externally tagged enum variant.
    pub fn variant(name: &str, fields: Vec<(&str, Cbor)>) -> Cbor {
        let fields = fields
            .into_iter()
            .map(|(k, v)| (Cbor::Text(k.into()), v))
            .collect();
        Cbor::Map(vec![(Cbor::Text(name.into()), Cbor::Map(fields))])
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Cbor::Uint(n) => header(out, 0, *n),
            Cbor::Bytes(b) => {
                header(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Cbor::Text(t) => {
                header(out, 3, t.len() as u64);
                out.extend_from_slice(t.as_bytes());
            }
            Cbor::Array(items) => {
                header(out, 4, items.len() as u64);
                items.iter().for_each(|i| i.write(out));
            }
            Cbor::Map(entries) => {
                header(out, 5, entries.len() as u64);
                for (k, v) in entries {
                    k.write(out);
                    v.write(out);
                }
            }
            Cbor::Bool(b) => out.push(0xF4 + u8::from(*b)),
            Cbor::Null => out.push(0xF6),
        }
    }

    /// Decodes one value from the front of `bytes`; `None` if it is not one of ours.
    pub fn decode(bytes: &[u8]) -> Option<(Cbor, usize)> {
        let first = *bytes.first()?;
        let (major, info) = (first >> 5, first & 0x1F);
        match first {
            0xF4 | 0xF5 => return Some((Cbor::Bool(first == 0xF5), 1)),
            0xF6 => return Some((Cbor::Null, 1)),
            _ => {}
        }
        let (arg, mut at) = match info {
            0..=23 => (u64::from(info), 1),
            24..=27 => {
                let n = 1usize << (info - 24);
                let raw = bytes.get(1..1 + n)?;
                (
                    raw.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
                    1 + n,
                )
            }
            _ => return None,
        };
        let value = match major {
            0 => Cbor::Uint(arg),
            2 | 3 => {
                let raw = bytes.get(at..at + arg as usize)?.to_vec();
                at += arg as usize;
                if major == 2 {
                    Cbor::Bytes(raw)
                } else {
                    Cbor::Text(String::from_utf8(raw).ok()?)
                }
            }
            4 => {
                let mut items = Vec::new();
                for _ in 0..arg {
                    let (item, used) = Cbor::decode(&bytes[at..])?;
                    at += used;
                    items.push(item);
                }
                Cbor::Array(items)
            }
            5 => {
                let mut entries = Vec::new();
                for _ in 0..arg {
                    let (k, used) = Cbor::decode(&bytes[at..])?;
                    at += used;
                    let (v, used) = Cbor::decode(&bytes[at..])?;
                    at += used;
                    entries.push((k, v));
                }
                Cbor::Map(entries)
            }
            _ => return None,
        };
        Some((value, at))
    }

    /// The value under text key `key` of a map.
    pub fn get(&self, key: &str) -> Option<&Cbor> {
        match self {
            Cbor::Map(entries) => entries
                .iter()
                .find(|(k, _)| *k == Cbor::Text(key.into()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The name of a unit variant (`"empty"`) or of a one-entry variant map.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Cbor::Text(t) => Some(t),
            Cbor::Map(entries) if entries.len() == 1 => match &entries[0].0 {
                Cbor::Text(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }
}

fn header(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xFF => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xFFFF => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xFFFF_FFFF => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// A raw connection to a distq server.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    /// Opens a TCP connection and does nothing else.
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw { stream }
    }

    /// Opens a connection and completes the handshake with `key`, as PROTOCOL.md describes.
    pub fn authenticated(addr: SocketAddr, key: &str) -> Raw {
        Raw::welcomed(addr, key).0
    }

    /// Whether a `welcome` message lists `feature` among the server's optional requests.
    pub fn offers(welcome: &Cbor, feature: &str) -> bool {
        let features = welcome
            .get("welcome")
            .and_then(|w| w.get("info"))
            .and_then(|i| i.get("features"));
        matches!(features, Some(Cbor::Array(f)) if f.contains(&Cbor::Text(feature.into())))
    }

    /// [`Raw::authenticated`], also handing back the server's `welcome` message.
    pub fn welcomed(addr: SocketAddr, key: &str) -> (Raw, Cbor) {
        let mut raw = Raw::connect(addr);
        let client_nonce = vec![0x5A; 32];
        raw.send(&Cbor::variant(
            "hello",
            vec![
                ("version", Cbor::Uint(1)),
                ("nonce", Cbor::Bytes(client_nonce.clone())),
            ],
        ));
        let challenge = raw.recv().expect("challenge");
        let Some(Cbor::Bytes(server_nonce)) =
            challenge.get("challenge").and_then(|c| c.get("nonce"))
        else {
            panic!("expected a challenge, got {challenge:?}");
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(b"distq-v1 client proof");
        mac.update(server_nonce);
        mac.update(&client_nonce);
        let proof = mac.finalize().into_bytes().to_vec();
        raw.send(&Cbor::variant("proof", vec![("mac", Cbor::Bytes(proof))]));
        let welcome = raw.recv().expect("welcome");
        assert_eq!(welcome.tag(), Some("welcome"), "{welcome:?}");
        (raw, welcome)
    }

    /// Writes raw bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        // The server may already have hung up; that is what some tests expect.
        let _ = self.stream.write_all(bytes);
    }

    /// Writes one frame around `body`.
    pub fn send_frame(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.write(&frame);
    }

    /// Writes one frame holding `value`.
    pub fn send(&mut self, value: &Cbor) {
        self.send_frame(&value.encode());
    }

    /// Reads one frame and decodes it; `None` at end of stream or on a reset.
    pub fn recv(&mut self) -> Option<Cbor> {
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
        self.stream.read_exact(&mut body).ok()?;
        Cbor::decode(&body).map(|(v, _)| v)
    }

    /// Whether the server closes this connection within `limit` (reading and discarding
    /// whatever it sends first).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 1024];
        while Instant::now() < end {
            self.stream
                .set_read_timeout(Some(end - Instant::now() + Duration::from_millis(1)))
                .unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true, // reset
            }
        }
        false
    }
}

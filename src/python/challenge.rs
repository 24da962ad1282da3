//! The mutual challenge of `multiprocessing.connection`, which every connection to a Python
//! manager starts with: the server challenges first, then the client challenges the server.
//!
//! Two generations interoperate. Up to Python 3.11 a challenge is `#CHALLENGE#` and 20
//! random bytes, answered by their raw HMAC-MD5 (16 bytes). From 3.12 it is `#CHALLENGE#`
//! `{sha256}` and 40 random bytes, answered by `{sha256}` and the HMAC-SHA256 of the whole
//! message, prefix included (so an answer cannot be downgraded). The lengths (20 and 16)
//! mark the old form. We challenge in the new form and accept both answers, and answer each
//! challenge in its own form: that works with every client from 2.7 to 3.13.

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Sha256, Sha384};

use super::connection::{read_frame, write_frame};
use crate::error::{AuthFailure, Error, Result};

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";

/// Random bytes in a challenge we send (after its `{sha256}`), as Python 3.12+ sends.
const MESSAGE_LENGTH: usize = 40;

/// The old generation's challenge and answer lengths.
const LEGACY_MESSAGE: usize = 20;
const MD5_LEN: usize = 16;

/// Python reads every handshake frame with a cap of 256 bytes; so do we.
const HANDSHAKE_FRAME: usize = 256;

/// The server's half first: challenges the peer, and welcomes it if it answers with the
/// key. A wrong answer gets `#FAILURE#` and [`AuthFailure::Rejected`].
pub(crate) fn deliver_challenge<S: Read + Write>(s: &mut S, key: &[u8]) -> Result<()> {
    let mut message = b"{sha256}".to_vec();
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    message.extend_from_slice(&random);
    let mut frame = CHALLENGE.to_vec();
    frame.extend_from_slice(&message);
    write_frame(s, &frame)?;
    let mut answer = Vec::new();
    read_frame(s, HANDSHAKE_FRAME, &mut answer)?;
    if verify(key, &message, &answer) {
        write_frame(s, WELCOME)
    } else {
        // Best effort: the peer learns why before the connection closes.
        let _ = write_frame(s, FAILURE);
        Err(Error::Auth(AuthFailure::Rejected))
    }
}

/// The other half: answers the peer's challenge, and fails unless the peer welcomes the
/// answer ([`AuthFailure::Rejected`]: the peer's key is not ours).
pub(crate) fn answer_challenge<S: Read + Write>(s: &mut S, key: &[u8]) -> Result<()> {
    let mut frame = Vec::new();
    read_frame(s, HANDSHAKE_FRAME, &mut frame)?;
    let message = frame
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| Error::Protocol("a Python peer sent no #CHALLENGE#".into()))?;
    write_frame(s, &respond(key, message)?)?;
    let mut verdict = Vec::new();
    read_frame(s, HANDSHAKE_FRAME, &mut verdict)?;
    match verdict.as_slice() {
        WELCOME => Ok(()),
        FAILURE => Err(Error::Auth(AuthFailure::Rejected)),
        _ => Err(Error::Protocol(
            "a Python peer answered neither #WELCOME# nor #FAILURE#".into(),
        )),
    }
}

/// The answer to a challenge `message` (what follows `#CHALLENGE#`).
fn respond(key: &[u8], message: &[u8]) -> Result<Vec<u8>> {
    if message.len() < LEGACY_MESSAGE {
        return Err(Error::Protocol(
            "a Python peer's challenge is too short".into(),
        ));
    }
    if message.len() == LEGACY_MESSAGE {
        return Ok(mac("md5", key, message).unwrap_or_default());
    }
    let (name, _) = digest_prefix(message).ok_or_else(unsupported)?;
    let tag = mac(name, key, message).ok_or_else(unsupported)?;
    let mut answer = format!("{{{name}}}").into_bytes();
    answer.extend_from_slice(&tag);
    Ok(answer)
}

/// Whether `answer` proves the key for our challenge `message`: a raw 16- or 20-byte answer
/// is the old generation's HMAC-MD5 (over all of `message`), any other names its digest.
fn verify(key: &[u8], message: &[u8], answer: &[u8]) -> bool {
    let (name, tag) = match answer.len() {
        LEGACY_MESSAGE | MD5_LEN => ("md5", answer),
        _ => match digest_prefix(answer) {
            Some(parts) => parts,
            None => return false,
        },
    };
    check(name, key, message, tag)
}

/// `{name}rest` split into the digest name and the rest.
fn digest_prefix(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let inner = bytes.strip_prefix(b"{")?;
    let end = inner.iter().position(|&b| b == b'}')?;
    let name = std::str::from_utf8(&inner[..end]).ok()?;
    Some((name, &inner[end + 1..]))
}

fn unsupported() -> Error {
    Error::Protocol(
        "a Python peer's challenge names a digest other than md5, sha256 and sha384".into(),
    )
}

/// The HMAC of `message` under `key` with the digest Python calls `name`.
fn mac(name: &str, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    fn of<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("any key length");
        m.update(message);
        m.finalize().into_bytes().to_vec()
    }
    match name {
        "md5" => Some(of::<Hmac<Md5>>(key, message)),
        "sha256" => Some(of::<Hmac<Sha256>>(key, message)),
        "sha384" => Some(of::<Hmac<Sha384>>(key, message)),
        _ => None,
    }
}

/// Whether `tag` is the HMAC of `message` under `key` with digest `name`, compared in
/// constant time.
fn check(name: &str, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    fn ok<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        m.update(message);
        m.verify_slice(tag).is_ok()
    }
    match name {
        "md5" => ok::<Hmac<Md5>>(key, message, tag),
        "sha256" => ok::<Hmac<Sha256>>(key, message, tag),
        "sha384" => ok::<Hmac<Sha384>>(key, message, tag),
        _ => false,
    }
}

#[cfg(test)]
mod test {
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::python::{hex, pythons};

    /// The vectors captured from CPython (../shared/research/PYTHON_INTEROP.md §1.4), key
    /// `abc`: the old generation, the new, and a 3.11 client answering a 3.12 challenge.
    #[test]
    fn answers_match_what_python_computes() {
        let legacy = hex("9fa45a8a90492f7d08bf789e5fbef2e2231bd392");
        assert_eq!(
            respond(b"abc", &legacy).unwrap(),
            hex("ca630cb847f96a2c20603f3202ec07b4")
        );
        let modern = hex(concat!(
            "7b7368613235367d",
            "40b1210f3336508106be071f5a9bddc06127b5f1c345aba530a9598ce37b3ca2c0dec1b1c5e0f016"
        ));
        let mut expected = b"{sha256}".to_vec();
        expected.extend(hex(
            "0cd28ccfab2f854accb82389212230296685f74f229bedcb33ba88f01d4ee93f",
        ));
        assert_eq!(respond(b"abc", &modern).unwrap(), expected);
        assert!(verify(b"abc", &modern, &expected));
        let mixed = hex(concat!(
            "7b7368613235367d691d64d994e34b842df21f30807a2cce",
            "1cd89ffec2cc8912d19dee45b75b67b5512e522d30532ced"
        ));
        assert!(verify(
            b"abc",
            &mixed,
            &hex("8249306e57c785a00d411eab8fa73350")
        ));
        // The same answers under another key, or tampered with, prove nothing.
        assert!(!verify(b"abd", &modern, &expected));
        let mut flipped = expected.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(!verify(b"abc", &modern, &flipped));
        assert!(!verify(b"abc", &modern, b"{sha1}0123456789abcdef0123"));
        assert!(matches!(
            respond(b"abc", b"{sha1}0123456789abcdefghij"),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(respond(b"abc", b"short"), Err(Error::Protocol(_))));
    }

    /// A Python client of `multiprocessing.connection` on `port`: handshakes with `key`,
    /// sends `ping`, prints what comes back.
    fn client(python: &std::path::Path, port: u16, key: &str) -> Child {
        let script = format!(
            "from multiprocessing.connection import Client\n\
             import sys\n\
             try:\n    c = Client(('127.0.0.1', {port}), authkey=b'{key}')\n\
             except Exception as e:\n    print('refused ' + type(e).__name__); sys.exit(0)\n\
             c.send_bytes(b'ping')\n\
             print('got ' + c.recv_bytes().decode())\n"
        );
        Command::new(python)
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs")
    }

    /// The server's side over real TCP against every Python found: both generations of
    /// handshake, a wrong key refused on both sides.
    #[test]
    fn python_clients_of_every_generation_pass_the_handshake_or_are_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut ran = Vec::new();
        for (version, python) in pythons() {
            for (key, expect) in [
                ("abc", "got ping"),
                ("wrong", "refused AuthenticationError"),
            ] {
                let mut child = ChildGuard(client(&python, port, key));
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let served = deliver_challenge(&mut s, b"abc")
                    .and_then(|()| answer_challenge(&mut s, b"abc"));
                match key {
                    "abc" => {
                        served.unwrap_or_else(|e| panic!("{version}: {e}"));
                        let mut ping = Vec::new();
                        read_frame(&mut s, 64, &mut ping).unwrap();
                        write_frame(&mut s, &ping).unwrap();
                    }
                    _ => assert!(
                        matches!(served, Err(Error::Auth(AuthFailure::Rejected))),
                        "{version}"
                    ),
                }
                drop(s);
                let out = child.wait_output();
                assert_eq!(out.trim(), expect, "{version} with key {key}");
            }
            ran.push(version);
        }
        println!("Python clients that ran: {ran:?}");
        assert!(ran.iter().any(|v| v == "python3"));
    }

    /// Our client side against Python's own `Listener` (which challenges first, as a manager
    /// does), for every Python found.
    #[test]
    fn our_answer_and_challenge_pass_pythons_own_listener() {
        for (version, python) in pythons() {
            let script = "from multiprocessing.connection import Listener\n\
                 l = Listener(('127.0.0.1', 0), authkey=b'abc')\n\
                 import sys\n\
                 print(l.address[1]); sys.stdout.flush()\n\
                 c = l.accept()\n\
                 c.send_bytes(c.recv_bytes())\n";
            let child = Command::new(&python)
                .args(["-c", script])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("python runs");
            let mut child = ChildGuard(child);
            let port = child
                .first_line()
                .trim()
                .parse::<u16>()
                .unwrap_or_else(|e| panic!("{version}: {e}"));
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            answer_challenge(&mut s, b"abc").unwrap_or_else(|e| panic!("{version}: {e}"));
            deliver_challenge(&mut s, b"abc").unwrap_or_else(|e| panic!("{version}: {e}"));
            write_frame(&mut s, b"echo").unwrap();
            let mut back = Vec::new();
            read_frame(&mut s, 64, &mut back).unwrap();
            assert_eq!(back, b"echo", "{version}");
            child.wait_output();
        }
    }

    /// Kills and reaps its child on drop, whatever happened.
    struct ChildGuard(Child);

    impl ChildGuard {
        fn first_line(&mut self) -> String {
            use std::io::BufRead;
            let out = self.0.stdout.as_mut().expect("piped");
            let mut line = String::new();
            std::io::BufReader::new(out).read_line(&mut line).unwrap();
            line
        }

        fn wait_output(&mut self) -> String {
            let mut out = String::new();
            if let Some(mut o) = self.0.stdout.take() {
                o.read_to_string(&mut out).unwrap();
            }
            let _ = self.0.wait();
            out
        }
    }

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

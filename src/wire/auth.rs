//! Mutual challenge-response authentication with HMAC-SHA256.
//!
//! Each side sends a fresh random nonce; each proves it knows the key by the HMAC of both
//! nonces under a label naming its role, so a proof can neither be replayed nor reflected back.
//! The client proves itself first, so a peer without the key learns no MAC from the server.
//! The key itself never crosses the wire.

use std::io::{Read, Write};

use hmac::{Hmac, Mac};
use serde_bytes::ByteBuf;
use sha2::Sha256;

use crate::error::{AuthFailure, Error, Result};
use crate::wire::frame::Framed;
use crate::wire::message::{Handshake, ServerInfo, INSTANCE_LEN, PROTOCOL_VERSION};

/// A server instance's random id, fixed from bind to shutdown.
pub(crate) type Instance = [u8; INSTANCE_LEN];

/// Bytes in each side's nonce.
pub(crate) const NONCE_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"distq-v1 client proof";
const SERVER_LABEL: &[u8] = b"distq-v1 server proof";

/// Runs the client side of the handshake on a fresh connection; returns the server's
/// instance id (vouched for by its MAC) and settings.
pub(crate) fn client_handshake<S: Read + Write>(
    conn: &mut Framed<S>,
    key: &[u8],
) -> Result<(Instance, ServerInfo)> {
    let client_nonce = nonce()?;
    conn.send(&Handshake::Hello {
        version: PROTOCOL_VERSION,
        nonce: ByteBuf::from(client_nonce.to_vec()),
    })?;
    let server_nonce = match first_reply(conn)? {
        Handshake::Challenge { nonce } if nonce.len() == NONCE_LEN => nonce,
        Handshake::Challenge { .. } => {
            return Err(Error::Protocol(format!(
                "the server's nonce is not {NONCE_LEN} bytes"
            )))
        }
        Handshake::Refused { reason } => return Err(Error::Refused(reason)),
        Handshake::VersionMismatch { version } => {
            return Err(Error::Version {
                ours: PROTOCOL_VERSION,
                theirs: version,
            })
        }
        other => return Err(unexpected(&other)),
    };
    let mac = sign(key, CLIENT_LABEL, &[&server_nonce, &client_nonce]);
    conn.send(&Handshake::Proof {
        mac: ByteBuf::from(mac),
    })?;
    match conn.recv()? {
        Handshake::Welcome {
            mac,
            instance,
            info,
        } if verify(
            key,
            SERVER_LABEL,
            &[&client_nonce, &server_nonce, &instance],
            &mac,
        ) =>
        {
            let instance = Instance::try_from(instance.as_slice()).map_err(|_| {
                Error::Protocol(format!(
                    "the server's instance id is not {INSTANCE_LEN} bytes"
                ))
            })?;
            Ok((instance, info))
        }
        Handshake::Welcome { .. } => Err(Error::Auth(AuthFailure::ServerUnproven)),
        Handshake::AuthFailed => Err(Error::Auth(AuthFailure::Rejected)),
        other => Err(unexpected(&other)),
    }
}

/// The server's first frame. One that is not a distq frame at all (a length prefix past the
/// limit, or a body that is not a handshake message) means another kind of server answered:
/// [`Error::NotDistq`], whose address the caller fills in.
fn first_reply<S: Read + Write>(conn: &mut Framed<S>) -> Result<Handshake> {
    let not_distq = |prefix| Error::NotDistq {
        addr: String::new(),
        prefix,
    };
    conn.recv().map_err(|e| match e {
        // A frame length comes from a u32: its four bytes are what the peer sent.
        Error::FrameTooLarge { len, .. } => not_distq(Some((len as u32).to_be_bytes())),
        Error::Protocol(_) => not_distq(None),
        e => e,
    })
}

/// Runs the server side of the handshake; `Ok` means the client proved it holds `key`. The
/// welcome tells it `instance` (under the server's MAC, so no one without the key can
/// claim to be this instance) and `info`.
///
/// `admit` is asked once the client has proven it holds the key, before the welcome: `false`
/// (the server gave this connection's place to another meanwhile) ends the handshake with
/// [`Error::Closed`], so no client is welcomed on a connection about to be closed.
pub(crate) fn server_handshake<S: Read + Write>(
    conn: &mut Framed<S>,
    key: &[u8],
    instance: &Instance,
    info: &ServerInfo,
    admit: &mut dyn FnMut() -> bool,
) -> Result<()> {
    let client_nonce = match conn.recv()? {
        Handshake::Hello { version, nonce } if version == PROTOCOL_VERSION => nonce,
        Handshake::Hello { version, .. } => {
            // Best effort: the client learns why before the connection closes.
            let _ = conn.send(&Handshake::VersionMismatch {
                version: PROTOCOL_VERSION,
            });
            return Err(Error::Version {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        other => return Err(unexpected(&other)),
    };
    if client_nonce.len() != NONCE_LEN {
        return Err(Error::Protocol(format!(
            "client nonce is {} bytes, expected {NONCE_LEN}",
            client_nonce.len()
        )));
    }
    let server_nonce = nonce()?;
    conn.send(&Handshake::Challenge {
        nonce: ByteBuf::from(server_nonce.to_vec()),
    })?;
    match conn.recv()? {
        Handshake::Proof { mac }
            if verify(key, CLIENT_LABEL, &[&server_nonce, &client_nonce], &mac) => {}
        Handshake::Proof { .. } => {
            let _ = conn.send(&Handshake::AuthFailed);
            return Err(Error::Auth(AuthFailure::Rejected));
        }
        other => return Err(unexpected(&other)),
    }
    if !admit() {
        return Err(Error::Closed);
    }
    let mac = sign(key, SERVER_LABEL, &[&client_nonce, &server_nonce, instance]);
    conn.send(&Handshake::Welcome {
        mac: ByteBuf::from(mac),
        instance: ByteBuf::from(instance.to_vec()),
        info: info.clone(),
    })
}

fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    Ok(n)
}

/// A fresh random instance id for a server about to listen.
pub(crate) fn new_instance() -> Result<Instance> {
    let mut id = [0u8; INSTANCE_LEN];
    getrandom::fill(&mut id).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    Ok(id)
}

/// The HMAC of `label` followed by `parts`, each of fixed length, so the concatenation is
/// unambiguous.
fn keyed(key: &[u8], label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac
}

fn sign(key: &[u8], label: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    keyed(key, label, parts).finalize().into_bytes().to_vec()
}

/// Checks `mac` in constant time.
fn verify(key: &[u8], label: &[u8], parts: &[&[u8]], mac: &[u8]) -> bool {
    keyed(key, label, parts).verify_slice(mac).is_ok()
}

fn unexpected(msg: &Handshake) -> Error {
    let name = match msg {
        Handshake::Hello { .. } => "hello",
        Handshake::Challenge { .. } => "challenge",
        Handshake::Proof { .. } => "proof",
        Handshake::Welcome { .. } => "welcome",
        Handshake::VersionMismatch { .. } => "version_mismatch",
        Handshake::AuthFailed => "auth_failed",
        Handshake::Refused { .. } => "refused",
    };
    Error::Protocol(format!("unexpected {name} message during the handshake"))
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_key_label_and_order() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mac = sign(b"abc", CLIENT_LABEL, &[&a, &b]);
        assert_eq!(mac.len(), 32);
        assert!(verify(b"abc", CLIENT_LABEL, &[&a, &b], &mac));
        assert!(!verify(b"abd", CLIENT_LABEL, &[&a, &b], &mac));
        assert!(
            !verify(b"abc", SERVER_LABEL, &[&a, &b], &mac),
            "a proof must not reflect"
        );
        assert!(!verify(b"abc", CLIENT_LABEL, &[&b, &a], &mac));
        assert!(!verify(b"abc", CLIENT_LABEL, &[&a, &b], &mac[..31]));
    }

    use std::net::{TcpListener, TcpStream};
    use std::thread;

    /// A connected pair of framed loopback streams: (client side, server side).
    fn pair() -> (Framed<TcpStream>, Framed<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (Framed::new(client, 4096), Framed::new(server, 4096))
    }

    #[test]
    fn same_key_on_both_sides_succeeds() {
        let (mut c, mut s) = pair();
        let info = ServerInfo {
            max_frame_size: 4096,
            ..ServerInfo::default()
        };
        let sent = info.clone();
        let server =
            thread::spawn(move || server_handshake(&mut s, b"k", &[9; 16], &sent, &mut || true));
        let (instance, got) = client_handshake(&mut c, b"k").unwrap();
        assert_eq!((instance, got), ([9; 16], info));
        server.join().unwrap().unwrap();
    }

    #[test]
    fn a_first_reply_that_is_no_distq_frame_is_named_as_such() {
        let (mut c, s) = pair();
        let mut raw = s.get_ref();
        raw.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        let err = client_handshake(&mut c, b"k").unwrap_err();
        assert!(
            matches!(err, Error::NotDistq { prefix: Some(p), .. } if &p == b"HTTP"),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("a reply starting \"HTTP\""),
            "{err}"
        );
        let (mut c, s) = pair();
        let mut raw = s.get_ref();
        // A plausible length, then bytes that are not a handshake message.
        raw.write_all(&[0, 0, 0, 2, 0xff, 0xff]).unwrap();
        let err = client_handshake(&mut c, b"k").unwrap_err();
        assert!(
            matches!(err, Error::NotDistq { prefix: None, .. }),
            "{err:?}"
        );
        let huge = Error::NotDistq {
            addr: "h:1".into(),
            prefix: Some([1, 0, 0, 7]),
        };
        assert!(
            huge.to_string().contains("announcing 16777223 bytes"),
            "{huge}"
        );
    }

    #[test]
    fn a_forged_instance_id_is_caught_by_the_client() {
        let (mut c, mut s) = pair();
        // A man in the middle (or a buggy server) swaps the instance id of a real welcome.
        let fake = thread::spawn(move || {
            let Handshake::Hello { nonce: cn, .. } = s.recv().unwrap() else {
                panic!("expected hello")
            };
            let sn = [7u8; NONCE_LEN];
            s.send(&Handshake::Challenge {
                nonce: ByteBuf::from(sn.to_vec()),
            })
            .unwrap();
            let _: Handshake = s.recv().unwrap();
            let mac = sign(b"k", SERVER_LABEL, &[&cn, &sn, &[1; 16]]);
            s.send(&Handshake::Welcome {
                mac: ByteBuf::from(mac),
                instance: ByteBuf::from(vec![2; 16]),
                info: ServerInfo::default(),
            })
            .unwrap();
        });
        let err = client_handshake(&mut c, b"k").unwrap_err();
        assert!(
            matches!(err, Error::Auth(AuthFailure::ServerUnproven)),
            "{err}"
        );
        fake.join().unwrap();
    }

    #[test]
    fn a_server_without_the_key_is_caught_by_the_client() {
        let (mut c, mut s) = pair();
        // A fake server that accepts any proof and answers with a MAC it cannot compute.
        let fake = thread::spawn(move || {
            let _: Handshake = s.recv().unwrap();
            s.send(&Handshake::Challenge {
                nonce: ByteBuf::from(vec![7; NONCE_LEN]),
            })
            .unwrap();
            let _: Handshake = s.recv().unwrap();
            s.send(&Handshake::Welcome {
                mac: ByteBuf::from(vec![0; 32]),
                instance: ByteBuf::from(vec![0; 16]),
                info: ServerInfo::default(),
            })
            .unwrap();
        });
        let err = client_handshake(&mut c, b"k").unwrap_err();
        assert!(
            matches!(err, Error::Auth(AuthFailure::ServerUnproven)),
            "{err}"
        );
        fake.join().unwrap();
    }

    #[test]
    fn another_protocol_version_is_refused_by_name() {
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || {
            server_handshake(&mut s, b"k", &[0; 16], &ServerInfo::default(), &mut || true)
        });
        c.send(&Handshake::Hello {
            version: 99,
            nonce: ByteBuf::from(vec![1; NONCE_LEN]),
        })
        .unwrap();
        assert!(matches!(
            c.recv().unwrap(),
            Handshake::VersionMismatch {
                version: PROTOCOL_VERSION
            }
        ));
        let err = server.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::Version { theirs: 99, .. }), "{err}");
    }

    #[test]
    fn a_connection_evicted_before_its_welcome_is_not_welcomed() {
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || {
            let err = server_handshake(&mut s, b"k", &[0; 16], &ServerInfo::default(), &mut || {
                false
            });
            drop(s); // the eviction closes the socket
            err
        });
        assert!(client_handshake(&mut c, b"k").is_err());
        assert!(matches!(server.join().unwrap(), Err(Error::Closed)));
    }

    #[test]
    fn a_short_nonce_is_refused() {
        let (mut c, mut s) = pair();
        let server = thread::spawn(move || {
            server_handshake(&mut s, b"k", &[0; 16], &ServerInfo::default(), &mut || true)
        });
        c.send(&Handshake::Hello {
            version: PROTOCOL_VERSION,
            nonce: ByteBuf::from(vec![0; 4]),
        })
        .unwrap();
        assert!(matches!(server.join().unwrap(), Err(Error::Protocol(_))));
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}

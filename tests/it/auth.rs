//! The handshake: a wrong key is refused while everyone else is served; a silent peer is cut
//! off at the handshake deadline.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use distq::{AuthFailure, Client, Error, ServerConfig};

use crate::support::{ms, server_with, start_server, KEY};

#[test]
fn smoke() {
    let (_server, addr) = start_server();
    Client::connect(addr, KEY).unwrap();
}

#[test]
fn wrong_authkey_is_rejected_while_a_good_client_is_served() {
    let (server, addr) = start_server();
    let good = Client::connect(addr, KEY).unwrap();
    let tasks = good.queue::<u32>("tasks").unwrap();
    tasks.put(1).unwrap();

    for _ in 0..20 {
        let err = Client::connect(addr, "wrong-key").unwrap_err();
        assert!(matches!(err, Error::Auth(AuthFailure::Rejected)), "{err}");
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }

    // The client connected before is still served, and new good clients get in.
    tasks.put(2).unwrap();
    assert_eq!(tasks.len().unwrap(), 2);
    let late = Client::connect(addr, KEY).unwrap();
    assert_eq!(late.queue::<u32>("tasks").unwrap().try_get().unwrap(), 1);
    drop(server);
}

#[test]
fn a_peer_that_never_authenticates_is_closed_at_the_deadline() {
    let server = server_with(ServerConfig::default().handshake_timeout(Some(ms(200))));
    let mut silent = TcpStream::connect(server.local_addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    // The server hangs up without a word: end of stream (or a reset).
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // Meanwhile a real client is served as usual.
    Client::connect(server.local_addr(), KEY).unwrap();
}

#[test]
fn connecting_where_nothing_listens_says_refused() {
    // Bind then drop a listener so the port is very likely free.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = Client::connect(addr, KEY).unwrap_err();
    assert!(
        matches!(&err, Error::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
}

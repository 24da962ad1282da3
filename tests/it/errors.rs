//! Errors that name their one cause: an unresolvable name, an oversized item (the same
//! variant in-process and over the network), a put stopped part way.

use std::thread;
use std::time::Duration;

use distq::{Client, Error, GetError, PutError, Server, ServerConfig};

use crate::support::{init_test_log, server_with, wait_until, KEY};

#[test]
fn a_name_that_does_not_resolve_says_so_on_connect_and_bind() {
    let err = Client::connect("nosuch.invalid:1", KEY).unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
    assert!(
        err.to_string().contains("cannot resolve nosuch.invalid:1"),
        "{err}"
    );
    let err = Server::builder()
        .authkey(KEY)
        .queue("q")
        .bind("nosuch.invalid:0")
        .unwrap_err();
    assert!(matches!(err, Error::Resolve { .. }), "{err:?}");
}

#[test]
fn an_oversized_item_is_too_large_in_process_and_over_the_network_alike() {
    let server = server_with(ServerConfig::default().max_frame_size(4096));
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let big = vec![7u8; 8000];
    let local = server.queue::<Vec<u8>>("tasks").unwrap();
    let remote = client.queue::<Vec<u8>>("tasks").unwrap();
    let limits: Vec<(usize, usize)> = [&local, &remote]
        .iter()
        .map(|q| match q.put_many([vec![1], big.clone()]) {
            Err(PutError::Failed(Error::TooLarge { len, max })) => (len, max),
            other => panic!("expected TooLarge, got {other:?}"),
        })
        .collect();
    assert_eq!(limits[0], limits[1]);
    assert!(
        limits[0].0 > limits[0].1 && limits[0].1 < 4096,
        "{limits:?}"
    );
    // Checked before anything was stored: the small item went nowhere either.
    assert_eq!(local.len().unwrap(), 0);
    // The fused worker cycle checks its results the same way, and keeps its leases.
    remote.put(vec![1]).unwrap();
    remote.get_many(1, Duration::from_secs(5)).unwrap();
    let err = remote
        .get_many_after_put(&remote, [big], 1, Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(err, GetError::Failed(Error::TooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(server.stats().queues[0].leased, 1);
}

#[test]
fn a_put_cut_short_by_shutdown_reports_what_was_stored() {
    init_test_log();
    let server = Server::builder()
        .authkey(KEY)
        .bounded_queue("q", 1)
        .bind("127.0.0.1:0")
        .unwrap();
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let q = client.queue::<u8>("q").unwrap();
    let putter = thread::spawn(move || q.put_many([1, 2]));
    assert!(wait_until(Duration::from_secs(10), || server
        .stats()
        .queues[0]
        .len
        == 1));
    server.shutdown();
    match putter.join().unwrap() {
        Err(PutError::Partial {
            accepted: 1,
            error: Error::Closed,
        }) => {}
        other => panic!("expected 1 stored then Closed, got {other:?}"),
    }
}

/// Linux refuses keepalive figures past its limits (32,767 s, 127 probes) with EINVAL; a
/// server configured past them must still serve, not refuse every connection with "could not
/// start a session: Invalid argument".
#[test]
fn keepalive_past_the_kernel_limits_still_serves() {
    let mut keepalive = distq::Keepalive::default();
    keepalive.idle = Duration::from_secs(99_999_999);
    keepalive.interval = Duration::from_secs(1_000_000);
    keepalive.retries = 1_000;
    let server = server_with(ServerConfig::default().keepalive(keepalive));
    let client = Client::connect(server.local_addr(), KEY).expect("connect");
    assert_eq!(client.queue::<u32>("tasks").unwrap().len().unwrap(), 0);
}

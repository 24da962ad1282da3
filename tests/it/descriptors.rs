//! A server out of file descriptors refuses newcomers with a message at once, logs that a
//! bounded number of times, and still stops on SIGTERM (stopping needs no new descriptor).

use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, Error};

use crate::support::{ChildGuard, KEY};

/// The descriptor limit the server runs under: a few dozen connections fill it.
const NOFILE: u32 = 64;

#[test]
fn out_of_descriptors_refuses_with_a_message_and_sigterm_still_stops_the_server() {
    let serve = ChildGuard::spawn(
        "serve",
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_distq"))
            .args(["serve", "--bind", "127.0.0.1:0", "--authkey", KEY])
            .env_remove("DISTQ_AUTHKEY")
            .env("RUST_LOG", "info"),
    );
    let addr = serve.listening_addr();
    // Short enough that a client left waiting (instead of refused) fails the test.
    let config = ClientConfig::default()
        .connect_timeout(Some(Duration::from_secs(5)))
        .handshake_timeout(Some(Duration::from_secs(3)));
    let connect = || Client::builder().config(config.clone()).connect(addr, KEY);
    let mut clients = Vec::new();
    let refusal = loop {
        assert!(
            clients.len() <= NOFILE as usize,
            "{} connections open under a limit of {NOFILE} descriptors",
            clients.len()
        );
        let start = Instant::now();
        match connect() {
            Ok(client) => clients.push(client),
            Err(Error::Refused(reason)) => break (reason, start.elapsed()),
            Err(e) => panic!(
                "after {} connections: expected a refusal, got {e}; stderr:\n{}",
                clients.len(),
                serve.stderr_so_far()
            ),
        }
    };
    let (reason, took) = refusal;
    assert!(reason.contains("out of file descriptors"), "{reason}");
    println!(
        "refused after {} connections in {took:?}: {reason}",
        clients.len()
    );
    // Every later newcomer is refused the same way, and the log does not fill up.
    for _ in 0..20 {
        match connect() {
            Err(Error::Refused(r)) => assert!(r.contains("out of file descriptors"), "{r}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // The open connections still work.
    assert!(clients[0].queue::<u64>("tasks").unwrap().len().is_ok());

    serve.signal("TERM");
    let out = serve.wait_output(Duration::from_secs(10));
    assert!(
        out.status.success(),
        "serve did not stop cleanly: {:?}\n{}",
        out.status,
        out.stderr
    );
    let warnings = out.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 3,
        "{warnings} warnings for 21 refusals:\n{}",
        out.stderr
    );
}

//! The `distq` binary on Redis, as an operator runs it: a master that binds nothing, workers
//! pointed at the same URL, the failures Redis brings (a worker killed mid-task, Redis
//! restarted under running workers) and a Redis Cluster. Every Redis here is started by the
//! test and killed by PID.

use std::time::Duration;

use distq::Client;

use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{assert_success, distq, wait_until, ChildGuard, Finished};

const SECS_60: Duration = Duration::from_secs(60);

fn master(url: &str, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "master",
        distq()
            .args(["master", "--connect", url, "--timeout", "90"])
            .args(args),
    )
}

fn worker(url: &str, args: &[&str]) -> ChildGuard {
    ChildGuard::spawn(
        "worker",
        distq()
            .args([
                "worker",
                "--connect",
                url,
                "--idle-exit",
                "3",
                "--give-up",
                "30",
            ])
            .args(args),
    )
}

/// Waits for the master to print `answer` last and exit 0, then for each worker to leave
/// with 0; what each worker printed.
fn answered(
    master: ChildGuard,
    limit: Duration,
    answer: &str,
    workers: Vec<ChildGuard>,
) -> Vec<Finished> {
    let out = master.wait_output(limit);
    assert_success("master", &out);
    assert_eq!(out.stdout.lines().last().unwrap_or_default(), answer);
    workers
        .into_iter()
        .map(|w| {
            let out = w.wait_output(SECS_60);
            assert_success("worker", &out);
            out
        })
        .collect()
}

/// Waits until the `tasks` queue at `url` is as `cond` wants it.
fn wait_for_tasks(url: &str, what: &str, cond: impl Fn(&distq::QueueStats) -> bool) {
    let met = wait_until(Duration::from_secs(30), || {
        Client::connect(url, "")
            .and_then(|c| c.stats())
            .is_ok_and(|s| s.queues.iter().any(|q| q.name == "tasks" && cond(q)))
    });
    assert!(met, "{what}");
}

fn tasks_stats(url: &str) -> distq::QueueStats {
    tasks_or(url, "tasks")
}

/// The figures of queue `name` at `url`.
fn tasks_or(url: &str, name: &str) -> distq::QueueStats {
    let stats = Client::connect(url, "")
        .and_then(|c| c.stats())
        .unwrap_or_else(|e| panic!("no stats from {url}: {e}"));
    stats
        .queues
        .into_iter()
        .find(|q| q.name == name)
        .unwrap_or_else(|| panic!("no queue {name} at {url}"))
}

#[test]
fn master_and_workers_on_redis_count_nqueens_10() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Workers first: they wait for the master to declare the queues.
    let workers: Vec<_> = (0..2)
        .map(|_| worker(&url, &["--concurrency", "2"]))
        .collect();
    let master = master(&url, &["--job", "nqueens", "--n", "10"]);
    answered(master, SECS_60, "solutions: 724", workers);
    let s = tasks_stats(&url);
    assert_eq!((s.acked, s.leased, s.len), (s.put, 0, 0), "{s:?}");
}

#[test]
fn a_worker_killed_mid_task_has_its_task_redelivered_after_the_lease() {
    let redis = RedisServer::start();
    let url = redis.url();
    let master = master(
        &url,
        &[
            "--job",
            "nqueens",
            "--n",
            "8",
            "--split-depth",
            "1",
            "--lease-timeout",
            "1",
        ],
    );
    // A worker that takes one task and sits on it (extending its lease) until killed.
    let stuck = worker(&url, &["--batch", "1", "--delay", "600"]);
    wait_for_tasks(&url, "the stuck worker never took a task", |q| {
        q.leased == 1
    });
    stuck.signal("KILL");
    let _ = stuck.wait_output(SECS_60);
    let rescuer = worker(&url, &[]);
    answered(master, SECS_60, "solutions: 92", vec![rescuer]);
    let s = tasks_stats(&url);
    assert!(s.redelivered >= 1, "{s:?}");
    assert_eq!(s.dead_lettered, 0, "{s:?}");
}

#[test]
fn workers_reconnect_when_redis_restarts_with_its_append_only_file() {
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--enable-debug-command",
        "local",
    ]);
    let url = redis.url();
    // Ballast, so that loading the append-only file takes a while: workers meet Redis
    // answering LOADING, not only a closed port.
    redis.cli(&["DEBUG", "POPULATE", "1000000", "ballast", "64"]);
    redis.cli(&["BGREWRITEAOF"]);
    assert!(
        wait_until(Duration::from_secs(30), || redis
            .cli(&["INFO", "persistence"])
            .contains("aof_rewrite_in_progress:0")),
        "the append-only file was not rewritten"
    );
    let master = master(&url, &["--job", "nqueens", "--n", "10"]);
    // Slow tasks, so the job is still running when Redis goes.
    let workers: Vec<_> = (0..2)
        .map(|_| worker(&url, &["--delay", "0.05", "--batch", "1"]))
        .collect();
    wait_for_tasks(&url, "the job never got going", |q| q.acked >= 10);
    redis.stop(); // SIGKILL: the append-only file is all that is left
    redis.restart();
    let limit = Duration::from_secs(120);
    for out in answered(master, limit, "solutions: 724", workers) {
        assert!(
            out.stderr.contains("reconnected") || out.stderr.contains("lost"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_redis_cluster_runs_nqueens_10_with_workers_on_every_node() {
    let cluster = RedisCluster::start();
    // The task and result queues are families of their own: on two nodes of three.
    let homes = [
        cluster.node_of("distq:{tasks}:tasks"),
        cluster.node_of("distq:{results}:results"),
    ];
    assert_ne!(homes[0], homes[1], "tasks and results hash to one node");
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    // One worker through each node, each following the slot map to the nodes it needs;
    // started first and slowed down, so each has its share of the 72 tasks.
    let workers: Vec<_> = urls
        .iter()
        .map(|u| worker(u, &["--concurrency", "2", "--batch", "1", "--delay", "0.1"]))
        .collect();
    let master = master(&urls[0], &["--job", "nqueens", "--n", "10"]);
    for out in answered(master, SECS_60, "solutions: 724", workers) {
        assert!(
            !out.stderr.contains("0 task(s) done"),
            "a worker did nothing: {}",
            out.stderr
        );
    }
    let s = tasks_stats(&urls[2]);
    assert_eq!((s.acked, s.leased), (s.put, 0), "{s:?}");
}

#[test]
fn declare_put_get_and_stats_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let run = |args: &[&str], input: &str| {
        ChildGuard::spawn_with_stdin("distq", distq().args(args), input.as_bytes().to_vec())
            .wait_output(SECS_60)
    };
    let out = run(
        &[
            "declare",
            "--connect",
            &url,
            "--queue",
            "jobs:2",
            "--lease-timeout",
            "30",
        ],
        "",
    );
    assert_success("declare", &out);
    assert!(
        out.stdout
            .contains("declared jobs (at most 2 waiting, lease 30 s"),
        "{}",
        out.stdout
    );
    let out = run(&["put", "--connect", &url, "--queue", "jobs"], "one\ntwo\n");
    assert_success("put", &out);
    let out = run(&["stats", "--connect", &url], "");
    assert_success("stats", &out);
    let jobs = out
        .stdout
        .lines()
        .find(|l| l.starts_with("jobs "))
        .unwrap_or_default()
        .to_owned();
    let cells: Vec<&str> = jobs.split_whitespace().collect();
    assert_eq!(
        (cells[1], cells[4]),
        ("2", "2"),
        "len and capacity: {}",
        out.stdout
    );
    let out = run(
        &["get", "--connect", &url, "--queue", "jobs", "--max", "2"],
        "",
    );
    assert_success("get", &out);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(
        out.stdout.contains("one") && out.stdout.contains("two"),
        "{}",
        out.stdout
    );
    let out = run(&["declare", "--connect", "127.0.0.1:1", "--queue", "x"], "");
    assert!(
        !out.status.success() && out.stderr.contains("declare is for queues on Redis"),
        "{}",
        out.stderr
    );
}

#[test]
fn credentials_go_in_the_url_and_a_wrong_password_is_an_auth_error() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = redis.port;
    let good = format!("redis://:s3cret@127.0.0.1:{port}");
    let client = Client::connect(good.as_str(), "").expect("the password in the URL");
    client
        .declare_queue("jobs", distq::QueueConfig::default())
        .unwrap();
    // The authkey is the password when the URL has none.
    let keyed = Client::connect(redis.url(), "s3cret").expect("the authkey as the password");
    assert!(keyed.queue::<u32>("jobs").is_ok());
    for (url, key) in [
        (format!("redis://:wrong@127.0.0.1:{port}"), ""),
        (redis.url(), ""),
    ] {
        let err = Client::connect(url.as_str(), key).unwrap_err();
        assert!(
            matches!(err, distq::Error::Auth(_)),
            "{url} with {key:?}: {err}"
        );
    }
}

#[test]
fn rediss_urls_speak_tls_and_check_the_certificate() {
    let dir = std::env::temp_dir().join(format!("distq-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=distq test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    let tls_port = crate::support::redis::free_port().to_string();
    let file = |name: &str| dir.join(name).display().to_string();
    let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{tls_port}");
    let run = |args: &[&str], trust: bool| {
        let mut cmd = distq();
        cmd.args(args);
        match trust {
            true => cmd.env("SSL_CERT_FILE", &ca),
            false => cmd.env("SSL_CERT_FILE", dir.join("none.crt")),
        };
        ChildGuard::spawn_with_stdin("distq", &mut cmd, b"over tls\n".to_vec()).wait_output(SECS_60)
    };
    let out = run(&["declare", "--connect", &url, "--queue", "jobs"], true);
    assert_success("declare over TLS", &out);
    assert_success(
        "put over TLS",
        &run(&["put", "--connect", &url, "--queue", "jobs"], true),
    );
    let out = run(
        &["get", "--connect", &url, "--queue", "jobs", "--max", "1"],
        true,
    );
    assert_success("get over TLS", &out);
    assert!(out.stdout.contains("over tls"), "{}", out.stdout);
    // The plain port holds the same queue: it went over TLS to the same server.
    assert_eq!(tasks_or(&redis.url(), "jobs").acked, 1);
    let out = run(&["stats", "--connect", &url], false);
    assert!(
        !out.status.success(),
        "a certificate nobody vouches for was trusted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_waiting_get_outlives_a_redis_restart() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    Client::connect(url.as_str(), "")
        .unwrap()
        .declare_queue("jobs", distq::QueueConfig::default())
        .unwrap();
    let policy = distq::Reconnect::default().give_up(Duration::from_secs(30));
    let client = Client::builder()
        .reconnect(policy)
        .connect(url.as_str(), "")
        .unwrap();
    let jobs = client.queue::<u32>("jobs").unwrap();
    let getter = std::thread::spawn(move || jobs.get_timeout(Duration::from_secs(40)));
    std::thread::sleep(Duration::from_millis(300)); // let it block (it works if it has not)
    redis.stop();
    redis.restart();
    Client::connect(url.as_str(), "")
        .unwrap()
        .queue::<u32>("jobs")
        .unwrap()
        .put(7)
        .unwrap();
    assert_eq!(getter.join().unwrap().unwrap(), 7);
}

#[test]
fn get_follow_waits_for_a_restarted_redis() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = redis.url();
    let put = |text: &str| {
        let out = ChildGuard::spawn_with_stdin(
            "put",
            distq().args(["put", "--connect", &url, "--queue", "jobs"]),
            format!("{text}\n").into_bytes(),
        )
        .wait_output(SECS_60);
        assert_success("put", &out);
    };
    let declared = ChildGuard::spawn(
        "declare",
        distq().args(["declare", "--connect", &url, "--queue", "jobs"]),
    )
    .wait_output(SECS_60);
    assert_success("declare", &declared);
    let follower = ChildGuard::spawn(
        "get --follow",
        distq().args(["get", "--connect", &url, "--queue", "jobs", "--follow"]),
    );
    put("before");
    assert!(
        wait_until(SECS_60, || follower.stdout_so_far().contains("before")),
        "{}",
        follower.stderr_so_far()
    );
    redis.stop();
    redis.restart();
    put("after");
    assert!(
        wait_until(SECS_60, || follower.stdout_so_far().contains("after")),
        "the follower did not come back: {}",
        follower.stderr_so_far()
    );
}

#[test]
fn a_worker_waits_for_both_its_queues() {
    let redis = RedisServer::start();
    let url = redis.url();
    let client = Client::connect(url.as_str(), "").unwrap();
    client
        .declare_queue("tasks", distq::QueueConfig::default())
        .unwrap();
    let w = worker(&url, &[]);
    w.wait_for_stderr("waiting for queue results to be declared", SECS_60);
    // A master declaring `results` now (and then `tasks` again) is what it waited for.
    let master = master(&url, &["--job", "nqueens", "--n", "6"]);
    answered(master, SECS_60, "solutions: 4", vec![w]);
}

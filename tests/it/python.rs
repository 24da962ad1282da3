//! Python's own `BaseManager` clients on distq's Python listener, with every CPython on the
//! machine: the seed's scripts (tests/python/, copied verbatim from the article), plain
//! values both ways, the queue exceptions, refusals, the authkey, and no item lost when a
//! Python worker is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use distq::{Client, QueueConfig, Server};

use crate::support::{assert_success, distq, wait_until, ChildGuard, Finished};

/// Every CPython found: pyenv's versions and `python3`. 2.7 (the seed's own Python) and
/// `python3` must be there.
fn pythons() -> Vec<(String, PathBuf)> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv")
        });
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("versions"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join("bin/python"),
                    )
                })
                .filter(|(_, p)| p.exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let python3 = Command::new("python3").arg("--version").output();
    assert!(
        python3.is_ok_and(|o| o.status.success()),
        "python3 is missing: these tests need it (and CPython 2.7 for the seed's scripts)"
    );
    if !found.iter().any(|(v, _)| v.starts_with("2.7")) {
        eprintln!(
            "NOTE: no CPython 2.7 (pyenv install 2.7.18): the seed's scripts run on Python 3 only"
        );
    }
    found.push(("python3".into(), "python3".into()));
    found
}

/// Runs `check` with every Python at once, each in its own thread, and prints which ran.
fn with_every_python(what: &str, check: impl Fn(String, PathBuf) + Send + Copy + 'static) {
    let runs: Vec<_> = pythons()
        .into_iter()
        .map(|(version, python)| {
            thread::spawn(move || {
                check(version.clone(), python);
                version
            })
        })
        .collect();
    let ran: Vec<String> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    println!("{what}: {}", ran.join(", "));
}

/// CPython 2.7 (the seed's own Python) if installed, else `python3`.
fn seed_python() -> (String, PathBuf) {
    let all = pythons();
    let python3 = all.last().cloned().expect("python3");
    all.into_iter()
        .find(|(v, _)| v.starts_with("2.7"))
        .unwrap_or(python3)
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The seed's script `name` pointed at `port`; for Python 3, also the two changes Python 3
/// needs (`Queue` is `queue`, an authkey is bytes). Written next to the test's temp files.
fn seed_script(name: &str, port: u16, python: &str) -> PathBuf {
    let text = std::fs::read_to_string(script(name)).expect("read the seed script");
    let mut text = text
        .replace("('', 5000)", &format!("('127.0.0.1', {port})"))
        .replace("5000", &port.to_string());
    if !python.starts_with("2.") {
        for (two, three) in [
            (", Queue\n", ", queue\n"),
            ("Queue.Queue()", "queue.Queue()"),
            ("Queue.Empty", "queue.Empty"),
            ("authkey='abc'", "authkey=b'abc'"),
        ] {
            text = text.replace(two, three);
        }
    }
    let path = std::env::temp_dir().join(format!(
        "distq-seed-{}-{port}-{python}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write the seed script");
    path
}

fn run_python(label: &str, python: &PathBuf, args: &[&str], limit: Duration) -> Finished {
    ChildGuard::spawn(label, Command::new(python).args(args)).wait_output(limit)
}

/// A server with `tasks`, `results` and a bounded `small`, and a Python listener.
fn python_server(lease: Duration) -> Server {
    let config = QueueConfig::default().lease_timeout(lease);
    Server::builder()
        .authkey("abc")
        .queue_with("tasks", config.clone())
        .queue_with("results", config)
        .bounded_queue("small", 1)
        .python_bind("127.0.0.1:0")
        .bind("127.0.0.1:0")
        .expect("bind")
}

fn python_port(server: &Server) -> String {
    server
        .python_addr()
        .expect("a Python listener")
        .port()
        .to_string()
}

/// The `Result: n * n = m` lines of `out`, each checked.
fn results(out: &str) -> usize {
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("Result: "))
        .collect();
    for line in &lines {
        let (n, square) = line.split_once(" * ").expect("n * n = m");
        let n: i64 = n.parse().expect("a number");
        assert_eq!(
            *line,
            format!("{n} * {n} = {}", n * n),
            "a wrong result: {out}"
        );
        let _ = square;
    }
    lines.len()
}

#[test]
fn every_python_passes_the_client_checks() {
    with_every_python("client checks passed with", |version, python| {
        let server = python_server(Duration::from_secs(60));
        let port = python_port(&server);
        let checks = script("checks.py");
        let out = run_python(
            &version,
            &python,
            &[checks.to_str().unwrap(), &port],
            Duration::from_secs(60),
        );
        assert_success(&format!("checks.py with {version}"), &out);
        assert_eq!(
            out.stdout.lines().last(),
            Some("ok"),
            "{version}: {}",
            out.stdout
        );
        // Every item handed out was acknowledged: none waits or is leased.
        let stats = server.stats();
        for q in &stats.queues {
            assert_eq!((q.len, q.leased), (0, 0), "{version}: {} {stats:?}", q.name);
        }
    });
}

/// `distq master --job squares` with a Python listener, key `abc`.
fn squares_master() -> ChildGuard {
    ChildGuard::spawn(
        "master",
        distq()
            .args([
                "master",
                "--bind",
                "127.0.0.1:0",
                "--python-bind",
                "127.0.0.1:0",
            ])
            .args(["--authkey", "abc", "--job", "squares", "--timeout", "60"]),
    )
}

/// The master's Python listener address, from its log.
fn python_listener(child: &ChildGuard) -> SocketAddr {
    let line = child.wait_for_stderr("listening for Python", Duration::from_secs(20));
    line.rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .expect("an address")
}

#[test]
fn the_seed_worker_runs_against_distq_master_squares() {
    with_every_python("the seed's task_worker.py ran with", |version, python| {
        let master = squares_master();
        let port = python_listener(&master).port();
        let worker = seed_script("task_worker.py", port, &version);
        let out = run_python(
            &version,
            &python,
            &[worker.to_str().unwrap()],
            Duration::from_secs(60),
        );
        let _ = std::fs::remove_file(&worker);
        assert_success(&format!("task_worker.py with {version}"), &out);
        assert_eq!(
            out.stdout.matches("run task ").count(),
            10,
            "{}",
            out.stdout
        );
        assert!(out.stdout.ends_with("worker exit.\n"), "{}", out.stdout);
        let done = master.wait_output(Duration::from_secs(30));
        assert_success("distq master", &done);
        assert_eq!(results(&done.stdout), 10, "{}", done.stdout);
    });
}

#[test]
fn a_python_master_client_feeds_python_and_native_workers() {
    let serve = ChildGuard::spawn(
        "serve",
        distq().args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--python-bind",
            "127.0.0.1:0",
            "--authkey",
            "abc",
        ]),
    );
    let native = serve.listening_addr();
    let port = python_listener(&serve).port();
    let python2 = seed_python();
    let worker = seed_script("task_worker.py", port, &python2.0);
    let py_worker = ChildGuard::spawn("task_worker.py", Command::new(&python2.1).arg(&worker));
    let rust_worker = ChildGuard::spawn(
        "distq worker",
        distq().args([
            "worker",
            "--connect",
            &native.to_string(),
            "--authkey",
            "abc",
            "--idle-exit",
            "3",
            "--delay",
            "0.5",
        ]),
    );
    let master = script("master_client.py");
    let out = run_python(
        "master_client.py",
        &"python3".into(),
        &[master.to_str().unwrap(), &port.to_string()],
        Duration::from_secs(60),
    );
    assert_success("master_client.py", &out);
    assert_eq!(results(&out.stdout), 10, "{}", out.stdout);
    let py = py_worker.wait_output(Duration::from_secs(30));
    let rust = rust_worker.wait_output(Duration::from_secs(30));
    let _ = std::fs::remove_file(&worker);
    assert_success("task_worker.py", &py);
    assert_success("distq worker", &rust);
    // Both kinds of worker took part.
    let by_python = py.stdout.matches("run task ").count();
    assert!(
        by_python > 0 && by_python < 10,
        "python did {by_python}: {}",
        rust.stderr
    );
}

#[test]
fn a_wrong_authkey_raises_authentication_error_and_the_server_goes_on() {
    let server = python_server(Duration::from_secs(60));
    let port = python_port(&server);
    let code = format!(
        "import multiprocessing\n\
         from multiprocessing.managers import BaseManager\n\
         class M(BaseManager): pass\n\
         M.register('get_task_queue')\n\
         m = M(address=('127.0.0.1', {port}), authkey=b'wrong')\n\
         try:\n    m.connect()\n    print('connected')\n\
         except multiprocessing.AuthenticationError as e:\n    print('AuthenticationError')\n"
    );
    for (version, python) in pythons() {
        let out = run_python(&version, &python, &["-c", &code], Duration::from_secs(30));
        assert_eq!(
            out.stdout.trim(),
            "AuthenticationError",
            "{version}: {out:?}"
        );
    }
    // Nothing got in, and the server still serves.
    server.queue::<i64>("tasks").unwrap().put(1).unwrap();
    assert_eq!(server.queue::<i64>("tasks").unwrap().len().unwrap(), 1);
}

/// A Python client script that takes from `tasks` on `port` (see the callers).
fn taker(port: &str, body: &str) -> ChildGuard {
    let code = format!(
        "import sys, time\n\
         from multiprocessing.managers import BaseManager\n\
         class M(BaseManager): pass\n\
         M.register('get_task_queue')\n\
         m = M(address=('127.0.0.1', {port}), authkey=b'abc')\n\
         m.connect()\n\
         t = m.get_task_queue()\n\
         {body}\n"
    );
    ChildGuard::spawn(
        "python taker",
        Command::new("python3").args(["-u", "-c", &code]),
    )
}

/// Waits for a taker (printing with `-u`) to print `needle`.
fn wait_stdout(child: &ChildGuard, needle: &str) {
    let ok = wait_until(Duration::from_secs(20), || {
        child.stdout_so_far().contains(needle)
    });
    assert!(ok, "no {needle:?}: {}", child.stderr_so_far());
}

#[test]
fn a_python_worker_killed_while_blocked_in_get_takes_nothing() {
    let server = python_server(Duration::from_secs(60));
    let port = python_port(&server);
    let tasks = server.queue::<i64>("tasks").unwrap();
    tasks.put(0).unwrap();
    // Takes 0, then blocks in a second get, which acknowledges 0 when it arrives.
    let blocked = taker(&port, "print(t.get(timeout=10)); print(t.get())");
    wait_stdout(&blocked, "0");
    let stats = || server.stats().queues[0].clone();
    assert!(wait_until(Duration::from_secs(10), || stats().leased == 0
        && stats().acked == 1));
    blocked.signal("KILL");
    drop(blocked);
    tasks.put_many([1, 2]).unwrap();
    // CPython's own server hands 1 to the dead client: [2] would come back.
    let client = Client::connect(server.local_addr(), "abc").unwrap();
    let got = client
        .queue::<i64>("tasks")
        .unwrap()
        .get_many(10, Duration::from_secs(5))
        .unwrap();
    assert_eq!(got, vec![1, 2]);
}

#[test]
fn a_python_worker_killed_mid_task_gives_its_item_back_and_one_that_exits_does_not() {
    let server = Arc::new(python_server(Duration::from_millis(500)));
    let port = python_port(&server);
    let tasks = server.queue::<String>("tasks").unwrap();
    let stats = || server.stats().queues[0].clone();
    tasks.put("killed".to_string()).unwrap();
    let busy = taker(&port, "print(t.get(timeout=10)); time.sleep(60)");
    wait_stdout(&busy, "killed");
    // Held well past its lease timeout while the client lives: the connection extends it.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!((stats().leased, stats().len), (1, 0));
    busy.signal("KILL");
    drop(busy);
    // Back once its lease runs out, counted as a failed delivery.
    let again = tasks
        .reserve_timeout(Duration::from_secs(10))
        .expect("given back");
    assert_eq!((again.item().as_str(), again.redeliveries()), ("killed", 1));
    again.ack().unwrap();

    tasks.put("done".to_string()).unwrap();
    let done = taker(&port, "print(t.get(timeout=10))");
    wait_stdout(&done, "done");
    let out = done.wait_output(Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    // The exit released the proxy: acknowledged, never given back.
    assert!(wait_until(Duration::from_secs(5), || stats().acked == 2));
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        (stats().len, stats().leased, stats().redelivered),
        (0, 0, 1)
    );
}

#[test]
fn hostile_python_frames_are_refused_and_the_listener_goes_on() {
    let server = python_server(Duration::from_secs(60));
    let port = python_port(&server);
    let code = format!(
        "import struct\n\
         from multiprocessing.connection import Client\n\
         addr = ('127.0.0.1', {port})\n\
         c = Client(addr, authkey=b'abc')\n\
         c.send_bytes(b'\\x80\\x04\\x95\\x01')\n\
         kind, e = c.recv()\n\
         assert kind == '#ERROR' and isinstance(e, ValueError), (kind, e)\n\
         print('garbage: ValueError')\n\
         c = Client(addr, authkey=b'abc')\n\
         c._send(struct.pack('!i', -1) + struct.pack('!Q', 2 ** 40))\n\
         try:\n    c.recv()\nexcept (EOFError, OSError):\n    print('oversized: closed')\n\
         c = Client(addr, authkey=b'abc')\n\
         s = b'a' * 100000\n\
         bomb = b'\\x80\\x02X' + struct.pack('<I', len(s)) + s + b'q\\x00(' + b'h\\x00' * 50000 + b'l.'\n\
         c.send_bytes(bomb)\n\
         kind, e = c.recv()\n\
         assert kind == '#ERROR' and isinstance(e, ValueError) and 'too large' in str(e), e\n\
         print('memo bomb: ValueError')\n\
         c = Client(addr, authkey=b'abc')\n\
         c.send((None, 'accept_connection', ('MainProcess',), {{}}))\n\
         c.recv()\n\
         for i in range(200):\n    \
             c.send(('%x:tasks' % i, 'qsize', (), {{}}))\n    \
             assert c.recv() == ('#RETURN', 0)\n\
         c = Client(addr, authkey=b'abc')\n\
         c.send((None, 'number_of_objects', (), {{}}))\n\
         print('made-up idents tracked: %s' % (c.recv()[1],))\n\
         c = Client(addr, authkey=b'abc')\n\
         c.send((None, 'dummy', (), {{}}))\n\
         print('then: %s' % (c.recv(),))\n"
    );
    let out = run_python(
        "python3",
        &"python3".into(),
        &["-c", &code],
        Duration::from_secs(30),
    );
    assert_success("hostile frames", &out);
    assert_eq!(
        out.stdout,
        "garbage: ValueError\noversized: closed\nmemo bomb: ValueError\n\
         made-up idents tracked: 0\nthen: ('#RETURN', None)\n"
    );
}

/// A free loopback port for a Python master that binds its own (the seed's `start()`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The seed's `taskmanager.py` (pointed at a free port) with `distq worker
/// --python-connect` and `args`: the master's output once it exited 0, and the worker's.
fn taskmanager_with_worker(version: &str, python: &PathBuf, args: &[&str]) -> (Finished, Finished) {
    let port = free_port();
    let master = seed_script("taskmanager.py", port, version);
    let python_master = ChildGuard::spawn("taskmanager.py", Command::new(python).arg(&master));
    let worker = ChildGuard::spawn(
        "distq worker",
        distq()
            .args(["worker", "--python-connect", &format!("127.0.0.1:{port}")])
            .args(["--authkey", "abc", "--give-up", "30"])
            .args(args),
    );
    let done = python_master.wait_output(Duration::from_secs(60));
    let _ = std::fs::remove_file(&master);
    let worker = worker.wait_output(Duration::from_secs(30));
    assert_success(&format!("taskmanager.py with {version}"), &done);
    (done, worker)
}

#[test]
fn the_seed_taskmanager_gets_its_results_from_distq_worker_python_connect() {
    with_every_python("the seed's taskmanager.py ran with", |version, python| {
        let (master, worker) = taskmanager_with_worker(&version, &python, &[]);
        assert_eq!(results(&master.stdout), 10, "{version}: {}", master.stdout);
        assert_success("distq worker --python-connect", &worker);
        assert!(
            worker.stderr.contains("10 task(s) done"),
            "{}",
            worker.stderr
        );
    });
}

#[test]
fn distq_worker_python_connect_runs_a_command_per_task() {
    let (version, python) = seed_python();
    // The task arrives as JSON on stdin; stdout is the result.
    let script = r#"read n; echo "$n * $n = $((n * n))""#;
    let (master, worker) = taskmanager_with_worker(&version, &python, &["--sh", script]);
    assert_eq!(results(&master.stdout), 10, "{}", master.stdout);
    assert_success("distq worker --python-connect --sh", &worker);
}

#[test]
fn distq_worker_python_connect_names_a_wrong_authkey() {
    let port = free_port();
    let (_, python) = seed_python();
    // A manager served in the process itself (`start()` forks a server that would outlive
    // the guard's kill).
    let code = format!(
        "try:\n    import queue\nexcept ImportError:\n    import Queue as queue\n\
         from multiprocessing.managers import BaseManager\n\
         q = queue.Queue()\n\
         class M(BaseManager): pass\n\
         M.register('get_task_queue', callable=lambda: q)\n\
         M.register('get_result_queue', callable=lambda: q)\n\
         m = M(address=('127.0.0.1', {port}), authkey=b'abc')\n\
         m.get_server().serve_forever()\n"
    );
    let _python_master =
        ChildGuard::spawn("python manager", Command::new(&python).args(["-c", &code]));
    let mut worker = distq();
    worker
        .args(["worker", "--python-connect", &format!("127.0.0.1:{port}")])
        .args(["--authkey", "wrong", "--give-up", "30"]);
    let out = ChildGuard::spawn("distq worker", &mut worker).wait_output(Duration::from_secs(40));
    assert!(!out.status.success());
    assert!(out.stderr.contains("authkey"), "{}", out.stderr);
}

#[test]
fn distq_worker_python_connect_leaves_cleanly_once_a_distq_master_is_done() {
    let master = squares_master();
    let port = python_listener(&master).port();
    // Two threads: one is blocked in get when the master stops.
    let worker = ChildGuard::spawn(
        "distq worker",
        distq().args([
            "worker",
            "--python-connect",
            &format!("127.0.0.1:{port}"),
            "--authkey",
            "abc",
            "--concurrency",
            "2",
        ]),
    );
    let done = master.wait_output(Duration::from_secs(30));
    assert_success("distq master", &done);
    assert_eq!(results(&done.stdout), 10, "{}", done.stdout);
    let out = worker.wait_output(Duration::from_secs(30));
    assert_success("distq worker --python-connect", &out);
    assert_eq!(out.stderr.matches("has gone").count(), 1, "{}", out.stderr);
}

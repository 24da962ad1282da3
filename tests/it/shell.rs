//! `distq put`, `distq get` and `distq dead` as an operator runs them, against a server the
//! test hosts; what they stored and took is checked through the library.

use std::time::Duration;

use distq::exec::{AttemptRecord, Reason, ResultRecord, Status, TaskRecord};
use distq::{Client, Server};

use crate::support::{assert_success, distq, init_test_log, ChildGuard, Finished, KEY};

const LIMIT: Duration = Duration::from_secs(30);

fn server() -> Server {
    init_test_log();
    Server::builder()
        .authkey(KEY)
        .queue("tasks")
        .bounded_queue("small", 2)
        .queue("results")
        .bind("127.0.0.1:0")
        .expect("bind a loopback port")
}

/// Runs `distq ARGS` against `server` with `input` on stdin, to its end.
fn run(server: &Server, args: &[&str], input: &[u8]) -> Finished {
    let addr = server.local_addr().to_string();
    let mut cmd = distq();
    cmd.args(&args[..1])
        .args(["--connect", &addr])
        .args(&args[1..])
        .env("DISTQ_AUTHKEY", KEY);
    ChildGuard::spawn_with_stdin(args[0], &mut cmd, input.to_vec()).wait_output(LIMIT)
}

fn ok(out: &Finished) -> &Finished {
    assert_success("distq", out);
    out
}

fn tasks(server: &Server, queue: &str) -> Vec<TaskRecord> {
    let q = server.queue::<TaskRecord>(queue).unwrap();
    let mut out = Vec::new();
    while let Ok(t) = q.try_get() {
        out.push(t);
    }
    out
}

#[test]
fn put_stores_one_task_per_line_and_prints_each_id() {
    let server = server();
    let out = run(
        &server,
        &["put", "--reply-to", "results"],
        b"alpha\nbeta gamma\n\nlast",
    );
    let ids: Vec<&str> = ok(&out).stdout.lines().collect();
    assert_eq!(ids.len(), 4, "{}", out.stdout);
    let stored = tasks(&server, "tasks");
    let inputs: Vec<&[u8]> = stored.iter().map(|t| &t.input[..]).collect();
    assert_eq!(inputs, [&b"alpha"[..], b"beta gamma", b"", b"last"]);
    for (task, id) in stored.iter().zip(&ids) {
        assert_eq!(task.id, *id, "the id printed is the id stored");
        assert_eq!(task.reply_to.as_deref(), Some("results"));
        assert_eq!(task.attempt, 1);
    }
    assert_eq!(
        stored.iter().map(|t| t.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
}

#[test]
fn put_takes_nul_records_and_json_tasks_with_binary_input() {
    let server = server();
    ok(&run(&server, &["put", "-0"], b"a\nb\0c\0"));
    let inputs: Vec<Vec<u8>> = tasks(&server, "tasks")
        .into_iter()
        .map(|t| t.input)
        .collect();
    assert_eq!(inputs, [b"a\nb".to_vec(), b"c".to_vec()]);

    let jsonl = b"{\"to\":\"ann@example.org\"}\n{\"id\":\"bin-1\",\"input_b64\":\"AP8=\",\"retries\":7,\"timeout\":1.5,\"args\":[\"x\"]}\n";
    let out = run(&server, &["put", "--jsonl"], jsonl);
    assert_eq!(ok(&out).stdout.lines().nth(1), Some("bin-1"));
    let stored = tasks(&server, "tasks");
    assert_eq!(stored[0].input, b"{\"to\":\"ann@example.org\"}\n");
    assert_eq!(stored[1].input, [0, 0xff]);
    assert_eq!(
        (stored[1].retries, stored[1].timeout_ms, &stored[1].args[..]),
        (Some(7), Some(1500), &["x".to_owned()][..])
    );
}

#[test]
fn put_refuses_bad_json_and_says_which_line() {
    let server = server();
    let out = run(&server, &["put", "--jsonl"], b"\"fine\"\n{broken\n");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("line 2"), "{}", out.stderr);
}

#[test]
fn put_on_a_full_queue_stops_at_its_timeout_having_printed_what_was_stored() {
    let server = server();
    let out = run(
        &server,
        &["put", "-q", "small", "--timeout", "0.3"],
        b"1\n2\n3\n4\n",
    );
    assert_eq!(out.status.code(), Some(124), "{}", out.stderr);
    let printed: Vec<&str> = out.stdout.lines().collect();
    let stored = tasks(&server, "small");
    assert_eq!(stored.len(), 2);
    assert_eq!(
        printed,
        stored.iter().map(|t| t.id.as_str()).collect::<Vec<_>>()
    );
}

#[test]
fn put_with_a_delay_holds_the_tasks() {
    let server = server();
    ok(&run(&server, &["put", "--delay", "60"], b"later\n"));
    let stats = server.stats();
    let tasks_stats = stats.queues.iter().find(|q| q.name == "tasks").unwrap();
    assert_eq!((tasks_stats.delayed, tasks_stats.len), (1, 0));
}

#[test]
fn get_prints_json_lines_and_acknowledges_what_it_printed() {
    let server = server();
    let tasks_q = server.queue::<TaskRecord>("tasks").unwrap();
    tasks_q
        .put_many([
            TaskRecord::new("1", "plain"),
            TaskRecord::new("2", "{\"to\":\"a@b\"}\n"),
            TaskRecord::new("3", vec![0xff]),
        ])
        .unwrap();
    let out = run(
        &server,
        &["get", "-q", "tasks", "--max", "2", "--timeout", "5"],
        b"",
    );
    assert_eq!(ok(&out).stdout, "\"plain\"\n{\"to\":\"a@b\"}\n");
    assert_eq!(tasks_q.len().unwrap(), 1, "--max 2 left the third");
    let out = run(&server, &["get", "-q", "tasks", "--timeout", "0.5"], b"");
    assert_eq!(ok(&out).stdout, "{\"input_b64\":\"/w==\"}\n");
    let stats = server.stats();
    let t = stats.queues.iter().find(|q| q.name == "tasks").unwrap();
    assert_eq!(
        (t.acked, t.leased, t.len),
        (3, 0, 0),
        "each printed item acknowledged"
    );

    let out = run(&server, &["get", "-q", "tasks", "--timeout", "0.2"], b"");
    assert_eq!(out.status.code(), Some(124), "nothing came: {}", out.stderr);
    assert!(out.stderr.contains("nothing arrived"), "{}", out.stderr);
}

#[test]
fn get_renders_result_records_with_binary_output_as_base64() {
    let server = server();
    let mut r = ResultRecord::for_task(&TaskRecord::new("7", "x"), Status::Ok);
    r.stdout = b"text out\n".to_vec();
    r.stderr = vec![0, 0xfe];
    server
        .queue::<ResultRecord>("results")
        .unwrap()
        .put(&r)
        .unwrap();
    let out = run(&server, &["get", "-q", "results"], b"");
    let line: serde_json::Value = serde_json::from_str(ok(&out).stdout.trim()).unwrap();
    assert_eq!(line["id"], "7");
    assert_eq!(line["status"], "ok");
    assert_eq!(line["stdout"], "text out\n");
    assert_eq!(line["stderr_b64"], "AP4=");
}

fn dead_task(id: &str, exit: i32, stderr: &str) -> TaskRecord {
    let mut task = TaskRecord::new(id, "in");
    let mut last = AttemptRecord::new(3, Reason::Exit);
    last.exit_code = Some(exit);
    last.stderr_tail = stderr.to_owned();
    task.attempt = 3;
    task.push_history(last);
    task
}

#[test]
fn dead_lists_kicks_and_purges_dead_letters() {
    let server = server();
    let dead = server.queue::<TaskRecord>("tasks.dead").unwrap();
    dead.put_many([
        dead_task("mail-1", 75, "starting\nrelay refused: 451 try later\n"),
        dead_task("mail-2", 65, "bad address"),
        dead_task("mail-3", 1, ""),
    ])
    .unwrap();
    // One the server itself dead-lettered: not a task record at all.
    server.queue::<u32>("tasks.dead").unwrap().put(99).unwrap();

    let out = run(&server, &["dead", "ls"], b"");
    let listing = &ok(&out).stdout;
    assert!(
        listing.contains("mail-1") && listing.contains("451 try later"),
        "{listing}"
    );
    assert!(
        listing.contains("mail-2") && listing.contains(" 65 "),
        "{listing}"
    );
    assert!(listing.contains("redelivered too often"), "{listing}");
    assert_eq!(dead.len().unwrap(), 4, "listing takes nothing away");
    let any = server.queue::<serde_value::Value>("tasks.dead").unwrap();
    let listed = any.reserve_many(10, LIMIT).unwrap();
    assert_eq!(listed.len(), 4);
    assert!(
        listed.iter().all(|d| d.redeliveries() == 0),
        "listing is not a failed delivery"
    );
    listed.into_iter().for_each(|d| d.give_back().unwrap());

    let out = run(&server, &["dead", "ls", "--json"], b"");
    let ids: Vec<String> = ok(&out)
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("id").and_then(|id| id.as_str()).map(String::from))
        .collect();
    assert_eq!(ids.len(), 3, "{}", out.stdout);

    ok(&run(&server, &["dead", "kick", "1"], b""));
    let back = tasks(&server, "tasks");
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].attempt, 1,
        "a kicked task starts again at attempt 1"
    );
    assert_eq!(back[0].history.len(), 1, "its history is kept");
    assert_eq!(dead.len().unwrap(), 3);

    let out = run(&server, &["dead", "purge"], b"");
    assert!(ok(&out).stderr.contains("dropped 3"), "{}", out.stderr);
    assert_eq!(dead.len().unwrap(), 0);
    let out = run(&server, &["dead", "ls"], b"");
    assert!(
        ok(&out).stdout.contains("no dead letters"),
        "{}",
        out.stdout
    );
}

#[test]
fn dead_kick_moves_items_it_does_not_understand_unchanged() {
    let server = server();
    server
        .queue::<String>("tasks.dead")
        .unwrap()
        .put("odd".to_owned())
        .unwrap();
    ok(&run(&server, &["dead", "kick"], b""));
    let q = server.queue::<String>("tasks").unwrap();
    assert_eq!(q.try_get().unwrap(), "odd");
}

#[test]
fn records_put_by_the_cli_are_read_by_a_client_anywhere() {
    // The ids printed and the records stored agree for a program using the library remotely.
    let server = server();
    let out = run(&server, &["put"], b"x\n");
    let id = ok(&out).stdout.trim().to_owned();
    let client = Client::connect(server.local_addr(), KEY).unwrap();
    let t = client
        .queue::<TaskRecord>("tasks")
        .unwrap()
        .get_timeout(LIMIT)
        .unwrap();
    assert_eq!((t.id, t.input), (id, b"x".to_vec()));
}

#[test]
fn put_refuses_a_reply_queue_the_server_does_not_have() {
    let server = server();
    let out = run(&server, &["put", "--reply-to", "reslts"], b"x\n");
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("--reply-to reslts"), "{}", out.stderr);
    assert!(tasks(&server, "tasks").is_empty(), "nothing stored");
}

#[test]
fn dead_takes_its_options_after_the_action_too() {
    let server = server();
    let addr = server.local_addr().to_string();
    let out = ChildGuard::spawn(
        "dead",
        distq()
            .args(["dead", "ls", "--connect", &addr, "-q", "small"])
            .env("DISTQ_AUTHKEY", KEY),
    )
    .wait_output(LIMIT);
    assert!(
        ok(&out).stdout.contains("no dead letters in small.dead"),
        "{}",
        out.stdout
    );
}

//! The semantics every backend shares, run once per backend: the native server, and Redis
//! (a `redis-server` this test starts). Each test below is written once against `Client`
//! and expanded by `suite!` into `native::NAME` and `redis::NAME`.

use std::thread;
use std::time::{Duration, Instant};

use distq::{Client, ClientConfig, Error, GetError, PutError, QueueConfig, QueueStats, Server};

use crate::support::redis::RedisServer;
use crate::support::{init_test_log, ms, wait_until, KEY};

const SECS_5: Duration = Duration::from_secs(5);

/// Where the queues live, kept alive for the test.
pub enum Fixture {
    Native(Server),
    Redis(RedisServer),
}

impl Fixture {
    /// A native server hosting `queues`.
    pub fn native(queues: &[(&str, QueueConfig)]) -> Fixture {
        init_test_log();
        let mut builder = Server::builder().authkey(KEY);
        for (name, config) in queues {
            builder = builder.queue_with(*name, config.clone());
        }
        Fixture::Native(builder.bind("127.0.0.1:0").expect("bind a loopback port"))
    }

    /// A fresh redis-server with `queues` declared.
    pub fn redis(queues: &[(&str, QueueConfig)]) -> Fixture {
        let server = RedisServer::start();
        let client = Client::connect(server.url(), "").expect("connect to redis-server");
        for (name, config) in queues {
            client.declare_queue(name, config.clone()).expect("declare");
        }
        Fixture::Redis(server)
    }

    pub fn client(&self) -> Client {
        self.client_with(ClientConfig::default())
    }

    pub fn client_with(&self, config: ClientConfig) -> Client {
        let builder = Client::builder().config(config);
        match self {
            Fixture::Native(server) => builder.connect(server.local_addr(), KEY),
            Fixture::Redis(server) => builder.connect(server.url(), ""),
        }
        .expect("connect")
    }

    fn stats(&self, queue: &str) -> QueueStats {
        self.client()
            .stats()
            .expect("stats")
            .queues
            .into_iter()
            .find(|q| q.name == queue)
            .expect("the queue is listed")
    }
}

type Make = fn(&[(&str, QueueConfig)]) -> Fixture;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $name() { super::$name(super::Fixture::native) })*
        }
        mod redis {
            $(#[test] fn $name() { super::$name(super::Fixture::redis) })*
        }
    };
}

suite!(
    put_get_and_empty,
    get_timeout_is_empty_after_about_the_timeout,
    a_waiting_get_takes_an_item_put_later,
    bounded_queue_is_full_and_reports_what_fit,
    a_blocked_put_completes_when_room_is_made,
    batches_keep_their_order,
    the_fused_cycle_stores_results_and_acknowledges,
    the_fused_cycle_into_a_full_queue_takes_nothing,
    get_acknowledges_on_the_next_get_and_on_drop,
    an_expired_lease_is_redelivered_and_its_late_ack_refused,
    a_late_ack_is_refused_after_its_taker_took_more,
    touch_keeps_a_lease_past_its_timeout,
    auto_touch_keeps_a_slow_task_leased,
    a_nack_comes_back_first_and_counts,
    an_uncounted_give_back_does_not_count,
    a_poison_item_moves_to_the_dead_letter_queue,
    delayed_items_wait_their_delay,
    an_unknown_queue_is_an_error,
);

fn tasks(config: QueueConfig) -> [(&'static str, QueueConfig); 2] {
    [("tasks", config), ("results", QueueConfig::default())]
}

fn plain() -> [(&'static str, QueueConfig); 2] {
    tasks(QueueConfig::default())
}

fn manual(f: &Fixture) -> Client {
    f.client_with(ClientConfig::default().auto_touch(false))
}

fn put_get_and_empty(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<String>("tasks").unwrap();
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
    q.put("a".to_string()).unwrap();
    q.put("b".to_string()).unwrap();
    assert_eq!(q.len().unwrap(), 2);
    assert_eq!(q.get().unwrap(), "a");
    assert_eq!(q.get_timeout(SECS_5).unwrap(), "b");
    assert!(q.is_empty().unwrap());
    assert_eq!(q.capacity().unwrap(), None);
}

fn get_timeout_is_empty_after_about_the_timeout(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<u32>("tasks").unwrap();
    for wait in [ms(50), ms(400)] {
        let start = Instant::now();
        let err = q.get_timeout(wait).unwrap_err();
        let took = start.elapsed();
        assert!(err.is_empty(), "{err}");
        assert!(took >= wait, "returned after {took:?}, before {wait:?}");
        assert!(
            took < wait + Duration::from_secs(2),
            "took {took:?} for {wait:?}"
        );
    }
}

fn a_waiting_get_takes_an_item_put_later(make: Make) {
    let f = make(&plain());
    let getter = {
        let q = f.client().queue::<u32>("tasks").unwrap();
        thread::spawn(move || {
            let start = Instant::now();
            (q.get_timeout(Duration::from_secs(20)), start.elapsed())
        })
    };
    thread::sleep(ms(100)); // let the get start waiting (it also works if it has not)
    f.client().queue::<u32>("tasks").unwrap().put(42).unwrap();
    let (got, took) = getter.join().unwrap();
    assert_eq!(got.unwrap(), 42);
    assert!(took < Duration::from_secs(5), "woke only after {took:?}");
}

fn bounded_queue_is_full_and_reports_what_fit(make: Make) {
    let f = make(&[("results", QueueConfig::default().capacity(Some(3)))]);
    let q = f.client().queue::<u8>("results").unwrap();
    assert_eq!(q.capacity().unwrap(), Some(3));
    q.put(0).unwrap();
    let err = q.put_many_timeout([1, 2, 3, 4], ms(50)).unwrap_err();
    assert!(matches!(err, PutError::Full { accepted: 2 }), "{err}");
    assert!(q.try_put(5).unwrap_err().is_full());
    let start = Instant::now();
    let err = q.put_timeout(6, ms(300)).unwrap_err();
    assert!(matches!(err, PutError::Full { accepted: 0 }), "{err}");
    assert!(start.elapsed() >= ms(300));
    assert_eq!(q.get_many(10, ms(100)).unwrap(), vec![0, 1, 2]);
}

fn a_blocked_put_completes_when_room_is_made(make: Make) {
    let f = make(&[("results", QueueConfig::default().capacity(Some(1)))]);
    let q = f.client().queue::<u8>("results").unwrap();
    q.put(1).unwrap();
    let producer = {
        let q = f.client().queue::<u8>("results").unwrap();
        thread::spawn(move || q.put_timeout(2, Duration::from_secs(20)))
    };
    assert_eq!(q.get_timeout(SECS_5).unwrap(), 1);
    assert_eq!(q.get_timeout(Duration::from_secs(20)).unwrap(), 2);
    producer.join().unwrap().unwrap();
}

fn batches_keep_their_order(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<u32>("tasks").unwrap();
    q.put_many(0..10_000).unwrap();
    let mut got = Vec::new();
    while got.len() < 10_000 {
        got.extend(q.get_many(3000, SECS_5).unwrap());
    }
    assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    drop(q);
    assert!(
        wait_until(SECS_5, || f.stats("tasks").acked == 10_000),
        "{:?}",
        f.stats("tasks")
    );
}

fn the_fused_cycle_stores_results_and_acknowledges(make: Make) {
    let f = make(&plain());
    let client = f.client();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<u32>("results").unwrap();
    tasks.put_many([1, 2, 3]).unwrap();
    let mut taken = tasks.get_many(2, SECS_5).unwrap();
    assert_eq!(taken, vec![1, 2]);
    taken = tasks
        .get_many_after_put(&results, taken.iter().map(|n| n * 10), 2, SECS_5)
        .unwrap();
    assert_eq!(taken, vec![3]);
    let s = f.stats("tasks");
    assert_eq!((s.acked, s.leased), (2, 1), "{s:?}");
    assert_eq!(results.len().unwrap(), 2);
    let err = tasks
        .get_many_after_put(&results, [30], 2, ms(100))
        .unwrap_err();
    assert!(err.is_empty(), "{err}");
    assert_eq!(results.get_many(10, SECS_5).unwrap(), vec![10, 20, 30]);
    assert_eq!(f.stats("tasks").acked, 3);
}

fn the_fused_cycle_into_a_full_queue_takes_nothing(make: Make) {
    let f = make(&[
        ("tasks", QueueConfig::default()),
        ("results", QueueConfig::default().capacity(Some(1))),
    ]);
    let client = f.client();
    let tasks = client.queue::<u32>("tasks").unwrap();
    let results = client.queue::<u32>("results").unwrap();
    tasks.put_many([1, 2]).unwrap();
    assert_eq!(tasks.get_many(1, SECS_5).unwrap(), vec![1]);
    let err = tasks
        .get_many_after_put(&results, [10, 11], 1, ms(200))
        .unwrap_err();
    assert!(
        matches!(
            err,
            GetError::Failed(Error::ResultsFull { accepted: 1, .. })
        ),
        "{err}"
    );
    let s = f.stats("tasks");
    assert_eq!((s.acked, s.leased, s.len), (0, 1, 1), "{s:?}");
}

fn get_acknowledges_on_the_next_get_and_on_drop(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<u32>("tasks").unwrap();
    q.put_many([1, 2]).unwrap();
    assert_eq!(q.get_timeout(SECS_5).unwrap(), 1);
    let s = f.stats("tasks");
    assert_eq!((s.leased, s.acked), (1, 0));
    assert_eq!(q.get_timeout(SECS_5).unwrap(), 2);
    let s = f.stats("tasks");
    assert_eq!((s.leased, s.acked), (1, 1));
    drop(q);
    assert!(
        wait_until(SECS_5, || f.stats("tasks").acked == 2),
        "{:?}",
        f.stats("tasks")
    );
    assert_eq!(f.stats("tasks").leased, 0);
}

fn an_expired_lease_is_redelivered_and_its_late_ack_refused(make: Make) {
    let f = make(&tasks(QueueConfig::default().lease_timeout(ms(300))));
    let slow = manual(&f).queue::<u32>("tasks").unwrap();
    let other = f.client().queue::<u32>("tasks").unwrap();
    slow.put(9).unwrap();
    let first = slow.reserve_timeout(SECS_5).unwrap();
    assert_eq!(first.redeliveries(), 0);
    let again = other.reserve_timeout(SECS_5).unwrap();
    assert_eq!((*again, again.redeliveries()), (9, 1));
    assert!(matches!(first.ack(), Err(Error::LeaseExpired)));
    again.ack().unwrap();
    let s = f.stats("tasks");
    assert_eq!((s.acked, s.redelivered, s.leased), (1, 1, 0), "{s:?}");
}

fn a_late_ack_is_refused_after_its_taker_took_more(make: Make) {
    let f = make(&tasks(QueueConfig::default().lease_timeout(ms(300))));
    let slow = manual(&f).queue::<u32>("tasks").unwrap();
    let other = f.client().queue::<u32>("tasks").unwrap();
    slow.put(1).unwrap();
    let first = slow.reserve_timeout(SECS_5).unwrap();
    let again = other.reserve_timeout(SECS_5).unwrap();
    assert_eq!((*again, again.redeliveries()), (1, 1));
    // A fresh lease for the slow taker: its old one stays ended all the same.
    slow.put(2).unwrap();
    let second = slow.reserve_timeout(SECS_5).unwrap();
    assert!(matches!(first.ack(), Err(Error::LeaseExpired)));
    second.ack().unwrap();
    again.ack().unwrap();
    let s = f.stats("tasks");
    assert_eq!((s.acked, s.leased, s.len), (2, 0, 0), "{s:?}");
}

fn touch_keeps_a_lease_past_its_timeout(make: Make) {
    let f = make(&tasks(QueueConfig::default().lease_timeout(ms(400))));
    let q = manual(&f).queue::<u32>("tasks").unwrap();
    q.put(1).unwrap();
    let d = q.reserve_timeout(SECS_5).unwrap();
    for _ in 0..4 {
        thread::sleep(ms(200));
        d.touch().unwrap();
    }
    assert!(f
        .client()
        .queue::<u32>("tasks")
        .unwrap()
        .try_get()
        .unwrap_err()
        .is_empty());
    d.ack().unwrap();
    assert_eq!(f.stats("tasks").redelivered, 0);
}

fn auto_touch_keeps_a_slow_task_leased(make: Make) {
    let f = make(&tasks(QueueConfig::default().lease_timeout(ms(300))));
    let q = f.client().queue::<u32>("tasks").unwrap();
    q.put(1).unwrap();
    let d = q.reserve_timeout(SECS_5).unwrap();
    thread::sleep(ms(1200));
    d.ack().unwrap();
    assert_eq!(f.stats("tasks").redelivered, 0);
}

fn a_nack_comes_back_first_and_counts(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<u32>("tasks").unwrap();
    q.put_many([1, 2]).unwrap();
    let d = q.reserve_timeout(SECS_5).unwrap();
    d.nack().unwrap();
    let again = q.reserve_timeout(SECS_5).unwrap();
    assert_eq!((*again, again.redeliveries()), (1, 1));
    again.ack().unwrap();
    assert_eq!(f.stats("tasks").redelivered, 1);
}

fn an_uncounted_give_back_does_not_count(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<u32>("tasks").unwrap();
    q.put(1).unwrap();
    q.get_timeout(SECS_5).unwrap();
    q.give_back().unwrap();
    q.get_timeout(SECS_5).unwrap();
    assert_eq!(q.redeliveries(), vec![1]);
    q.give_back_uncounted().unwrap();
    q.get_timeout(SECS_5).unwrap();
    assert_eq!(q.redeliveries(), vec![1]);
}

fn a_poison_item_moves_to_the_dead_letter_queue(make: Make) {
    let f = make(&tasks(QueueConfig::default().max_redeliveries(1)));
    let client = f.client();
    let q = client.queue::<String>("tasks").unwrap();
    q.put("poison".to_string()).unwrap();
    q.reserve_timeout(SECS_5).unwrap().nack().unwrap();
    q.reserve_timeout(SECS_5).unwrap().nack().unwrap();
    assert!(q.get_timeout(ms(200)).unwrap_err().is_empty());
    let dead = client.queue::<String>("tasks.dead").unwrap();
    assert_eq!(dead.get_timeout(SECS_5).unwrap(), "poison");
    let s = f.stats("tasks");
    assert_eq!((s.dead_lettered, s.len, s.leased), (1, 0, 0), "{s:?}");
}

fn delayed_items_wait_their_delay(make: Make) {
    let f = make(&plain());
    let q = f.client().queue::<u32>("tasks").unwrap();
    let start = Instant::now();
    q.put_delayed(7, ms(300)).unwrap();
    assert_eq!((q.len().unwrap(), f.stats("tasks").delayed), (0, 1));
    assert_eq!(q.get_timeout(SECS_5).unwrap(), 7);
    assert!(start.elapsed() >= ms(300), "{:?}", start.elapsed());
    let d = {
        q.put(8).unwrap();
        q.reserve_timeout(SECS_5).unwrap()
    };
    let start = Instant::now();
    d.nack_delayed(ms(300)).unwrap();
    let again = q.reserve_timeout(SECS_5).unwrap();
    assert!(start.elapsed() >= ms(300), "{:?}", start.elapsed());
    assert_eq!((*again, again.redeliveries()), (8, 1));
}

fn an_unknown_queue_is_an_error(make: Make) {
    let f = make(&plain());
    let err = f.client().queue::<u32>("nope").unwrap_err();
    assert!(
        matches!(err, Error::UnknownQueue(ref q) if q == "nope"),
        "{err}"
    );
}

//! Criterion micro-benchmarks: the in-process queue (encode, channel, decode) and one
//! unbatched put→get round trip over loopback TCP.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use distq::{Client, Server};

fn server() -> Server {
    Server::builder()
        .authkey("bench")
        .queue("q")
        .bind("127.0.0.1:0")
        .expect("bind loopback")
}

fn local_queue(c: &mut Criterion) {
    let server = server();
    let q = server.queue::<u64>("q").unwrap();
    let mut group = c.benchmark_group("local");
    group.throughput(Throughput::Elements(1));
    group.bench_function("put_get_u64", |b| {
        b.iter(|| {
            q.put(42u64).unwrap();
            q.try_get().unwrap()
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("put_many_get_many_100", |b| {
        b.iter(|| {
            q.put_many(0..100u64).unwrap();
            q.get_many(100, Duration::ZERO).unwrap()
        })
    });
    group.finish();
    server.shutdown();
}

fn loopback(c: &mut Criterion) {
    let server = server();
    let client = Client::connect(server.local_addr(), "bench").unwrap();
    let q = client.queue::<u64>("q").unwrap();
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));
    group.bench_function("put_then_get_u64", |b| {
        b.iter(|| {
            q.put(42u64).unwrap();
            q.try_get().unwrap()
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("put_many_get_many_100", |b| {
        b.iter(|| {
            q.put_many(0..100u64).unwrap();
            q.get_many(100, Duration::from_secs(1)).unwrap()
        })
    });
    group.finish();
    drop(client);
    server.shutdown();
}

criterion_group!(benches, local_queue, loopback);
criterion_main!(benches);

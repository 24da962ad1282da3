//! Criterion micro-benchmark of the frame codec: a 100-item put request (16-byte payloads)
//! framed as a client sends it, and read back as the server does. Needs the `fuzzing`
//! feature, which exposes the private codec to benches and fuzz targets.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use distq::fuzzing::{decode_frame, put_frame};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(100));
    group.bench_function("encode_put_frame_100x16B", |b| {
        b.iter(|| put_frame(100, 16))
    });
    let frame = put_frame(100, 16);
    group.bench_function("decode_put_frame_100x16B", |b| {
        b.iter(|| decode_frame(&frame))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

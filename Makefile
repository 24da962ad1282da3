# distq: build, test, lint, benchmark and run the demo.
ADDR ?= 127.0.0.1:5000
KEY ?= abc
N ?= 4
NQ ?= 16
DISTQ := target/release/distq

.PHONY: build test lint fmt doc bench bench-quick run-master run-worker demo clean

build:
	cargo build --release

test:
	cargo test --all-targets
	cargo test --doc

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

fmt:
	cargo fmt --all

bench:
	cargo bench --bench queue

bench-quick:
	cargo bench --bench queue -- --quick

run-master: build
	DISTQ_AUTHKEY=$(KEY) $(DISTQ) master --bind $(ADDR) --job nqueens --n $(NQ)

run-worker: build
	DISTQ_AUTHKEY=$(KEY) $(DISTQ) worker --connect $(ADDR) --concurrency $(N)

demo: build
	DISTQ_AUTHKEY=$(KEY) ./scripts/demo.sh $(DISTQ) $(ADDR) $(N) $(NQ)

clean:
	cargo clean

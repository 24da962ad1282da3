# distq: build, test, lint, benchmark and run the demo.
ADDR ?= 127.0.0.1:5000
KEY ?= abc
N ?= 4
NQ ?= 16
# make run-worker: seconds without a task before a worker leaves (0 stays until --give-up).
IDLE ?= 10
DISTQ := target/release/distq

# make fuzz: seconds per fuzz target, and the sanitizer (address, or none where ASan fails).
FUZZ_SECS ?= 30
FUZZ_SANITIZER ?= address
FUZZ_TARGETS := frame request journal python

.PHONY: build test lint fmt doc bench bench-quick fuzz run-master run-worker demo clean

build:
	cargo build --release

test:
	cargo test --all-targets
	cargo test --doc
	cargo test --features fuzzing --lib fuzzing

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features fuzzing -- -D warnings
	cargo clippy --lib --no-default-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

fmt:
	cargo fmt --all

# Criterion micro-benchmarks (codec, in-process queue, loopback round trip), then the end-to-end
# report (benches/e2e.rs), which also rewrites the results table in BENCHMARKS.md.
bench:
	cargo bench --features fuzzing --bench codec --bench queue
	cargo bench --bench e2e

bench-quick:
	cargo bench --features fuzzing --bench codec --bench queue -- --quick
	cargo bench --bench e2e -- --quick

# Runs each cargo-fuzz target in fuzz/ for FUZZ_SECS seconds. cargo-fuzz needs nightly
# flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them. Inputs found are kept in
# fuzz/corpus/TARGET, crashes in fuzz/artifacts/TARGET (both git-ignored).
fuzz:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -s $(FUZZ_SANITIZER) $$t -- \
			-max_total_time=$(FUZZ_SECS) -dict=$(CURDIR)/fuzz/distq.dict -print_final_stats=1 \
			|| exit 1; \
	done

run-master: build
	DISTQ_AUTHKEY=$(KEY) $(DISTQ) master --bind $(ADDR) --job nqueens --n $(NQ)

run-worker: build
	DISTQ_AUTHKEY=$(KEY) $(DISTQ) worker --connect $(ADDR) --concurrency $(N) \
		$(if $(filter-out 0,$(IDLE)),--idle-exit $(IDLE))

demo: build
	DISTQ_AUTHKEY=$(KEY) ./scripts/demo.sh $(DISTQ) $(ADDR) $(N) $(NQ)

clean:
	cargo clean

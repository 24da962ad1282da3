#!/usr/bin/env bash
# The whole demo in one command: a master counting N-Queens solutions and N workers, each
# its own process, all on this machine. Usage: demo.sh DISTQ_BINARY ADDR WORKERS QUEENS
# The authkey comes from DISTQ_AUTHKEY.
set -euo pipefail
bin=$1 addr=$2 workers=$3 n=$4

"$bin" master --bind "$addr" --job nqueens --n "$n" &
master=$!
pids=()
# Only the processes this script started are ever signalled.
cleanup() { kill "$master" "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

# Wait (at most 10 s) until the master accepts connections.
host=${addr%:*} port=${addr##*:}
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then break; fi
  sleep 0.1
done

for _ in $(seq "$workers"); do
  "$bin" worker --connect "$addr" --idle-exit 3 &
  pids+=("$!")
done

wait "$master"
# Workers leave on their own 3 s after their last task.
for pid in "${pids[@]}"; do wait "$pid"; done
trap - EXIT

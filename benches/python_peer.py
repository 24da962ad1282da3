#!/usr/bin/env python3
"""The seed workload on Python's multiprocessing BaseManager, the design distq reimplements.

The master hosts a task queue and a result queue through a BaseManager, puts N integers one
by one, and collects N "n * n = m" strings; W worker processes connect to the manager and loop
on get(timeout=1) like the seed's task_worker.py. Workers connect before the clock starts.

With --address HOST:PORT the queues are not this process's own: the master connect()s to the
manager there (distq's Python listener, say) as the workers do, and the same scripts run.

Usage: python_peer.py --tasks 20000 --workers 2 [--address 127.0.0.1:5000]
Prints one JSON line: {"workers": W, "tasks": N, "seconds": S, "tasks_per_s": R}
"""
import argparse
import json
import queue
import time
from multiprocessing import Process
from multiprocessing.managers import BaseManager

KEY = b"bench"
task_queue = queue.Queue()
result_queue = queue.Queue()


def get_task_queue():
    return task_queue


def get_result_queue():
    return result_queue


class MasterManager(BaseManager):
    pass


class WorkerManager(BaseManager):
    pass


MasterManager.register("get_task_queue", callable=get_task_queue)
MasterManager.register("get_result_queue", callable=get_result_queue)
WorkerManager.register("get_task_queue")
WorkerManager.register("get_result_queue")


def worker(address):
    m = WorkerManager(address=address, authkey=KEY)
    m.connect()
    tasks, results = m.get_task_queue(), m.get_result_queue()
    results.put("ready")
    while True:
        try:
            n = tasks.get(timeout=1)
        except queue.Empty:
            continue
        if n is None:
            return
        results.put("%d * %d = %d" % (n, n, n * n))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--address", default=None)
    args = parser.parse_args()

    if args.address:
        host, port = args.address.rsplit(":", 1)
        manager = WorkerManager(address=(host, int(port)), authkey=KEY)
        manager.connect()
    else:
        manager = MasterManager(address=("127.0.0.1", 0), authkey=KEY)
        manager.start()
    tasks, results = manager.get_task_queue(), manager.get_result_queue()
    procs = [Process(target=worker, args=(manager.address,)) for _ in range(args.workers)]
    for p in procs:
        p.start()
    for _ in procs:
        assert results.get(timeout=30) == "ready"

    start = time.perf_counter()
    for n in range(args.tasks):
        tasks.put(n)
    for _ in range(args.tasks):
        results.get(timeout=30)
    seconds = time.perf_counter() - start

    for _ in procs:
        tasks.put(None)
    for p in procs:
        p.join(timeout=30)
    if not args.address:
        manager.shutdown()
    print(json.dumps({"workers": args.workers, "tasks": args.tasks, "seconds": seconds,
                      "tasks_per_s": args.tasks / seconds}))


if __name__ == "__main__":
    main()

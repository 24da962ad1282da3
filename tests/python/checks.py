# Runs with every Python from 2.7 on against a distq server's Python listener (argv[1] is
# its port): plain values both ways, queue.Empty and queue.Full as the client's own
# exceptions, refusals of what is not plain data, unknown names, a second thread.
# Prints one line per check and "ok" last.
import sys, threading
try:
    import queue
except ImportError:
    import Queue as queue
from multiprocessing.managers import BaseManager, RemoteError


class M(BaseManager):
    pass


for name in ('get_task_queue', 'get_result_queue', 'small', 'get_nope'):
    M.register(name)

m = M(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
m.connect()
t = m.get_task_queue()
small = m.small()

# Each value, and what comes back (a tuple comes back a list).
values = [None, True, False, 7, -1, 2 ** 40, -2 ** 63, 0.5, u'caf\xe9', 'ascii',
          b'\x00\xff', [1, [2, u'x']], (1, 2), {u'k': [1, 2], 3: None}]
try:
    integers = (int, long)  # Python 2: -2 ** 63 is a long, 2 ** 40 an int
except NameError:
    integers = (int,)


def same_type(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) == type(b)
    return type(a) == type(b) or (isinstance(a, integers) and isinstance(b, integers))


for v in values:
    t.put(v)
    got = t.get(timeout=5)
    want = list(v) if isinstance(v, tuple) else v
    assert got == want and same_type(got, want), (v, got)
print('values: %d round trips' % len(values))

for call in (lambda: t.get(timeout=0.2), t.get_nowait, lambda: t.get(False)):
    try:
        call()
        raise SystemExit('no Empty')
    except queue.Empty:
        pass
print('empty: queue.Empty raised')

small.put(1)
assert small.full() and small.qsize() == 1 and not small.empty()
for call in (lambda: small.put_nowait(2), lambda: small.put(2, True, 0.1),
             lambda: small.put(2, timeout=0.1)):
    try:
        call()
        raise SystemExit('no Full')
    except queue.Full:
        pass
assert small.get_nowait() == 1 and small.empty()
print('full: queue.Full raised')


class Evil(object):
    def __reduce__(self):
        import os
        return (os.system, ('echo pwned',))


for bad, named in ((Evil(), 'system'), (set([1]), 'set'), (object(), 'object')):
    try:
        t.put(bad)
        raise SystemExit('stored %r' % (bad,))
    except TypeError as e:
        assert named in str(e), e
assert t.qsize() == 0
print('refused: TypeError, nothing stored')

try:
    m.get_nope()
    raise SystemExit('created an unknown name')
except RemoteError as e:
    assert 'get_task_queue' in str(e), e
print('unknown name: RemoteError')

assert 'tasks' in str(t), str(t)

box = []
def other():
    box.append(t.get(timeout=5))
th = threading.Thread(target=other)
th.start()
t.put(u'from the main thread')
th.join()
assert box == [u'from the main thread'], box
print('thread: own connection')
print('ok')

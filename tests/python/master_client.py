# The seed's taskmanager.py as a client of a running master (connect() in place of start()):
# puts ten numbers, prints their results. argv[1] is the port.
import random, sys
from multiprocessing.managers import BaseManager


class QueueManager(BaseManager):
    pass


QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')

manager = QueueManager(address=('127.0.0.1', int(sys.argv[1])), authkey=b'abc')
manager.connect()
task = manager.get_task_queue()
result = manager.get_result_queue()

for i in range(10):
    n = random.randint(0, 10000)
    print('Put task %d...' % n)
    task.put(n)
print('Try get results...')

for i in range(10):
    r = result.get(timeout=30)
    print('Result: %s' % r)

// The worker's loop against an in-memory broker: every wait is on an event, so
// these run as fast as the tasks finish, and a lost wake-up shows as a timeout.

import assert from 'node:assert/strict';
import test from 'node:test';

import { WireError } from '../lib/errors.js';
import { BrokerLink, Wakeup, Worker } from '../lib/worker.js';

const deferred = () => {
  let resolve;
  const promise = new Promise((done) => {
    resolve = done;
  });
  return { promise, resolve };
};

/**
 * A broker with `count` tasks: answers lease, complete, release and queued as the
 * server does. A lease with no task to give waits, as the server's does, up to its
 * `wait`, or until a report may have changed what a burst worker sees.
 */
function fakeBroker(count) {
  const broker = { queue: [], completed: [], released: [], renewed: 0, reported: new Wakeup() };
  for (let id = 1; id <= count; id += 1) broker.queue.push({ v: 1, id, job: 'j', url: `http://127.0.0.1/${id}`, attempt: 1 });
  broker.makeLink = () => ({
    info: { lease_timeout: 30 },
    clockOffset: 0,
    drop() {},
    async call(method, ...args) {
      if (method === 'queued') return broker.queue.length;
      if (method === 'lease') {
        if (!broker.queue.length) await broker.reported.wait(args[2] * 1000);
        return broker.queue.splice(0, args[1]);
      }
      if (method === 'complete') {
        broker.completed.push(...args[1]);
        if (args[2].length) broker.renewed += 1;
        broker.reported.wake();
        return { accepted: args[1].length };
      }
      if (method === 'release') {
        broker.released.push(...args[1]);
        return args[1].length;
      }
      throw new Error(`unexpected call ${method}`);
    },
  });
  return broker;
}

/** A fetcher whose fetches end when the test says so; it counts how many run at once. */
function heldFetcher() {
  const fetcher = { running: 0, most: 0, started: [], finish: new Map(), began: new Wakeup() };
  fetcher.fetch = async (task) => {
    const done = deferred();
    fetcher.finish.set(task.id, done.resolve);
    fetcher.running += 1;
    fetcher.most = Math.max(fetcher.most, fetcher.running);
    fetcher.started.push(task.id);
    fetcher.began.wake();
    await done.promise;
    fetcher.running -= 1;
    return { v: 1, id: task.id, ok: true, attempt: task.attempt };
  };
  fetcher.until = async (condition) => {
    while (!condition()) await fetcher.began.wait();
  };
  return fetcher;
}

test('a burst runs every task once, never more at once than the concurrency, and reports each', { timeout: 10000 }, async () => {
  const broker = fakeBroker(25);
  const fetcher = heldFetcher();
  const worker = new Worker({ makeLink: broker.makeLink, fetcher, identity: 'h:1', concurrency: 3, burst: true, log: () => {} });
  const ran = worker.run();
  // Finish the fetches one by one, in the order they started, as each slot fills.
  for (let finished = 0; finished < 25; finished += 1) {
    await fetcher.until(() => fetcher.started.length > finished);
    fetcher.finish.get(fetcher.started[finished])();
  }
  assert.equal(await ran, 25);
  assert.equal(fetcher.most, 3);
  assert.deepEqual(broker.completed.map((r) => r.id).sort((a, b) => a - b), Array.from({ length: 25 }, (_, i) => i + 1));
});

test('stop hands back the tasks not started and lets the running ones finish and report', { timeout: 10000 }, async () => {
  const broker = fakeBroker(40);
  const fetcher = heldFetcher();
  const worker = new Worker({ makeLink: broker.makeLink, fetcher, identity: 'h:1', concurrency: 2, prefetch: 10, log: () => {} });
  const ran = worker.run();
  await fetcher.until(() => fetcher.started.length === 2);
  worker.stop();
  for (const finish of fetcher.finish.values()) finish();
  assert.equal(await ran, 2);
  assert.deepEqual(broker.completed.map((r) => r.id).sort(), fetcher.started.slice().sort());
  assert.equal(broker.released.length + broker.completed.length + broker.queue.length, 40, 'every task is somewhere');
  assert.ok(broker.released.length >= 8, `the prefetched tasks went back: ${broker.released.length}`);
  assert.ok(broker.released.every(([id]) => !fetcher.started.includes(id)));
});

test('a stop ends the wait for the server at once, not at the end of a backoff pause', { timeout: 10000 }, async () => {
  const stopper = new AbortController();
  const logged = new Wakeup();
  const lines = [];
  const link = new BrokerLink({}, {
    name: 'test',
    hello: {},
    signal: stopper.signal,
    log: (line) => {
      lines.push(line);
      logged.wake();
    },
  });
  let attempts = 0;
  link.connect = async () => {
    attempts += 1;
    throw new WireError('cannot reach fetchq server at 127.0.0.1:9: connection refused');
  };
  const outcome = link.call('queued').then(
    () => 'answered',
    (error) => error,
  );
  await logged.wait(); // the first failure: a backoff pause of 100 ms or more has begun
  stopper.abort();
  // The stop settles the call within the same turn of the event loop: no timer runs first.
  const nextTurn = new Promise((resolve) => setImmediate(() => resolve('still waiting')));
  const settled = await Promise.race([outcome, nextTurn]);
  assert.ok(settled instanceof WireError, String(settled));
  assert.equal(attempts, 1, 'no attempt after the stop');
  assert.match(lines[0], /waiting for server at .* \(attempt 1\)/);
});

// One fetch and its result: every failure a result with a type, Retry-After, robots bodies.

import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import test from 'node:test';

import { Fetcher, ROBOTS_MAX_BYTES, USER_AGENT, retryAfterSeconds } from '../lib/fetcher.js';

function serve(handler) {
  return new Promise((resolve) => {
    const server = http.createServer(handler);
    server.keepAliveTimeout = 100;
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

const base = (server) => `http://127.0.0.1:${server.address().port}`;

test('Retry-After: delta-seconds, an HTTP date, and nonsense', () => {
  const now = Date.parse('Wed, 21 Oct 2026 07:28:00 GMT');
  assert.equal(retryAfterSeconds('120', now), 120);
  assert.equal(retryAfterSeconds('Wed, 21 Oct 2026 07:28:30 GMT', now), 30);
  assert.equal(retryAfterSeconds('Wed, 21 Oct 2026 07:27:00 GMT', now), 0, 'a past date waits 0');
  assert.equal(retryAfterSeconds('soon', now), null);
  assert.equal(retryAfterSeconds('1.5', now), null);
  assert.equal(retryAfterSeconds(null, now), null);
});

test('answers, failures and their types', async () => {
  const seen = [];
  const server = await serve((req, res) => {
    seen.push(req.headers);
    if (req.url === '/ok') return res.end('hello');
    if (req.url === '/404') {
      res.statusCode = 404;
      return res.end('no');
    }
    if (req.url === '/302') {
      res.writeHead(302, { location: '/ok' });
      return res.end();
    }
    if (req.url === '/busy') {
      res.writeHead(429, { 'retry-after': '7' });
      return res.end();
    }
    if (req.url === '/reset') return req.socket.destroy();
    if (req.url === '/slow') return setTimeout(() => res.end('late'), 3000);
    res.end();
  });
  const closed = await new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
  const fetcher = new Fetcher('host:1');
  const task = (url, extra = {}) => ({ v: 1, id: 7, job: 'j', url, attempt: 2, timeout: 1, submitted: 0, ...extra });
  try {
    const ok = await fetcher.fetch(task(`${base(server)}/ok`), 1234.5);
    assert.deepEqual(
      [ok.ok, ok.status, ok.bytes, ok.error, ok.attempt, ok.worker, ok.scheduled, ok.retry_after],
      [true, 200, 5, null, 2, 'host:1', 1234.5, null],
    );
    assert.ok(ok.elapsed > 0 && ok.started > 1.7e9);
    assert.equal(seen[0]['user-agent'], USER_AGENT);
    assert.equal(seen[0]['accept-encoding'], 'identity');
    const notFound = await fetcher.fetch(task(`${base(server)}/404`));
    assert.deepEqual([notFound.ok, notFound.status, notFound.error], [false, 404, null]);
    const redirect = await fetcher.fetch(task(`${base(server)}/302`));
    assert.deepEqual([redirect.ok, redirect.status], [true, 302], 'a 3xx is the answer');
    const busy = await fetcher.fetch(task(`${base(server)}/busy`));
    assert.deepEqual([busy.status, busy.retry_after], [429, 7]);
    const types = {};
    for (const [name, url] of [
      ['reset', `${base(server)}/reset`],
      ['timeout', `${base(server)}/slow`],
      ['refused', `http://127.0.0.1:${closed}/`],
      ['invalid_url', 'http://exa mple/'],
    ]) {
      const result = await fetcher.fetch(task(url));
      types[name] = result.error?.type;
      assert.equal(result.ok, false, name);
      assert.ok(result.error.message, name);
    }
    assert.deepEqual(types, { reset: 'reset', timeout: 'timeout', refused: 'refused', invalid_url: 'invalid_url' });
  } finally {
    server.close();
    server.closeAllConnections?.();
  }
});

test('a robots.txt is read up to 512 KiB and decoded with replacement characters', async () => {
  const big = Buffer.alloc(ROBOTS_MAX_BYTES + 100000, 0x61);
  big[0] = 0xff; // not UTF-8
  const server = await serve((req, res) => res.end(req.url === '/robots.txt' ? big : 'x'));
  try {
    const report = await new Fetcher('h:1').fetchRobots({ id: 3, attempt: 1, job: 'j', host: 'h:80', url: `${base(server)}/robots.txt`, timeout: 5 });
    assert.deepEqual([report.id, report.attempt, report.job, report.host, report.status, report.error], [3, 1, 'j', 'h:80', 200, null]);
    assert.equal(report.body.length, ROBOTS_MAX_BYTES);
    assert.equal(report.body[0], '\ufffd');
  } finally {
    server.close();
    server.closeAllConnections?.();
  }
});

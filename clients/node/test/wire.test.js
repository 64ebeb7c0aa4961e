// The wire against docs/PROTOCOL.md's own examples: frames, and the login in both
// forms; and a connection the server resets, as section 10 says to treat it.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import test from 'node:test';

import { WireError } from '../lib/errors.js';
import { Connection, answerTo, frame, isValidAnswer, openConnection } from '../lib/wire.js';

const KEY = Buffer.from('example-key');
const NONCE = Buffer.from(Array.from({ length: 40 }, (_, i) => i));
const MESSAGE = Buffer.concat([Buffer.from('{sha256}'), NONCE]);
const SHA256_MAC = 'bd986f15bf7a90cd89a7373eacf0375e9d5f765a136dda88ae1850b80e1bb6ab';
const MD5_MAC = '8cf648b6490e01e747f5548203c36b0d';

test('a frame is a 4-byte big-endian length and the payload (section 2)', () => {
  const bytes = frame(Buffer.from('[null,"create",["broker"],{}]'));
  assert.equal(bytes.subarray(0, 4).toString('hex'), '0000001d');
  assert.equal(bytes.length, 4 + 29);
});

test('a {sha256} challenge is answered with {sha256} and the HMAC of the whole message', () => {
  const answer = answerTo(MESSAGE, KEY);
  assert.equal(answer.subarray(0, 8).toString(), '{sha256}');
  assert.equal(answer.subarray(8).toString('hex'), SHA256_MAC);
});

test('a legacy 20-byte challenge is answered with bare HMAC-MD5', () => {
  const legacy = Buffer.from(Array.from({ length: 20 }, (_, i) => i));
  assert.equal(answerTo(legacy, KEY).toString('hex'), 'b357ef431e6dca1690cf4f41367d1dc9');
});

test('answers are accepted in both forms and refused otherwise', () => {
  assert.ok(isValidAnswer(MESSAGE, Buffer.from(MD5_MAC, 'hex'), KEY), 'Python 3.11: bare MD5');
  assert.ok(isValidAnswer(MESSAGE, answerTo(MESSAGE, KEY), KEY), 'Python 3.12: {sha256}');
  const wrong = answerTo(MESSAGE, Buffer.from('another-key'));
  assert.ok(!isValidAnswer(MESSAGE, wrong, KEY));
  const sha1 = Buffer.concat([Buffer.from('{sha1}'), Buffer.alloc(20)]);
  assert.ok(!isValidAnswer(MESSAGE, sha1, KEY), 'sha1 is not an allowed hash');
});

/** A TCP server on 127.0.0.1 that does `onConnection(socket)`; closed when the test ends. */
async function localServer(t, onConnection) {
  const server = net.createServer(onConnection);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  return server.address().port;
}

test('a connection reset by the server is a WireError: the session is opened again', async (t) => {
  const port = await localServer(t, (socket) => socket.once('data', () => socket.resetAndDestroy()));
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const connection = new Connection(socket, `127.0.0.1:${port}`);
  await assert.rejects(connection.request([null, 'dummy', [], {}], 5000), (error) => {
    assert.ok(error instanceof WireError, `${error.constructor.name}: ${error.message}`);
    assert.match(error.message, /lost the connection to the server at 127\.0\.0\.1:\d+: .*ECONNRESET/);
    return true;
  });
  connection.close();
  const resetAtLogin = await localServer(t, (sock) => sock.resetAndDestroy());
  const settings = { host: '127.0.0.1', port: resetAtLogin, key: Buffer.from('k'), tls: null };
  await assert.rejects(openConnection(settings), WireError);
});

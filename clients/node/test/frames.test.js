// The frame reader (docs/PROTOCOL.md, section 2): frames split across reads at any
// byte, several in one read, the 8-byte length form, and the limits it enforces.

import assert from 'node:assert/strict';
import test from 'node:test';

import { WireError } from '../lib/errors.js';
import { FrameReader, MAX_FRAME, MAX_LOGIN_FRAME, frame } from '../lib/wire.js';

/** A frame in the large form: -1, the length in 8 bytes, then the payload. */
function largeFrame(payload, length = BigInt(payload.length)) {
  const header = Buffer.alloc(12);
  header.writeInt32BE(-1, 0);
  header.writeBigUInt64BE(length, 4);
  return Buffer.concat([header, payload]);
}

/** A bare 4-byte length, with no body after it. */
function lengthOnly(length) {
  const header = Buffer.alloc(4);
  header.writeInt32BE(length, 0);
  return header;
}

/** Feed `pieces` one read at a time; the payloads of every whole frame, in order. */
function readAll(pieces, maxLength = MAX_FRAME) {
  const reader = new FrameReader();
  const frames = [];
  for (const piece of pieces) {
    reader.push(piece);
    for (let got = reader.next(maxLength); got; got = reader.next(maxLength)) frames.push(got.toString('latin1'));
  }
  assert.equal(reader.next(maxLength), null, 'nothing left over');
  return frames;
}

function refusal(reader, maxLength) {
  let refused;
  assert.throws(() => reader.next(maxLength), (error) => {
    refused = error;
    return error instanceof WireError;
  });
  return refused;
}

const PAYLOADS = ['[null,"create",["broker"],{}]', '', 'x', '["#RETURN",null]'];
const STREAM = Buffer.concat([
  frame(Buffer.from(PAYLOADS[0])),
  frame(Buffer.from(PAYLOADS[1])),
  largeFrame(Buffer.from(PAYLOADS[2])),
  frame(Buffer.from(PAYLOADS[3])),
]);

test('frames split across two reads at every byte boundary come out whole and in order', () => {
  for (let cut = 0; cut <= STREAM.length; cut += 1) {
    assert.deepEqual(readAll([STREAM.subarray(0, cut), STREAM.subarray(cut)]), PAYLOADS, `cut at byte ${cut}`);
  }
  for (let first = 1; first < STREAM.length; first += 1) {
    const second = Math.min(STREAM.length, first + 5);
    const pieces = [STREAM.subarray(0, first), STREAM.subarray(first, second), STREAM.subarray(second)];
    assert.deepEqual(readAll(pieces), PAYLOADS, `cut at bytes ${first} and ${second}`);
  }
});

test('frames that come one byte a read come out whole', () => {
  const bytes = Array.from(STREAM, (byte) => Buffer.from([byte]));
  assert.deepEqual(readAll(bytes), PAYLOADS);
});

test('several frames in one read come out one by one', () => {
  const reader = new FrameReader();
  reader.push(STREAM);
  const frames = PAYLOADS.map(() => reader.next(MAX_FRAME).toString('latin1'));
  assert.deepEqual(frames, PAYLOADS);
  assert.equal(reader.next(MAX_FRAME), null);
  reader.push(frame(Buffer.from('later')).subarray(0, 6));
  assert.equal(reader.next(MAX_FRAME), null, 'half a frame waits for the rest');
});

test('the large form: -1 then an 8-byte length is parsed, and refused for its size', () => {
  assert.deepEqual(readAll([largeFrame(Buffer.from('small'))]), ['small'], 'parsed when it is small');
  const overSize = largeFrame(Buffer.alloc(0), 2n ** 31n); // the first length the large form is for
  for (let cut = 4; cut < 12; cut += 1) {
    const reader = new FrameReader();
    reader.push(overSize.subarray(0, cut));
    assert.equal(reader.next(MAX_FRAME), null, `the 8-byte length is not read from ${cut} bytes`);
  }
  const reader = new FrameReader();
  reader.push(overSize);
  assert.match(refusal(reader, MAX_FRAME).message, /a frame of 2147483648 bytes, more than the 67108864 allowed/);
  const highHalf = new FrameReader(); // 2^32 + 5: all 8 bytes count, not the low 4 alone
  highHalf.push(largeFrame(Buffer.from('12345'), 2n ** 32n + 5n));
  assert.match(refusal(highHalf, MAX_FRAME).message, /a frame of 4294967301 bytes/);
  const huge = new FrameReader();
  huge.push(largeFrame(Buffer.alloc(0), 2n ** 64n - 1n));
  assert.match(refusal(huge, MAX_FRAME).message, /more than the 67108864 allowed/, 'an unsigned length, never negative');
});

test('a frame of exactly the limit is read, one byte over is refused before its body', () => {
  for (const limit of [MAX_LOGIN_FRAME, MAX_FRAME]) {
    const reader = new FrameReader();
    reader.push(frame(Buffer.alloc(limit, 0x61)));
    assert.equal(reader.next(limit).length, limit, `${limit} bytes`);
    const under = new FrameReader();
    under.push(frame(Buffer.alloc(limit - 1, 0x61)));
    assert.equal(under.next(limit).length, limit - 1, `${limit - 1} bytes`);
    const over = new FrameReader();
    over.push(lengthOnly(limit + 1)); // no body: the length alone is refused
    assert.match(refusal(over, limit).message, new RegExp(`a frame of ${limit + 1} bytes, more than the ${limit} allowed`));
  }
  assert.equal(MAX_FRAME, 64 * 1024 * 1024, 'the limit section 2 gives');
  assert.equal(MAX_LOGIN_FRAME, 256, 'the login limit section 2 gives');
});

test('a negative length other than -1 is refused, and a refusal keeps its first byte', () => {
  const negative = new FrameReader();
  negative.push(lengthOnly(-2));
  assert.match(refusal(negative, MAX_FRAME).message, /a frame length of -2/);
  // A TLS server's alert read as a length during the login (section 3).
  const alert = new FrameReader();
  alert.push(Buffer.from('1503030002020a', 'hex'));
  assert.equal(refusal(alert, MAX_LOGIN_FRAME).firstByte, 0x15);
});

// The fetchq wire, as docs/PROTOCOL.md describes it: frames (section 2), TLS
// (section 3), the login in both hash forms (section 4), JSON messages
// (section 5) and the manager calls that reach the broker (section 6).

import crypto from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';

import { ExitCode, FatalError, RemoteError, WireError } from './errors.js';

export const MAX_FRAME = 64 * 1024 * 1024;
export const MAX_LOGIN_FRAME = 256;
const CHALLENGE = Buffer.from('#CHALLENGE#');
const WELCOME = Buffer.from('#WELCOME#');
const FAILURE = Buffer.from('#FAILURE#');
const NONCE_BYTES = 40;
const LEGACY_CHALLENGE = 20;
const LEGACY_ANSWER = 16;
// Python's digest names, and what node:crypto calls them.
const DIGESTS = { md5: 'md5', sha256: 'sha256', sha384: 'sha384', sha3_256: 'sha3-256', sha3_384: 'sha3-384' };
const TLS_RECORD_TYPES = [0x15, 0x16];
const PICKLE_OPCODE = 0x80;
const LARGE_FORM = -1; // a frame length that says the real one follows, in 8 bytes
const CONNECT_TIMEOUT_MS = 5000;
const LOGIN_TIMEOUT_MS = 10000; // the server gives each login 10 s (section 6)
const KEEPALIVE_MS = 10000;

/**
 * Frames from a byte stream (section 2): a 4-byte signed big-endian length, or -1
 * and an unsigned 8-byte one, then the payload. Bytes go in with `push` as they
 * arrive, in pieces of any size; `next` takes out each whole frame.
 */
export class FrameReader {
  constructor() {
    this.chunks = [];
    this.size = 0;
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  /**
   * The next whole frame's payload, or null while more bytes are needed. A length
   * over `maxLength`, or negative but not -1, throws a WireError as soon as the
   * length has come, before any of the body is read; its `firstByte` is the
   * length's first byte (0x15 or 0x16 when a TLS record came instead).
   */
  next(maxLength) {
    if (this.size < 4) return null;
    const head = this.peek(Math.min(this.size, 12));
    let length = head.readInt32BE(0);
    let headerLength = 4;
    if (length === LARGE_FORM) {
      if (head.length < 12) return null;
      length = Number(head.readBigUInt64BE(4));
      headerLength = 12;
    }
    if (length < 0 || length > maxLength) {
      const what = length < 0 ? `a frame length of ${length}` : `a frame of ${length} bytes, more than the ${maxLength} allowed`;
      const error = new WireError(what);
      error.firstByte = head[0];
      throw error;
    }
    if (this.size < headerLength + length) return null;
    const whole = this.take(headerLength + length);
    return whole.subarray(headerLength);
  }

  peek(count) {
    return Buffer.concat(this.chunks, Math.min(this.size, Math.max(count, 0))).subarray(0, count);
  }

  take(count) {
    const all = Buffer.concat(this.chunks, this.size);
    this.chunks = count < all.length ? [all.subarray(count)] : [];
    this.size = all.length - count;
    return all.subarray(0, count);
  }
}

export function frame(payload) {
  const header = Buffer.alloc(4);
  header.writeInt32BE(payload.length, 0);
  return Buffer.concat([header, payload]);
}

function hmac(digest, key, message) {
  return crypto.createHmac(DIGESTS[digest], key).update(message).digest();
}

/** The `{name}` prefix of a login message or answer and what follows it, if it names an allowed hash; else null. */
function digestOf(message) {
  if (message[0] !== 0x7b) return null; // '{'
  const end = message.indexOf(0x7d, 1); // '}'
  if (end < 0 || end > 10) return null;
  const name = message.subarray(1, end).toString('latin1');
  return Object.hasOwn(DIGESTS, name) ? { name, rest: message.subarray(end + 1) } : null;
}

/** The answer to a challenge message (`#CHALLENGE#` already stripped); a FatalError for a form fetchq does not know. */
export function answerTo(message, key) {
  const prefixed = digestOf(message);
  if (prefixed) return Buffer.concat([Buffer.from(`{${prefixed.name}}`), hmac(prefixed.name, key, message)]);
  if (message.length === LEGACY_CHALLENGE) return hmac('md5', key, message);
  throw new FatalError('the server sent a login challenge fetchq cannot answer', ExitCode.AUTH_FAILED);
}

/** Whether `answer` proves the peer holds the key, in either form. */
export function isValidAnswer(message, answer, key) {
  let name = 'md5';
  let mac = answer;
  if (answer.length !== LEGACY_ANSWER) {
    const prefixed = digestOf(answer);
    if (!prefixed) return false;
    name = prefixed.name;
    mac = prefixed.rest;
  }
  const expected = hmac(name, key, message);
  return expected.length === mac.length && crypto.timingSafeEqual(expected, mac);
}

/**
 * One connection to the server: the login (`logIn`), then JSON requests, one at a
 * time. Every wait has a timeout. A failure of the connection is a WireError, or a
 * FatalError when it is a TLS mistake the user must fix.
 */
export class Connection {
  constructor(socket, where) {
    this.socket = socket;
    this.where = where;
    this.reader = new FrameReader();
    this.waiter = null;
    this.failure = null;
    socket.on('data', (chunk) => {
      this.reader.push(chunk);
      this.wake();
    });
    socket.on('error', (error) => this.fail(connectionFailure(error, where)));
    socket.on('close', () => this.fail(new WireError(`lost the connection to the server at ${where}`)));
  }

  fail(error) {
    if (!this.failure) this.failure = error;
    this.wake();
  }

  wake() {
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter();
    }
  }

  /** The next frame's payload, at most `maxLength` bytes, within `timeoutMs`. */
  async recvFrame(maxLength, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = this.reader.next(maxLength);
      if (got) return got;
      if (this.failure) throw this.failure;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new WireError(`the server at ${this.where} stopped answering (is it a fetchq server, and is it alive?)`);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  sendFrame(payload) {
    if (this.failure) throw this.failure;
    this.socket.write(frame(payload));
  }

  /** Both halves of the login (section 4); a wrong key or a TLS server is a FatalError. */
  async logIn(key, timeoutMs) {
    let challenge;
    try {
      challenge = await this.recvFrame(MAX_LOGIN_FRAME, timeoutMs);
    } catch (error) {
      if (TLS_RECORD_TYPES.includes(error.firstByte)) {
        throw new FatalError(
          `the server at ${this.where} uses TLS: give --tls-ca (or FETCHQ_TLS_CA), and ` +
            '--tls-cert/--tls-key if it asks for a client certificate',
          ExitCode.TLS_FAILED,
        );
      }
      throw tlsFailure(error, this.where);
    }
    if (!challenge.subarray(0, CHALLENGE.length).equals(CHALLENGE) || challenge.length < CHALLENGE.length + LEGACY_CHALLENGE) {
      throw new FatalError(`${this.where} answered, but not like a fetchq server (wrong port?)`, ExitCode.AUTH_FAILED);
    }
    this.sendFrame(answerTo(challenge.subarray(CHALLENGE.length), key));
    const verdict = await this.recvFrame(MAX_LOGIN_FRAME, timeoutMs);
    if (!verdict.equals(WELCOME)) {
      throw new FatalError(
        `server at ${this.where} rejected the authkey: check FETCHQ_AUTHKEY / FETCHQ_AUTHKEY_FILE match the server's key`,
        ExitCode.AUTH_FAILED,
      );
    }
    const ours = Buffer.concat([Buffer.from('{sha256}'), crypto.randomBytes(NONCE_BYTES)]);
    this.sendFrame(Buffer.concat([CHALLENGE, ours]));
    const answer = await this.recvFrame(MAX_LOGIN_FRAME, timeoutMs);
    if (!isValidAnswer(ours, answer, key)) {
      this.sendFrame(FAILURE);
      throw new FatalError(`the server at ${this.where} does not hold our authkey`, ExitCode.AUTH_FAILED);
    }
    this.sendFrame(WELCOME);
  }

  /**
   * Send a request `[ident, method, args, kwargs]` and resolve with its reply's
   * result. Rejects with a RemoteError for an error reply, a FatalError for a
   * pickle reply (an older server), and a WireError when the connection fails.
   */
  async request(message, timeoutMs) {
    this.sendFrame(Buffer.from(JSON.stringify(message), 'utf8'));
    const reply = await this.recvFrame(MAX_FRAME, timeoutMs);
    if (reply[0] === PICKLE_OPCODE) {
      throw new FatalError(
        `the server at ${this.where} speaks pickle, not JSON: it is an older fetchq (protocol 2 or before) or not fetchq at all`,
        ExitCode.VERSION_MISMATCH,
      );
    }
    let parsed;
    try {
      parsed = JSON.parse(reply.toString('utf8'));
    } catch {
      throw new WireError(`the server at ${this.where} sent a frame that is not JSON`);
    }
    if (!Array.isArray(parsed) || parsed.length !== 2) throw new WireError('a reply is [kind, result]');
    const [kind, result] = parsed;
    if (kind === '#RETURN') return result;
    if (kind === '#ERROR') throw new RemoteError(String(result?.name ?? ''), String(result?.message ?? ''));
    throw new WireError(`a reply of an unknown kind ${JSON.stringify(kind)}`);
  }

  close() {
    this.failure = this.failure || new WireError('closed');
    this.socket.destroy();
  }
}

// What OpenSSL says (Node's code is ERR_SSL_ and the reason) when the peer's
// bytes are no TLS records at all: a plaintext server.
const NOT_TLS = ['WRONG_VERSION_NUMBER', 'RECORD_LAYER_FAILURE', 'PACKET_LENGTH_TOO_LONG', 'UNKNOWN_PROTOCOL', 'HTTP_REQUEST'];
// The alerts a TLS server sends when it refuses our client certificate, and what
// they mean to the user: the same table as fetchq/tls.py's.
const REFUSED_US = {
  TLSV13_ALERT_CERTIFICATE_REQUIRED: 'it requires a client certificate: give --tls-cert and --tls-key (or FETCHQ_TLS_CERT and FETCHQ_TLS_KEY)',
  SSLV3_ALERT_HANDSHAKE_FAILURE: 'the handshake failed: it may require a client certificate (--tls-cert and --tls-key)',
  TLSV1_ALERT_UNKNOWN_CA: "it does not trust our client certificate, which is signed by another CA than the server's --tls-ca",
  SSLV3_ALERT_CERTIFICATE_EXPIRED: 'it refused our client certificate: it has expired',
  SSLV3_ALERT_BAD_CERTIFICATE: 'it refused our client certificate as bad',
  SSLV3_ALERT_CERTIFICATE_UNKNOWN: 'it refused our client certificate',
  TLSV1_ALERT_DECRYPT_ERROR: "it could not verify our client certificate's signature",
};
// Node's codes for a server certificate that the CA does not vouch for
// (CERT_HAS_EXPIRED, DEPTH_ZERO_SELF_SIGNED_CERT, ERR_TLS_CERT_ALTNAME_INVALID, ...).
// An ERR_SSL_ code with CERT in it is an alert about ours instead.
const SERVER_CERTIFICATE = /CERT|SELF_SIGNED|UNABLE_TO|ERR_TLS|ALTNAME/;

/** OpenSSL's reason (`wrong version number`) rather than its whole error string, on one line. */
const reasonOf = (error) => String(error.reason || error.message).trim().split(/\s*\n\s*/).join(' ');

/**
 * What a socket error means: a TLS mistake the user must fix (a one-line
 * FatalError), a TLS server that gave up on us (WireError), or, when it is
 * neither, the error itself.
 */
export function tlsFailure(error, where) {
  const code = String(error?.code ?? '');
  const reason = String(error?.reason ?? error?.message ?? '');
  const known = Object.keys(REFUSED_US).find((name) => code.includes(name) || reason.toUpperCase().includes(name.replace(/_/g, ' ')));
  if (known) return new FatalError(`the server at ${where} refused us: ${REFUSED_US[known]}`, ExitCode.TLS_FAILED);
  if (NOT_TLS.some((name) => code.includes(name))) {
    return new FatalError(
      `the server at ${where} does not speak TLS (start it with --tls-cert and --tls-key, or leave out --tls-ca here)`,
      ExitCode.TLS_FAILED,
    );
  }
  if (code.includes('SSLV3_ALERT_UNEXPECTED_MESSAGE')) return new WireError(`the server at ${where} gave up waiting for our TLS hello`);
  if (!code.startsWith('ERR_SSL_') && SERVER_CERTIFICATE.test(code)) {
    return new FatalError(`the server at ${where} showed a certificate that --tls-ca does not vouch for: ${reasonOf(error)}`, ExitCode.TLS_FAILED);
  }
  if (code.startsWith('ERR_SSL_')) return new FatalError(`TLS with the server at ${where} failed: ${reasonOf(error)}`, ExitCode.TLS_FAILED);
  return error;
}

/** A socket error as the worker acts on it: a TLS FatalError, or a WireError (open the connection again). */
function connectionFailure(error, where, what = 'lost the connection to') {
  const failure = tlsFailure(error, where);
  if (failure !== error) return failure;
  return new WireError(`${what} the server at ${where}: ${error.message}`, { cause: error });
}

/**
 * Connect (with TLS when `settings.tls` holds its files) and log in: a ready
 * Connection. `settings` holds `host`, `port` and `key`, and may set
 * `connectTimeoutMs` and `handshakeTimeoutMs` for the connect and the login.
 */
export async function openConnection(settings) {
  const { host, port, key, tls: tlsFiles } = settings;
  const where = `${host}:${port}`;
  const socket = await new Promise((resolve, reject) => {
    const options = { host, port };
    let sock;
    if (tlsFiles) {
      Object.assign(options, tlsFiles);
      if (!net.isIP(host)) options.servername = host;
      sock = tls.connect(options);
    } else {
      sock = net.connect(options);
    }
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new WireError(`cannot reach fetchq server at ${where}: timed out (check the host, the port and any firewall)`));
    }, settings.connectTimeoutMs ?? CONNECT_TIMEOUT_MS);
    sock.once(tlsFiles ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (error) => {
      clearTimeout(timer);
      sock.destroy();
      if (error.code === 'ECONNREFUSED') {
        reject(new WireError(`cannot reach fetchq server at ${where}: connection refused (is \`fetchq server\` running there, on that port?)`));
      } else {
        reject(connectionFailure(error, where, 'cannot talk to'));
      }
    });
  });
  socket.setNoDelay(true);
  socket.setKeepAlive(true, KEEPALIVE_MS);
  const connection = new Connection(socket, where);
  try {
    await connection.logIn(key, settings.handshakeTimeoutMs ?? LOGIN_TIMEOUT_MS);
  } catch (error) {
    connection.close();
    throw tlsFailure(error, where);
  }
  return connection;
}

/** The broker's ident: a `create` call on a connection of its own (section 6). */
export async function createBroker(settings) {
  const connection = await openConnection(settings);
  try {
    const [ident] = await connection.request([null, 'create', ['broker'], {}], settings.callTimeoutMs);
    return ident;
  } finally {
    connection.close();
  }
}

/** A session: `accept_connection`, then broker calls on `ident`, one at a time. */
export class Session {
  static async open(settings, ident, name) {
    const connection = await openConnection(settings);
    try {
      await connection.request([null, 'accept_connection', [name], {}], settings.callTimeoutMs);
    } catch (error) {
      connection.close();
      throw error;
    }
    return new Session(connection, ident, settings.callTimeoutMs);
  }

  constructor(connection, ident, timeoutMs) {
    this.connection = connection;
    this.ident = ident;
    this.timeoutMs = timeoutMs;
  }

  call(method, ...args) {
    return this.connection.request([this.ident, method, args, {}], this.timeoutMs);
  }

  close() {
    this.connection.close();
  }
}

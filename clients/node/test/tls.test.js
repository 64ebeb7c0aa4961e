// TLS errors as the user reads them: each code the wire knows becomes one line
// and exit code 9 (or, for a server that gave up on us, a WireError to retry);
// the rest stay what they were, for the reconnect logic to judge.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import test from 'node:test';

import { ExitCode, FatalError, WireError } from '../lib/errors.js';
import { openConnection, tlsFailure } from '../lib/wire.js';

const WHERE = '10.0.0.5:7439';

/** An error shaped as Node shapes it: a code, OpenSSL's reason, a long message. */
const nodeError = (code, reason = null, message = `error:0A000000:SSL routines::${reason}:ssl/x.c:1:\n`) =>
  Object.assign(new Error(message), { code, reason: reason ?? undefined });

function fatal(error) {
  const failure = tlsFailure(error, WHERE);
  assert.ok(failure instanceof FatalError, `${error.code}: ${failure.constructor.name} ${failure.message}`);
  assert.equal(failure.exitCode, ExitCode.TLS_FAILED, error.code);
  assert.doesNotMatch(failure.message, /\n/, `${error.code}: one line`);
  assert.ok(failure.message.includes(WHERE), failure.message);
  return failure.message;
}

test('a server that refuses our client certificate: each alert in its own words', () => {
  const alerts = {
    ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED: ['tlsv13 alert certificate required', 'refused us: it requires a client certificate: give --tls-cert and --tls-key'],
    ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE: ['sslv3 alert handshake failure', 'refused us: the handshake failed: it may require a client certificate'],
    ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: ['tlsv1 alert unknown ca', 'refused us: it does not trust our client certificate'],
    ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED: ['sslv3 alert certificate expired', 'refused us: it refused our client certificate: it has expired'],
    ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE: ['sslv3 alert bad certificate', 'refused us: it refused our client certificate as bad'],
    ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN: ['sslv3 alert certificate unknown', 'refused us: it refused our client certificate'],
    ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR: ['tlsv1 alert decrypt error', "refused us: it could not verify our client certificate's signature"],
  };
  for (const [code, [reason, phrase]] of Object.entries(alerts)) {
    assert.ok(fatal(nodeError(code, reason)).includes(phrase), code);
    // With only the reason, as a read error after the handshake may come.
    assert.ok(fatal(Object.assign(new Error('x'), { reason })).includes(phrase), `${reason} alone`);
  }
  const aboutOurs = fatal(nodeError('ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE', 'sslv3 alert unsupported certificate'));
  assert.ok(!aboutOurs.includes('vouch'), "an alert about our certificate is not one about the server's");
});

test('a plaintext server: OpenSSL finds no TLS record, and says it five ways', () => {
  const codes = ['WRONG_VERSION_NUMBER', 'RECORD_LAYER_FAILURE', 'PACKET_LENGTH_TOO_LONG', 'UNKNOWN_PROTOCOL', 'HTTP_REQUEST'];
  for (const name of codes) {
    assert.match(fatal(nodeError(`ERR_SSL_${name}`, name.toLowerCase().replaceAll('_', ' '))), /does not speak TLS \(start it with --tls-cert and --tls-key, or leave out --tls-ca here\)$/, name);
  }
});

test("a server certificate our CA does not vouch for says Node's reason", () => {
  const codes = {
    DEPTH_ZERO_SELF_SIGNED_CERT: 'self-signed certificate',
    SELF_SIGNED_CERT_IN_CHAIN: 'self-signed certificate in certificate chain',
    UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'unable to verify the first certificate',
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'unable to get local issuer certificate',
    CERT_HAS_EXPIRED: 'certificate has expired',
    CERT_NOT_YET_VALID: 'certificate is not yet valid',
    ERR_TLS_CERT_ALTNAME_INVALID: "Hostname/IP does not match certificate's altnames: IP: 10.0.0.5 is not in the cert's list: 127.0.0.1",
  };
  for (const [code, message] of Object.entries(codes)) {
    assert.equal(
      fatal(Object.assign(new Error(message), { code })),
      `the server at ${WHERE} showed a certificate that --tls-ca does not vouch for: ${message}`,
    );
  }
});

test("another OpenSSL failure says OpenSSL's reason, not its whole error string", () => {
  assert.equal(fatal(nodeError('ERR_SSL_NO_PROTOCOLS_AVAILABLE', 'no protocols available')), `TLS with the server at ${WHERE} failed: no protocols available`);
  assert.equal(fatal(nodeError('ERR_SSL_SOMETHING_NEW', undefined, 'line one\n  line two\n')), `TLS with the server at ${WHERE} failed: line one line two`);
});

test('a TLS server that gave up on us is a WireError; other errors stay as they are', () => {
  const gaveUp = tlsFailure(nodeError('ERR_SSL_SSLV3_ALERT_UNEXPECTED_MESSAGE', 'sslv3 alert unexpected message'), WHERE);
  assert.ok(gaveUp instanceof WireError);
  assert.equal(gaveUp.message, `the server at ${WHERE} gave up waiting for our TLS hello`);
  for (const code of ['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', undefined]) {
    const error = Object.assign(new Error(`read ${code}`), { code });
    assert.equal(tlsFailure(error, WHERE), error, String(code));
  }
});

/** A TCP server on 127.0.0.1 that does `onConnection(socket)`; closed when the test ends. */
async function localServer(t, onConnection) {
  const server = net.createServer(onConnection);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  return { host: '127.0.0.1', port: server.address().port, key: Buffer.from('k'), handshakeTimeoutMs: 5000 };
}

test('on a real socket: TLS on one side only is said in one line, with exit code 9', async (t) => {
  // A plaintext client, and a TLS server that waited for a hello and sent its alert (section 3).
  const tlsServer = await localServer(t, (socket) => socket.end(Buffer.from('1503030002020a', 'hex')));
  await assert.rejects(openConnection({ ...tlsServer, tls: null }), (error) => {
    assert.ok(error instanceof FatalError, error.message);
    assert.equal(error.exitCode, ExitCode.TLS_FAILED);
    assert.match(error.message, /uses TLS: give --tls-ca \(or FETCHQ_TLS_CA\)/);
    return true;
  });
  // A TLS client, and a plaintext server that sends its login challenge.
  const challenge = Buffer.concat([Buffer.from('0000003b', 'hex'), Buffer.from('#CHALLENGE#{sha256}'), Buffer.alloc(40)]);
  const plainServer = await localServer(t, (socket) => socket.write(challenge));
  await assert.rejects(openConnection({ ...plainServer, tls: {} }), (error) => {
    assert.ok(error instanceof FatalError, error.message);
    assert.equal(error.exitCode, ExitCode.TLS_FAILED);
    assert.match(error.message, /does not speak TLS/);
    assert.doesNotMatch(error.message, /\n/);
    return true;
  });
  // A server that hangs up mid-handshake is an outage to wait through, not a mistake.
  const hangUp = await localServer(t, (socket) => socket.resetAndDestroy());
  await assert.rejects(openConnection({ ...hangUp, tls: {} }), WireError);
});

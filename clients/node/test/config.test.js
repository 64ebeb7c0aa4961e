// Options and the environment: each option by its long and short form, a flag
// beating the environment, and every bad option ending in one line and exit code 2.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';

import { OPTIONS, USAGE, authkey, parseOptions, serverAddress, tlsFiles } from '../lib/config.js';
import { ExitCode, FatalError } from '../lib/errors.js';

const WORKER = fileURLToPath(new URL('../fetchq-worker.js', import.meta.url));

// A value each option takes, and what it reads as.
const SAMPLES = {
  server: ['10.0.0.5:7000', '10.0.0.5:7000'],
  'authkey-file': ['/k', '/k'],
  'tls-ca': ['ca.pem', 'ca.pem'],
  'tls-cert': ['c.pem', 'c.pem'],
  'tls-key': ['c.key', 'c.key'],
  concurrency: ['7', 7],
  prefetch: ['0', 0],
  grace: ['2.5', 2.5],
  'call-timeout': ['60', 60],
};

function usageError(run) {
  let caught;
  assert.throws(run, (error) => {
    caught = error;
    return error instanceof FatalError;
  });
  assert.equal(caught.exitCode, ExitCode.USAGE, caught.message);
  assert.doesNotMatch(caught.message, /\n/, 'one line');
  return caught.message;
}

test('the usage lists every option the parser takes, with its short form', () => {
  for (const [name, option] of Object.entries(OPTIONS)) {
    const form = option.short ? `-${option.short}, --${name}` : `    --${name}`;
    assert.ok(USAGE.includes(`  ${form}${option.value ? ` ${option.value}` : ''} `), `${form} is missing from:\n${USAGE}`);
  }
  assert.ok(USAGE.includes('-s, --server HOST:PORT'));
  // And nothing the usage shows is refused by the parser.
  const shown = [...USAGE.matchAll(/^ {2}(?:(-\w), )? *(--[\w-]+)/gm)];
  assert.equal(shown.length, Object.keys(OPTIONS).length);
  for (const [, short, long] of shown) {
    for (const form of [short, long].filter(Boolean)) {
      const value = SAMPLES[long.slice(2)]?.[0];
      assert.doesNotThrow(() => parseOptions(value === undefined ? [form] : [form, value], {}), form);
    }
  }
});

test('each option by its long form, with = or a separate value, and by its short form', () => {
  for (const [name, option] of Object.entries(OPTIONS)) {
    if (option.type === 'boolean') {
      assert.equal(parseOptions([`--${name}`], {})[name], true, name);
      assert.equal(parseOptions([], {})[name], false, name);
      if (option.short) assert.equal(parseOptions([`-${option.short}`], {})[name], true, name);
      continue;
    }
    const [text, expected] = SAMPLES[name];
    assert.equal(parseOptions([`--${name}`, text], {})[name], expected, name);
    assert.equal(parseOptions([`--${name}=${text}`], {})[name], expected, name);
    if (option.short) {
      assert.equal(parseOptions([`-${option.short}`, text], {})[name], expected, `-${option.short}`);
      assert.equal(parseOptions([`-${option.short}${text}`], {})[name], expected, `-${option.short}${text}`);
    }
  }
  assert.deepEqual(parseOptions(['-s', 'h:1', '-c', '3', '--burst'], {}), {
    ...parseOptions([], {}),
    server: 'h:1',
    concurrency: 3,
    burst: true,
  });
});

test('defaults, and a flag beats the environment, which beats the default', () => {
  const plain = parseOptions([], {});
  assert.deepEqual(
    [plain.server, plain.concurrency, plain.prefetch, plain.grace, plain['call-timeout'], plain['tls-ca']],
    ['127.0.0.1:7439', 16, undefined, 30, 35, undefined],
  );
  for (const [name, option] of Object.entries(OPTIONS).filter(([, o]) => o.env)) {
    const env = { [option.env]: 'from-env' };
    assert.equal(parseOptions([], env)[name], 'from-env', `${option.env} alone`);
    assert.equal(parseOptions([`--${name}`, 'from-flag'], env)[name], 'from-flag', `--${name} over ${option.env}`);
    assert.equal(parseOptions([], { [option.env]: '' })[name], option.default, `an empty ${option.env} is not given`);
  }
  assert.equal(parseOptions(['-s', 'a:1'], { FETCHQ_SERVER: 'b:2' }).server, 'a:1', '-s beats FETCHQ_SERVER too');
  assert.deepEqual(serverAddress('10.0.0.5:7000'), { host: '10.0.0.5', port: 7000 });
  assert.deepEqual(serverAddress('example.org'), { host: 'example.org', port: 7439 });
  assert.deepEqual(serverAddress(':7000'), { host: '127.0.0.1', port: 7000 });
});

test('the authkey: the flag, then FETCHQ_AUTHKEY, then FETCHQ_AUTHKEY_FILE, then the default file', (t) => {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'fetchq-node-config-'));
  t.after(() => fs.rmSync(folder, { recursive: true, force: true }));
  const write = (name, text) => {
    const file = path.join(folder, name);
    fs.writeFileSync(file, text, { mode: 0o600 });
    return file;
  };
  const flagFile = write('flag', 'from-flag\n');
  const envFile = write('env', 'from-env-file\r\n');
  fs.mkdirSync(path.join(folder, 'fetchq'));
  write('fetchq/authkey', 'from-default');
  const all = { FETCHQ_AUTHKEY: 'from-env', FETCHQ_AUTHKEY_FILE: envFile, XDG_CONFIG_HOME: folder };
  const key = (option, env) => authkey(option, env).toString();
  assert.equal(key(flagFile, all), 'from-flag', 'one trailing newline is not part of the key');
  assert.equal(key(undefined, all), 'from-env');
  assert.equal(key(undefined, { ...all, FETCHQ_AUTHKEY: '' }), 'from-env-file');
  assert.equal(key(undefined, { XDG_CONFIG_HOME: folder }), 'from-default');
  const none = path.join(folder, 'nowhere');
  assert.throws(() => authkey(undefined, { XDG_CONFIG_HOME: none }), (error) => error.exitCode === ExitCode.NO_AUTHKEY);
  assert.match(usageError(() => authkey(path.join(folder, 'missing'), {})), /authkey file .*missing does not exist/);
  assert.match(usageError(() => authkey(write('empty', '\n'), {})), /is empty/);
});

test('a bad option or value is one line that exits with USAGE', () => {
  const cases = [
    [['--nope'], /--nope/],
    [['-x'], /-x/],
    [['--server'], /--server/],
    [['-s'], /--server/],
    [['--burst=yes'], /--burst/],
    [['stray'], /stray/],
    [['-c', '0'], /--concurrency: 0 \(a whole number from 1 to 1000\)/],
    [['--concurrency', '1001'], /--concurrency: 1001/],
    [['-c', '2.5'], /--concurrency: 2\.5/],
    [['--prefetch', 'many'], /--prefetch: many/],
    [['--grace', ''], /--grace/],
    [['--call-timeout', '0.5'], /--call-timeout: 0\.5 \(from 1 to 3600\)/],
  ];
  for (const [argv, phrase] of cases) {
    assert.match(usageError(() => parseOptions(argv, {})), phrase, argv.join(' '));
  }
  for (const text of ['h:x', 'h:70000', 'h:1:2', 'h:', 'h:+80']) {
    assert.match(usageError(() => serverAddress(text)), /invalid server address/, text);
  }
  assert.match(usageError(() => tlsFiles(parseOptions(['--tls-ca', 'ca.pem', '--tls-cert', 'c.pem'], {}))), /go together/);
  assert.match(usageError(() => tlsFiles(parseOptions([], { FETCHQ_TLS_CERT: 'c', FETCHQ_TLS_KEY: 'k' }))), /needs --tls-ca/);
  assert.match(usageError(() => tlsFiles(parseOptions(['--tls-ca', '/nonexistent/ca.pem'], {}))), /TLS CA file .* does not exist/);
  assert.equal(tlsFiles(parseOptions([], {})), null, 'no CA: plaintext');
});

test('the worker prints its usage with -h, and says a bad option in one line with exit code 2', () => {
  const run = (...args) => spawnSync(process.execPath, [WORKER, ...args], { encoding: 'utf8', timeout: 30000, env: {} });
  const help = run('-h');
  assert.equal(help.status, ExitCode.OK, help.stderr);
  assert.equal(help.stdout, `${USAGE}\n`);
  const bad = run('-c', 'lots');
  assert.equal(bad.status, ExitCode.USAGE, bad.stderr);
  assert.deepEqual(bad.stderr.trim().split('\n'), ['fetchq: error: invalid value for --concurrency: lots (a whole number from 1 to 1000)']);
  const unknown = run('--servr', 'h:1');
  assert.equal(unknown.status, ExitCode.USAGE, unknown.stderr);
  assert.match(unknown.stderr, /^fetchq: error: .*'--servr'.*\n$/);
});

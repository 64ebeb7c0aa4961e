// Settings from options and the environment, as the Python programs read them:
// a flag beats the environment. There is no built-in key, and the key is never printed.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { ExitCode, FatalError } from './errors.js';

const DEFAULT_HOST = '127.0.0.1';
const DEFAULT_PORT = 7439;

/**
 * Every option the worker takes, in the order `--help` lists them. `type` and
 * `short` are what util.parseArgs reads; the rest makes the usage text, fills
 * in the environment (`env`) and the `default`, and checks numbers (`range`).
 */
export const OPTIONS = {
  server: {
    type: 'string', short: 's', value: 'HOST:PORT', env: 'FETCHQ_SERVER', default: `${DEFAULT_HOST}:${DEFAULT_PORT}`,
    help: 'server address',
  },
  'authkey-file': {
    type: 'string', value: 'PATH',
    help: 'file holding the key [else $FETCHQ_AUTHKEY, $FETCHQ_AUTHKEY_FILE,\nthen ~/.config/fetchq/authkey]',
  },
  'tls-ca': {
    type: 'string', value: 'FILE', env: 'FETCHQ_TLS_CA',
    help: 'use TLS, trusting a server certificate this CA signed',
  },
  'tls-cert': {
    type: 'string', value: 'FILE', env: 'FETCHQ_TLS_CERT',
    help: 'client certificate, for a server that asks for one',
  },
  'tls-key': {
    type: 'string', value: 'FILE', env: 'FETCHQ_TLS_KEY',
    help: "the client certificate's private key",
  },
  concurrency: {
    type: 'string', short: 'c', value: 'N', range: [1, 1000], integer: true, default: 16,
    help: 'requests in flight at once',
  },
  prefetch: {
    type: 'string', value: 'N', range: [0, 100000], integer: true,
    help: 'tasks leased ahead [default: twice the concurrency]',
  },
  burst: { type: 'boolean', help: 'exit once the server has no task left' },
  grace: {
    type: 'string', value: 'SECONDS', range: [0, 86400], default: 30,
    help: 'time running requests get to finish on stop',
  },
  'call-timeout': {
    type: 'string', value: 'SECONDS', range: [1, 3600], default: 35,
    help: 'wait for a reply before the server link counts as cut',
  },
  'follow-redirects': { type: 'boolean', help: 'follow redirects instead of reporting the 3xx' },
  help: { type: 'boolean', short: 'h', help: 'show this and exit' },
};

/** One row per entry of OPTIONS, so the text cannot leave an option (or its short form) out. */
function usage() {
  const rows = Object.entries(OPTIONS).map(([name, option]) => {
    const left = `${option.short ? `-${option.short}, ` : '    '}--${name}${option.value ? ` ${option.value}` : ''}`;
    const notes = [option.env && `env: ${option.env}`, option.default !== undefined && `default: ${option.default}`];
    const note = notes.filter(Boolean).join('; ');
    return [left, `${option.help}${note ? ` [${note}]` : ''}`];
  });
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  const lines = rows.map(([left, help]) => `  ${left.padEnd(width)}${help.replaceAll('\n', `\n  ${' '.repeat(width)}`)}`);
  return ['usage: node fetchq-worker.js [options]', '', 'Fetch tasks from a fetchq server and send back their results.', '', 'options:', ...lines].join('\n');
}

export const USAGE = usage();

const usageError = (message) => new FatalError(message, ExitCode.USAGE);

function number(name, text) {
  const { range: [low, high], integer } = OPTIONS[name];
  const value = Number(text);
  const fits = text.trim() !== '' && Number.isFinite(value) && value >= low && value <= high;
  if (!fits || (integer && !Number.isInteger(value))) {
    throw usageError(`invalid value for --${name}: ${text} (${integer ? 'a whole number ' : ''}from ${low} to ${high})`);
  }
  return value;
}

/**
 * The options in `argv`, each set from its flag, else its environment variable,
 * else its default; numbers as numbers, flags as booleans. A bad option throws a
 * one-line FatalError that exits with ExitCode.USAGE.
 */
export function parseOptions(argv, env = process.env) {
  let values;
  try {
    const config = Object.fromEntries(
      Object.entries(OPTIONS).map(([name, { type, short }]) => [name, short ? { type, short } : { type }]),
    );
    ({ values } = parseArgs({ args: argv, options: config, strict: true, allowPositionals: false }));
  } catch (error) {
    if (!String(error.code).startsWith('ERR_PARSE_ARGS_')) throw error;
    throw usageError(`${error.message.split(/\s*\n\s*/).join(' ')} (see --help)`);
  }
  const options = {};
  for (const [name, option] of Object.entries(OPTIONS)) {
    // For a setting with a variable, an empty flag or variable counts as not given,
    // as in the Python programs (`option or environ.get(...)`).
    const given = option.env ? values[name] || env[option.env] || undefined : values[name];
    if (option.type === 'boolean') options[name] = Boolean(given);
    else if (given === undefined) options[name] = option.default;
    else options[name] = option.range ? number(name, given) : given;
  }
  return options;
}

/** `HOST:PORT`, `HOST` (the default port) or `:PORT` (loopback), as `{host, port}`. */
export function serverAddress(text) {
  const trimmed = text.trim();
  const [host, port = String(DEFAULT_PORT), ...extra] = trimmed.split(':');
  const number = Number(port);
  if (extra.length || !/^\d+$/.test(port) || number > 65535) {
    throw usageError(`invalid server address ${JSON.stringify(trimmed)}: expected HOST:PORT`);
  }
  return { host: host || DEFAULT_HOST, port: number };
}

/** A file's bytes, or a one-line FatalError (ExitCode.USAGE) that says why it cannot be had. */
function readFile(file, what) {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    const why = error.code === 'ENOENT' ? 'does not exist' : `cannot be read (${error.code})`;
    throw usageError(`${what} ${file} ${why}`);
  }
}

function readKeyFile(file) {
  let data = readFile(file, 'authkey file');
  if (data.at(-1) === 0x0a) data = data.subarray(0, data.at(-2) === 0x0d ? -2 : -1);
  if (!data.length) throw usageError(`authkey file ${file} is empty`);
  return data;
}

/** The key as bytes: `--authkey-file`, then FETCHQ_AUTHKEY, then FETCHQ_AUTHKEY_FILE, then the default file. */
export function authkey(option, env = process.env) {
  if (option) return readKeyFile(option);
  if (env.FETCHQ_AUTHKEY) return Buffer.from(env.FETCHQ_AUTHKEY, 'utf8');
  if (env.FETCHQ_AUTHKEY_FILE) return readKeyFile(env.FETCHQ_AUTHKEY_FILE);
  const base = env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  const fallback = path.join(base, 'fetchq', 'authkey');
  if (fs.existsSync(fallback)) return readKeyFile(fallback);
  throw new FatalError(
    'no authkey given: set FETCHQ_AUTHKEY or FETCHQ_AUTHKEY_FILE, or pass --authkey-file',
    ExitCode.NO_AUTHKEY,
  );
}

/**
 * The contents of the TLS files named in `options` (`ca`, and `cert` with `key`)
 * for tls.connect, or null for a plaintext connection.
 */
export function tlsFiles(options) {
  const { 'tls-ca': ca, 'tls-cert': cert, 'tls-key': key } = options;
  if (Boolean(cert) !== Boolean(key)) throw usageError('--tls-cert and --tls-key go together');
  if (!ca) {
    if (cert) throw usageError('a client certificate needs --tls-ca (or FETCHQ_TLS_CA) too');
    return null;
  }
  const files = { ca: readFile(ca, 'TLS CA file') };
  if (cert) Object.assign(files, { cert: readFile(cert, 'TLS certificate file'), key: readFile(key, 'TLS key file') });
  return files;
}

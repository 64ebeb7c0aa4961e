// Settings from options and the environment, as the Python programs read them:
// a flag beats the environment; the key is never a default and never printed.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { ExitCode, FatalError } from './errors.js';

export const USAGE = `usage: node fetchq-worker.js [options]

Fetch tasks from a fetchq server and send back their results.

options:
  --server HOST:PORT     server address [env: FETCHQ_SERVER; default 127.0.0.1:7439]
  --authkey-file PATH    file holding the key [else $FETCHQ_AUTHKEY, $FETCHQ_AUTHKEY_FILE,
                         then ~/.config/fetchq/authkey]
  --tls-ca FILE          use TLS, trusting a server certificate this CA signed [env: FETCHQ_TLS_CA]
  --tls-cert FILE        client certificate, for a server that asks for one [env: FETCHQ_TLS_CERT]
  --tls-key FILE         the client certificate's private key [env: FETCHQ_TLS_KEY]
  -c, --concurrency N    requests in flight at once (default 16)
  --prefetch N           tasks leased ahead (default: twice the concurrency)
  --burst                exit once the server has no task left
  --grace SECONDS        time running requests get to finish on stop (default 30)
  --call-timeout SECONDS wait for a reply before the server link counts as cut (default 35)
  --follow-redirects     follow redirects instead of reporting the 3xx
  -h, --help             show this and exit`;

const NUMBERS = { '--concurrency': [1, 1000], '-c': [1, 1000], '--prefetch': [0, 100000], '--grace': [0, 86400], '--call-timeout': [1, 3600] };
const VALUES = ['--server', '-s', '--authkey-file', '--tls-ca', '--tls-cert', '--tls-key', ...Object.keys(NUMBERS)];
const FLAGS = ['--burst', '--follow-redirects', '-h', '--help'];

export function parseArgs(argv) {
  const options = {};
  for (let i = 0; i < argv.length; i += 1) {
    let [name, value] = argv[i].includes('=') ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    if (FLAGS.includes(name)) {
      options[name.replace(/^-+/, '')] = true;
      continue;
    }
    if (!VALUES.includes(name)) throw new FatalError(`no such option: ${name}`, ExitCode.USAGE);
    if (value === undefined) {
      i += 1;
      value = argv[i];
      if (value === undefined) throw new FatalError(`${name} needs a value`, ExitCode.USAGE);
    }
    if (NUMBERS[name]) {
      const number = Number(value);
      const [low, high] = NUMBERS[name];
      if (!Number.isFinite(number) || number < low || number > high) {
        throw new FatalError(`invalid value for ${name}: ${value} (from ${low} to ${high})`, ExitCode.USAGE);
      }
      value = number;
    }
    const key = { '-c': 'concurrency', '-s': 'server' }[name] ?? name.replace(/^--/, '');
    options[key] = value;
  }
  return options;
}

export function serverAddress(option, env = process.env) {
  const text = (option || env.FETCHQ_SERVER || '127.0.0.1:7439').trim();
  const [host, port = '7439'] = text.split(':');
  const number = Number(port);
  if (text.split(':').length > 2 || !Number.isInteger(number) || number < 0 || number > 65535) {
    throw new FatalError(`invalid server address ${JSON.stringify(text)}: expected HOST:PORT`, ExitCode.USAGE);
  }
  return { host: host || '127.0.0.1', port: number };
}

function readKeyFile(file) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (error) {
    const why = error.code === 'ENOENT' ? 'does not exist' : `cannot be read (${error.code})`;
    throw new FatalError(`authkey file ${file} ${why}`, ExitCode.USAGE);
  }
  if (data.at(-1) === 0x0a) data = data.subarray(0, data.at(-2) === 0x0d ? -2 : -1);
  if (!data.length) throw new FatalError(`authkey file ${file} is empty`, ExitCode.USAGE);
  return data;
}

/** ``--authkey-file``, then FETCHQ_AUTHKEY, then FETCHQ_AUTHKEY_FILE, then the default file. */
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

/** TLS files for tls.connect, or null for a plaintext connection. */
export function tlsFiles(options, env = process.env) {
  const ca = options['tls-ca'] || env.FETCHQ_TLS_CA;
  const cert = options['tls-cert'] || env.FETCHQ_TLS_CERT;
  const key = options['tls-key'] || env.FETCHQ_TLS_KEY;
  if (Boolean(cert) !== Boolean(key)) throw new FatalError('--tls-cert and --tls-key go together', ExitCode.USAGE);
  if (!ca) {
    if (cert) throw new FatalError('a client certificate needs --tls-ca (or FETCHQ_TLS_CA) too', ExitCode.USAGE);
    return null;
  }
  const read = (file, what) => {
    try {
      return fs.readFileSync(file);
    } catch {
      throw new FatalError(`TLS ${what} file ${file} does not exist`, ExitCode.USAGE);
    }
  };
  const files = { ca: read(ca, 'CA') };
  if (cert) Object.assign(files, { cert: read(cert, 'certificate'), key: read(key, 'key') });
  return files;
}

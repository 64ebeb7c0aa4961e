#!/usr/bin/env node
// fetchq worker for Node.js: lease URL-fetch tasks from a fetchq server, GET them
// with the built-in fetch, send back their results. Standard library only.

import os from 'node:os';

import { USAGE, authkey, parseOptions, serverAddress, tlsFiles } from './lib/config.js';
import { Fetcher } from './lib/fetcher.js';
import { ExitCode, FatalError } from './lib/errors.js';
import { PROTOCOL, VERSION } from './lib/version.js';
import { BrokerLink, Worker } from './lib/worker.js';

const say = (message) => process.stderr.write(`fetchq: ${message}\n`);

async function main(argv) {
  const options = parseOptions(argv);
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return ExitCode.OK;
  }
  const { host, port } = serverAddress(options.server);
  const settings = {
    host,
    port,
    key: authkey(options['authkey-file']),
    tls: tlsFiles(options),
    callTimeoutMs: options['call-timeout'] * 1000,
  };
  const identity = `${os.hostname()}:${process.pid}`;
  const { concurrency } = options;
  const hello = { protocol: PROTOCOL, version: VERSION, worker: identity, threads: concurrency };
  const worker = new Worker({
    makeLink: (name, signal) => new BrokerLink(settings, { name: `node-${name}`, hello, log: say, signal }),
    fetcher: new Fetcher(identity, { followRedirects: options['follow-redirects'] }),
    identity,
    concurrency,
    prefetch: options.prefetch ?? 0,
    burst: options.burst,
    grace: options.grace,
    log: say,
  });
  let signalName = null;
  const onSignal = (name) => {
    if (signalName) {
      // A second signal: stop at once; the leases held lapse on the server.
      process.exit(ExitCode.INTERRUPTED);
    }
    signalName = name;
    worker.stop();
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  say(`worker ${identity} (node ${process.versions.node}): ${concurrency} requests at once, server ${host}:${port}${settings.tls ? ' over TLS' : ''}`);
  const reported = await worker.run();
  say(`worker ${identity}: stopped${signalName ? ` on ${signalName}` : ''} after ${reported} tasks`);
  return ExitCode.OK;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    if (error instanceof FatalError) {
      say(`error: ${error.message}`);
      process.exit(error.exitCode);
    }
    say(`error: ${error?.message ?? error}`);
    process.exit(ExitCode.FAILURE);
  },
);

// A worker's loop (docs/PROTOCOL.md, section 10): lease, fetch at the scheduled
// start, report results in batches, renew held leases in the same call, give
// back what was never started when asked to stop.

import { ExitCode, FatalError, RemoteError, WireError } from './errors.js';
import { Session, createBroker } from './wire.js';

const FLUSH_MS = 50;
const RESULT_BATCH = 500;
const POLL_WAIT = 1.0;
const BACKOFF_START_MS = 200;
const BACKOFF_MAX_MS = 10000;
const NOTICE_EVERY_MS = 10000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

/**
 * A broker session that reconnects: a failed call is retried (every broker call is
 * safe to send twice) until it succeeds, the call is fatal, or ``giveUp()`` says so.
 */
export class BrokerLink {
  constructor(settings, { name, hello, log, giveUp = () => false }) {
    this.settings = settings;
    this.name = name;
    this.hello = hello;
    this.log = log;
    this.giveUp = giveUp;
    this.session = null;
    this.info = null;
    this.clockOffset = 0;
  }

  async connect() {
    const ident = await createBroker(this.settings);
    const session = await Session.open(this.settings, ident, this.name);
    try {
      const sent = Date.now() / 1000;
      const info = await session.call('hello', this.hello);
      const received = Date.now() / 1000;
      if (typeof info.time === 'number') this.clockOffset = info.time - (sent + received) / 2;
      this.info = info;
    } catch (error) {
      session.close();
      if (error instanceof RemoteError && error.remoteName === 'VersionMismatch') {
        throw new FatalError(error.remoteMessage, ExitCode.VERSION_MISMATCH);
      }
      throw error;
    }
    this.session = session;
    return this.info;
  }

  /** ``method(...args)`` on the broker, waiting through outages. */
  async call(method, ...args) {
    let attempt = 0;
    let delay = BACKOFF_START_MS;
    let lastNotice = 0;
    const began = Date.now();
    for (;;) {
      try {
        if (!this.session) await this.connect();
        const result = await this.session.call(method, ...args);
        if (attempt) this.log(`server at ${this.session.connection.where} is back after ${Math.round((Date.now() - began) / 1000)}s and ${attempt} attempts`);
        return result;
      } catch (error) {
        const retry = error instanceof WireError || (error instanceof RemoteError && error.remoteName === 'StorageFailed');
        if (!retry) throw error;
        if (error instanceof WireError) this.drop();
        attempt += 1;
        if (this.giveUp()) throw error;
        if (Date.now() - lastNotice >= NOTICE_EVERY_MS) {
          lastNotice = Date.now();
          this.log(`waiting for server at ${this.settings.host}:${this.settings.port} (attempt ${attempt}): ${error.message}`);
        }
        const pause = delay / 2 + (Math.random() * delay) / 2;
        delay = Math.min(BACKOFF_MAX_MS, delay * 2);
        const until = Date.now() + pause;
        while (Date.now() < until) {
          if (this.giveUp()) throw error;
          await sleep(Math.min(100, until - Date.now()));
        }
      }
    }
  }

  drop() {
    if (this.session) this.session.close();
    this.session = null;
  }
}

export class Worker {
  /**
   * ``links`` makes a BrokerLink (one for leasing, one for reporting); ``fetcher``
   * turns a task into a result.  ``stop`` is set on the first signal.
   */
  constructor({ makeLink, fetcher, identity, concurrency = 16, prefetch = 0, burst = false, grace = 30, log }) {
    this.fetcher = fetcher;
    this.identity = identity;
    this.concurrency = concurrency;
    this.size = prefetch || 2 * concurrency;
    this.burst = burst;
    this.graceMs = grace * 1000;
    this.log = log;
    this.stopping = false;
    this.abandoned = false;
    this.lease = makeLink('lease', () => this.stopping);
    this.report = makeLink('report', () => this.abandoned);
    this.inbox = []; // leased, not started: in scheduled order
    this.outbox = []; // results not yet reported
    this.robotsReports = [];
    this.held = new Map(); // task id -> attempt, until reported
    this.running = new Set();
    this.reported = 0;
    this.failure = null;
    this.wakeStarter = null;
    this.startedAll = false;
  }

  stop() {
    this.stopping = true;
    if (this.wakeStarter) this.wakeStarter();
  }

  /** Run until stopped (or, with ``burst``, until no work is left); resolves with the count reported. */
  async run() {
    try {
      await this.lease.call('queued'); // logs in (hello), waiting for the server if need be
    } catch (error) {
      if (this.stopping && error instanceof WireError) return 0; // stopped while waiting
      throw error;
    }
    const info = this.lease.info;
    const renewEveryMs = Math.max((info.lease_timeout * 1000) / 3, 200);
    const reporter = this.reportLoop(renewEveryMs);
    const starter = this.startLoop();
    try {
      await this.leaseLoop();
    } catch (error) {
      if (!(error instanceof WireError && this.stopping)) {
        this.failure = this.failure || error;
        this.stopping = true;
      }
    }
    await this.shutDown(starter, reporter);
    if (this.failure) throw this.failure;
    return this.reported;
  }

  async leaseLoop() {
    while (!this.stopping) {
      if (this.inbox.length > this.size / 2) {
        await sleep(20);
        continue;
      }
      const want = Math.max(1, this.size - this.inbox.length);
      const tasks = await this.lease.call('lease', this.identity, want, POLL_WAIT);
      if (this.stopping) {
        if (tasks.length) await this.giveBack(tasks);
        return;
      }
      if (!tasks.length) {
        if (this.burst && this.idle() && (await this.lease.call('queued')) === 0) return;
        continue;
      }
      for (const task of tasks) {
        this.held.set(task.id, task.attempt);
        this.inbox.push(task);
      }
      if (this.wakeStarter) this.wakeStarter();
    }
  }

  idle() {
    return this.held.size === 0 && this.inbox.length === 0 && this.running.size === 0;
  }

  /** When a task is due on our clock (ms), or null for at once. */
  dueMs(task) {
    return typeof task.scheduled === 'number' ? (task.scheduled - this.lease.clockOffset) * 1000 : null;
  }

  async startLoop() {
    while (!this.stopping) {
      if (!this.inbox.length || this.running.size >= this.concurrency) {
        await new Promise((resolve) => {
          this.wakeStarter = resolve;
          setTimeout(resolve, 100);
        });
        this.wakeStarter = null;
        continue;
      }
      const task = this.inbox[0];
      const due = this.dueMs(task);
      if (due !== null && due > Date.now()) {
        // Never before its instant; a timer wakes us as close to it as Node can.
        await new Promise((resolve) => {
          this.wakeStarter = resolve;
          setTimeout(resolve, Math.min(due - Date.now(), 1000));
        });
        this.wakeStarter = null;
        continue;
      }
      this.inbox.shift();
      const run = this.runTask(task, due === null ? null : due / 1000);
      this.running.add(run);
      run.finally(() => {
        this.running.delete(run);
        if (this.wakeStarter) this.wakeStarter();
      });
    }
  }

  async runTask(task, scheduled) {
    if (task.kind === 'robots') {
      this.robotsReports.push(await this.fetcher.fetchRobots(task));
    } else {
      this.outbox.push(await this.fetcher.fetch(task, scheduled));
    }
  }

  async reportLoop(renewEveryMs) {
    let nextRenewal = Date.now() + renewEveryMs;
    for (;;) {
      const batch = this.outbox.splice(0, RESULT_BATCH);
      while (this.robotsReports.length) await this.sendRobots(this.robotsReports.shift());
      const renewalDue = Date.now() >= nextRenewal;
      if (batch.length || renewalDue) {
        await this.sendResults(batch, renewalDue);
        if (renewalDue) nextRenewal = Date.now() + renewEveryMs;
      }
      if (batch.length < RESULT_BATCH) {
        if (this.startedAll && !this.outbox.length && !this.robotsReports.length) return;
        await sleep(FLUSH_MS);
      }
    }
  }

  async sendResults(batch, renew) {
    for (const result of batch) this.held.delete(result.id);
    const held = renew ? [...this.held.entries()] : [];
    if (!batch.length && !held.length) return;
    try {
      await this.report.call('complete', this.identity, batch, held);
      this.reported += batch.length;
    } catch (error) {
      if (this.abandoned) return;
      this.log(`worker ${this.identity}: the server refused ${batch.length} results: ${error.message}`);
      if (!(error instanceof WireError) && !this.failure) {
        this.failure = error;
        this.stop();
      }
    }
  }

  async sendRobots(report) {
    this.held.delete(report.id);
    try {
      await this.report.call('robots', this.identity, report);
    } catch (error) {
      if (!this.abandoned) this.log(`worker ${this.identity}: could not report a robots.txt: ${error.message}`);
    }
  }

  async giveBack(tasks) {
    const pairs = tasks.map((task) => [task.id, task.attempt]);
    try {
      await this.report.call('release', this.identity, pairs);
    } catch (error) {
      this.log(`worker ${this.identity}: could not hand back ${tasks.length} tasks (${error.message}); their leases will expire`);
    }
    for (const task of tasks) this.held.delete(task.id);
  }

  /** Hand back what has not started, let what has finish (within the grace), report it all. */
  async shutDown(starter, reporter) {
    const abandon = setTimeout(() => {
      this.abandoned = true;
    }, this.graceMs);
    this.stopping = true;
    if (this.wakeStarter) this.wakeStarter();
    await starter;
    const unstarted = this.inbox.splice(0);
    if (unstarted.length) await this.giveBack(unstarted);
    const grace = sleep(this.graceMs).then(() => 'late');
    if ((await Promise.race([Promise.all([...this.running]), grace])) === 'late') {
      this.log(`worker ${this.identity}: requests still running after the grace period`);
    }
    this.startedAll = true;
    await Promise.race([reporter, grace]);
    this.abandoned = true;
    clearTimeout(abandon);
    this.lease.drop();
    this.report.drop();
  }
}

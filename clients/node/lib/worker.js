// A worker's loop (docs/PROTOCOL.md, section 10): lease, fetch at the scheduled
// start, report results in batches, renew held leases in the same call, give
// back what was never started when asked to stop.

import { setTimeout as delay } from 'node:timers/promises';

import { ExitCode, FatalError, RemoteError, WireError } from './errors.js';
import { SpecBook, unsendable } from './specs.js';
import { Session, createBroker } from './wire.js';

const FLUSH_MS = 50;
const RESULT_BATCH = 500;
const LEASE_WAIT_SECONDS = 1.0;
const BACKOFF_START_MS = 200;
const BACKOFF_MAX_MS = 10000;
const NOTICE_EVERY_MS = 10000;
const MIN_RENEW_EVERY_MS = 200;
const MAX_TIMER_MS = 2 ** 31 - 1; // a longer setTimeout fires at once

/** Wait `ms`, or less when `signal` aborts first; it never rejects. */
async function pause(ms, signal) {
  try {
    await delay(Math.min(Math.max(0, ms), MAX_TIMER_MS), undefined, { signal });
  } catch (error) {
    if (error.name !== 'AbortError') throw error;
  }
}

/**
 * Something one part of the worker waits for and another makes happen. The waiter
 * checks its condition and, if it does not hold yet, awaits `wait()`; whoever may
 * have made it hold calls `wake()`. The check and the wait run in one synchronous
 * step, so no wake falls between them.
 */
export class Wakeup {
  #waiters = new Set();

  /** Resolves at the next `wake()`, or after `timeoutMs` when a deadline is given. */
  wait(timeoutMs = Infinity) {
    return new Promise((resolve) => {
      let timer;
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve();
      };
      if (Number.isFinite(timeoutMs)) timer = setTimeout(done, Math.min(Math.max(0, timeoutMs), MAX_TIMER_MS));
      this.#waiters.add(done);
    });
  }

  /** Resolve every wait now pending. */
  wake() {
    for (const done of [...this.#waiters]) done();
  }
}

/**
 * A broker session that reconnects: a call that fails on the connection (or with
 * StorageFailed) is sent again after a backoff pause (every broker call is safe to
 * send twice), until it succeeds, fails otherwise, or `signal` aborts.
 */
export class BrokerLink {
  /**
   * @param {object} settings what openConnection takes (host, port, key, tls), and callTimeoutMs
   * @param {object} options
   * @param {string} options.name the session's name, which names the server's thread
   * @param {object} options.hello what `hello` sends
   * @param {(line: string) => void} options.log
   * @param {AbortSignal} [options.signal] ends the waiting for the server
   */
  constructor(settings, { name, hello, log, signal }) {
    this.settings = settings;
    this.name = name;
    this.hello = hello;
    this.log = log;
    this.signal = signal;
    this.session = null;
    this.info = null;
    this.clockOffset = 0;
  }

  /** Log in, open a session and say hello; a VersionMismatch reply is a FatalError. */
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

  /** `method(...args)` on the broker, waiting through outages; resolves with its result. */
  async call(method, ...args) {
    let attempt = 0;
    let backoff = BACKOFF_START_MS;
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
        if (this.signal?.aborted) throw error;
        if (Date.now() - lastNotice >= NOTICE_EVERY_MS) {
          lastNotice = Date.now();
          this.log(`waiting for server at ${this.settings.host}:${this.settings.port} (attempt ${attempt}): ${error.message}`);
        }
        // Exponential backoff with jitter; an abort ends the pause at once.
        await pause(backoff / 2 + (Math.random() * backoff) / 2, this.signal);
        backoff = Math.min(BACKOFF_MAX_MS, backoff * 2);
        if (this.signal?.aborted) throw error;
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
   * @param {object} parts
   * @param {(name: string, signal: AbortSignal) => BrokerLink} parts.makeLink makes the
   *   link to lease on (`'lease'`, given the stop signal) and the one to report on
   *   (`'report'`, given the signal that the grace period is over)
   * @param {Fetcher} parts.fetcher turns a task into a result
   * @param {string} parts.identity the worker's name, `hostname:pid`
   * @param {number} parts.concurrency requests run at once
   * @param {number} parts.prefetch tasks leased ahead; 0 for twice the concurrency
   * @param {boolean} parts.burst end once no work is left
   * @param {number} parts.grace seconds running requests get after `stop()`
   * @param {(line: string) => void} parts.log
   */
  constructor({ makeLink, fetcher, identity, concurrency = 16, prefetch = 0, burst = false, grace = 30, log }) {
    this.fetcher = fetcher;
    this.identity = identity;
    this.concurrency = concurrency;
    this.size = prefetch || 2 * concurrency;
    this.burst = burst;
    this.graceMs = grace * 1000;
    this.log = log;
    this.stopper = new AbortController(); // stop(): no more leasing or starting
    this.abandoner = new AbortController(); // the grace period is over: stop waiting for the server
    this.lease = makeLink('lease', this.stopper.signal);
    this.report = makeLink('report', this.abandoner.signal);
    this.specs = new SpecBook((job, keys) => this.lease.call('specs', job, keys));
    this.inbox = []; // leased, not started: in scheduled order
    this.outbox = []; // results not yet reported
    this.robotsReports = [];
    this.held = new Map(); // task id -> attempt, until reported
    this.sending = 0; // reports on their way: a failed attempt's or a robots.txt's queues work
    this.running = new Set();
    this.reported = 0;
    this.failure = null;
    this.startedAll = false; // set once nothing more will start: the reporter ends when empty
    this.taskTaken = new Wakeup(); // the starter took a task: room in the inbox to lease more
    this.startable = new Wakeup(); // tasks came in, or a fetch slot came free
    this.reportable = new Wakeup(); // a first report is waiting, a batch is full, or all has started
    this.stopper.signal.addEventListener('abort', () => {
      this.taskTaken.wake();
      this.startable.wake();
    });
  }

  get stopping() {
    return this.stopper.signal.aborted;
  }

  get abandoned() {
    return this.abandoner.signal.aborted;
  }

  /** Stop leasing and starting tasks; `run()` then hands back the rest and drains. */
  stop() {
    this.stopper.abort();
  }

  /**
   * Run until stopped (or, with `burst`, until no work is left), then drain.
   * Resolves with the number of results reported; rejects with what ended the
   * run otherwise (a FatalError, or a report the server refused).
   */
  async run() {
    try {
      await this.lease.call('queued'); // logs in (hello), waiting for the server if need be
    } catch (error) {
      if (this.stopping && error instanceof WireError) return 0; // stopped while waiting
      throw error;
    }
    const info = this.lease.info;
    const renewEveryMs = Math.max((info.lease_timeout * 1000) / 3, MIN_RENEW_EVERY_MS);
    const reporter = this.reportLoop(renewEveryMs);
    const starter = this.startLoop();
    try {
      await this.leaseLoop();
    } catch (error) {
      if (!(error instanceof WireError && this.stopping)) {
        this.failure = this.failure || error;
        this.stop();
      }
    }
    await this.shutDown(starter, reporter);
    if (this.failure) throw this.failure;
    return this.reported;
  }

  async leaseLoop() {
    while (!this.stopping) {
      if (this.inbox.length > this.size / 2) {
        await this.taskTaken.wait(); // or a stop
        continue;
      }
      const want = Math.max(1, this.size - this.inbox.length);
      const tasks = await this.lease.call('lease', this.identity, want, LEASE_WAIT_SECONDS);
      if (this.stopping) {
        if (tasks.length) await this.giveBack(tasks);
        return;
      }
      if (!tasks.length) {
        if (this.burst && this.idle() && (await this.lease.call('queued')) === 0) return;
        continue;
      }
      for (const task of tasks) this.held.set(task.id, task.attempt);
      for (const task of await this.specs.fill(tasks)) {
        this.outbox.push(unsendable(task, this.identity));
        tasks.splice(tasks.indexOf(task), 1);
      }
      for (const task of tasks) this.inbox.push(task);
      if (this.outbox.length) this.reportable.wake();
      this.startable.wake();
    }
  }

  /** Nothing held, running or on its way to the server: what a burst ends on. */
  idle() {
    return this.held.size === 0 && this.inbox.length === 0 && this.running.size === 0 && this.sending === 0;
  }

  /** When a task is due, in Unix milliseconds on our clock, or null for at once. */
  dueMs(task) {
    return typeof task.scheduled === 'number' ? (task.scheduled - this.lease.clockOffset) * 1000 : null;
  }

  async startLoop() {
    while (!this.stopping) {
      if (!this.inbox.length || this.running.size >= this.concurrency) {
        await this.startable.wait(); // or a stop
        continue;
      }
      const task = this.inbox[0];
      const due = this.dueMs(task);
      if (due !== null && due > Date.now()) {
        // Never before its instant: a timer wakes us as close to it as Node can (or a
        // stop does). Tasks come in scheduled order, so the first is the next due.
        await pause(due - Date.now(), this.stopper.signal);
        continue;
      }
      this.inbox.shift();
      this.taskTaken.wake();
      const run = this.runTask(task, due === null ? null : due / 1000);
      this.running.add(run);
      run.finally(() => {
        this.running.delete(run);
        this.startable.wake();
      });
    }
  }

  async runTask(task, scheduled) {
    if (task.kind === 'robots') {
      this.robotsReports.push(await this.fetcher.fetchRobots(task));
    } else {
      this.outbox.push(await this.fetcher.fetch(task, scheduled));
    }
    // The reporter waits for a first report, then for the flush interval or a full batch.
    if (this.waitingReports() === 1 || this.outbox.length >= RESULT_BATCH) this.reportable.wake();
  }

  waitingReports() {
    return this.outbox.length + this.robotsReports.length;
  }

  /**
   * Send results in batches (up to RESULT_BATCH, FLUSH_MS after the first one
   * came), robots reports as they come, and every `renewEveryMs` renew the leases
   * held; end once everything has started and been reported.
   */
  async reportLoop(renewEveryMs) {
    let nextRenewal = Date.now() + renewEveryMs;
    for (;;) {
      if (!this.waitingReports()) {
        if (this.startedAll) return;
        await this.reportable.wait(nextRenewal - Date.now());
      }
      if (this.waitingReports() && !this.startedAll) {
        const flushAt = Date.now() + FLUSH_MS;
        while (this.outbox.length < RESULT_BATCH && !this.startedAll && Date.now() < flushAt) {
          await this.reportable.wait(flushAt - Date.now());
        }
      }
      const batch = this.outbox.splice(0, RESULT_BATCH);
      while (this.robotsReports.length) await this.sendRobots(this.robotsReports.shift());
      const renewalDue = Date.now() >= nextRenewal;
      if (batch.length || renewalDue) {
        await this.sendResults(batch, renewalDue);
        if (renewalDue) nextRenewal = Date.now() + renewEveryMs;
      }
    }
  }

  async sendResults(batch, renew) {
    for (const result of batch) this.held.delete(result.id);
    const held = renew ? [...this.held.entries()] : [];
    if (!batch.length && !held.length) return;
    this.sending += 1;
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
    } finally {
      this.sending -= 1;
    }
  }

  async sendRobots(report) {
    this.held.delete(report.id);
    this.sending += 1;
    try {
      await this.report.call('robots', this.identity, report);
    } catch (error) {
      if (!this.abandoned) this.log(`worker ${this.identity}: could not report a robots.txt: ${error.message}`);
    } finally {
      this.sending -= 1;
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
    // As the Python worker: the report link waits for the server for at most the
    // grace period, and running requests and the last reports get the grace period
    // from once the unstarted tasks are handed back.
    const giveUp = setTimeout(() => this.abandoner.abort(), this.graceMs);
    this.stop();
    await starter;
    const unstarted = this.inbox.splice(0);
    if (unstarted.length) await this.giveBack(unstarted);
    const graceTimer = new AbortController();
    const graceOver = pause(this.graceMs, graceTimer.signal).then(() => 'late');
    if ((await Promise.race([Promise.all([...this.running]), graceOver])) === 'late') {
      this.log(`worker ${this.identity}: requests still running after the grace period`);
    }
    this.startedAll = true;
    this.reportable.wake();
    await Promise.race([reporter, graceOver]);
    graceTimer.abort();
    clearTimeout(giveUp);
    this.abandoner.abort();
    this.lease.drop();
    this.report.drop();
  }
}

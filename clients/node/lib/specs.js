// The specs a worker has met (docs/PROTOCOL.md, section 8, Specs): a task names its spec
// by a key; each is asked of the server once (`specs`) and kept ready to send.

import { outgoing } from './fetcher.js';

const KEPT = 256; // specs kept; the least recently met goes first
const ASK_AT_ONCE = 32; // keys per `specs` call: the server's limit

export class SpecBook {
  /** @param {(job: string, keys: string[]) => Promise<object[]>} ask the `specs` call */
  constructor(ask) {
    this.ask = ask;
    this.kept = new Map();
  }

  /**
   * Give every task that names a spec the spec itself, asking for those not met yet.
   * Resolves with the tasks whose spec the server no longer has.
   */
  async fill(tasks) {
    const missing = new Map();
    for (const task of tasks) {
      if (typeof task.spec === 'string' && !this.kept.has(task.spec)) {
        if (!missing.has(task.job)) missing.set(task.job, new Set());
        missing.get(task.job).add(task.spec);
      }
    }
    for (const [job, keys] of missing) {
      const wanted = [...keys].sort();
      for (let start = 0; start < wanted.length; start += ASK_AT_ONCE) {
        for (const record of await this.ask(job, wanted.slice(start, start + ASK_AT_ONCE))) {
          if (typeof record?.key === 'string') this.kept.set(record.key, outgoing(record));
        }
      }
    }
    const lost = [];
    for (const task of tasks) {
      if (typeof task.spec !== 'string') continue;
      const found = this.kept.get(task.spec);
      if (found === undefined) {
        lost.push(task);
        continue;
      }
      this.kept.delete(task.spec); // to the end: most recently met
      this.kept.set(task.spec, found);
      task.spec = found;
    }
    while (this.kept.size > KEPT) this.kept.delete(this.kept.keys().next().value);
    return lost;
  }
}

/** The result of a task whose spec the server no longer has: a failure, at once. */
export function unsendable(task, worker) {
  return {
    v: 1,
    id: task.id,
    job: task.job,
    url: task.url,
    ok: false,
    status: null,
    elapsed: 0,
    bytes: 0,
    error: { type: 'spec', message: `the server has no spec ${task.spec} for this job` },
    attempt: task.attempt ?? 1,
    worker,
    started: Date.now() / 1000,
    scheduled: null,
    retry_after: null,
  };
}

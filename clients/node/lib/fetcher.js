// One request with Node's built-in fetch, and its result record (docs/PROTOCOL.md,
// section 8): the same fields and error types as the Python worker, where Node
// can tell them apart. A task that names a spec (section 8) is sent with its
// method, headers and body; any other is a GET.

import { VERSION } from './version.js';

export const USER_AGENT = `fetchq/${VERSION}`;
export const ROBOTS_MAX_BYTES = 512 * 1024;
const MAX_MESSAGE = 200;
const RETRY_AFTER_STATUSES = [429, 503];

const short = (text) => {
  const flat = String(text).split(/\s+/).join(' ').trim();
  return flat.length <= MAX_MESSAGE ? flat : `${flat.slice(0, MAX_MESSAGE - 3)}...`;
};

/** `error` and every error it wraps (its `cause` chain), outermost first. */
function chain(error) {
  const seen = [];
  for (let current = error; current && seen.length < 16 && !seen.includes(current); current = current.cause) {
    seen.push(current);
  }
  return seen;
}

const TLS_CODES = /^(ERR_TLS_|ERR_SSL_|CERT_|DEPTH_ZERO|SELF_SIGNED|UNABLE_TO_|ERR_OSSL_|EPROTO$)/;

/** `[type, message]` for a failed fetch; pass `timedOut` when our own deadline fired, and the `timeout` it had. */
export function classify(error, { timedOut = false, timeout = 30 } = {}) {
  const errors = chain(error);
  const codes = errors.map((e) => String(e?.code ?? ''));
  const text = errors.map((e) => String(e?.message ?? '')).join(' | ');
  const has = (...names) => codes.some((code) => names.includes(code));
  if (timedOut || errors.some((e) => e?.name === 'TimeoutError' || e?.name === 'AbortError')) {
    return ['timeout', `total timeout of ${timeout}s exceeded`];
  }
  if (has('ERR_INVALID_URL') || /Failed to parse URL|Invalid URL|unknown scheme|not supported/i.test(text)) {
    return ['invalid_url', short(text)];
  }
  if (/redirect count exceeded/i.test(text)) return ['too_many_redirects', 'too many redirects'];
  if (codes.some((code) => TLS_CODES.test(code)) || /certificate|SSL routines|wrong version number/i.test(text)) {
    return ['tls', short(`TLS error: ${errors.at(-1)?.message ?? text}`)];
  }
  if (has('ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EAI_NODATA')) return ['dns', short(`name resolution failed: ${errors.at(-1).message}`)];
  if (has('ECONNREFUSED')) return ['refused', 'connection refused'];
  if (has('UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT')) return ['connect_timeout', 'connect timed out'];
  if (has('ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'ECONNABORTED') || /other side closed|terminated/i.test(text)) {
    return ['reset', short(`connection broken: ${errors.at(-1)?.message ?? 'closed'}`)];
  }
  if (codes.some((code) => code.startsWith('HPE_')) || has('UND_ERR_HEADERS_OVERFLOW', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_INFO')) {
    return ['protocol', short(`malformed HTTP answer: ${errors.at(-1)?.message ?? text}`)];
  }
  if (codes.some((code) => /^E[A-Z]+$/.test(code))) return ['connection', short(`connection failed: ${errors.at(-1).message}`)];
  return ['internal', short(`${error?.name ?? 'Error'}: ${text}`)];
}

/** Seconds a Retry-After header asks for (delta-seconds or an HTTP date), or null. */
export function retryAfterSeconds(value, nowMs = Date.now()) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  if (!/GMT|UTC|[+-]\d{4}$/.test(trimmed)) return null; // a date with no zone is no HTTP date
  const when = Date.parse(trimmed);
  if (Number.isNaN(when)) return null;
  return Math.max(0, (when - nowMs) / 1000);
}

const taskTimeout = (task) => (Number.isFinite(task.timeout) && task.timeout > 0 ? task.timeout : 30);

/**
 * A spec record from the server (`{key, method, headers, body}`, the body in base64)
 * as `fetch` takes it: a name given twice is sent once, its values joined by commas,
 * and the spec's headers win over ours.
 */
export function outgoing(spec) {
  const headers = new Headers({ 'user-agent': USER_AGENT, 'accept-encoding': 'identity' });
  const own = new Set();
  for (const [name, value] of spec.headers ?? []) {
    if (own.has(name.toLowerCase())) headers.append(name, value);
    else headers.set(name, value);
    own.add(name.toLowerCase());
  }
  const body = Buffer.from(spec.body ?? '', 'base64');
  return { method: spec.method ?? 'GET', headers, body: body.length ? body : undefined };
}

const PLAIN = { method: 'GET', headers: { 'user-agent': USER_AGENT, 'accept-encoding': 'identity' } };

/**
 * Send `spec` (an `outgoing`; a GET when none) to `url` within `timeout` seconds:
 * `{status, bytes, retryAfter, body, error}`, with `error` as `[type, message]` or null.
 * With `keep`, at most that many body bytes are read, and kept as `body`. Redirects
 * followed are fetch's own: a 303, and a 301 or 302 to a POST, become a GET.
 */
async function get(url, { timeout, followRedirects, keep = 0, spec = PLAIN }) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeout * 1000);
  const answer = { status: null, bytes: 0, retryAfter: null, body: null, error: null };
  const kept = [];
  let keptBytes = 0;
  try {
    const response = await fetch(url, {
      method: spec.method,
      redirect: followRedirects ? 'follow' : 'manual',
      signal: controller.signal,
      // As sent: ask for no compression, so the bytes counted are the bytes that came.
      headers: spec.headers,
      body: spec.body,
    });
    answer.status = response.status;
    if (RETRY_AFTER_STATUSES.includes(response.status)) {
      answer.retryAfter = retryAfterSeconds(response.headers.get('retry-after'));
    }
    if (response.body) {
      for await (const chunk of response.body) {
        answer.bytes += chunk.length;
        if (keep && keptBytes < keep) {
          const part = chunk.subarray(0, keep - keptBytes);
          kept.push(part);
          keptBytes += part.length;
          if (keptBytes >= keep) {
            controller.abort(); // enough of it: the rest is not read
            break;
          }
        }
      }
    }
  } catch (error) {
    answer.error = classify(error, { timedOut, timeout });
  } finally {
    clearTimeout(timer);
  }
  if (keep) answer.body = Buffer.concat(kept);
  return answer;
}

export class Fetcher {
  constructor(worker, { followRedirects = false } = {}) {
    this.worker = worker;
    this.followRedirects = followRedirects;
  }

  /** The result record of one attempt at `task`; `scheduled` is when it was due, in Unix seconds on our clock. */
  async fetch(task, scheduled = null) {
    const t0 = performance.now();
    const started = (performance.timeOrigin + t0) / 1000;
    const timeout = taskTimeout(task);
    let answer;
    if (typeof task.url !== 'string') {
      answer = { status: null, bytes: 0, retryAfter: null, error: ['invalid_url', 'the task has no URL'] };
    } else {
      const spec = task.spec && typeof task.spec === 'object' ? task.spec : PLAIN;
      answer = await get(task.url, { timeout, followRedirects: this.followRedirects, spec });
    }
    const error = answer.error ? { type: answer.error[0], message: answer.error[1] } : null;
    return {
      v: 1,
      id: task.id,
      job: task.job,
      url: task.url,
      ok: error === null && answer.status !== null && answer.status >= 200 && answer.status < 400,
      status: answer.status,
      elapsed: (performance.now() - t0) / 1000,
      bytes: answer.bytes,
      error,
      attempt: task.attempt ?? 1,
      worker: this.worker,
      started,
      scheduled,
      retry_after: answer.retryAfter,
    };
  }

  /** Fetch a task of kind `robots`: the report the `robots` method takes. */
  async fetchRobots(task) {
    const answer = await get(task.url, { timeout: taskTimeout(task), followRedirects: true, keep: ROBOTS_MAX_BYTES });
    const failed = answer.error && answer.status === null;
    return {
      id: task.id,
      attempt: task.attempt ?? 1,
      job: task.job,
      host: task.host ?? null,
      status: answer.status,
      body: failed ? null : new TextDecoder('utf-8').decode(answer.body),
      error: answer.error && !(answer.body?.length >= ROBOTS_MAX_BYTES) ? { type: answer.error[0], message: answer.error[1] } : null,
    };
  }
}

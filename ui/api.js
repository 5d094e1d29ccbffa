// The daemon's API from the browser: every call signed here (./sign.js) with the keypair the operator signed in
// with. The secret key is used for HMACs only; it is never put in a request, a URL or a log.

import { API_VERSION, signRequest } from './sign.js';

const CONTENT_TYPE = 'application/json';
/** Reads answer quickly; a command may wait behind others in its agent's queue. */
const READ_TIMEOUT_MS = 30_000;
const COMMAND_TIMEOUT_MS = 10 * 60_000;

/** A failed call: the daemon's problem document (`error_code`, `title`, `msg`, `detail`, ...) and the status. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.msg || problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.code = problem.error_code || null;
  }

  /** `error_code: message`, as the page shows it. */
  describe() {
    const code = this.code || (this.status ? `HTTP ${this.status}` : 'network error');
    return `${code}: ${this.message}`;
  }
}

/** Agent ids are `A-Z a-z 0-9 - _ . : @`; all of them may stand in a path as they are. */
export function agentPath(id) {
  return encodeURIComponent(id).replace(/%3A/gi, ':').replace(/%40/g, '@');
}

export class Api {
  #accessKey;
  #secretKey;

  constructor(accessKey, secretKey) {
    this.#accessKey = accessKey;
    this.#secretKey = secretKey;
  }

  get accessKey() {
    return this.#accessKey;
  }

  get(path) {
    return this.request('GET', path, READ_TIMEOUT_MS);
  }

  post(path) {
    return this.request('POST', path, COMMAND_TIMEOUT_MS);
  }

  /** Sends a signed request and returns the decoded JSON answer; throws an ApiError for anything but 2xx. */
  async request(method, path, timeoutMs) {
    // Sign exactly the request target the browser will send (the URL parser normalises it first).
    const url = new URL(path, location.origin);
    const relUrl = url.pathname + url.search;
    const { date, authorization } = await signRequest(this.#accessKey, this.#secretKey, {
      method,
      relUrl,
      host: location.host,
      contentType: CONTENT_TYPE,
      apiVersion: API_VERSION,
    });
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    let res;
    let text;
    try {
      res = await fetch(relUrl, {
        method,
        headers: {
          'Content-Type': CONTENT_TYPE,
          'X-BackendAI-Version': API_VERSION,
          'X-BackendAI-Date': date,
          Authorization: authorization,
        },
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
        referrerPolicy: 'no-referrer',
        signal: abort.signal,
      });
      text = await res.text();
    } catch (e) {
      const timedOut = abort.signal.aborted;
      throw new ApiError(0, {
        error_code: timedOut ? 'client_timeout' : 'network_error',
        title: 'The daemon did not answer.',
        msg: timedOut ? `no answer within ${Math.round(timeoutMs / 1000)} s` : `${e.message || e}`,
      });
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!res.ok) {
      const problem = data && typeof data === 'object' ? data : { title: res.statusText, msg: text.slice(0, 500) };
      throw new ApiError(res.status, problem);
    }
    return data;
  }
}

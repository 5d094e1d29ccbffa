// Backend.AI keypair request signing (HMAC-SHA256) in the browser, with WebCrypto: the same recipe as the official
// client 23.09 and as crates/protocol/src/signing.rs, which verifies it on the daemon's side. Its golden vectors are
// checked against this module in a real Chromium by tests/dashboard.rs.
//
//   signing string = METHOD \n request-target \n date \n host:<host> \n content-type:<mimetype>
//                    \n x-backendai-version:<version> \n sha256("")
//   key            = HMAC(HMAC(secret, "YYYYMMDD" of the date as written), host)
//   Authorization: BackendAI signMethod=HMAC-SHA256, credential=<access key>:<hex signature>
//
// A browser may not set `Date` or `Host`: the date goes in `X-BackendAI-Date` (which the daemon reads when `Date` is
// absent, like Backend.AI's manager) and the host signed is `location.host`, which is what the browser sends.

export const API_VERSION = 'v7.20230615';
export const SIGN_METHOD = 'HMAC-SHA256';
/** Hex SHA-256 of the empty body: the body is never signed, as in Backend.AI. */
export const EMPTY_BODY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

const utf8 = new TextEncoder();

function bytes(value) {
  return typeof value === 'string' ? utf8.encode(value) : value;
}

/** Lower-case hex of a byte array. */
export function hex(data) {
  return Array.from(data, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Whether this page may use WebCrypto (only in a secure context: HTTPS, or http://127.0.0.1 / localhost). */
export function available() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle && globalThis.isSecureContext);
}

/** HMAC-SHA256 of `message` under `key` (strings are UTF-8). */
export async function hmac(key, message) {
  const k = await crypto.subtle.importKey('raw', bytes(key), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await crypto.subtle.sign('HMAC', k, bytes(message)));
}

/** `YYYYMMDD`: the calendar day as written in the date (its own offset, not UTC), as the server derives it. */
export function signingDay(date) {
  const m = /^\s*(\d{4})-(\d{2})-(\d{2})[T ]/.exec(date);
  if (!m) throw new Error(`the date ${JSON.stringify(date)} is not an ISO-8601 timestamp`);
  return m[1] + m[2] + m[3];
}

/** `HMAC(HMAC(secret, day), host)`. */
export async function signingKey(secretKey, day, host) {
  return hmac(await hmac(secretKey, day), host);
}

// The server changes case of ASCII letters only.
const asciiUpper = (s) => s.replace(/[a-z]+/g, (c) => c.toUpperCase());
const asciiLower = (s) => s.replace(/[A-Z]+/g, (c) => c.toLowerCase());

/** The seven signed lines, joined by `\n` (no trailing newline). */
export function signingString({ method, relUrl, date, host, contentType, apiVersion }) {
  return [
    asciiUpper(method),
    relUrl,
    date,
    `host:${host}`,
    `content-type:${asciiLower(contentType)}`,
    `x-backendai-version:${apiVersion}`,
    EMPTY_BODY_SHA256,
  ].join('\n');
}

/** The lower-case hex signature of `input` ({method, relUrl, date, host, contentType, apiVersion}). */
export async function sign(secretKey, input) {
  const key = await signingKey(secretKey, signingDay(input.date), input.host);
  return hex(await hmac(key, signingString(input)));
}

/** The date as the official client writes it (Python's `isoformat()` in UTC): microseconds unless zero. */
export function formatDate(now) {
  const base = now.toISOString().slice(0, 19);
  const ms = now.getUTCMilliseconds();
  return ms === 0 ? `${base}+00:00` : `${base}.${String(ms).padStart(3, '0')}000+00:00`;
}

export function authorizationHeader(accessKey, signature) {
  return `BackendAI signMethod=${SIGN_METHOD}, credential=${accessKey}:${signature}`;
}

/**
 * The date and Authorization header for a request made at `now`: `req` is {method, relUrl (path and query exactly
 * as sent), host, contentType (the mimetype sent), apiVersion}.
 */
export async function signRequest(accessKey, secretKey, req, now = new Date()) {
  const date = formatDate(now);
  const signature = await sign(secretKey, { ...req, date });
  return { date, authorization: authorizationHeader(accessKey, signature) };
}

// How numbers and times are shown. Resource slots arrive as decimal strings (`"4"`, `"0.5"`,
// `"68719476736"`): they are shown exactly as given, never through a float, and memory in GiB computed with BigInt
// (a value that does not come out exact at two decimals is marked `≈`, its exact bytes in the tooltip).

const GIB = 1n << 30n;

/** A plain decimal string as [digits as BigInt, digits after the point], or null. */
export function parseDecimal(text) {
  const m = /^(\d+)(?:\.(\d+))?$/.exec(String(text ?? '').trim());
  if (!m) return null;
  const frac = m[2] || '';
  return [BigInt(m[1] + frac), frac.length];
}

/** Whether a slot counts bytes (`mem`, `cuda.mem`, ...). */
export function isMemorySlot(name) {
  return name === 'mem' || name.endsWith('.mem') || name.endsWith('_mem');
}

/** `x` (a non-negative BigInt count of 1/100) as `12.34`, trailing zeros dropped. */
function hundredths(x) {
  const whole = x / 100n;
  const frac = (x % 100n).toString().padStart(2, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : `${whole}`;
}

/** Bytes (a decimal string) in GiB with at most two decimals: {text, exact}. */
export function gib(text) {
  const d = parseDecimal(text);
  if (!d) return { text: String(text), exact: false };
  const [digits, scale] = d;
  const denominator = GIB * 10n ** BigInt(scale);
  const scaled = digits * 100n;
  const q = (scaled + denominator / 2n) / denominator;
  return { text: hundredths(q), exact: q * denominator === scaled };
}

/** One slot amount as shown: the decimal string itself, memory in GiB. */
export function slotAmount(name, text) {
  if (text === undefined || text === null) return { text: '0', exact: true };
  if (isMemorySlot(name)) return gib(text);
  return { text: String(text), exact: true };
}

/** `occupied / available` as a fraction for a meter (a float is fine for a bar's length). */
export function ratio(occupied, available) {
  const o = Number(occupied ?? 0);
  const a = Number(available ?? 0);
  if (!(a > 0)) return o > 0 ? 1 : 0;
  return Math.min(1, Math.max(0, o / a));
}

/** Slot names of both maps: cpu and mem first, then the rest by name. */
export function slotNames(available, occupied) {
  const names = new Set([...Object.keys(available || {}), ...Object.keys(occupied || {})]);
  const first = ['cpu', 'mem'].filter((n) => names.has(n));
  const rest = [...names].filter((n) => !first.includes(n)).sort();
  return [...first, ...rest];
}

/** `3 s ago`, `5 min ago`, `2 h ago`, or the date for older times. */
export function ago(iso, now = Date.now()) {
  if (!iso) return '—';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return String(iso);
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(t).toISOString().slice(0, 10);
}

/** A timestamp for a tooltip or a log line, in the browser's time zone. */
export function when(iso) {
  if (!iso) return '';
  const t = Date.parse(iso);
  return Number.isNaN(t) ? String(iso) : new Date(t).toLocaleString();
}

/** Milliseconds as `850 ms` or `1.2 s`. */
export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

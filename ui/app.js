// The dashboard: sign-in, the agent table (polled), the agent panel with its commands and audit trail, and the
// cluster actions. Everything is built with DOM calls (never innerHTML with data), so nothing an agent or a watcher
// reports can become markup.
//
// Live updates are polling: `GET /v1/agents` every POLL_MS reads the observations the daemon's own probe loop keeps
// fresh (`watcher.probe_interval_s`), so a browser costs the watchers nothing; "Refresh now" asks every watcher at
// once (`refresh=true`). See docs/dashboard.md.

import { Api, ApiError, agentPath } from './api.js';
import { available as cryptoAvailable } from './sign.js';
import { ago, duration, ratio, slotAmount, slotNames, when } from './format.js';

const POLL_MS = 3000;
const EVENTS_PAGE = 20;
const STORE_ACCESS = 'agent-supervisor.access-key';
const STORE_SECRET = 'agent-supervisor.secret-key';
const STATUS_ORDER = { ALIVE: 0, RESTARTING: 1, LOST: 2, TERMINATED: 3 };
const VERBS = {
  start: { label: 'Start', doing: 'Starting', done: 'started' },
  stop: { label: 'Stop', doing: 'Stopping', done: 'stopped' },
  restart: { label: 'Restart', doing: 'Restarting', done: 'restarted' },
  sync: { label: 'Sync', doing: 'Syncing', done: 'synced' },
};

const $ = (id) => document.getElementById(id);

/** `h('td', {class: 'x', 'data-k': 1}, child, 'text', ...)`: an element; text children become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const state = {
  api: null,
  agents: [],
  loadedAt: null,
  pollTimer: null,
  polling: false,
  pollError: null,
  sort: { key: 'id', dir: 1 },
  /** id → {verb, startedAt}: commands this page sent and awaits. */
  pending: new Map(),
  /** id → {verb, ok, text, error, seq}: the last result of a command this page sent. */
  results: new Map(),
  /** Commands sent from this page so far (each result carries its number). */
  seq: 0,
  /** Rolling restarts started from this page so far. */
  runs: 0,
  /** id → ISO time the watcher was last reachable, as seen by this page. */
  lastSeen: new Map(),
  panel: null,
  rolling: null,
};

// ---------------------------------------------------------------------------------------------------------------
// Sign-in and sign-out

function storedKeys() {
  const accessKey = sessionStorage.getItem(STORE_ACCESS);
  const secretKey = sessionStorage.getItem(STORE_SECRET);
  return accessKey && secretKey ? { accessKey, secretKey } : null;
}

function showSignIn(message) {
  $('dashboard').hidden = true;
  $('session').hidden = true;
  $('sign-in').hidden = false;
  const err = $('sign-in-error');
  err.hidden = !message;
  err.replaceChildren(...(message ? [message] : []));
  $('access-key').focus();
}

/** An error as the page shows it: the daemon's `error_code` and message, its title after. */
function problemNode(e) {
  if (e instanceof ApiError) {
    const p = e.problem || {};
    return h(
      'span',
      {},
      h('strong', { class: 'code' }, e.code || `HTTP ${e.status}`),
      ': ',
      h('span', { class: 'msg' }, e.message),
      p.title && p.title !== e.message ? h('span', { class: 'title' }, ` (${p.title})`) : null,
    );
  }
  return h('span', {}, String(e && e.message ? e.message : e));
}

async function signIn(accessKey, secretKey) {
  const api = new Api(accessKey, secretKey);
  const who = await api.get('/v1/whoami');
  if (!who.is_superadmin) {
    throw new Error(
      `${who.access_key} is not a superadmin keypair; the dashboard lists and commands agents, which needs one.`,
    );
  }
  sessionStorage.setItem(STORE_ACCESS, accessKey);
  sessionStorage.setItem(STORE_SECRET, secretKey);
  state.api = api;
  $('whoami').textContent = who.access_key;
  $('session').hidden = false;
  $('sign-in').hidden = true;
  $('dashboard').hidden = false;
  $('secret-key').value = '';
  await poll(false);
  $('main').focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

function signOut() {
  sessionStorage.removeItem(STORE_ACCESS);
  sessionStorage.removeItem(STORE_SECRET);
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
  state.api = null;
  state.agents = [];
  state.pending.clear();
  state.results.clear();
  state.lastSeen.clear();
  state.panel = null;
  if (state.rolling) state.rolling.stopRequested = true;
  state.rolling = null;
  for (const d of document.querySelectorAll('dialog[open]')) d.close('cancel');
  $('agents-body').replaceChildren();
  $('recalc-report').replaceChildren();
  $('recalc-status').replaceChildren();
  $('rolling-run').hidden = true;
  $('access-key').value = '';
  $('secret-key').value = '';
  $('whoami').textContent = '';
  showSignIn(null);
}

// ---------------------------------------------------------------------------------------------------------------
// Polling

async function poll(refresh) {
  if (!state.api || state.polling) return;
  // A hidden tab does not poll; it catches up when shown again (see `wire`).
  if (document.hidden && !refresh) {
    clearTimeout(state.pollTimer);
    state.pollTimer = null;
    return;
  }
  state.polling = true;
  clearTimeout(state.pollTimer);
  const api = state.api;
  if (refresh) $('updated').textContent = 'Asking every watcher…';
  try {
    const list = await api.get(refresh ? '/v1/agents?refresh=true' : '/v1/agents');
    if (api !== state.api) return;
    state.agents = list.agents || [];
    state.loadedAt = new Date();
    state.pollError = null;
    for (const a of state.agents) {
      const w = a.supervision && a.supervision.watcher;
      if (w && w.reachable && w.agent_status) state.lastSeen.set(a.id, w.at);
    }
  } catch (e) {
    if (api !== state.api) return;
    state.pollError = e;
  } finally {
    state.polling = false;
  }
  render();
  if (state.pollError instanceof ApiError && [401, 403].includes(state.pollError.status)) {
    // The keypair no longer works (deactivated, or its privilege taken): polling on would only repeat that.
    return;
  }
  state.pollTimer = setTimeout(() => poll(false), POLL_MS);
}

// ---------------------------------------------------------------------------------------------------------------
// Deriving what a row shows

function watcherOf(agent) {
  return (agent.supervision && agent.supervision.watcher) || null;
}

/** The watcher column: `active`, `inactive`, `failed`, `unreachable`, an error code, or `unknown` (not asked yet). */
function watcherState(agent) {
  const w = watcherOf(agent);
  if (!w) return { word: 'unknown', down: false, detail: 'not asked yet' };
  if (w.agent_status) return { word: w.agent_status, down: false, detail: null };
  if (!w.reachable) return { word: 'unreachable', down: true, detail: w.error };
  const code = /^([a-z_]+):/.exec(w.error || '');
  return { word: code ? code[1].replace(/_/g, ' ') : 'error', down: true, detail: w.error };
}

function commandOf(agent) {
  const s = agent.supervision || {};
  const mine = state.pending.get(agent.id);
  return { inFlight: s.in_flight || (mine && mine.verb) || null, queued: s.queued || 0, mine };
}

/** The agent's latest finished command (the actor keeps its recent outcomes newest first). */
function recentOf(agent) {
  const recent = (agent.supervision && agent.supervision.recent) || [];
  return recent.length ? recent[0] : null;
}

function busy(agent) {
  const c = commandOf(agent);
  return Boolean(c.inFlight || c.queued || c.mine);
}

function cpuUse(agent) {
  return ratio((agent.occupied_slots || {}).cpu, (agent.available_slots || {}).cpu);
}

const SORT_KEYS = {
  id: (a) => a.id,
  status: (a) => STATUS_ORDER[a.status] ?? 9,
  group: (a) => a.scaling_group,
  slots: (a) => cpuUse(a),
  watcher: (a) => watcherState(a).word,
  seen: (a) => state.lastSeen.get(a.id) || '',
  command: (a) => (busy(a) ? 0 : 1) * 1000 - commandOf(a).queued,
  outcome: (a) => (recentOf(a) ? recentOf(a).finished_at : ''),
};

function compare(a, b) {
  const key = SORT_KEYS[state.sort.key] || SORT_KEYS.id;
  const x = key(a);
  const y = key(b);
  const c = x < y ? -1 : x > y ? 1 : 0;
  return (c || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)) * state.sort.dir;
}

function matches(agent) {
  const text = $('filter-text').value.trim().toLowerCase();
  const group = $('filter-group').value;
  const status = $('filter-status').value;
  if (group && agent.scaling_group !== group) return false;
  if (status === 'watcher-down' && !watcherState(agent).down) return false;
  if (status === 'busy' && !busy(agent)) return false;
  if (status && !['watcher-down', 'busy'].includes(status) && agent.status !== status) return false;
  if (!text) return true;
  const hay = [agent.id, agent.addr, agent.status, agent.scaling_group, agent.region, watcherState(agent).word]
    .join(' ')
    .toLowerCase();
  return hay.includes(text);
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

function slotsCell(agent) {
  const avail = agent.available_slots || {};
  const occ = agent.occupied_slots || {};
  const names = slotNames(avail, occ);
  if (!names.length) return h('span', { class: 'muted' }, 'none');
  return h(
    'div',
    { class: 'slots' },
    names.map((name) => {
      const o = slotAmount(name, occ[name] ?? '0');
      const a = slotAmount(name, avail[name] ?? '0');
      const unit = name === 'mem' || name.endsWith('.mem') ? ' GiB' : '';
      const exact = o.exact && a.exact;
      const text = `${exact ? '' : '≈ '}${o.text} / ${a.text}${unit}`;
      const r = ratio(occ[name], avail[name]);
      const tip = `${name}: ${occ[name] ?? '0'} of ${avail[name] ?? '0'} occupied`;
      return h(
        'div',
        { class: 'slot', 'data-slot': name, title: tip },
        h('span', { class: 'slot-name' }, name),
        h('meter', { min: 0, max: 1, low: 0.7, high: 0.9, optimum: 0, value: r, 'aria-label': `${name} ${text}` }),
        h('span', { class: 'slot-value' }, text),
      );
    }),
  );
}

function statusBadge(status) {
  return h('span', { class: `badge status-${String(status).toLowerCase()}` }, status);
}

function watcherCell(agent) {
  const ws = watcherState(agent);
  const w = watcherOf(agent);
  return h(
    'div',
    { title: ws.detail || '' },
    h('span', { class: `badge watcher-${ws.word.replace(/\s+/g, '-')}` }, ws.word),
    // The latency of an answer; a refused connection or a missing address has none worth showing.
    w && w.agent_status ? h('span', { class: 'muted small' }, ` ${w.latency_ms} ms`) : null,
  );
}

function commandCell(agent) {
  const c = commandOf(agent);
  const parts = [];
  if (c.inFlight) parts.push(h('span', { class: 'badge busy' }, `${c.inFlight} in flight`));
  if (c.queued) parts.push(h('span', { class: 'muted small' }, ` +${c.queued} queued`));
  if (!parts.length) parts.push(h('span', { class: 'muted' }, 'idle'));
  return h('div', {}, parts);
}

function outcomeCell(agent) {
  const mine = state.results.get(agent.id);
  const r = recentOf(agent);
  if (!r && !mine) return h('span', { class: 'muted' }, '—');
  if (r) {
    return h(
      'div',
      { title: `${r.command} by ${r.requester}, ${when(r.finished_at)}` },
      h('span', { class: `badge outcome-${r.outcome}` }, `${r.command} ${r.outcome}`),
      h('div', { class: 'muted small' }, `${r.http_status} · ${ago(r.finished_at)}`),
    );
  }
  return h('span', { class: `badge outcome-${mine.ok ? 'succeeded' : 'failed'}` }, `${mine.verb} ${mine.ok ? 'ok' : 'failed'}`);
}

function seenCell(agent) {
  const seen = state.lastSeen.get(agent.id);
  const w = watcherOf(agent);
  if (seen) return h('span', { title: when(seen) }, ago(seen));
  if (w) return h('span', { class: 'muted', title: `asked ${when(w.at)}` }, 'not seen');
  return h('span', { class: 'muted' }, '—');
}

function row(agent) {
  const label = (text) => ({ 'data-label': text });
  return h(
    'tr',
    { 'data-agent-id': agent.id, class: busy(agent) ? 'is-busy' : null },
    h(
      'th',
      { scope: 'row', class: 'col-id', ...label('Agent') },
      h(
        'div',
        {},
        h('button', { type: 'button', class: 'link', 'aria-haspopup': 'dialog', onclick: () => openPanel(agent.id) }, agent.id),
        h('div', { class: 'muted small' }, agent.addr),
      ),
    ),
    h('td', { class: 'col-status', ...label('Status') }, statusBadge(agent.status)),
    h('td', { class: 'col-group', ...label('Scaling group') }, agent.scaling_group),
    h('td', { class: 'col-slots', ...label('Slots') }, slotsCell(agent)),
    h('td', { class: 'col-watcher', ...label('Watcher') }, watcherCell(agent)),
    h('td', { class: 'col-seen', ...label('Last seen') }, seenCell(agent)),
    h('td', { class: 'col-command', ...label('Command') }, commandCell(agent)),
    h('td', { class: 'col-outcome', ...label('Recent outcome') }, outcomeCell(agent)),
  );
}

/**
 * Puts `fresh` rows (keyed by data-agent-id) into `tbody`, replacing only the cells whose markup changed, so that a
 * poll does not swap the button under a click that is under way, nor the one that has the focus.
 */
function patchRows(tbody, fresh) {
  const existing = new Map([...tbody.children].map((tr) => [tr.dataset.agentId, tr]));
  let previous = null;
  for (const next of fresh) {
    let tr = existing.get(next.dataset.agentId);
    if (tr) {
      existing.delete(next.dataset.agentId);
      tr.className = next.className;
      [...next.children].forEach((cell, i) => {
        const old = tr.children[i];
        if (!old) tr.append(cell);
        else if (old.outerHTML !== cell.outerHTML) old.replaceWith(cell);
      });
    } else {
      tr = next;
    }
    const slot = previous ? previous.nextSibling : tbody.firstChild;
    if (slot !== tr) tbody.insertBefore(tr, slot);
    previous = tr;
  }
  for (const gone of existing.values()) gone.remove();
}

function fillSelect(select, values, keepFirst) {
  const current = select.value;
  const opts = values.map((v) => h('option', { value: v }, v));
  select.replaceChildren(...(keepFirst ? [select.options[0]] : []), ...opts);
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function render() {
  const agents = state.agents;
  const groups = [...new Set(agents.map((a) => a.scaling_group))].sort();
  fillSelect($('filter-group'), groups, true);
  if (!state.rolling || !state.rolling.running) fillSelect($('rolling-group'), groups, false);

  $('count-total').textContent = agents.length;
  $('count-alive').textContent = agents.filter((a) => a.status === 'ALIVE').length;
  $('count-lost').textContent = agents.filter((a) => a.status === 'LOST').length;
  $('count-watcher-down').textContent = agents.filter((a) => watcherState(a).down).length;
  $('count-busy').textContent = agents.filter(busy).length;

  const shown = agents.filter(matches).sort(compare);
  const focused = document.activeElement;
  const focusedRow = focused && focused.closest('#agents-body tr[data-agent-id]');
  patchRows($('agents-body'), shown.map(row));
  // A cell that changed is a new element: keep the keyboard focus on the agent it was on.
  if (focusedRow && !document.contains(focused)) {
    const again = document.querySelector(`#agents-body tr[data-agent-id="${CSS.escape(focusedRow.dataset.agentId)}"] button`);
    if (again) again.focus();
  }
  $('no-agents').hidden = shown.length > 0 || agents.length === 0;
  $('shown').textContent = `${shown.length} of ${agents.length} shown`;
  for (const th of document.querySelectorAll('#agents th[data-sort]')) {
    const on = th.dataset.sort === state.sort.key;
    if (on) th.setAttribute('aria-sort', state.sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }

  const banner = $('banner');
  if (state.pollError) {
    banner.hidden = false;
    banner.replaceChildren('Could not update the agents: ', problemNode(state.pollError));
  } else {
    banner.hidden = true;
    banner.replaceChildren();
  }
  $('updated').textContent = state.loadedAt
    ? `Updated ${state.loadedAt.toLocaleTimeString()}${state.pollError ? ' (last attempt failed)' : ''}`
    : 'Not loaded yet';
  if (state.panel) renderPanel();
}

// ---------------------------------------------------------------------------------------------------------------
// Confirmations

let confirmResolve = null;
let confirmQueue = Promise.resolve();

/**
 * A modal question; resolves true when confirmed. `check` (a label) must be ticked before confirming. Questions
 * asked while one is open wait for it.
 */
function confirmDialog(question) {
  const asked = confirmQueue.then(() => ask(question));
  confirmQueue = asked.catch(() => false);
  return asked;
}

function ask({ title, text, confirmLabel, danger = false, check = null }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  const ok = $('confirm-ok');
  ok.textContent = confirmLabel;
  ok.className = danger ? 'danger' : 'primary';
  const box = $('confirm-check-box');
  box.checked = false;
  $('confirm-check').hidden = !check;
  $('confirm-check-label').textContent = check || '';
  ok.disabled = Boolean(check);
  dialog.returnValue = '';
  dialog.showModal();
  (check ? box : ok).focus();
  return new Promise((resolve) => {
    confirmResolve = resolve;
  });
}

function onConfirmClosed() {
  const resolve = confirmResolve;
  confirmResolve = null;
  if (resolve) resolve($('confirm').returnValue === 'ok');
}

// ---------------------------------------------------------------------------------------------------------------
// Agent commands

function findAgent(id) {
  return state.agents.find((a) => a.id === id) || null;
}

function confirmText(verb, id) {
  switch (verb) {
    case 'start':
      return `The watcher starts the agent service on ${id}.`;
    case 'stop':
      return `The watcher stops the agent service on ${id}. If kernels still run on it, you will be asked again.`;
    case 'restart':
      return `The watcher restarts the agent service on ${id} (a stopped agent is started).`;
    default:
      return `The daemon tells ${id} which kernels the database believes it runs (over the agent's RPC).`;
  }
}

async function askAndRun(id, verb) {
  const v = VERBS[verb];
  const ok = await confirmDialog({
    title: `${v.label} ${id}?`,
    text: confirmText(verb, id),
    confirmLabel: v.label,
    danger: verb === 'stop',
  });
  if (ok) await runCommand(id, verb, false);
}

function commandPath(id, verb, force) {
  return `/v1/agents/${agentPath(id)}/${verb}${force ? '?force=true' : ''}`;
}

function successText(verb, r) {
  if (verb === 'sync') {
    const sent = r.rpc_sent ? `sent ${r.kernels_sent} kernel(s) to the agent` : 'no kernels to send: nothing sent';
    const warnings = (r.warnings || []).length ? `; warnings: ${r.warnings.join('; ')}` : '';
    return `sync done: ${sent}${warnings}`;
  }
  return `${verb} succeeded in ${duration(r.elapsed_ms)} (event ${r.event_id}); watcher said ${JSON.stringify(r.result)}`;
}

/** Sends one command; a stop refused for running kernels asks for an explicit force. Returns the result kept. */
async function runCommand(id, verb, force) {
  state.seq += 1;
  const seq = state.seq;
  state.pending.set(id, { verb, startedAt: Date.now(), force });
  state.results.delete(id);
  render();
  // The buttons are disabled now: keep the keyboard focus on the command's progress, not on a dead button.
  if (state.panel && state.panel.id === id) $('panel-command').focus();
  let result;
  try {
    const r = await state.api.post(commandPath(id, verb, force));
    result = { verb, ok: true, text: successText(verb, r), seq };
  } catch (e) {
    if (verb === 'stop' && !force && e instanceof ApiError && e.code === 'agent_has_running_kernels') {
      state.pending.delete(id);
      render();
      const n = e.problem.kernel_count;
      const kernels = `${n} running kernel${n === 1 ? '' : 's'}`;
      const forced = await confirmDialog({
        title: `${id} has ${kernels}`,
        text:
          `The daemon refused the stop (agent_has_running_kernels): ${e.message}. ` +
          `A forced stop leaves the sessions of those kernels without a running agent.`,
        confirmLabel: 'Force stop',
        danger: true,
        check: `Force: stop ${id} with ${kernels}`,
      });
      if (forced) return runCommand(id, 'stop', true);
      result = { verb, ok: false, error: e, text: `stop not sent: ${kernels} still run (force declined)`, seq };
    } else {
      result = { verb, ok: false, error: e, seq };
    }
  } finally {
    if (state.pending.get(id) && state.pending.get(id).verb === verb) state.pending.delete(id);
  }
  state.results.set(id, result);
  render();
  if (state.panel && state.panel.id === id) {
    loadEvents(id, null);
    if (verb !== 'sync') loadWatcher(id);
  }
  poll(false);
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// The agent panel

function openPanel(id) {
  state.panel = { id, events: [], before: null, nextBefore: null, watcher: null, watcherError: null, eventsError: null };
  renderPanel();
  const dialog = $('panel');
  if (!dialog.open) dialog.showModal();
  $('panel-title').focus();
  loadWatcher(id);
  loadEvents(id, null);
}

async function loadWatcher(id) {
  const p = state.panel;
  if (!p || p.id !== id) return;
  $('panel-watcher-meta').textContent = 'Asking the watcher…';
  try {
    const r = await state.api.get(`/v1/agents/${agentPath(id)}/watcher`);
    if (state.panel !== p) return;
    p.watcher = r;
    p.watcherError = null;
  } catch (e) {
    if (state.panel !== p) return;
    p.watcherError = e;
  }
  renderPanel();
}

async function loadEvents(id, before) {
  const p = state.panel;
  if (!p || p.id !== id) return;
  const q = `limit=${EVENTS_PAGE}${before ? `&before=${before}` : ''}`;
  try {
    const r = await state.api.get(`/v1/agents/${agentPath(id)}/events?${q}`);
    if (state.panel !== p) return;
    p.events = r.events || [];
    p.before = before;
    p.nextBefore = p.events.length === EVENTS_PAGE ? p.events[p.events.length - 1].id : null;
    p.eventsError = null;
  } catch (e) {
    if (state.panel !== p) return;
    p.eventsError = e;
  }
  renderPanel();
}

function fact(term, ...value) {
  return [h('dt', {}, term), h('dd', {}, ...value)];
}

function detailText(detail) {
  if (detail === null || detail === undefined) return '';
  if (typeof detail === 'object' && Object.keys(detail).length === 0) return '';
  const s = typeof detail === 'string' ? detail : JSON.stringify(detail);
  return s.length > 240 ? `${s.slice(0, 240)}…` : s;
}

function commandStatus(agent, id) {
  const mine = state.pending.get(id);
  const result = state.results.get(id);
  const c = agent ? commandOf(agent) : { inFlight: null, queued: 0 };
  if (mine) {
    const v = VERBS[mine.verb];
    const secs = ((Date.now() - mine.startedAt) / 1000).toFixed(0);
    return h(
      'div',
      { class: 'running' },
      h('progress', { 'aria-label': `${v.doing} ${id}` }),
      ` ${v.doing} ${id}${mine.force ? ' (force)' : ''}… ${secs} s`,
      c.queued ? ` (${c.queued} more queued)` : '',
    );
  }
  if (c.inFlight) {
    return h('div', { class: 'running' }, h('progress', { 'aria-label': `${c.inFlight} in flight` }), ` ${c.inFlight} in flight (sent by someone else)`);
  }
  if (!result) return null;
  if (result.ok) return h('div', { class: 'result ok', 'data-outcome': 'ok', 'data-seq': result.seq }, result.text);
  const e = result.error;
  const p = (e && e.problem) || {};
  return h(
    'div',
    { class: 'result failed', 'data-outcome': 'failed', 'data-seq': result.seq, 'data-error-code': (e && e.code) || '' },
    h('strong', {}, `${VERBS[result.verb].label} failed`),
    result.text ? h('p', {}, result.text) : null,
    e ? h('p', {}, problemNode(e)) : null,
    p.kernel_count !== undefined ? h('p', {}, `kernel_count: ${p.kernel_count}`) : null,
  );
}

function renderPanel() {
  const p = state.panel;
  if (!p) return;
  const agent = findAgent(p.id);
  $('panel-title').textContent = `Agent ${p.id}`;
  $('panel-title').setAttribute('tabindex', '-1');

  const facts = [];
  if (agent) {
    const ws = watcherState(agent);
    const w = watcherOf(agent);
    const r = recentOf(agent);
    facts.push(
      ...fact('Status', statusBadge(agent.status), agent.lost_at ? ` since ${when(agent.lost_at)}` : ''),
      ...fact('Scaling group', agent.scaling_group),
      ...fact('Address', agent.addr, agent.region ? ` (${agent.region})` : ''),
      ...fact('Version', `${agent.version} · ${agent.architecture}${agent.schedulable ? '' : ' · not schedulable'}`),
      ...fact('Slots', slotsCell(agent)),
      ...fact('Watcher', watcherCell(agent), ws.detail ? h('div', { class: 'muted small' }, ws.detail) : null),
      ...fact('Last seen', seenCell(agent), w ? h('span', { class: 'muted small' }, ` (asked ${ago(w.at)})`) : null),
      ...fact('Command', commandCell(agent)),
      ...fact(
        'Recent commands',
        r
          ? h(
              'ul',
              { class: 'recent' },
              agent.supervision.recent.map((o) =>
                h(
                  'li',
                  {},
                  h('span', { class: `badge outcome-${o.outcome}` }, `${o.command} ${o.outcome}`),
                  ` ${o.http_status} · ${duration(o.elapsed_ms)} · ${o.requester} · ${ago(o.finished_at)}`,
                ),
              ),
            )
          : '—',
      ),
    );
  } else {
    facts.push(...fact('Agent', 'not in the latest listing'));
  }
  $('panel-facts').replaceChildren(...facts);

  const disabled = !agent || busy(agent);
  for (const b of $('panel-actions').querySelectorAll('button')) b.disabled = disabled;
  const status = commandStatus(agent, p.id);
  $('panel-command').replaceChildren(...(status ? [status] : []));
  $('panel-command').dataset.seq = state.seq;

  if (p.watcherError) {
    $('panel-watcher-meta').replaceChildren(problemNode(p.watcherError));
    $('panel-watcher-json').textContent = JSON.stringify(p.watcherError.problem, null, 2);
  } else if (p.watcher) {
    $('panel-watcher-meta').textContent = `Answered in ${p.watcher.latency_ms} ms`;
    $('panel-watcher-json').textContent = JSON.stringify(p.watcher.watcher, null, 2);
  }

  const events = p.events.map((e) =>
    h(
      'tr',
      { 'data-event-id': e.id },
      h('td', {}, e.id),
      h('td', {}, e.action),
      h('td', {}, h('span', { class: `badge outcome-${e.outcome}` }, e.outcome)),
      h('td', {}, e.http_status ?? ''),
      h('td', { title: e.requested_at }, when(e.requested_at)),
      h('td', { class: 'small' }, e.requester),
      h('td', { class: 'detail small' }, detailText(e.detail)),
    ),
  );
  $('events-body').replaceChildren(...events);
  if (p.eventsError) $('events-meta').replaceChildren(problemNode(p.eventsError));
  else if (!p.events.length) $('events-meta').textContent = p.before ? 'No older events.' : 'No events yet.';
  else
    $('events-meta').textContent = `Events ${p.events[0].id} to ${p.events[p.events.length - 1].id}${p.before ? ` (older than ${p.before})` : ' (newest)'}`;
  const focused = document.activeElement;
  $('events-older').disabled = !p.nextBefore;
  $('events-newest').disabled = !p.before;
  // A paging button that just got disabled would drop the keyboard focus: hand it to the other one.
  if (focused && focused.disabled && ['events-older', 'events-newest'].includes(focused.id)) {
    const other = $(focused.id === 'events-older' ? 'events-newest' : 'events-older');
    (other.disabled ? $('events-meta') : other).focus();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Recalculate Usage

function reportList(label, key, items, describe) {
  return [
    h('dt', {}, label),
    h(
      'dd',
      { 'data-report': key, 'data-count': items.length },
      h('span', { class: 'n' }, items.length),
      items.length ? h('ul', { class: 'report-list' }, items.map((i) => h('li', {}, describe(i)))) : null,
    ),
  ];
}

async function recalculate() {
  const button = $('recalc');
  button.disabled = true;
  $('recalc-status').textContent = 'Recalculating…';
  try {
    const r = await state.api.post('/v1/usage/recalculate');
    $('recalc-status').textContent = `Run ${r.run} finished in ${duration(r.elapsed_ms)} (${r.attempts} attempt${r.attempts === 1 ? '' : 's'}).`;
    $('recalc-report').replaceChildren(
      h(
        'dl',
        { class: 'facts report' },
        h('dt', {}, 'Agents'),
        h('dd', { 'data-report': 'total' }, r.agents_total),
        ...reportList('Updated', 'updated', r.agents_updated || [], (id) => id),
        ...reportList('Reset', 'reset', r.agents_reset || [], (id) => id),
        ...reportList('Skipped', 'skipped', r.agents_skipped || [], (s) => `${s.agent_id} (${s.status}): ${s.reason}`),
        h('dt', {}, 'Access keys'),
        h('dd', { 'data-report': 'access-keys' }, `${r.access_keys_updated} updated, ${r.access_keys_reset} reset to 0`),
        r.concurrency_error ? h('dt', {}, 'Concurrency') : null,
        r.concurrency_error ? h('dd', { class: 'problem' }, `not written: ${r.concurrency_error}`) : null,
      ),
    );
  } catch (e) {
    $('recalc-status').replaceChildren(h('span', { class: 'problem' }, 'Recalculation failed: ', problemNode(e)));
  } finally {
    button.disabled = false;
  }
  poll(false);
}

// ---------------------------------------------------------------------------------------------------------------
// Rolling restart of a scaling group, client-side (as `agentctl restart --scaling-group G --max-parallel N`)

function renderRolling() {
  const run = state.rolling;
  if (!run) return;
  $('rolling-run').hidden = false;
  const done = run.ok + run.failed;
  const progress = $('rolling-progress');
  progress.max = Math.max(1, run.ids.length);
  progress.value = done;
  const running = run.ids.filter((id) => run.items.get(id).state === 'running').length;
  $('rolling-run').dataset.run = run.number;
  $('rolling-run').dataset.running = run.running;
  let summary = `${done} of ${run.ids.length} done in ${run.group}: ${run.ok} restarted, ${run.failed} failed`;
  if (running) summary += `, ${running} running`;
  if (!run.running) {
    summary += run.notRun ? `, ${run.notRun} not run (stopped)` : '';
    summary += run.stopRequested ? '. Stopped.' : '. Finished.';
  } else if (run.stopRequested) {
    summary += '; stopping after those running…';
  }
  $('rolling-summary').textContent = summary;
  $('rolling-results').replaceChildren(
    ...run.ids.map((id) => {
      const it = run.items.get(id);
      return h('li', { 'data-agent-id': id, 'data-state': it.state }, h('strong', {}, id), ` — ${it.text}`);
    }),
  );
  $('rolling-start').disabled = run.running;
  $('rolling-stop').disabled = !run.running || run.stopRequested;
  $('rolling-group').disabled = run.running;
  $('rolling-parallel').disabled = run.running;
}

async function rollingRestart(group, maxParallel) {
  let ids;
  try {
    const list = await state.api.get(`/v1/agents?scaling_group=${encodeURIComponent(group)}`);
    ids = (list.agents || []).map((a) => a.id);
  } catch (e) {
    $('rolling-run').hidden = false;
    $('rolling-summary').replaceChildren(h('span', { class: 'problem' }, problemNode(e)));
    return;
  }
  if (!ids.length) {
    $('rolling-run').hidden = false;
    $('rolling-summary').textContent = `Scaling group ${group} has no agents.`;
    return;
  }
  const ok = await confirmDialog({
    title: `Restart ${ids.length} agent${ids.length === 1 ? '' : 's'} of ${group}?`,
    text: `Each agent's watcher restarts its agent service, at most ${maxParallel} at a time: ${ids.join(', ')}.`,
    confirmLabel: 'Restart group',
    danger: true,
  });
  if (!ok) return;
  state.runs += 1;
  const run = {
    number: state.runs,
    group,
    ids,
    items: new Map(ids.map((id) => [id, { state: 'waiting', text: 'waiting' }])),
    ok: 0,
    failed: 0,
    notRun: 0,
    running: true,
    stopRequested: false,
  };
  state.rolling = run;
  const queue = [...ids];
  renderRolling();
  const worker = async () => {
    while (queue.length && !run.stopRequested && state.rolling === run) {
      const id = queue.shift();
      const item = run.items.get(id);
      item.state = 'running';
      item.text = 'restarting…';
      renderRolling();
      const started = Date.now();
      state.seq += 1;
      const seq = state.seq;
      state.pending.set(id, { verb: 'restart', startedAt: started });
      render();
      try {
        const r = await state.api.post(commandPath(id, 'restart', false));
        item.state = 'ok';
        item.text = `restarted in ${duration(r.elapsed_ms)} (event ${r.event_id})`;
        run.ok += 1;
        state.results.set(id, { verb: 'restart', ok: true, text: successText('restart', r), seq });
      } catch (e) {
        item.state = 'failed';
        item.text = e instanceof ApiError ? `failed: ${e.describe()}` : `failed: ${e.message || e}`;
        run.failed += 1;
        state.results.set(id, { verb: 'restart', ok: false, error: e, seq });
      } finally {
        state.pending.delete(id);
      }
      renderRolling();
      render();
    }
  };
  await Promise.all(Array.from({ length: Math.min(maxParallel, ids.length) }, worker));
  for (const id of queue) {
    const item = run.items.get(id);
    item.state = 'not-run';
    item.text = 'not run: stopped before its turn';
    run.notRun += 1;
  }
  run.running = false;
  renderRolling();
  poll(false);
}

// ---------------------------------------------------------------------------------------------------------------
// Wiring

function wire() {
  $('sign-in-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const accessKey = $('access-key').value.trim();
    const secretKey = $('secret-key').value.trim();
    const err = $('sign-in-error');
    if (!accessKey || !secretKey) {
      err.hidden = false;
      err.textContent = 'Enter the access key and the secret key.';
      return;
    }
    $('sign-in-button').disabled = true;
    err.hidden = true;
    try {
      await signIn(accessKey, secretKey);
    } catch (e) {
      err.hidden = false;
      err.replaceChildren('Sign-in failed: ', problemNode(e));
      $('secret-key').focus();
    } finally {
      $('sign-in-button').disabled = false;
    }
  });
  $('sign-out').addEventListener('click', signOut);
  $('refresh-now').addEventListener('click', () => poll(true));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.api && !state.pollTimer && !state.polling) poll(false);
  });
  $('filters').addEventListener('submit', (ev) => ev.preventDefault());
  for (const id of ['filter-text', 'filter-group', 'filter-status']) $(id).addEventListener('input', render);
  for (const th of document.querySelectorAll('#agents th[data-sort]')) {
    th.querySelector('button').addEventListener('click', () => {
      const key = th.dataset.sort;
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      render();
    });
  }
  $('confirm').addEventListener('close', onConfirmClosed);
  $('confirm-check-box').addEventListener('change', (ev) => {
    $('confirm-ok').disabled = !ev.target.checked;
  });
  $('panel-close').addEventListener('click', () => $('panel').close());
  $('panel').addEventListener('close', () => {
    const id = state.panel && state.panel.id;
    state.panel = null;
    const opener = id && document.querySelector(`#agents-body tr[data-agent-id="${CSS.escape(id)}"] button`);
    if (opener) opener.focus();
  });
  $('panel-actions').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-command]');
    if (b && state.panel && !b.disabled) askAndRun(state.panel.id, b.dataset.command);
  });
  $('panel-watcher-reload').addEventListener('click', () => state.panel && loadWatcher(state.panel.id));
  $('events-older').addEventListener('click', () => state.panel && loadEvents(state.panel.id, state.panel.nextBefore));
  $('events-newest').addEventListener('click', () => state.panel && loadEvents(state.panel.id, null));
  $('recalc').addEventListener('click', recalculate);
  $('rolling-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const group = $('rolling-group').value;
    const n = Number.parseInt($('rolling-parallel').value, 10);
    if (!group || !(n >= 1)) return;
    rollingRestart(group, Math.min(n, 64));
  });
  $('rolling-stop').addEventListener('click', () => {
    if (state.rolling && state.rolling.running) {
      state.rolling.stopRequested = true;
      renderRolling();
    }
  });
  // Elapsed times and "n s ago" move on between polls.
  setInterval(() => {
    if (state.api && state.pending.size && state.panel) renderPanel();
  }, 1000);
}

async function start() {
  wire();
  if (!cryptoAvailable()) {
    showSignIn(
      'This page is not a secure context, so the browser withholds WebCrypto and requests cannot be signed. ' +
        'Open the dashboard over HTTPS (a TLS proxy in front of the daemon) or through an SSH tunnel to ' +
        'http://127.0.0.1.',
    );
    $('sign-in-button').disabled = true;
    return;
  }
  const keys = storedKeys();
  if (!keys) {
    showSignIn(null);
    return;
  }
  $('access-key').value = keys.accessKey;
  try {
    await signIn(keys.accessKey, keys.secretKey);
  } catch (e) {
    sessionStorage.removeItem(STORE_SECRET);
    showSignIn(h('span', {}, 'Signed out: ', problemNode(e)));
  }
}

start();

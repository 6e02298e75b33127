// dockfra dashboard: plain ES2020 module, no build step, no dependencies. Served at /assets/app.js.
const TOKEN_KEY = 'dockfra.token';
const STATES = ['healthy', 'deploying', 'failed', 'unreachable', 'never_deployed'];
const STATE_LABEL = {
  healthy: 'Healthy', deploying: 'Deploying', failed: 'Failed',
  unreachable: 'Unreachable', never_deployed: 'Never deployed',
};
const FINAL = new Set(['succeeded', 'failed', 'refused', 'superseded', 'interrupted', 'exported', 'timeout']);
const GOOD = new Set(['succeeded', 'exported']);

const $main = document.getElementById('main');
const $error = document.getElementById('error');
const $session = document.getElementById('session');
const $who = document.getElementById('who');
const $live = document.getElementById('live');

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let view = null; // {cleanup(), onFleetEvent(ev), refresh()}

// ---------- small helpers ----------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'testid') el.dataset.testid = v;
      else if (k === 'fkey') el.dataset.fkey = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  add(el, kids);
  return el;
}
const sp = (cls, ...kids) => h('span', { class: cls }, ...kids);
function put(el, ...kids) { el.replaceChildren(); return add(el, kids); }
function add(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false || k === '') continue;
    el.append(k instanceof Node ? k : String(k));
  }
  return el;
}
const enc = encodeURIComponent;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const dash = (v) => (v === null || v === undefined || v === '' ? '—' : String(v));
const pad = (n, w = 2) => String(n).padStart(w, '0');
function debounce(fn, ms) {
  let t = null;
  const d = () => { clearTimeout(t); t = setTimeout(() => { t = null; fn(); }, ms); };
  d.cancel = () => clearTimeout(t);
  return d;
}
function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return '—';
  let x = Number(n);
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (Math.abs(x) >= 1024 && i < u.length - 1) { x /= 1024; i++; }
  return (i === 0 ? String(x) : x.toFixed(Math.abs(x) < 10 ? 1 : 0)) + ' ' + u[i];
}
function fmtDuration(ms) {
  if (ms === null || ms === undefined || ms === '') return '—';
  ms = Number(ms);
  if (ms < 1000) return ms + ' ms';
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
  const s = Math.round(ms / 1000);
  return Math.floor(s / 60) + ' min ' + pad(s % 60) + ' s';
}
// Whole seconds (times the coordinator stores in unix seconds): "0 s", "42 s", "3 min 05 s".
function fmtSeconds(s) {
  s = Math.max(0, Math.round(Number(s) || 0));
  return s < 60 ? s + ' s' : Math.floor(s / 60) + ' min ' + pad(s % 60) + ' s';
}
function fmtTime(unix) {
  if (!unix) return '—';
  const d = new Date(unix * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtClock(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function relTime(unix) {
  if (!unix) return 'never';
  const s = Math.round(Date.now() / 1000 - unix);
  if (s < 2) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}
function relEl(unix) {
  return h('time', { 'data-rel': unix || 0, datetime: unix ? new Date(unix * 1000).toISOString() : null, title: unix ? fmtTime(unix) : null }, relTime(unix));
}
function fmtAny(v) {
  if (v === null || v === undefined || v === '') return '—';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'object') {
    const parts = Object.entries(v).filter(([, x]) => x !== null && x !== '' && x !== undefined);
    return parts.length ? parts.map(([k, x]) => `${k}: ${typeof x === 'object' ? JSON.stringify(x) : x}`).join(', ') : '—';
  }
  return String(v);
}
const shortId = (id) => { const m = /^[df]-\d+-([0-9a-f]+)$/.exec(String(id)); return m ? m[1].slice(0, 8) : String(id); };
const stateLabel = (s) => STATE_LABEL[s] || dash(s);
function stateEl(s, id, big) {
  return h('span', { class: 'state' },
    h('span', { class: 'dot' + (big ? ' dot-lg' : ''), 'data-state': s || 'unknown', testid: id ? 'dot-' + id : null, 'aria-hidden': 'true' }),
    h('span', { class: 'state-text', 'data-state': s || 'unknown' }, stateLabel(s)));
}
function statusBadge(status) {
  const cls = GOOD.has(status) ? 'ok' : FINAL.has(status) ? 'bad' : 'info';
  return h('span', { class: 'badge ' + cls }, dash(status));
}
function labelChips(labels) {
  const e = Object.entries(labels || {});
  if (!e.length) return sp('muted', '—');
  return sp('chips', e.sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => h('span', { class: 'chip', title: `${k}=${v}` }, k, '=', h('b', null, v))));
}
function relCell(name, version) {
  if (!name) return sp('muted', '—');
  return sp('rel', sp('mono', name), version ? sp('v', version) : null);
}
// Fleet deploys: their status and their targets' (planned | deploying | succeeded | failed | pending | skipped | rolled_back).
const FD_ORDER = ['succeeded', 'failed', 'deploying', 'pending', 'rolled_back', 'skipped', 'planned'];
const FD_CLASS = { running: 'info', succeeded: 'ok', failed: 'bad', deploying: 'info', pending: 'warn', rolled_back: 'warn', cancelled: 'grey' };
const fdLabel = (s) => (s ? String(s).replace(/_/g, ' ') : '—');
function fdBadge(s) { return h('span', { class: 'badge ' + (FD_CLASS[s] || ''), 'data-status': s || '' }, fdLabel(s)); }
function fdDot(s, big) { return h('span', { class: 'dot' + (big ? ' dot-lg' : ''), 'data-state': s || 'unknown', 'aria-hidden': 'true' }); }
function fdCounts(counts) {
  const c = counts || {};
  const keys = [...FD_ORDER, ...Object.keys(c).filter((k) => !FD_ORDER.includes(k))].filter((k) => c[k]);
  if (!keys.length) return sp('muted', '—');
  return sp('fd-counts', keys.map((k) => h('span', { class: 'fd-count', 'data-status': k }, fdDot(k), `${c[k]} ${fdLabel(k)}`)));
}
// A cancelled fleet deploy whose targets are still moving: orders given run on, the rest becomes skipped.
const unsettled = (f) => !!f && f.status === 'cancelled' && (f.targets || []).some((t) => t.status === 'planned' || t.status === 'deploying');
const watching = (f) => !f || f.status === 'running' || unsettled(f);
const fdWave = (f) => (f.waves ? `${Math.min((f.wave || 0) + 1, f.waves)}/${f.waves}` : '—');

// Re-render a region while keeping keyboard focus on the "same" control (data-fkey).
function keepFocus(container, fn) {
  const a = document.activeElement;
  const key = a && container.contains(a) && a.dataset ? a.dataset.fkey : null;
  fn();
  if (key) {
    const n = container.querySelector(`[data-fkey="${CSS.escape(key)}"]`);
    if (n) n.focus({ preventScroll: true });
  }
}

// ---------- errors ----------
function showError(msg) {
  put($error, 
    sp('msg', msg),
    h('button', { type: 'button', class: 'btn btn-ghost btn-sm', 'aria-label': 'Dismiss error', onclick: () => { clearError(); $main.focus(); } }, 'Dismiss'));
}
function clearError() { put($error); }
function report(e) {
  if (!e || e.name === 'AbortError' || e.status === 401) return;
  showError(e.message || String(e));
}

// ---------- API ----------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}
async function send(path, init) {
  try {
    return await fetch(path, Object.assign({ cache: 'no-store', credentials: 'omit' }, init));
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Cannot reach the coordinator (' + e.message + ').');
  }
}
async function api(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  const tok = opts.token !== undefined ? opts.token : token;
  if (tok) headers.Authorization = 'Bearer ' + tok;
  let payload;
  if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
  const r = await send(path, { method, headers, body: payload, signal: opts.signal });
  const text = await r.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch (_) { data = null; } }
  if (!r.ok) {
    const msg = (data && typeof data.message === 'string' && data.message) || `HTTP ${r.status} ${r.statusText || ''}`.trim();
    const err = new ApiError(r.status, (data && data.code) || '', msg);
    if (r.status === 401 && !opts.login) onUnauthorized(msg);
    throw err;
  }
  return data;
}

// Server-sent events over fetch(), so the Authorization header can be sent.
async function readSSE(url, { signal, onOpen, onMessage }) {
  const r = await send(url, { headers: { Accept: 'text/event-stream', Authorization: 'Bearer ' + token }, signal });
  if (!r.ok) {
    let msg = '';
    try { msg = (await r.json()).message || ''; } catch (_) { /* not JSON */ }
    const err = new ApiError(r.status, '', msg || 'HTTP ' + r.status);
    if (r.status === 401) onUnauthorized(err.message);
    throw err;
  }
  if (!r.body) throw new ApiError(0, 'stream', 'This browser cannot read streams.');
  if (onOpen) onOpen();
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  let ev = '';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) onMessage(ev || 'message', data.join('\n'));
          ev = '';
          data = [];
          continue;
        }
        if (line[0] === ':') continue; // keep-alive comment
        const c = line.indexOf(':');
        const field = c < 0 ? line : line.slice(0, c);
        let val = c < 0 ? '' : line.slice(c + 1);
        if (val[0] === ' ') val = val.slice(1);
        if (field === 'event') ev = val;
        else if (field === 'data') data.push(val);
      }
    }
  } finally {
    try { reader.releaseLock(); } catch (_) { /* already released */ }
  }
}
function parseJSON(s) { try { return JSON.parse(s); } catch (_) { return null; } }

// ---------- fleet-wide event stream ----------
const fleet = { on: false, ctrl: null, timer: null, backoff: 1000, opened: false };
function setLive(state, text) { $live.dataset.live = state; $live.textContent = text; }
function startFleetStream() {
  if (fleet.on) return;
  fleet.on = true;
  fleet.opened = false;
  connectFleet();
}
async function connectFleet() {
  const ctrl = new AbortController();
  fleet.ctrl = ctrl;
  try {
    await readSSE('/api/stream', {
      signal: ctrl.signal,
      onOpen: () => {
        setLive('on', 'Live');
        fleet.backoff = 1000;
        if (fleet.opened && view && view.refresh) view.refresh(); // may have missed events
        fleet.opened = true;
      },
      onMessage: (name, data) => {
        if (name === 'lagged') { if (view && view.refresh) view.refresh(); return; }
        if (name !== 'progress') return;
        const ev = parseJSON(data);
        if (ev && view && view.onFleetEvent) view.onFleetEvent(ev);
      },
    });
  } catch (e) {
    if (ctrl.signal.aborted || e.status === 401) return;
  }
  if (!fleet.on || ctrl.signal.aborted) return;
  setLive('retry', 'Reconnecting…');
  const wait = fleet.backoff;
  fleet.backoff = Math.min(wait * 2, 30000);
  fleet.timer = setTimeout(connectFleet, wait + Math.random() * 300);
}
function stopFleetStream() {
  fleet.on = false;
  clearTimeout(fleet.timer);
  if (fleet.ctrl) fleet.ctrl.abort();
  setLive('off', 'Offline');
}

// ---------- session ----------
function setSession(op) {
  $session.hidden = !token;
  put($who, op ? add(h('span'), ['Signed in as ', h('b', null, op)]) : '');
}
function leaveView() {
  if (view && view.cleanup) view.cleanup();
  view = null;
}
function signOut(message) {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  stopFleetStream();
  leaveView();
  setSession('');
  renderLogin();
  if (message) showError(message);
}
function onUnauthorized(msg) {
  if (!token) return;
  signOut('You were signed out: ' + msg);
}
document.getElementById('signout').addEventListener('click', () => { signOut(''); clearError(); history.replaceState(null, '', '#/'); });
document.getElementById('skip').addEventListener('click', (e) => { e.preventDefault(); $main.focus(); });

// ---------- router ----------
function route() {
  leaveView();
  clearError();
  if (!token) { renderLogin(); return; }
  const hash = location.hash.replace(/^#/, '');
  const m = hash.match(/^\/targets\/(.+)$/);
  const f = hash.match(/^\/fleet-deploys\/(.+)$/);
  if (m) renderTarget(decodeURIComponent(m[1]));
  else if (f) renderFleetDeploy(decodeURIComponent(f[1]));
  else renderFleet();
}
window.addEventListener('hashchange', route);
function focusHeading() {
  const h1 = $main.querySelector('h1');
  if (h1) h1.focus({ preventScroll: true });
}

// ---------- login ----------
function renderLogin() {
  document.title = 'Sign in · dockfra';
  const input = h('input', { type: 'password', id: 'login-token', name: 'token', testid: 'login-token', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'login-hint' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'login-submit' }, 'Sign in');
  const form = h('form', { novalidate: false },
    h('div', { class: 'field' },
      h('label', { for: 'login-token' }, 'Operator API token'),
      input,
      h('span', { class: 'hint', id: 'login-hint' }, 'Kept in this browser tab only (session storage).')),
    submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const tok = input.value.trim();
    if (!tok) { showError('Enter an operator API token.'); input.focus(); return; }
    submit.disabled = true;
    clearError();
    try {
      const who = await api('GET', '/api/whoami', undefined, { token: tok, login: true });
      token = tok;
      sessionStorage.setItem(TOKEN_KEY, tok);
      setSession((who && who.operator) || '');
      startFleetStream();
      route();
    } catch (err) {
      showError(err.status === 401 ? err.message || 'That token was refused.' : err.message);
      submit.disabled = false;
      input.focus();
      input.select();
    }
  });
  put($main, h('section', { class: 'login card', 'aria-labelledby': 'login-h' },
    h('div', { class: 'card-body' },
      h('h1', { id: 'login-h', tabindex: '-1' }, 'Sign in'),
      h('p', { class: 'muted' }, 'Paste an operator API token. ', h('code', null, 'dockfra-coord operator token'), ' prints one.'),
      form)));
  input.focus();
}

// ---------- fleet view ----------
const fleetUi = { labels: '', q: '', state: '', sort: { key: 'target', dir: 1 } };
const SEVERITY = { failed: 0, unreachable: 1, deploying: 2, never_deployed: 3, healthy: 4 };
const COLUMNS = [
  { key: 'state', label: 'State', val: (t) => SEVERITY[t.state] ?? 9 },
  { key: 'target', label: 'Target', val: (t) => t.target },
  { key: 'platform', label: 'Platform', val: (t) => t.platform || '' },
  { key: 'mode', label: 'Mode', val: (t) => t.mode || '' },
  { key: 'labels', label: 'Labels', val: (t) => Object.entries(t.labels || {}).map((e) => e.join('=')).sort().join(',') },
  { key: 'agent', label: 'Agent', val: (t) => t.agent_version || '' },
  { key: 'seen', label: 'Last seen', val: (t) => -(t.last_seen_unix || 0) },
  { key: 'current', label: 'Current release', val: (t) => t.current_release || '' },
  { key: 'previous', label: 'Previous release', val: (t) => t.previous_release || '' },
];
function parseSelector(s) {
  return s.split(',').map((x) => x.trim()).filter(Boolean).map((x) => {
    const ne = x.indexOf('!=');
    if (ne > 0) return { k: x.slice(0, ne).trim(), v: x.slice(ne + 2).trim(), neg: true };
    const eq = x.indexOf('=');
    if (eq > 0) return { k: x.slice(0, eq).trim(), v: x.slice(eq + 1).trim(), neg: false };
    return { k: x, v: null, neg: false };
  });
}
function matches(t, sel, q) {
  const labels = t.labels || {};
  for (const { k, v, neg } of sel) {
    const has = Object.prototype.hasOwnProperty.call(labels, k);
    if (v === null) { if (!has) return false; } else if (neg ? has && labels[k] === v : !has || labels[k] !== v) return false;
  }
  if (fleetUi.state && t.state !== fleetUi.state) return false;
  if (!q) return true;
  const hay = [t.target, t.platform, t.mode, t.host, t.state, stateLabel(t.state), t.app, t.agent_version, t.os, t.arch,
    t.current_release, t.current_version, t.previous_release, t.previous_version,
    ...Object.entries(labels).map((e) => e.join('='))].join(' ').toLowerCase();
  return q.toLowerCase().split(/\s+/).every((w) => hay.includes(w));
}

function renderFleet() {
  document.title = 'Fleet · dockfra';
  let data = null;
  let loading = false;
  let fds = null; // fleet deploys, newest first
  let fdAll = false;
  let selMatch = null; // {text, ids: Set} or {text, bad}: the coordinator's reading of the label filter
  const ctrl = new AbortController();
  const sig = { signal: ctrl.signal };
  const counts = h('ul', { class: 'counts', testid: 'state-counts', 'aria-label': 'Targets by state' });
  const labelIn = h('input', { type: 'text', id: 'f-labels', testid: 'label-filter', placeholder: 'role=edge, region in (eu)', autocomplete: 'off', spellcheck: 'false', value: fleetUi.labels, 'aria-describedby': 'f-labels-hint' });
  const labelHint = h('span', { class: 'hint', id: 'f-labels-hint' }, SEL_HINT);
  const textIn = h('input', { type: 'search', id: 'f-text', testid: 'text-filter', placeholder: 'prod-vps, armv7, v2…', autocomplete: 'off', value: fleetUi.q });
  const shown = h('p', { class: 'shown', role: 'status' });
  const tbody = h('tbody');
  const heads = COLUMNS.map((c) => {
    const th = h('th', { scope: 'col', 'data-col': c.key },
      h('button', { type: 'button', class: 'sort', testid: 'sort-' + c.key, onclick: () => sortBy(c.key) }, c.label));
    return th;
  });
  const table = h('table', { class: 'cards fleet', testid: 'fleet-table', 'aria-label': 'Deploy targets' }, h('thead', null, h('tr', null, heads)), tbody);
  const rolloutBtn = h('button', { type: 'button', class: 'btn btn-primary', testid: 'rollout-button', 'aria-expanded': 'false', 'aria-controls': 'rollout-panel', onclick: () => (rolloutSlot.firstChild ? closeRollout() : openRollout()) }, 'Roll out…');
  const rolloutSlot = h('div', { class: 'slot' });
  const fdBody = h('tbody');
  const fdMore = h('button', { type: 'button', class: 'btn btn-sm btn-ghost', hidden: true, onclick: () => { fdAll = !fdAll; renderFds(); } });
  const FD_COLS = ['Status', 'Fleet deploy', 'Started', 'Action', 'Selector', 'Operator', 'Wave', 'Targets'];
  put($main,
    h('div', { class: 'page-head' }, h('div', null, h('h1', { tabindex: '-1' }, 'Fleet'), h('p', { class: 'muted' }, 'Every deploy target and what it runs.')),
      h('div', { class: 'spacer' }), h('div', { class: 'actions' }, rolloutBtn)),
    rolloutSlot,
    counts,
    h('section', { class: 'card', 'aria-label': 'Targets' },
      h('div', { class: 'filters', role: 'search' },
        h('div', { class: 'field' }, h('label', { for: 'f-labels' }, 'Label selector'), labelIn, labelHint),
        h('div', { class: 'field' }, h('label', { for: 'f-text' }, 'Search'), textIn,
          sp('hint', 'id, host, platform, state, release, version')),
        shown),
      h('div', { class: 'table-wrap' }, table)),
    h('section', { class: 'card fd-section', testid: 'fleet-deploys', 'aria-labelledby': 'h-fds' },
      h('div', { class: 'card-head' }, h('h2', { id: 'h-fds' }, 'Fleet deploys'), sp('spacer'), fdMore),
      h('div', { class: 'table-wrap' }, h('table', { class: 'cards fds', 'aria-label': 'Fleet deploys' },
        h('thead', null, h('tr', null, FD_COLS.map((c) => h('th', { scope: 'col' }, c)))), fdBody))));
  const selSoon = debounce(() => loadSelector().then(renderRows), 250);
  labelIn.addEventListener('input', () => { fleetUi.labels = labelIn.value; renderRows(); selSoon(); });
  textIn.addEventListener('input', () => { fleetUi.q = textIn.value.trim(); renderRows(); });

  function sortBy(key) {
    const s = fleetUi.sort;
    if (s.key === key) s.dir = -s.dir; else { s.key = key; s.dir = 1; }
    renderRows();
  }
  function renderCounts() {
    const c = (data && data.counts) || {};
    const keys = [...STATES, ...Object.keys(c).filter((k) => !STATES.includes(k))];
    const total = data ? data.targets.length : 0;
    const item = (state, n, label) => {
      const pressed = fleetUi.state === state;
      return h('li', null, h('button', {
        type: 'button', class: 'count' + (state ? '' : ' total'), 'data-state': state || 'all', 'data-count': n, 'aria-pressed': String(state ? pressed : !fleetUi.state), fkey: 'count-' + (state || 'all'),
        title: state ? `Show only ${label.toLowerCase()} targets` : 'Show all targets',
        onclick: () => { fleetUi.state = state && !pressed ? state : ''; renderCounts(); renderRows(); },
      }, state ? h('span', { class: 'dot', 'data-state': state, 'aria-hidden': 'true' }) : null,
      h('span', null, sp('n', String(n)), h('br'), sp('l', label))));
    };
    keepFocus(counts, () => put(counts, item('', total, 'Total'), ...keys.map((k) => item(k, c[k] || 0, stateLabel(k)))));
  }
  // The coordinator's selector (k in (a,b), !k, …) when it takes the filter's text; else key=value pairs here.
  async function loadSelector() {
    const text = fleetUi.labels.trim();
    if (!text) { selMatch = null; return; }
    try {
      const d = await api('GET', '/api/deploy-targets?selector=' + enc(text), undefined, sig);
      if (fleetUi.labels.trim() === text) selMatch = { text, ids: new Set(((d && d.targets) || []).map((t) => t.target)) };
    } catch (e) {
      if (e.status === 400) { if (fleetUi.labels.trim() === text) selMatch = { text, bad: e.message }; } else report(e);
    }
  }
  function renderRows() {
    const s = fleetUi.sort;
    for (const th of heads) {
      if (th.dataset.col === s.key) th.setAttribute('aria-sort', s.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
    const text = fleetUi.labels.trim();
    const server = selMatch && selMatch.text === text ? selMatch : null;
    labelHint.textContent = server && server.bad ? 'Matching key=value here: ' + server.bad : SEL_HINT;
    labelHint.classList.toggle('bad', !!(server && server.bad));
    if (!data) {
      put(tbody, h('tr', null, h('td', { class: 'empty', colspan: COLUMNS.length }, loading ? 'Loading targets…' : 'No data.')));
      return;
    }
    const byServer = server && server.ids;
    const sel = byServer ? [] : parseSelector(fleetUi.labels);
    const col = COLUMNS.find((c) => c.key === s.key) || COLUMNS[1];
    const rows = data.targets.filter((t) => (!byServer || byServer.has(t.target)) && matches(t, sel, fleetUi.q)).sort((a, b) => {
      const x = col.val(a);
      const y = col.val(b);
      const r = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
      return (r || String(a.target).localeCompare(String(b.target))) * s.dir;
    });
    shown.textContent = `${rows.length} of ${data.targets.length} target${data.targets.length === 1 ? '' : 's'} shown`;
    keepFocus(tbody, () => {
      if (!rows.length) {
        put(tbody, h('tr', null, h('td', { class: 'empty', colspan: COLUMNS.length },
          data.targets.length ? 'No target matches the filters.' : 'No deploy targets yet. Add some to deploy-targets.yaml.')));
        return;
      }
      put(tbody, ...rows.map(row));
    });
  }
  function row(t) {
    return h('tr', { testid: 'fleet-row-' + t.target, 'data-state': t.state },
      h('td', { 'data-label': 'State', class: 'state-cell', title: t.state_reason || null }, stateEl(t.state, t.target)),
      h('th', { scope: 'row', class: 'primary', 'data-label': 'Target' },
        sp('rel', h('a', { href: '#/targets/' + enc(t.target), fkey: 'link-' + t.target }, t.target),
          t.app || t.host ? sp('v', [t.app, t.host].filter(Boolean).join(' · ')) : null)),
      h('td', { 'data-label': 'Platform' }, dash(t.platform)),
      h('td', { 'data-label': 'Mode' }, dash(t.mode)),
      h('td', { 'data-label': 'Labels', class: 'labels' }, labelChips(t.labels)),
      h('td', { 'data-label': 'Agent' }, t.agent_version ? sp('rel', h('span', null, t.agent_version), t.os || t.arch ? sp('v', [t.os, t.arch].filter(Boolean).join(' / ')) : null) : sp('muted', '—')),
      h('td', { 'data-label': 'Last seen', class: 'nowrap' }, relEl(t.last_seen_unix)),
      h('td', { 'data-label': 'Current' }, relCell(t.current_release, t.current_version)),
      h('td', { 'data-label': 'Previous' }, relCell(t.previous_release, t.previous_version)));
  }
  function renderFds() {
    const all = fds || [];
    const list = fdAll ? all : all.slice(0, 10);
    fdMore.hidden = all.length <= 10;
    fdMore.textContent = fdAll ? 'Show the latest 10' : `Show all ${all.length}`;
    keepFocus(fdBody, () => {
      if (!list.length) {
        put(fdBody, h('tr', null, h('td', { class: 'empty', colspan: FD_COLS.length }, fds ? 'No fleet deploys yet. Roll out… starts one over the targets a selector names.' : 'Loading…')));
        return;
      }
      put(fdBody, ...list.map((f) => h('tr', { testid: 'fleet-deploy-row-' + f.id, 'data-status': f.status },
        h('td', { 'data-label': 'Status', class: 'state-cell' }, fdBadge(f.status)),
        h('th', { scope: 'row', class: 'primary', 'data-label': 'Fleet deploy' },
          h('a', { href: '#/fleet-deploys/' + enc(f.id), class: 'mono', title: f.id, fkey: 'fd-' + f.id, 'aria-label': `Fleet deploy ${f.id}` }, shortId(f.id))),
        h('td', { 'data-label': 'Started', class: 'nowrap' }, relEl(f.created_unix)),
        h('td', { 'data-label': 'Action' }, dash(f.action), f.version ? sp('muted', ' ' + f.version) : null),
        h('td', { 'data-label': 'Selector' }, f.selector ? sp('mono small', f.selector) : sp('muted', 'all targets')),
        h('td', { 'data-label': 'Operator' }, dash(f.operator)),
        h('td', { 'data-label': 'Wave', class: 'nowrap' }, fdWave(f)),
        h('td', { 'data-label': 'Targets' }, fdCounts(f.counts)))));
    });
  }
  let fdTimer = null;
  async function loadFds() {
    clearTimeout(fdTimer);
    try {
      const d = await api('GET', '/api/fleet-deploys', undefined, sig);
      if (ctrl.signal.aborted) return;
      fds = (d && d.fleet_deploys) || [];
      renderFds();
      // Waves move on without events (soak, timeouts): look again soon while one runs, or a
      // cancelled one's orders still do.
      if (fds.some((f) => f.status === 'running' || unsettled(f))) fdTimer = setTimeout(loadFds, 2000);
    } catch (e) { report(e); }
  }
  let again = false;
  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    again = false;
    loadFds();
    try {
      const [d] = await Promise.all([api('GET', '/api/deploy-targets', undefined, sig), loadSelector()]);
      if (ctrl.signal.aborted) return;
      data = { targets: (d && d.targets) || [], counts: (d && d.counts) || {} };
      renderCounts();
      renderRows();
    } catch (e) {
      report(e);
    } finally {
      loading = false;
      if (again && !ctrl.signal.aborted) load();
    }
  }

  // --- Roll out: a fleet deploy over the targets a selector names ---
  let closePanel = null;
  function openRollout() {
    rolloutBtn.setAttribute('aria-expanded', 'true');
    closePanel = rolloutPanel(rolloutSlot, fleetUi.labels.trim(), sig, closeRollout);
  }
  function closeRollout() {
    if (closePanel) closePanel();
    closePanel = null;
    put(rolloutSlot);
    rolloutBtn.setAttribute('aria-expanded', 'false');
    rolloutBtn.focus();
  }

  const soon = debounce(load, 300);
  const poll = setInterval(load, 10000);
  renderCounts();
  renderRows();
  renderFds();
  load();
  focusHeading();
  view = {
    refresh: soon,
    onFleetEvent: soon,
    cleanup: () => { ctrl.abort(); soon.cancel(); selSoon.cancel(); clearInterval(poll); clearTimeout(fdTimer); if (closePanel) closePanel(); },
  };
}
const SEL_HINT = 'k=v, k!=v, k in (a,b), k notin (a,b), k, !k; all must match';

// The "Roll out…" form. Returns its cleanup.
function rolloutPanel(slot, initial, sig, onClose) {
  let seq = 0;
  const field = (id, label, input, hint) => h('div', { class: 'field' },
    h('label', { for: id }, label, hint ? sp('hint', ' ' + hint) : null), input);
  const selIn = h('input', { type: 'text', id: 'ro-selector', testid: 'rollout-selector', value: initial, placeholder: 'role=edge, region in (eu, us)', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'ro-match' });
  const allIn = h('input', { type: 'checkbox', id: 'ro-all', testid: 'rollout-all' });
  const match = h('p', { class: 'match', id: 'ro-match', testid: 'rollout-match-count', role: 'status', 'data-state': 'idle' });
  const actionIn = h('select', { id: 'ro-action', testid: 'rollout-action' },
    h('option', { value: 'deploy' }, 'Deploy'), h('option', { value: 'rollback' }, 'Roll back to previous'),
    h('option', { value: 'upgrade' }, 'Upgrade the agents (from the coordinator\u2019s agent-binaries)'));
  const versionIn = h('input', { type: 'text', id: 'ro-version', testid: 'rollout-version', autocomplete: 'off', spellcheck: 'false', placeholder: 'optional' });
  const canaryIn = h('input', { type: 'text', id: 'ro-canary', testid: 'rollout-canary', autocomplete: 'off', spellcheck: 'false', placeholder: 'none (1, 10%)', 'aria-describedby': 'ro-canary-hint' });
  const num = (id, testid, ph, step) => h('input', { type: 'number', id, testid, min: '0', step: step || '1', inputmode: 'decimal', placeholder: ph });
  const maxIn = num('ro-max', 'rollout-max-parallel', 'all at once');
  const soakIn = num('ro-soak', 'rollout-soak', '30', 'any');
  const waveIn = num('ro-wave', 'rollout-wave-timeout', '600', 'any');
  const forceIn = h('input', { type: 'checkbox', id: 'ro-force', testid: 'rollout-force' });
  const wavesIn = h('input', { type: 'checkbox', id: 'ro-waves', testid: 'rollout-waves', 'aria-describedby': 'ro-waves-hint' });
  const autoRbIn = h('input', { type: 'checkbox', id: 'ro-auto-rollback', testid: 'rollout-auto-rollback', 'aria-describedby': 'ro-auto-rollback-hint' });
  const canaryHint = h('span', { class: 'hint', id: 'ro-canary-hint' }, 'targets, or a percentage');
  const confirmIn = h('input', { type: 'checkbox', id: 'ro-confirm', testid: 'rollout-confirm' });
  const confirmMsg = h('p');
  const confirmBox = h('div', { class: 'notice stack-sm', testid: 'rollout-production', hidden: true, role: 'alert' },
    confirmMsg, h('label', { class: 'check' }, confirmIn, 'Yes, roll out to these production targets'));
  const start = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'rollout-start' }, 'Start');
  const cancel = h('button', { type: 'button', class: 'btn', testid: 'rollout-cancel', onclick: onClose }, 'Cancel');
  const versionField = field('ro-version', 'Version label', versionIn);
  const autoRbRow = h('div', { class: 'check-row' }, h('label', { class: 'check' }, autoRbIn, 'Auto-rollback a failed wave'),
    h('span', { class: 'hint', id: 'ro-auto-rollback-hint' }, 'its targets that took the release go back to their previous one'));
  const form = h('form', { class: 'card rollout', id: 'rollout-panel', testid: 'rollout-panel', 'aria-labelledby': 'h-rollout', novalidate: true },
    h('div', { class: 'card-head' }, h('h2', { id: 'h-rollout', tabindex: '-1' }, 'Roll out to the fleet'),
      sp('muted small', 'Waves: a canary first when asked, or the ones deploy-targets.yaml declares, each max parallel at a time; the first failed wave halts it.')),
    h('div', { class: 'card-body rollout-grid' },
      h('div', { class: 'field wide' }, h('label', { for: 'ro-selector' }, 'Targets: label selector'), selIn,
        h('div', { class: 'row' }, h('label', { class: 'check' }, allIn, 'All targets'), match)),
      field('ro-action', 'Action', actionIn),
      versionField,
      h('div', { class: 'field' }, h('label', { for: 'ro-canary' }, 'Canary'), canaryIn, canaryHint),
      field('ro-max', 'Max parallel', maxIn),
      field('ro-soak', 'Soak', soakIn, '(s)'),
      field('ro-wave', 'Wave timeout', waveIn, '(s)'),
      h('div', { class: 'field wide stack-sm' },
        h('div', { class: 'check-row' }, h('label', { class: 'check' }, wavesIn, 'Use the waves from deploy-targets.yaml'),
          h('span', { class: 'hint', id: 'ro-waves-hint' }, 'instead of a canary; max parallel splits a large wave')),
        autoRbRow,
        h('div', { class: 'check-row' }, h('label', { class: 'check' }, forceIn, 'Take over targets other operators are deploying')))),
    h('div', { class: 'plan-foot' }, confirmBox, sp('spacer'), cancel, start));

  function resetConfirm() { confirmBox.hidden = true; confirmIn.checked = false; start.textContent = 'Start'; }
  const preview = debounce(async () => {
    const my = ++seq;
    const text = selIn.value.trim();
    const all = allIn.checked;
    if (!all && !text) { setMatch('idle', 'Enter a selector, or choose All targets.'); return; }
    setMatch('loading', 'Checking…');
    try {
      const d = await api('GET', '/api/deploy-targets' + (all ? '' : '?selector=' + enc(text)), undefined, sig);
      if (my !== seq) return;
      const ids = ((d && d.targets) || []).map((t) => t.target).sort();
      const names = ids.length > 6 ? ids.slice(0, 6).join(', ') + ` and ${ids.length - 6} more` : ids.join(', ');
      setMatch(ids.length ? 'ok' : 'none', `${ids.length} target${ids.length === 1 ? '' : 's'} match${ids.length === 1 ? 'es' : ''}${ids.length ? ': ' + names : ''}`, ids);
    } catch (e) {
      if (my !== seq || e.name === 'AbortError') return;
      if (e.status === 400) setMatch('bad', e.message); else { setMatch('idle', ''); report(e); }
    }
  }, 250);
  function setMatch(state, text, ids) {
    match.dataset.state = state;
    if (ids) { match.dataset.count = String(ids.length); match.dataset.targets = ids.join(','); } else { delete match.dataset.count; delete match.dataset.targets; }
    match.textContent = text;
  }
  const changed = () => { selIn.disabled = allIn.checked; resetConfirm(); preview(); };
  selIn.addEventListener('input', changed);
  allIn.addEventListener('change', changed);
  actionIn.addEventListener('change', () => {
    const deploy = actionIn.value === 'deploy';
    versionField.hidden = !deploy;
    autoRbRow.hidden = !deploy; // a fleet rollback has nothing to roll back to
  });
  // The server takes the declared waves or a canary, not both.
  let canaryKept = '';
  wavesIn.addEventListener('change', () => {
    if (wavesIn.checked) { canaryKept = canaryIn.value; canaryIn.value = ''; canaryIn.removeAttribute('aria-invalid'); } else if (!canaryIn.value) canaryIn.value = canaryKept;
    canaryIn.disabled = wavesIn.checked;
    canaryHint.textContent = wavesIn.checked ? 'not with the declared waves' : 'targets, or a percentage';
  });
  confirmIn.addEventListener('change', () => { start.textContent = confirmIn.checked ? 'Start on production' : 'Start'; });
  form.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); onClose(); } });

  function bad(input, msg) {
    input.setAttribute('aria-invalid', 'true');
    showError(msg);
    input.focus();
    return null;
  }
  function body() {
    for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
    const b = { action: actionIn.value, confirm: confirmIn.checked, force: forceIn.checked };
    if (allIn.checked) b.all = true;
    else if (selIn.value.trim()) b.selector = selIn.value.trim();
    else return bad(selIn, 'Name the targets with a label selector, or choose All targets.');
    const canary = wavesIn.checked ? '' : canaryIn.value.trim();
    if (canary && !/^\d+\s*%?$/.test(canary)) return bad(canaryIn, 'Canary: a number of targets or a percentage (1, 10%).');
    if (canary) b.canary = canary.replace(/\s+/g, '');
    const max = maxIn.value.trim();
    if (max && !/^\d+$/.test(max)) return bad(maxIn, 'Max parallel: a whole number (0 or empty: all at once).');
    b.max_parallel = Number(max || 0);
    for (const [input, key, what] of [[soakIn, 'soak_ms', 'Soak'], [waveIn, 'wave_timeout_ms', 'Wave timeout']]) {
      const v = input.value.trim();
      const n = Number(v || 0);
      if (!Number.isFinite(n) || n < 0 || n > 86400 || (input.validity && input.validity.badInput)) return bad(input, `${what}: seconds, from 0 to 86400.`);
      b[key] = Math.round(n * 1000);
    }
    if (b.action === 'deploy' && versionIn.value.trim()) b.version = versionIn.value.trim();
    if (wavesIn.checked) b.waves = true;
    if (b.action === 'deploy' && autoRbIn.checked) b.auto_rollback = true;
    return b;
  }
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearError();
    const b = body();
    if (!b) return;
    start.disabled = true;
    try {
      const f = await api('POST', '/api/fleet-deploys', b, sig);
      if (!f || !f.id) { showError('The coordinator accepted the fleet deploy but returned no id.'); return; }
      location.hash = '#/fleet-deploys/' + enc(f.id);
    } catch (err) {
      if (err.status === 409 && /confirm/i.test(err.message) && !b.confirm) {
        confirmMsg.textContent = err.message;
        confirmBox.hidden = false;
        confirmIn.focus();
      } else report(err);
    } finally {
      start.disabled = false;
    }
  });
  put(slot, form);
  preview();
  form.querySelector('h2').focus();
  return () => { seq++; preview.cancel(); };
}

// ---------- target view ----------
function renderTarget(id) {
  document.title = id + ' · dockfra';
  const ctrl = new AbortController();
  const base = '/api/deploy-targets/' + enc(id);
  const sig = { signal: ctrl.signal };
  let t = null;
  let deps = [];
  let progress = null; // {id, done, abort}
  const expanded = new Set();
  const eventsCache = new Map();

  const stateBox = h('span', { testid: 'target-state', 'data-state': 'unknown', class: 'state' },
    h('span', { class: 'dot dot-lg', 'data-state': 'unknown', 'aria-hidden': 'true' }));
  const badges = sp('row');
  const head = h('div', { class: 'target-title' }, stateBox, h('h1', { tabindex: '-1' }, id), badges);
  const reason = h('p', { class: 'reason' });
  const deployBtn = h('button', { type: 'button', class: 'btn btn-primary', testid: 'deploy-button', onclick: openPlan }, 'Deploy…');
  const testBtn = h('button', { type: 'button', class: 'btn', testid: 'deploy-test-button', onclick: deployTest }, 'Deploy test');
  const planSlot = h('div');
  const testSlot = h('div');
  const progSlot = h('div');
  const details = h('dl', { class: 'details' }, h('dt', null, 'Loading…'), h('dd'));
  const releases = h('ul', { class: 'releases', testid: 'releases' }, h('li', { class: 'muted' }, 'Loading…'));
  const histBody = h('tbody');
  const histTable = h('table', { class: 'history', testid: 'history-table', 'aria-label': 'Deployment history' },
    h('thead', null, h('tr', null, ['Deployment', 'Started', 'Action', 'Release', 'Version', 'Operator', 'Duration', 'Result', 'Reason', 'Actions']
      .map((c) => h('th', { scope: 'col', class: c === 'Duration' ? 'num' : null }, c)))),
    histBody);
  put($main, 
    h('a', { class: 'crumb', href: '#/' }, '← Fleet'),
    h('div', { class: 'page-head' },
      h('div', null, head, reason),
      h('div', { class: 'spacer' }),
      h('div', { class: 'actions', role: 'group', 'aria-label': 'Target actions' }, deployBtn, testBtn)),
    h('div', { class: 'stack' },
      planSlot, progSlot, testSlot,
      h('div', { class: 'grid-2' },
        h('section', { class: 'card', 'aria-labelledby': 'h-details' },
          h('div', { class: 'card-head' }, h('h2', { id: 'h-details' }, 'Details')),
          h('div', { class: 'card-body' }, details)),
        h('section', { class: 'card', 'aria-labelledby': 'h-releases' },
          h('div', { class: 'card-head' }, h('h2', { id: 'h-releases' }, 'Kept releases')), releases)),
      h('section', { class: 'card', 'aria-labelledby': 'h-history' },
        h('div', { class: 'card-head' }, h('h2', { id: 'h-history' }, 'History'), sp('spacer'),
          sp('muted small', 'Last 50 deployments')),
        h('div', { class: 'table-wrap' }, histTable))));
  renderHead();

  function renderHead() {
    const s = t ? t.state : 'unknown';
    stateBox.dataset.state = s;
    stateBox.firstChild.dataset.state = s;
    put(badges, 
      h('span', { class: 'state-text badge', 'data-state': s }, t ? stateLabel(s) : 'Loading…'),
      t && t.in_flight ? h('span', { class: 'badge info', title: 'deployment ' + t.in_flight }, 'deploy in flight') : null,
      t && t.revoked ? sp('badge bad', 'agent revoked') : null);
    reason.textContent = t ? t.state_reason || '' : '';
  }
  function dd(label, ...v) { return [h('dt', null, label), h('dd', null, ...v)]; }
  function renderDetails() {
    const a = t;
    const disk = a.disk;
    const used = disk && disk.total_bytes ? 1 - disk.free_bytes / disk.total_bytes : null;
    const meter = used === null ? null : h('div', { class: 'meter', role: 'img', 'aria-label': `${Math.round(used * 100)}% of the disk used` }, h('span'));
    if (meter) meter.firstChild.style.width = Math.max(0, Math.min(100, used * 100)).toFixed(1) + '%';
    put(details, 
      ...dd('State', stateLabel(a.state), a.state_reason ? sp('muted', ' — ', a.state_reason) : null),
      ...dd('Platform', dash(a.platform), a.app ? sp('muted', ' · app ', a.app) : null),
      ...dd('Mode', dash(a.mode)),
      ...dd('Host', sp('mono', a.host ? `${a.user ? a.user + '@' : ''}${a.host}${a.port ? ':' + a.port : ''}` : '—')),
      ...dd('Labels', labelChips(a.labels)),
      ...dd('Agent', a.agent_version ? a.agent_version : sp('muted', a.enrolled ? 'enrolled, not yet reported' : 'not enrolled'),
        a.os || a.arch ? sp('muted', ' · ', [a.os, a.os_release, a.arch].filter(Boolean).join(' '), a.wsl ? ' (WSL)' : '') : null),
      ...dd('Declared OS', dash(a.declared_os), a.os_check ? sp('muted', ' · check: ', fmtAny(a.os_check)) : null),
      ...dd('Last seen', relEl(a.last_seen_unix)),
      ...dd('Health', fmtAny(a.health)),
      ...dd('Current', relCell(a.current_release, [a.current_version, a.current_sequence ? '#' + a.current_sequence : ''].filter(Boolean).join(' · '))),
      ...dd('Previous', relCell(a.previous_release, a.previous_version)),
      ...dd('Disk', disk ? h('span', null, `${fmtBytes(disk.free_bytes)} free of ${fmtBytes(disk.total_bytes)}`, meter,
        sp('muted small', `blobs ${fmtBytes(disk.blobs_bytes)} (${disk.blobs ?? 0}) · releases ${fmtBytes(disk.releases_bytes)}`)) : '—'),
      a.state_error ? dd('Error', h('span', { class: 'state-text', 'data-state': 'failed' }, a.state_error)) : null);
  }
  function renderReleases() {
    const list = (t && t.releases) || [];
    keepFocus(releases, () => {
      if (!list.length) { put(releases, h('li', { class: 'muted' }, 'No release kept on this target yet.')); return; }
      put(releases, ...list.map((r) => h('li', { 'data-release': r.name },
        sp('rel', sp('name', r.name),
          sp('v', [r.version, r.sequence ? 'seq ' + r.sequence : ''].filter(Boolean).join(' · ') || '—')),
        r.current ? sp('badge ok', 'current') : null,
        r.previous ? sp('badge', 'previous') : null,
        sp('spacer'),
        !r.current && r.rollback_ok
          ? h('button', { type: 'button', class: 'btn btn-sm', testid: 'rollback-' + r.name, fkey: 'rb-' + r.name, 'aria-label': 'Roll back to ' + r.name, disabled: busy(), onclick: () => rollback(r.name) }, 'Roll back')
          : !r.current ? sp('muted small', 'cannot roll back') : null)));
    });
  }
  function renderHistory() {
    const kept = new Map(((t && t.releases) || []).map((r) => [r.name, r]));
    keepFocus(histTable, () => {
      if (!deps.length) { put(histBody, h('tr', null, h('td', { class: 'empty', colspan: 10 }, 'No deployments yet.'))); return; }
      const rows = [];
      for (const d of deps) {
        const open = expanded.has(d.id);
        const canRb = d.status === 'succeeded' && d.release && t && d.release !== t.current_release;
        const k = kept.get(d.release);
        const rbOk = !kept.size || (k && k.rollback_ok);
        rows.push(h('tr', { testid: 'history-row-' + d.id, 'data-status': d.status },
          h('th', { scope: 'row' }, h('button', { type: 'button', class: 'btn-link mono nowrap', 'aria-expanded': String(open), fkey: 'ex-' + d.id, title: d.id, 'aria-label': 'Events of deployment ' + d.id, onclick: () => toggle(d.id) }, (open ? '▾ ' : '▸ ') + shortId(d.id))),
          h('td', { class: 'nowrap' }, h('time', { title: relTime(d.started_unix) }, fmtTime(d.started_unix))),
          h('td', null, dash(d.action), d.fleet ? [' ', h('a', {
            class: 'tag', href: '#/fleet-deploys/' + enc(d.fleet), testid: 'history-fleet-' + d.id, fkey: 'hf-' + d.id,
            title: 'Part of fleet deploy ' + d.fleet, 'aria-label': 'Fleet deploy ' + d.fleet,
          }, 'fleet')] : null),
          h('td', null, sp('mono nowrap', dash(d.release))),
          h('td', null, dash(d.version)),
          h('td', null, dash(d.operator)),
          h('td', { class: 'num nowrap' }, d.done || FINAL.has(d.status) ? fmtDuration(d.duration_ms) : '…'),
          h('td', null, statusBadge(d.status)),
          h('td', { class: 'status-reason' }, d.reason || ''),
          h('td', null, canRb && rbOk ? h('button', {
            type: 'button', class: 'btn btn-sm', testid: 'history-rollback-' + d.id, fkey: 'hrb-' + d.id, disabled: busy(),
            'aria-label': 'Roll back to ' + d.release, onclick: () => rollback(d.release),
          }, 'Roll back') : canRb ? sp('muted small nowrap', 'not kept') : null)));
        if (open) {
          const ev = eventsCache.get(d.id);
          rows.push(h('tr', { class: 'detail' }, h('td', { colspan: 10 },
            !ev ? sp('muted', 'Loading events…')
              : ev.length ? h('ol', { class: 'events' }, ev.map((e) => h('li', null, sp('t', fmtClock(e.unix_ms)), h('b', null, e.kind), ' ', e.message, e.operator ? sp('muted', ' · ', e.operator) : null)))
                : sp('muted', 'No events recorded.'))));
        }
      }
      put(histBody, ...rows);
    });
  }
  async function toggle(depId) {
    if (expanded.has(depId)) { expanded.delete(depId); renderHistory(); return; }
    expanded.add(depId);
    renderHistory();
    const d = deps.find((x) => x.id === depId);
    if (eventsCache.has(depId) && d && (d.done || FINAL.has(d.status))) return;
    try {
      const det = await api('GET', '/api/deployments/' + enc(depId), undefined, sig);
      eventsCache.set(depId, (det && det.events) || []);
      renderHistory();
    } catch (e) { expanded.delete(depId); renderHistory(); report(e); }
  }

  const busy = () => !!(progress && !progress.done);
  function setBusy() {
    const b = busy();
    deployBtn.disabled = b;
    for (const el of $main.querySelectorAll('[data-testid^="rollback-"], [data-testid^="history-rollback-"], [data-testid="confirm-deploy"]')) el.disabled = b;
  }

  let tSeq = 0;
  let hSeq = 0;
  async function loadTarget() {
    const my = ++tSeq;
    try {
      const nt = await api('GET', base, undefined, sig);
      if (ctrl.signal.aborted || my !== tSeq) return;
      t = nt;
      renderHead();
      renderDetails();
      renderReleases();
      if (deps.length) renderHistory();
      const ld = t.last_deploy;
      if (ld && !ld.done && !FINAL.has(ld.status) && (!progress || (progress.done && progress.id !== ld.id))) follow(ld);
    } catch (e) {
      if (e.status === 404 && !t) {
        clearInterval(poll);
        ctrl.abort();
        put($main, h('a', { class: 'crumb', href: '#/' }, '← Fleet'),
          h('section', { class: 'card' }, h('div', { class: 'card-body stack' },
            h('h1', { tabindex: '-1' }, id),
            h('p', { class: 'muted' }, 'The coordinator knows no target by this name. It may have been removed from deploy-targets.yaml.'),
            h('p', null, h('a', { href: '#/' }, 'Back to the fleet')))));
      }
      report(e);
    }
  }
  async function loadHistory() {
    const my = ++hSeq;
    try {
      const d = await api('GET', '/api/deployments?target=' + enc(id) + '&limit=50', undefined, sig);
      if (ctrl.signal.aborted || my !== hSeq) return;
      deps = (d && d.deployments) || [];
      renderHistory();
    } catch (e) { report(e); }
  }
  const refreshSoon = debounce(() => { loadTarget(); loadHistory(); }, 300);
  const poll = setInterval(() => { loadTarget(); loadHistory(); }, 10000);

  // --- Deploy: plan, then confirm ---
  async function openPlan() {
    deployBtn.disabled = true;
    put(planSlot, h('section', { class: 'card' }, h('div', { class: 'result', 'data-result': 'pending' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Computing the plan…')));
    try {
      const p = await api('GET', base + '/plan', undefined, sig);
      renderPlan(p || {});
    } catch (e) {
      put(planSlot);
      report(e);
    } finally {
      deployBtn.disabled = busy();
    }
  }
  function closePlan() { put(planSlot); deployBtn.focus(); }
  function renderPlan(p) {
    const files = p.files || [];
    const services = p.services || [];
    const notes = p.notes || [];
    const version = h('input', { type: 'text', id: 'plan-version', testid: 'deploy-version', autocomplete: 'off', spellcheck: 'false', placeholder: p.version || 'from the project' });
    const confirm = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'confirm-deploy', disabled: busy() }, 'Confirm deploy');
    const cancel = h('button', { type: 'button', class: 'btn', testid: 'cancel-deploy', onclick: closePlan }, 'Cancel');
    const prod = Object.entries((t && t.labels) || {}).some(([k, v]) => /^(env|environment|stage|tier)$/i.test(k) && /^prod/i.test(v));
    const sum = (k, n) => h('div', null, sp('k', k), sp('n', n));
    const changeBadge = (c) => h('span', { class: 'badge ' + ({ added: 'ok', removed: 'bad', changed: 'info' }[c] || '') }, c);
    const form = h('form', { class: 'card plan', testid: 'plan', 'aria-labelledby': 'h-plan' },
      h('div', { class: 'card-head' },
        h('h2', { id: 'h-plan', tabindex: '-1' }, 'Deploy plan'),
        sp('muted', sp('mono', p.current_release || 'nothing'), p.current_version ? ` (${p.current_version})` : '', ' → ', h('b', null, p.version || 'new release'))),
      h('div', { class: 'card-body stack' },
        p.changes === false ? h('p', { class: 'notice' }, 'No changes: the target already runs this release. Deploying again re-applies it.') : null,
        prod ? h('p', { class: 'notice' }, 'This target is labelled as production.') : null,
        h('div', { class: 'summary' },
          sum('Added', p.files_added ?? 0), sum('Changed', p.files_changed ?? 0), sum('Removed', p.files_removed ?? 0),
          sum('Unchanged', p.files_unchanged ?? 0), sum('To move', fmtBytes(p.bytes_to_move)), sum('Release size', fmtBytes(p.bytes_total))),
        files.length ? h('div', null, h('h3', null, `Files (${files.length})`),
          h('div', { class: 'files', tabindex: '0', role: 'region', 'aria-label': 'Changed files' }, h('table', null,
            h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Change'), h('th', { scope: 'col' }, 'Path'), h('th', { scope: 'col', class: 'num' }, 'Size'))),
            h('tbody', null, files.slice(0, 500).map((f) => h('tr', { 'data-change': f.change },
              h('td', null, changeBadge(f.change)), h('td', { class: 'path' }, f.path),
              h('td', { class: 'num nowrap' }, f.change === 'changed' && f.old_size != null ? `${fmtBytes(f.old_size)} → ${fmtBytes(f.size)}` : fmtBytes(f.change === 'removed' ? f.old_size ?? f.size : f.size)))))))) : null,
        files.length > 500 ? h('p', { class: 'muted small' }, `…and ${files.length - 500} more files.`) : null,
        services.length ? h('div', null, h('h3', null, `Services (${services.length})`),
          h('div', { class: 'table-wrap' }, h('table', null,
            h('thead', null, h('tr', null, ['Service', 'Change', 'Image', 'Fields'].map((c) => h('th', { scope: 'col' }, c)))),
            h('tbody', null, services.map((s) => h('tr', { 'data-change': s.change },
              h('th', { scope: 'row' }, s.service), h('td', null, changeBadge(s.change)),
              h('td', { class: 'img-change' }, s.old_image && s.old_image !== s.image ? [s.old_image, ' → ', h('b', null, s.image || '—')] : dash(s.image || s.old_image)),
              h('td', { class: 'small' }, (s.fields || []).join(', '))))))) ) : null,
        notes.length ? h('div', null, h('h3', null, 'Notes'), h('ul', { class: 'notes' }, notes.map((n) => h('li', null, typeof n === 'string' ? n : JSON.stringify(n))))) : null),
      h('div', { class: 'plan-foot' },
        h('div', { class: 'field' }, h('label', { for: 'plan-version' }, 'Version label ', sp('hint', '(optional)')), version),
        sp('spacer'), cancel, confirm));
    form.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); closePlan(); } });
    const doDeploy = async () => {
      const body = version.value.trim() ? { version: version.value.trim() } : {};
      confirm.disabled = true;
      try {
        const dep = await api('POST', '/api/deploy/' + enc(id), body, sig);
        put(planSlot);
        follow(dep, true);
      } catch (e) {
        confirm.disabled = busy();
        report(e);
      }
    };
    form.addEventListener('submit', (e) => { e.preventDefault(); doDeploy(); });
    put(planSlot, form);
    form.querySelector('h2').focus();
  }

  // --- Deploy test ---
  async function deployTest() {
    testBtn.disabled = true;
    put(testSlot, h('section', { class: 'card' }, h('div', { class: 'result', 'data-result': 'pending' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Testing the target…')));
    try {
      const r = (await api('POST', '/api/deploy-test/' + enc(id), undefined, sig)) || {};
      const kv = (k, v, cls) => h('div', null, sp('k', k), h('span', { class: 'v' + (cls ? ' ' + cls : '') }, v));
      const yes = (b) => h('span', { class: 'badge ' + (b ? 'ok' : 'bad') }, b ? 'yes' : 'no');
      const facts = Object.entries(r.facts || {}).map(([k, v]) => [k.replace(/_/g, ' '),
        Array.isArray(v) ? v.map((x) => (x && typeof x === 'object' ? [x.name, x.version].filter(Boolean).join(' ') : x)).join(', ') : fmtAny(v)])
        .filter(([, v]) => v !== '' && v !== '—');
      const canTake = r.can_take === true || r.can_take === 'yes';
      put(testSlot, h('section', { class: 'card', testid: 'deploy-test-result', 'data-reachable': String(!!r.reachable), 'aria-labelledby': 'h-test', tabindex: '-1' },
        h('div', { class: 'card-head' }, h('h2', { id: 'h-test' }, 'Deploy test'), sp('spacer'),
          h('button', { type: 'button', class: 'btn btn-sm btn-ghost', onclick: () => { put(testSlot); testBtn.focus(); } }, 'Close')),
        h('div', { class: 'card-body stack' },
          h('div', { class: 'kv' },
            kv('Reachable', yes(r.reachable)),
            kv('Round trip', r.round_trip_ms || r.mode !== 'pull' ? fmtDuration(r.round_trip_ms) : '—'),
            kv('Can take', canTake ? yes(true) : [yes(false), ' ', sp('small', fmtAny(r.can_take))]),
            kv('OS check', fmtAny(r.os_check)),
            kv('Mode', dash(r.mode)),
            kv('Last seen', r.last_seen_seconds_ago == null || r.last_seen_seconds_ago < 0 ? 'never' : relTime(Date.now() / 1000 - r.last_seen_seconds_ago)),
            r.url ? kv('URL', sp('mono', r.url)) : null),
          facts.length ? h('div', null, h('h3', null, 'Agent facts'), h('div', { class: 'kv small' }, facts.map(([k, v]) => kv(k, v)))) : null)));
      testSlot.firstChild.focus();
    } catch (e) {
      put(testSlot);
      report(e);
    } finally {
      testBtn.disabled = false;
    }
  }

  // --- Rollback ---
  async function rollback(name) {
    if (busy()) return;
    clearError();
    try {
      const dep = await api('POST', '/api/rollback/' + enc(id), { to_release: name }, sig);
      follow(dep, true);
    } catch (e) { report(e); }
  }

  // --- Live progress of one deployment ---
  function follow(dep, focusIt) {
    if (!dep || dep.id === undefined || dep.id === null) { showError('The coordinator accepted the request but returned no deployment id.'); return; }
    if (progress && progress.id === dep.id) return;
    if (progress) progress.abort();
    const me = { id: dep.id, done: false };
    const pctrl = new AbortController();
    me.abort = () => pctrl.abort();
    ctrl.signal.addEventListener('abort', me.abort);
    progress = me;
    const seen = new Set();
    const title = sp('muted');
    const steps = h('ol', { class: 'steps', testid: 'progress', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-label': 'Deployment steps' });
    const result = h('div', { class: 'result', testid: 'progress-result', 'data-result': 'pending', role: 'status' },
      h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'In progress…');
    const card = h('section', { class: 'card', testid: 'progress-panel', 'data-deployment': dep.id, 'aria-labelledby': 'h-progress' },
      h('div', { class: 'card-head' }, h('h2', { id: 'h-progress', tabindex: '-1' }, 'Deployment ', sp('mono small', dep.id)), title,
        sp('spacer'),
        h('button', { type: 'button', class: 'btn btn-sm btn-ghost', testid: 'progress-close', onclick: () => { if (me.done) { put(progSlot); deployBtn.focus(); } } }, 'Close')),
      steps, result);
    card.querySelector('[data-testid="progress-close"]').hidden = true;
    put(progSlot, card);
    if (focusIt) card.querySelector('h2').focus();
    setBusy();
    setHead(dep);

    function setHead(d) {
      title.textContent = [d.action, d.release ? '→ ' + d.release : '', d.version ? `(${d.version})` : '', d.operator ? 'by ' + d.operator : ''].filter(Boolean).join(' ');
    }
    function step(phase, message, ms, bytes, retry) {
      const key = `${phase}|${message}|${ms}`;
      if (seen.has(key)) return;
      seen.add(key);
      steps.append(h('li', { 'data-phase': phase || '' },
        sp('phase', dash(phase)),
        sp('msg', message || '', bytes ? sp('muted', ` · ${fmtBytes(bytes)}`) : null, retry ? sp('badge warn', retry === true ? 'retry' : 'retry ' + retry) : null),
        h('time', { class: 't', datetime: ms ? new Date(ms).toISOString() : null }, fmtClock(ms))));
    }
    function finish(d) {
      if (me.done) return;
      me.done = true;
      pctrl.abort();
      setHead(d);
      const ok = GOOD.has(d.status);
      result.className = 'result' + (ok ? '' : ' bad');
      result.dataset.result = d.status || 'unknown';
      put(result, h('span', null, ok ? '✓ ' : '✕ ', d.status === 'succeeded' ? 'Succeeded' : dash(d.status)),
        d.reason ? sp('why', ' — ' + d.reason) : null,
        d.duration_ms != null ? sp('why muted', ' · ' + fmtDuration(d.duration_ms)) : null);
      card.querySelector('[data-testid="progress-close"]').hidden = false;
      setBusy();
      loadTarget();
      loadHistory();
    }
    const addEvents = (evs) => (evs || []).forEach((e) => step(e.kind, e.message, e.unix_ms));
    let finalSeen = null;
    (async () => {
      let tries = 0;
      while (!me.done && !pctrl.signal.aborted) {
        try {
          await readSSE('/api/deployments/' + enc(dep.id) + '/stream', {
            signal: pctrl.signal,
            onOpen: () => { tries = 0; },
            onMessage: (name, data) => {
              const d = parseJSON(data);
              if (!d) return;
              if (name === 'snapshot') { if (d.deployment) setHead(d.deployment); addEvents(d.events); } else if (name === 'progress') {
                step(d.phase, d.message, d.unix_ms, d.bytes_received, d.retry);
                if (d.final && !finalSeen) finalSeen = setTimeout(check, 2000);
              } else if (name === 'end') finish(d.deployment || d);
            },
          });
        } catch (e) {
          if (pctrl.signal.aborted || e.status === 401) return;
          if (e.status === 404) { report(e); return; }
        }
        if (me.done || pctrl.signal.aborted) return;
        if (await check()) return;
        tries++;
        await sleep(Math.min(500 * tries, 5000));
      }
    })();
    // The stream ended without "end": ask for the deployment itself.
    async function check() {
      if (me.done) return true;
      try {
        const det = await api('GET', '/api/deployments/' + enc(dep.id), undefined, { signal: pctrl.signal });
        addEvents(det && det.events);
        const d = det && det.deployment;
        if (d && (d.done || FINAL.has(d.status))) { finish(d); return true; }
      } catch (e) { if (e.name !== 'AbortError') report(e); }
      return false;
    }
  }

  loadTarget();
  loadHistory();
  focusHeading();
  view = {
    refresh: refreshSoon,
    onFleetEvent: (ev) => { if (!ev.target || ev.target === id) refreshSoon(); },
    cleanup: () => { ctrl.abort(); refreshSoon.cancel(); clearInterval(poll); },
  };
}

// ---------- fleet deploy view ----------
function renderFleetDeploy(id) {
  document.title = 'Fleet deploy ' + shortId(id) + ' · dockfra';
  const ctrl = new AbortController();
  const sig = { signal: ctrl.signal };
  let f = null;
  let timer = null;
  let loading = false;
  let gen = 0; // answers of loads started before the cancel's are stale
  const dot = fdDot('unknown', true);
  const badge = h('span', { class: 'badge' }, 'Loading…');
  const reason = h('p', { class: 'reason', role: 'status' });
  const facts = h('div', { class: 'kv fd-facts' });
  const bar = h('div', { class: 'fd-bar', role: 'img', 'aria-label': 'Progress' });
  const counts = h('div');
  const waves = h('div', { class: 'stack' });
  // Cancel: a first click asks, in the page; "Yes, cancel it" sends it.
  const cancelBtn = h('button', { type: 'button', class: 'btn btn-danger', testid: 'fleet-cancel', hidden: true, 'aria-expanded': 'false', 'aria-controls': 'fd-cancel-ask', onclick: () => arm() }, 'Cancel…');
  const yesBtn = h('button', { type: 'button', class: 'btn btn-danger btn-solid', testid: 'fleet-cancel-confirm', onclick: () => doCancel() }, 'Yes, cancel it');
  const keepBtn = h('button', { type: 'button', class: 'btn', testid: 'fleet-cancel-keep', onclick: () => disarm(true) }, 'Keep it running');
  const ask = h('div', { class: 'notice fd-cancel-ask', id: 'fd-cancel-ask', testid: 'fleet-cancel-ask', role: 'group', 'aria-labelledby': 'fd-cancel-q', hidden: true },
    h('p', { id: 'fd-cancel-q' }, h('b', null, 'Cancel this fleet deploy? '), 'The orders it gave run on; the targets it has not ordered yet are skipped.'),
    h('div', { class: 'actions' }, yesBtn, keepBtn));
  ask.addEventListener('keydown', (e) => { if (e.key === 'Escape') { e.preventDefault(); disarm(true); } });
  const page = h('div', { testid: 'fleet-deploy', 'data-fleet': id },
    h('a', { class: 'crumb', href: '#/' }, '← Fleet'),
    h('div', { class: 'page-head' }, h('div', null,
      h('div', { class: 'target-title' }, dot, h('h1', { tabindex: '-1' }, 'Fleet deploy ', sp('mono', shortId(id))), badge),
      reason),
    h('div', { class: 'spacer' }),
    h('div', { class: 'actions', role: 'group', 'aria-label': 'Fleet deploy actions' }, cancelBtn)),
    ask,
    h('div', { class: 'stack' },
      h('section', { class: 'card', 'aria-label': 'Summary' }, h('div', { class: 'card-body stack' }, facts, bar, counts)),
      waves));
  put($main, page);

  const kv = (k, ...v) => h('div', null, sp('k', k), h('span', { class: 'v' }, ...v));
  function render() {
    page.dataset.status = f.status;
    dot.dataset.state = f.status;
    put(badge, fdLabel(f.status));
    badge.className = 'badge ' + (FD_CLASS[f.status] || '');
    const open = (f.targets || []).filter((t) => t.status === 'deploying').length;
    reason.textContent = [f.reason || (f.status === 'running' ? `Wave ${fdWave(f)} running…` : ''),
      unsettled(f) ? (open ? `${open} order${open === 1 ? '' : 's'} given still run${open === 1 ? 's' : ''}` : 'the targets not ordered are being skipped') + '…' : '']
      .filter(Boolean).join(' — ');
    if (f.status !== 'running' && document.activeElement === cancelBtn) page.querySelector('h1').focus({ preventScroll: true });
    cancelBtn.hidden = f.status !== 'running';
    if (f.status !== 'running' && !ask.hidden) disarm(false);
    const end = f.finished_unix || (f.status === 'running' ? Date.now() / 1000 : 0);
    put(facts,
      kv('Action', dash(f.action), f.version ? sp('muted', ' · ' + f.version) : null),
      kv('Targets', f.selector ? sp('mono', f.selector) : 'all targets'),
      kv('Operator', dash(f.operator)),
      kv('Started', h('time', { title: relTime(f.created_unix) }, fmtTime(f.created_unix))),
      kv(f.finished_unix ? 'Took' : 'Running for', f.created_unix && end ? fmtSeconds(end - f.created_unix) : '—'),
      kv('Wave', fdWave(f)),
      kv('Canary', f.canary ? `${f.canary} target${f.canary === 1 ? '' : 's'}, soak ${fmtDuration(f.soak_ms)}` : 'none'),
      kv('Max parallel', f.max_parallel ? String(f.max_parallel) : 'all at once'),
      kv('Wave timeout', fmtDuration(f.wave_timeout_ms)),
      f.auto_rollback ? kv('Auto-rollback', 'yes') : null);
    const ts = f.targets || [];
    const c = {};
    for (const t of ts) c[t.status] = (c[t.status] || 0) + 1;
    put(bar, ...[...FD_ORDER, ...Object.keys(c).filter((k) => !FD_ORDER.includes(k))].filter((k) => c[k]).map((k) => {
      const seg = h('span', { 'data-status': k, title: `${c[k]} ${fdLabel(k)}` });
      seg.style.flexGrow = String(c[k]);
      return seg;
    }));
    bar.setAttribute('aria-label', ts.length ? FD_ORDER.filter((k) => c[k]).map((k) => `${c[k]} ${fdLabel(k)}`).join(', ') : 'No targets');
    put(counts, fdCounts(f.counts || c));
    const n = Math.max(f.waves || 0, ...ts.map((t) => (t.wave || 0) + 1));
    keepFocus(waves, () => put(waves, ...Array.from({ length: n }, (_, w) => wave(w, ts.filter((t) => (t.wave || 0) === w)))));
  }
  function waveName(w) {
    const name = (f.wave_names || [])[w];
    if (name && !/^wave \d+$/i.test(name)) return `Wave ${w + 1} — ${name}`;
    return w === 0 && f.canary > 0 ? 'Wave 1 — canary' : `Wave ${w + 1}`;
  }
  function waveState(w, ms) {
    const c = {};
    for (const t of ms) c[t.status] = (c[t.status] || 0) + 1;
    const n = ms.length;
    if (n && c.skipped === n) return 'skipped';
    if (c.failed) return 'failed';
    if (f.status === 'running' && w === (f.wave || 0)) return !c.deploying && !c.planned && w === 0 && f.canary > 0 ? 'soaking' : 'running';
    if (c.deploying) return 'running'; // after a cancel, the orders given run on
    if (n && c.planned === n) return 'waiting';
    if (c.pending) return 'pending';
    if (n && c.succeeded === n) return 'succeeded';
    return 'done';
  }
  function wave(w, ms) {
    const st = waveState(w, ms);
    const done = ms.filter((t) => ['succeeded', 'failed', 'skipped', 'rolled_back'].includes(t.status)).length;
    const label = { soaking: `soaking ${fmtDuration(f.soak_ms)}`, waiting: f.status === 'cancelled' ? 'not ordered' : 'waiting' }[st] || fdLabel(st);
    const cls = { running: 'info', soaking: 'info', succeeded: 'ok', failed: 'bad', pending: 'warn' }[st] || '';
    return h('section', { class: 'card wave', testid: 'fleet-wave-' + (w + 1), 'data-wave': w + 1, 'data-state': st, 'aria-labelledby': 'h-wave-' + w },
      h('div', { class: 'card-head' }, h('h2', { id: 'h-wave-' + w }, waveName(w)),
        h('span', { class: 'badge ' + cls }, st === 'running' || st === 'soaking' ? h('span', { class: 'spinner spinner-sm', 'aria-hidden': 'true' }) : null, label),
        sp('spacer'), sp('muted small', `${done} of ${ms.length} done`)),
      h('ul', { class: 'fd-targets' }, ms.length ? ms.map(target) : h('li', { class: 'muted' }, 'No targets.')));
  }
  function target(t) {
    const d = t.deployment;
    return h('li', { testid: 'fleet-target-' + t.target, 'data-status': t.status, 'data-wave': (t.wave || 0) + 1 },
      fdDot(t.status),
      h('div', { class: 'fd-name' },
        h('a', { href: '#/targets/' + enc(t.target), fkey: 'ft-' + t.target }, t.target),
        d && (d.release || d.version) ? sp('v', d.release ? sp('mono', d.release) : null, d.version ? (d.release ? ' · ' : '') + d.version : null) : null,
        t.current_release && (!d || t.current_release !== d.release)
          ? sp('v', d ? 'runs now ' : 'runs ', sp('mono', t.current_release), t.current_version ? ' · ' + t.current_version : '') : null),
      fdBadge(t.status),
      h('div', { class: 'fd-reason' }, t.reason || '',
        d && !(t.reason || '').includes(d.id) ? sp('muted small', t.reason ? ' · ' : '', d.action === 'rollback' && f.action === 'deploy' ? 'rollback ' : '',
          h('span', { class: 'mono', title: d.id }, shortId(d.id)), d.done || FINAL.has(d.status) ? ' · ' + fmtDuration(d.duration_ms) : '') : null));
  }
  function arm() {
    if (!f || f.status !== 'running') return;
    ask.hidden = false;
    cancelBtn.hidden = true;
    cancelBtn.setAttribute('aria-expanded', 'true');
    yesBtn.disabled = false;
    yesBtn.textContent = 'Yes, cancel it';
    keepBtn.focus(); // a double click or a second Enter keeps it running
  }
  function disarm(refocus) {
    const had = ask.contains(document.activeElement);
    ask.hidden = true;
    cancelBtn.setAttribute('aria-expanded', 'false');
    cancelBtn.hidden = !f || f.status !== 'running';
    if (refocus || had) (cancelBtn.hidden ? page.querySelector('h1') : cancelBtn).focus({ preventScroll: true });
  }
  async function doCancel() {
    yesBtn.disabled = true;
    yesBtn.textContent = 'Cancelling…';
    clearError();
    try {
      const nf = await api('POST', '/api/fleet-deploys/' + enc(id) + '/cancel', undefined, sig);
      if (ctrl.signal.aborted) return;
      gen++;
      if (nf && nf.id) { f = nf; render(); }
      disarm(true);
      load();
    } catch (e) {
      if (e.name === 'AbortError') return;
      if (e.status === 409) { showError('Not cancelled: ' + e.message); disarm(true); load(); return; }
      yesBtn.disabled = false;
      yesBtn.textContent = 'Yes, cancel it';
      report(e);
    }
  }
  async function load() {
    if (loading) return;
    loading = true;
    clearTimeout(timer);
    const my = gen;
    try {
      const nf = await api('GET', '/api/fleet-deploys/' + enc(id), undefined, sig);
      if (ctrl.signal.aborted) return;
      if (my !== gen) return;
      f = nf;
      render();
    } catch (e) {
      if (e.status === 404 && !f) {
        ctrl.abort();
        put($main, h('a', { class: 'crumb', href: '#/' }, '← Fleet'),
          h('section', { class: 'card' }, h('div', { class: 'card-body stack' },
            h('h1', { tabindex: '-1' }, 'Fleet deploy ', sp('mono', id)),
            h('p', { class: 'muted' }, 'The coordinator knows no fleet deploy by this id.'),
            h('p', null, h('a', { href: '#/' }, 'Back to the fleet')))));
      }
      report(e);
    } finally {
      loading = false;
      // Every second while it runs (or until the first answer); after a cancel, until the
      // orders given have ended and the rest is skipped; stop when it is done.
      if (!ctrl.signal.aborted && watching(f)) timer = setTimeout(load, my !== gen ? 0 : f && f.status !== 'running' ? 2000 : 1000);
    }
  }
  const soon = debounce(() => { if (watching(f)) load(); }, 200);
  load();
  focusHeading();
  view = {
    refresh: soon,
    onFleetEvent: soon,
    cleanup: () => { ctrl.abort(); soon.cancel(); clearTimeout(timer); },
  };
}

// ---------- relative times tick ----------
setInterval(() => {
  for (const el of document.querySelectorAll('time[data-rel]')) {
    const s = relTime(Number(el.dataset.rel));
    if (el.textContent !== s) el.textContent = s;
  }
}, 1000);

// ---------- start ----------
if (token) {
  setSession('');
  startFleetStream();
  api('GET', '/api/whoami').then((w) => setSession((w && w.operator) || ''), report);
}
route();

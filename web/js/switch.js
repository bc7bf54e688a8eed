// The switch page: every VM the user may see, as cards with state, a live thumbnail, who is
// watching and power buttons. Cards are built once and updated in place; thumbnails load
// only for running VMs whose card is on screen, only while the page is visible, and ask
// hvd for a shot at most THUMB_MAX_AGE_MS old, so many watchers cost one screendump.
import { api, act, consoles, showError, vmPath, whoami, wireHeader, toLogin } from './api.js';
import { follow } from './events.js';
import { watcherText } from './control.js';

const THUMB_EVERY_MS = 2500;
const THUMB_MAX_AGE_MS = 2000;

const grid = document.getElementById('grid');
const search = document.getElementById('search');
const stateFilter = document.getElementById('state-filter');
const count = document.getElementById('count');
const empty = document.getElementById('empty');

/** name → { vm, control, el, parts, visible } */
const cards = new Map();
let canControlAny = null; // null: unknown (no control API); else per VM in control.you

const visibleObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    const c = cards.get(e.target.dataset.vm);
    if (c) {
      c.visible = e.isIntersecting;
      if (c.visible) refreshThumb(c);
    }
  }
}, { rootMargin: '100px' });

function el(tag, attrs = {}, ...kids) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') n.textContent = v;
    else n.setAttribute(k, v);
  }
  n.append(...kids);
  return n;
}

function makeCard(vm) {
  const href = `vm.html?name=${encodeURIComponent(vm.name)}`;
  const state = el('span', { 'data-testid': 'vm-state', class: 'state' });
  const img = el('img', { 'data-testid': 'vm-thumb', alt: `screen of ${vm.name}` });
  const note = el('span', { class: 'thumb-note' });
  const watchers = el('div', { 'data-testid': 'vm-watchers', class: 'watchers' });
  const btn = (label, action, cls) => {
    const b = el('button', { type: 'button', 'data-power': action, 'data-testid': `power-${action}`, text: label });
    if (cls) b.className = cls;
    return b;
  };
  const start = btn('Start', 'start');
  const shutdown = btn('Shut down', 'shutdown');
  const destroy = btn('Power off', 'destroy', 'danger');
  const open = el('a', { href, class: 'button', text: 'Console' });
  const card = el('article', { class: 'card', 'data-testid': 'vm-card', 'data-vm': vm.name },
    el('header', {}, el('a', { href, title: vm.name, text: vm.name }), state),
    el('a', { href, class: 'thumb-link', tabindex: '-1' }, img, note),
    el('footer', {}, open, start, shutdown, destroy, watchers));
  img.hidden = true;
  img.addEventListener('load', () => { img.hidden = false; note.textContent = ''; });
  img.addEventListener('error', () => { img.hidden = true; note.textContent = 'no screen'; });
  const c = { vm, control: null, el: card, parts: { state, img, note, watchers, start, shutdown, destroy }, visible: false, shotAt: 0, loading: false, thumbUrl: null };
  for (const b of [start, shutdown, destroy]) {
    b.addEventListener('click', () => act(b, async () => {
      const body = b.dataset.power === 'shutdown' ? { timeout_secs: 120 } : undefined;
      await api('POST', vmPath(vm.name, `/${b.dataset.power}`), body);
    }));
  }
  visibleObserver.observe(card);
  return c;
}

function paint(c) {
  const { vm, parts } = c;
  parts.state.textContent = vm.state;
  parts.state.className = `state state-${vm.state}`;
  const running = vm.state === 'running' || vm.state === 'paused';
  const mayPower = c.control ? c.control.you.can_control : canControlAny !== false;
  parts.start.hidden = !mayPower || running || vm.state === 'starting';
  parts.shutdown.hidden = !mayPower || !running;
  parts.destroy.hidden = !mayPower || vm.state === 'shutoff';
  parts.watchers.textContent = watcherText(c.control);
  if (!running) {
    parts.img.hidden = true;
    parts.img.removeAttribute('src');
    if (c.thumbUrl) { URL.revokeObjectURL(c.thumbUrl); c.thumbUrl = null; }
    parts.note.textContent = vm.state === 'shutoff' ? 'powered off' : vm.state;
  }
}

/** Fetches a new thumbnail (one request per card at a time) and shows it as a blob URL. */
async function refreshThumb(c) {
  const running = c.vm.state === 'running' || c.vm.state === 'paused';
  if (!running || !c.visible || document.hidden || c.loading) return;
  if (Date.now() - c.shotAt < THUMB_EVERY_MS - 100) return;
  c.shotAt = Date.now();
  c.loading = true;
  try {
    const resp = await fetch(`${vmPath(c.vm.name, '/screenshot')}?max_age_ms=${THUMB_MAX_AGE_MS}`,
      { credentials: 'same-origin' });
    if (resp.status === 401) { toLogin(); return; }
    const blob = resp.ok ? await resp.blob() : null;
    if (!blob || blob.type !== 'image/png') {
      c.parts.img.hidden = true;
      c.parts.note.textContent = resp.ok ? 'no screen' : `no screen (${resp.status})`;
      return;
    }
    const old = c.thumbUrl;
    c.thumbUrl = URL.createObjectURL(blob);
    c.parts.img.src = c.thumbUrl;
    if (old) URL.revokeObjectURL(old);
  } catch (_) {
    c.parts.note.textContent = 'no screen';
  } finally {
    c.loading = false;
  }
}

function applyFilter() {
  const q = search.value.trim().toLowerCase();
  const st = stateFilter.value;
  let shown = 0;
  for (const c of cards.values()) {
    const ok = (!q || c.vm.name.toLowerCase().includes(q)) && (!st || c.vm.state === st);
    c.el.hidden = !ok;
    if (ok) shown += 1;
  }
  count.textContent = `${shown} of ${cards.size} VMs`;
  empty.hidden = shown > 0;
}

async function load() {
  let list;
  try {
    list = await api('GET', '/v1/vms');
  } catch (e) {
    showError(e);
    return;
  }
  const ctl = await consoles().catch(() => null);
  const byVm = new Map((ctl || []).map((s) => [s.vm, s]));
  if (ctl === null) canControlAny = null;
  const names = new Set(list.vms.map((v) => v.name));
  for (const [name, c] of cards) {
    if (!names.has(name)) {
      visibleObserver.unobserve(c.el);
      c.el.remove();
      if (c.thumbUrl) URL.revokeObjectURL(c.thumbUrl);
      cards.delete(name);
    }
  }
  const frag = document.createDocumentFragment();
  for (const vm of list.vms.sort((a, b) => a.name.localeCompare(b.name))) {
    let c = cards.get(vm.name);
    if (!c) { c = makeCard(vm); cards.set(vm.name, c); }
    c.vm = vm;
    c.control = byVm.get(vm.name) || null;
    paint(c);
    frag.append(c.el); // keeps sorted order; moving an existing node is cheap
  }
  grid.append(frag);
  applyFilter();
}

function onEvent(ev) {
  const c = cards.get(ev.vm);
  switch (ev.event) {
    case 'state-changed':
      if (c) { c.vm.state = ev.state; paint(c); c.shotAt = 0; refreshThumb(c); applyFilter(); }
      break;
    case 'control':
      if (c && c.control) {
        Object.assign(c.control, { holder: ev.holder, watchers: ev.watchers, requests: ev.requests });
        paint(c);
      } else if (c) {
        consoles().then((all) => {
          const s = (all || []).find((x) => x.vm === ev.vm);
          if (s) { c.control = s; paint(c); }
        }).catch(() => {});
      }
      break;
    case 'defined':
    case 'undefined':
      load();
      break;
    default:
      break;
  }
}

function main() {
  wireHeader();
  search.addEventListener('input', applyFilter);
  stateFilter.addEventListener('change', applyFilter);
  setInterval(() => { for (const c of cards.values()) refreshThumb(c); }, 500);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) for (const c of cards.values()) refreshThumb(c);
  });
  load().then(() => follow(onEvent, { onReconnect: load }));
}

if (whoami()) main();
else toLogin();

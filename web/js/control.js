// Shared control of a VM's console (GET/POST /v1/vms/NAME/control): the control bar of the VM
// page, and how watchers are described on the switch page.
import { api, act, vmPath } from './api.js';

/** "alice (vnc), bob (serial)" or "nobody". */
export function watcherText(state) {
  if (!state || !state.watchers || state.watchers.length === 0) return state ? 'nobody watching' : '';
  const holder = state.holder ? `control: ${state.holder} · ` : '';
  return holder + state.watchers.map((w) => `${w.user} (${w.kind})`).join(', ');
}

/**
 * Wires the control bar for VM `name`; `onChange(state)` is told every new state (the page
 * turns the console's view-only mode from it). Returns { refresh, apply } for event updates.
 */
export function controlBar(name, onChange) {
  const $ = (id) => document.getElementById(id);
  const holderEl = $('control-holder');
  const take = $('control-take');
  const request = $('control-request');
  const release = $('control-release');
  const give = $('control-give');
  const giveTo = $('control-give-to');
  const watchers = $('watchers');
  const requests = $('requests');
  const bar = holderEl.closest('.controlbar');
  let state = null;

  const render = () => {
    if (!state) {
      holderEl.textContent = 'nobody';
      for (const b of [take, request, release, give]) b.disabled = true;
      watchers.textContent = 'shared control is not available on this hvd';
      return;
    }
    const you = state.you || {};
    holderEl.textContent = state.holder || 'nobody';
    bar.title = state.idle_timeout_s
      ? `Control is released when its holder closes the console or types nothing for ${Math.round(state.idle_timeout_s / 60)} min`
      : '';
    bar.classList.toggle('holding', !!you.holds);
    const heldByOther = !!state.holder && !you.holds;
    take.hidden = you.holds || !you.can_take;
    take.disabled = false;
    take.textContent = heldByOther ? 'Take over' : 'Take control';
    request.hidden = !you.can_control || !heldByOther;
    request.disabled = (state.requests || []).includes(you.user);
    release.hidden = !you.holds;
    release.disabled = false;
    const others = [...new Set((state.watchers || []).map((w) => w.user))].filter((u) => u !== you.user);
    giveTo.replaceChildren(...others.map((u) => new Option(u, u)));
    give.hidden = giveTo.hidden = !you.holds;
    give.disabled = others.length === 0;
    watchers.textContent = (state.watchers || []).length
      ? state.watchers.map((w) => `${w.user} (${w.kind})`).join(', ') : 'nobody';
    requests.textContent = (state.requests || []).length ? `Asking for control: ${state.requests.join(', ')}` : '';
  };

  const set = (s) => { state = s; render(); onChange(state); };
  const refresh = async () => {
    try {
      set(await api('GET', vmPath(name, '/control')));
    } catch (e) {
      // An hvd without shared control: the consoles still work, and hvd still decides.
      set(null);
      if (![403, 404, 405].includes(e.status)) throw e;
    }
  };
  const post = (button, action, to) => act(button, async () => {
    set(await api('POST', vmPath(name, '/control'), to ? { action, to } : { action }));
  });
  take.addEventListener('click', () => post(take, 'take'));
  request.addEventListener('click', () => post(request, 'request'));
  release.addEventListener('click', () => post(release, 'release'));
  give.addEventListener('click', () => post(give, 'give', giveTo.value));

  const apply = (ev) => {
    if (!state) { refresh().catch(() => {}); return; }
    Object.assign(state, { holder: ev.holder, watchers: ev.watchers, requests: ev.requests });
    // `you` follows the holder at once; hvd's own view (can_take) is read again right after.
    if (state.you) {
      state.you.holds = !!ev.holder && ev.holder === state.you.user;
      if (!ev.holder) state.you.can_take = state.you.can_control;
    }
    render();
    onChange(state);
    refresh().catch(() => {});
  };
  render();
  return { refresh, apply, get: () => state };
}

// The VM page (vm.html?name=NAME): the graphical console with the control bar, send-key menu,
// paste, screenshot, the serial console tab, power, virtual media and the VM switcher.
import { api, act, showError, vmPath, whoami, wireHeader, toLogin } from './api.js';
import { follow } from './events.js';
import { controlBar } from './control.js';
import { screen } from './screen.js';
import { serial } from './serial.js';
import { mediaPanel } from './media.js';
import { wireKeys } from './keys.js';

const $ = (id) => document.getElementById(id);
const name = new URLSearchParams(location.search).get('name') || '';
let info = null;
let serialShown = false;

const scr = screen(name, $('screen'), $('screen-status'), $('screen-note'));
const term = serial(name, $('serial'));
const media = mediaPanel(name, { onChanged: () => loadInfo() });
const ctl = controlBar(name, (state) => {
  const holds = !!(state && state.you && state.you.holds);
  // Without the control API, let the console try: hvd decides.
  const canType = state ? holds : true;
  scr.setViewOnly(!canType);
  term.setCanType(canType);
  const may = state ? !!state.you.can_control : true;
  for (const b of document.querySelectorAll('[data-power]')) b.hidden = !may;
  for (const b of document.querySelectorAll('#keys-menu button, #paste-send, #paste-text')) b.disabled = !canType;
  // Viewers cannot type at all: no keyboard tools for them (the API refuses them anyway).
  $('input-tools').hidden = !may;
  media.setAllowed(may);
  paintPower();
});

function running() {
  return !!info && (info.state === 'running' || info.state === 'paused');
}

function paintPower() {
  const st = info ? info.state : '';
  $('vm-state').textContent = st || '…';
  $('vm-state').className = `state state-${st}`;
  const on = running();
  const q = (p) => document.querySelector(`[data-power=${p}]`);
  q('start').disabled = on || st === 'starting';
  q('shutdown').disabled = !on;
  q('reset').disabled = !on;
  q('destroy').disabled = st === 'shutoff' || !st;
}

async function loadInfo() {
  try {
    info = await api('GET', vmPath(name));
  } catch (e) {
    showError(e);
    return;
  }
  document.title = `hv — ${name}`;
  paintPower();
  const shot = $('screenshot-download');
  if (running()) {
    shot.href = vmPath(name, '/screenshot');
    shot.classList.remove('disabled');
    shot.removeAttribute('aria-disabled');
  } else {
    shot.removeAttribute('href');
    shot.classList.add('disabled');
    shot.setAttribute('aria-disabled', 'true');
  }
  media.setInfo(info);
  const graphics = info.spec && info.spec.graphics && info.spec.graphics.type;
  if (graphics === 'none') {
    scr.setRunning(false, `${name} has no graphical console (graphics none); redefine it with --graphics console, or use the serial console`);
  } else scr.setRunning(running());
  if (serialShown) term.setRunning(running());
}

let switcherNames = [];

function go(vm) {
  if (vm && vm !== name) location.href = `vm.html?name=${encodeURIComponent(vm)}`;
}

async function loadSwitcher() {
  const sel = $('vm-switcher');
  const list = await api('GET', '/v1/vms');
  const vms = list.vms.sort((a, b) => a.name.localeCompare(b.name));
  switcherNames = vms.map((v) => v.name);
  sel.replaceChildren(...vms.map((v) => new Option(`${v.name} · ${v.state}`, v.name, false, v.name === name)));
}

/** Like a KVM switch's hot key: Alt+PageUp / Alt+PageDown go to the previous / next VM
 * (while the keyboard is not captured by the screen or the terminal). */
function wireSwitcher() {
  $('vm-switcher').addEventListener('change', (e) => go(e.target.value));
  document.addEventListener('keydown', (e) => {
    if (!e.altKey || (e.key !== 'PageUp' && e.key !== 'PageDown') || switcherNames.length < 2) return;
    const i = switcherNames.indexOf(name);
    const n = switcherNames.length;
    e.preventDefault();
    go(switcherNames[(i + (e.key === 'PageDown' ? 1 : n - 1)) % n]);
  });
}

function tabs() {
  const show = (which) => {
    const serialTab = which === 'serial';
    $('tab-screen').setAttribute('aria-selected', String(!serialTab));
    $('tab-serial').setAttribute('aria-selected', String(serialTab));
    $('pane-screen').hidden = serialTab;
    $('pane-serial').hidden = !serialTab;
    $('fullscreen').hidden = serialTab;
    $('screen-status').hidden = serialTab;
    if (serialTab) {
      term.show();
      if (!serialShown) { serialShown = true; term.setRunning(running()); }
    } else scr.focus();
  };
  $('tab-screen').addEventListener('click', () => show('screen'));
  $('tab-serial').addEventListener('click', () => show('serial'));
  $('fullscreen').addEventListener('click', () => act(null, async () => {
    await $('screen').requestFullscreen();
    scr.focus();
  }));
  window.addEventListener('resize', () => term.fit());
}

function power() {
  for (const b of document.querySelectorAll('[data-power]')) {
    b.addEventListener('click', () => act(b, async () => {
      const p = b.dataset.power;
      if (p === 'destroy' && !window.confirm(`Power off ${name} at once? Unsaved guest data is lost.`)) return;
      const body = p === 'shutdown' ? { timeout_secs: 120 } : undefined;
      info = await api('POST', vmPath(name, `/${p}`), body);
      await loadInfo();
    }));
  }
}

/** The screenshot link downloads NAME-TIME.png; an error is shown, not saved as a PNG. */
function wireScreenshot() {
  const link = $('screenshot-download');
  link.setAttribute('download', `${name}.png`);
  link.addEventListener('click', (e) => {
    e.preventDefault();
    if (!running()) return;
    act(null, async () => {
      const resp = await api('GET', vmPath(name, '/screenshot'), undefined, { raw: true });
      const blob = await resp.blob();
      if (blob.type !== 'image/png') throw new Error(`the screenshot is not a PNG (${blob.type || 'no type'})`);
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.png`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  });
}

function onEvent(ev) {
  if (ev.vm !== name) return;
  if (ev.event === 'state-changed' || ev.event === 'updated' || ev.event === 'reset') loadInfo();
  else if (ev.event === 'control') ctl.apply(ev);
  else if (ev.event === 'undefined') showError(`${name} was undefined`);
}

if (!whoami()) toLogin();
else if (!name) showError('no VM named: open this page from the switch (vm.html?name=NAME)');
else {
  wireHeader();
  wireScreenshot();
  tabs();
  power();
  wireKeys(name);
  wireSwitcher();
  loadSwitcher().catch(showError);
  media.load();
  loadInfo().then(() => ctl.refresh()).catch(showError);
  follow(onEvent, { onReconnect: () => { loadInfo(); ctl.refresh().catch(() => {}); } });
}

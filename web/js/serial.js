// The serial console tab: xterm.js (+ fit addon) over GET /v1/vms/NAME/console, a WebSocket
// of binary frames. Typing is sent only while this user holds control (hvd drops it
// otherwise anyway).
import { Terminal } from '../vendor/xterm/lib/xterm.mjs';
import { FitAddon } from '../vendor/xterm-addon-fit/lib/addon-fit.mjs';
import { vmPath } from './api.js';

export function serial(name, container) {
  const term = new Terminal({
    fontFamily: '"DejaVu Sans Mono", monospace',
    fontSize: 13,
    scrollback: 5000,
    convertEol: false,
    cursorBlink: true,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  let opened = false;
  let ws = null;
  let wanted = false;
  let canType = false;
  let retry = null;
  const encoder = new TextEncoder();

  term.onData((d) => {
    if (ws && ws.readyState === WebSocket.OPEN && canType) ws.send(encoder.encode(d));
  });

  const connect = () => {
    clearTimeout(retry);
    if (ws || !wanted) return;
    // history: the session starts with the console's recent output (so the tab is not blank
    // until the guest prints again); the terminal is cleared first, so a reconnect does not
    // show it twice.
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${vmPath(name, '/console')}?history=true`;
    term.reset();
    ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (m) => {
      term.write(typeof m.data === 'string' ? m.data : new Uint8Array(m.data));
    };
    ws.onclose = (e) => {
      ws = null;
      term.write(`\r\n\x1b[33m[hv: console closed${e.reason ? `: ${e.reason}` : ''}]\x1b[0m\r\n`);
      if (wanted) retry = setTimeout(connect, 3000);
    };
  };

  return {
    /** Shows the terminal (the first time the tab opens) and fits it to its pane. */
    show() {
      if (!opened) { term.open(container); opened = true; }
      fit.fit();
      term.focus();
    },
    fit() { if (opened) fit.fit(); },
    setRunning(running) {
      wanted = running;
      if (running) connect();
      else { clearTimeout(retry); if (ws) ws.close(); }
    },
    setCanType(v) { canType = v; term.options.disableStdin = !v; },
  };
}

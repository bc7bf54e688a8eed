// The graphical console: noVNC over GET /v1/vms/NAME/vnc (a WebSocket of RFB 3.8, security
// None: hvd authenticated the session). View-only unless this user holds control — hvd drops
// the input of everyone else anyway; this only keeps the page honest about it.
import RFB from '../vendor/novnc/core/rfb.js';
import { vmPath } from './api.js';

export function screen(name, container, status, note) {
  let rfb = null;
  let viewOnly = true;
  let wanted = false;
  let retry = null;
  let backoff = 2000;

  const say = (t, big) => {
    status.textContent = big ? '' : t;
    note.textContent = big ? t : '';
    note.hidden = !big;
  };

  const connect = () => {
    clearTimeout(retry);
    if (rfb || !wanted) return;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${vmPath(name, '/vnc')}`;
    say('connecting…');
    try {
      rfb = new RFB(container, url, { shared: true, wsProtocols: ['binary'] });
    } catch (e) {
      say(`cannot open the console: ${e.message}`);
      return;
    }
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.viewOnly = viewOnly;
    rfb.focusOnClick = true;
    rfb.addEventListener('connect', () => {
      backoff = 2000;
      say(viewOnly ? 'connected · view only' : 'connected');
    });
    rfb.addEventListener('disconnect', (e) => {
      rfb = null;
      if (!wanted) return;
      say(`${e.detail.clean ? 'disconnected' : 'no connection to the screen'}; retrying in ${backoff / 1000} s`, true);
      retry = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 30000);
    });
    rfb.addEventListener('securityfailure', (e) => say(`refused: ${e.detail.reason || e.detail.status}`));
  };

  return {
    /** Connects while the VM runs; disconnects when it does not. */
    setRunning(running, why) {
      wanted = running;
      if (running) connect();
      else {
        clearTimeout(retry);
        if (rfb) { rfb.disconnect(); rfb = null; }
        say(why || 'the VM is not running: start it to see its screen', true);
      }
    },
    setViewOnly(v) {
      viewOnly = v;
      if (rfb) {
        rfb.viewOnly = v;
        say(v ? 'connected · view only' : 'connected');
      }
    },
    focus() { if (rfb) rfb.focus(); },
    get connected() { return !!rfb; },
  };
}

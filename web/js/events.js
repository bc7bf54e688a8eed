// Follows GET /v1/events (NDJSON, one Event per line) and calls `onEvent` for each; reconnects
// after a pause when the stream ends, and `onReconnect` lets the page re-read what it may
// have missed.

import { toLogin } from './api.js';

export function follow(onEvent, { onReconnect } = {}) {
  const ctl = new AbortController();
  let delay = 1000;
  const run = async () => {
    while (!ctl.signal.aborted) {
      try {
        const resp = await fetch('/v1/events', { credentials: 'same-origin', signal: ctl.signal });
        if (resp.status === 401) { toLogin(); return; }
        if (!resp.ok || !resp.body) throw new Error(`events: ${resp.status}`);
        delay = 1000;
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            let ev;
            try { ev = JSON.parse(line); } catch (_) { continue; }
            onEvent(ev);
          }
          if (buf.length > 1 << 20) buf = ''; // no line is that long: drop garbage
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
      if (onReconnect && !ctl.signal.aborted) onReconnect();
    }
  };
  run();
  return () => ctl.abort();
}

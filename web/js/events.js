// Follows GET /v1/events (NDJSON, one numbered Event per line) and calls `onEvent` for each.
// When the stream ends it reconnects after a pause with `since` = the last id seen, so hvd
// replays what happened in between; only when hvd no longer has all of it (a `gap` record)
// does `onReconnect` let the page re-read its state. The pages only ask for the kinds they
// show.

import { toLogin } from './api.js';

const KINDS = 'state-changed,control,defined,undefined,updated,reset';

export function follow(onEvent, { onReconnect } = {}) {
  const ctl = new AbortController();
  let delay = 1000;
  let last = null;
  const run = async () => {
    while (!ctl.signal.aborted) {
      try {
        const since = last === null ? '' : `&since=${last}`;
        const resp = await fetch(`/v1/events?type=${KINDS}${since}`, { credentials: 'same-origin', signal: ctl.signal });
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
            if (ev.event === 'gap') { if (onReconnect) onReconnect(); continue; }
            if (typeof ev.id === 'number') last = ev.id;
            onEvent(ev);
          }
          if (buf.length > 1 << 20) buf = ''; // no line is that long: drop garbage
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
      // Without an id to resume from, re-read everything.
      if (last === null && onReconnect && !ctl.signal.aborted) onReconnect();
    }
  };
  run();
  return () => ctl.abort();
}

// The send-key menu and paste-as-keystrokes: POST /v1/vms/NAME/keys with `keys` (combos like
// ctrl-alt-delete) or `text` (typed as US-layout keystrokes by hvd).
import { api, act, vmPath } from './api.js';

const MAX_TEXT = 4096;

export function wireKeys(name) {
  for (const b of document.querySelectorAll('#keys-menu [data-keys]')) {
    b.addEventListener('click', () => act(b, () => api('POST', vmPath(name, '/keys'), { keys: [b.dataset.keys] })));
  }
  const text = document.getElementById('paste-text');
  const send = document.getElementById('paste-send');
  send.addEventListener('click', () => act(send, async () => {
    const t = text.value.replace(/\r\n?/g, '\n');
    if (!t) throw new Error('nothing to type: put the text in the box first');
    if (t.length > MAX_TEXT) throw new Error(`at most ${MAX_TEXT} characters can be typed at once (this is ${t.length})`);
    await api('POST', vmPath(name, '/keys'), { text: t });
  }));
}

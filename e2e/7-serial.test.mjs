// Scenario 7: the serial tab shows the console (xterm.js), and typing there reaches the guest
// while holding control.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BOOT_TIMEOUT_S, openVm, rand, setup, tid, typeKeys, waitHolder } from './harness.mjs';

test('the serial tab shows the console and typing reaches the guest with control', async (t) => {
  const { hvd, page } = await setup(t, 'serial');
  await hvd.vm('ser');
  const op = await hvd.user('op', 'operator');
  await hvd.waitConsole('ser', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  const p = await page(op);
  await openVm(p, hvd, 'ser');
  await p.click(tid('tab-serial'));
  const serial = p.locator(tid('serial'));
  await serial.waitFor();
  await waitHolder(p, 'op');
  // The tab opens with what the console printed before (the guest's boot), not a blank pane.
  await serial.filter({ hasText: 'HV-GUEST-READY' }).waitFor();
  await serial.click();
  // A newline gets a fresh prompt on the screen.
  await typeKeys(p, '\n');
  await serial.filter({ hasText: 'HV-PROMPT rc=' }).waitFor();

  const marker = `hv-e2e-serial-${rand()}`;
  await typeKeys(p, `echo ${marker}\n`);
  await hvd.waitConsole('ser', marker);
  await serial.filter({ hasText: marker }).waitFor();
  assert.match(await serial.innerText(), new RegExp(marker));
  await p.screenshot({ path: `${hvd.out}/serial-tab.png` });
});

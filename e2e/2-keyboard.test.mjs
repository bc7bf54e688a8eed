// Scenario 2: keyboard end to end. The canvas shows the guest's screen; with control, typing
// on the guest's VGA console (the tiny guest's shell on tty1) runs a command that writes a
// marker to the serial port, and the serial log shows it. Paste as keystrokes does the same.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BOOT_TIMEOUT_S, openVm, rand, setup, tid, typeOnScreen, waitScreenDrawn, waitHolder } from './harness.mjs';

test('typing on the VGA console through the browser reaches the guest', async (t) => {
  const { hvd, page } = await setup(t, 'keyboard');
  await hvd.vm('kbd');
  const op = await hvd.user('op', 'operator');
  await hvd.waitConsole('kbd', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  const p = await page(op);
  await openVm(p, hvd, 'kbd');
  await waitScreenDrawn(p);
  // The first operator to open the console takes control when none is held.
  await waitHolder(p, 'op');

  const marker = `hv-e2e-kbd-${rand()}`;
  await typeOnScreen(p, `echo ${marker} >/dev/ttyS0\n`);
  const matched = await hvd.waitConsole('kbd', marker);
  assert.match(matched, new RegExp(marker));

  // Paste as keystrokes (POST /v1/vms/{name}/keys with text) reaches the same console.
  const pasted = `hv-e2e-paste-${rand()}`;
  await p.fill(tid('paste-text'), `echo ${pasted} >/dev/ttyS0\n`);
  await p.click(tid('paste-send'));
  await hvd.waitConsole('kbd', pasted);
  await p.screenshot({ path: `${hvd.out}/vm-page.png` });
});

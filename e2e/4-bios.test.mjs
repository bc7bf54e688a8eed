// Scenario 4: BIOS level. A VM boots a CD whose boot loader (isolinux) waits at its `boot:`
// prompt forever; typing an entry's name in the browser boots that entry, as the serial marker
// HV-BOOTED-ENTRY=<name> shows.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BOOT_TIMEOUT_S, assets, openVm, setup, typeOnScreen, waitScreenDrawn, waitHolder } from './harness.mjs';

test('typing a boot-loader entry in the browser boots that entry', async (t) => {
  const { hvd, page } = await setup(t, 'bios');
  await hvd.vm('bios', { bootCdrom: assets().boot_prompt_iso, memory: '256M' });
  const op = await hvd.user('op', 'operator');
  // isolinux prints its prompt on the serial port too.
  await hvd.waitConsole('bios', 'boot:', BOOT_TIMEOUT_S);

  const p = await page(op);
  await openVm(p, hvd, 'bios');
  await waitScreenDrawn(p);
  await waitHolder(p, 'op');
  await p.screenshot({ path: `${hvd.out}/boot-prompt.png` });
  await typeOnScreen(p, 'beta\n');
  await hvd.waitConsole('bios', 'HV-BOOTED-ENTRY=beta', BOOT_TIMEOUT_S);
  const log = await hvd.consoleLog('bios');
  assert.ok(!log.includes('HV-BOOTED-ENTRY=alpha'), 'the default entry booted instead');
});

// Scenario 6: power. An operator starts, resets, shuts down (ACPI) and hard-stops a VM from its
// page; for a viewer the page offers no power buttons and the API refuses every power action.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BOOT_TIMEOUT_S, setup, tid } from './harness.mjs';

const POWER = ['power-start', 'power-shutdown', 'power-destroy', 'power-reset'];

/** Absent, hidden or disabled. */
async function unusable(p, id) {
  const l = p.locator(tid(id));
  if ((await l.count()) === 0) return true;
  return !(await l.first().isVisible()) || (await l.first().isDisabled());
}

const readyCount = async (hvd) => (await hvd.consoleLog('pwr')).split('HV-GUEST-READY').length - 1;

test('power from the page as an operator; refused for a viewer by page and API', async (t) => {
  const { hvd, page } = await setup(t, 'power');
  await hvd.vm('pwr', { start: false });
  const op = await hvd.user('op', 'operator');
  const viewer = await hvd.user('viewer', 'viewer');

  const p = await page(op);
  // A stopped VM's page: no screen yet, but the power buttons.
  await p.goto(`${hvd.base}/ui/vm.html?name=pwr`);
  await p.click(tid('power-start'));
  await hvd.waitState('pwr', 'running');
  await hvd.waitConsole('pwr', 'HV-GUEST-READY', BOOT_TIMEOUT_S);
  assert.equal(await readyCount(hvd), 1);

  // Reset: the guest boots again (a second ready marker in the same run's log).
  await p.click(tid('power-reset'));
  await hvd.waitConsole('pwr', 'HV-GUEST-READY[\\s\\S]*HV-GUEST-READY', BOOT_TIMEOUT_S);

  // ACPI shutdown: the guest's power-button handler powers it off.
  await p.click(tid('power-shutdown'));
  await hvd.waitState('pwr', 'shutoff');

  // Start again, then hard off.
  await p.click(tid('power-start'));
  await hvd.waitState('pwr', 'running');
  await p.click(tid('power-destroy'));
  await hvd.waitState('pwr', 'shutoff');

  // The viewer: no usable power buttons on the page, and the API refuses each action.
  await hvd.hv(['start', 'pwr']);
  const pv = await page(viewer);
  await pv.goto(`${hvd.base}/ui/vm.html?name=pwr`);
  await pv.locator(tid('screen')).waitFor();
  for (const id of POWER) assert.ok(await unusable(pv, id), `${id} is usable for a viewer`);
  for (const action of ['start', 'shutdown', 'destroy', 'reset']) {
    const r = await hvd.request(viewer.token, 'POST', `/v1/vms/pwr/${action}`, {});
    assert.equal(r.status, 403, `${action}: ${r.status} ${r.text()}`);
  }
  // The same with the viewer's browser session (what a modified page could send).
  const fromPage = await pv.evaluate(async () => (await fetch('/v1/vms/pwr/destroy', { method: 'POST' })).status);
  assert.ok([401, 403].includes(fromPage), `destroy from the viewer's page answered ${fromPage}`);
  await hvd.waitState('pwr', 'running', 5);
});

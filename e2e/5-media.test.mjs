// Scenario 5: virtual media. An ISO uploaded from the browser (into a pool volume, with
// progress) is inserted; the guest sees the medium and its volume label; then it is ejected and
// the guest sees an empty drive. Virtual media is per VM, like an IP-KVM port's: the browser
// user is an operator granted on this VM only, with no storage rights, who uploads into a pool
// and picks from it through the VM's own media routes.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { BOOT_TIMEOUT_S, assets, openVm, setup, tid, typeOnScreen, waitScreenDrawn } from './harness.mjs';

test('an ISO uploaded from the browser is inserted, seen by the guest with its label, then ejected', async (t) => {
  const { hvd, page } = await setup(t, 'media');
  const poolDir = path.join(hvd.dir, 'pool');
  await hvd.hv(['pool', 'create', 'isos', '--path', poolDir]);
  // An empty CD drive, and the guest's CD drivers (hv.ide=1).
  await hvd.vm('media', { ide: true, cdrom: '' });
  const op = await hvd.user('op', 'operator', 'media');
  await hvd.waitConsole('media', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  const p = await page(op);
  await openVm(p, hvd, 'media');
  await waitScreenDrawn(p);
  await p.locator(tid('media-current')).filter({ hasText: /none/i }).waitFor();
  await p.selectOption(tid('media-pool'), 'isos');

  // A copy named for this test, so the volume's name is known.
  const iso = path.join(hvd.dir, 'e2e-media.iso');
  fs.copyFileSync(assets().data_iso, iso);
  await p.setInputFiles(tid('media-upload'), iso);
  await p.locator(tid('media-upload-progress')).waitFor();
  // The upload inserts the medium when it is done.
  await p.locator(tid('media-current')).filter({ hasText: 'e2e-media.iso' }).waitFor();
  assert.equal(fs.statSync(path.join(poolDir, 'e2e-media.iso')).size, fs.statSync(iso).size);
  // The operator has no storage rights: the pool API refuses, the VM's media routes answer.
  const pools = await hvd.request(op.token, 'GET', '/v1/pools/isos/volumes');
  assert.equal(pools.status, 403, pools.text());
  const choices = await hvd.request(op.token, 'GET', '/v1/vms/media/media/choices');
  assert.equal(choices.status, 200, choices.text());
  assert.ok(choices.text().includes('e2e-media.iso'), choices.text());
  await typeOnScreen(p, 'hv-media >/dev/ttyS0\n');
  await hvd.waitConsole('media', `HV-MEDIA label=${assets().media_label}`);

  await p.click(tid('media-eject'));
  await p.locator(tid('media-current')).filter({ hasText: /none/i }).waitFor();
  await typeOnScreen(p, 'hv-media >/dev/ttyS0\n');
  await hvd.waitConsole('media', 'HV-MEDIA none');

  // Picked from the pool again and inserted.
  await p.locator(`${tid('media-volume')} option[value="e2e-media.iso"]`).waitFor({ state: 'attached' });
  await p.selectOption(tid('media-volume'), 'e2e-media.iso');
  await p.click(tid('media-insert'));
  await p.locator(tid('media-current')).filter({ hasText: 'e2e-media.iso' }).waitFor();
  await p.click(tid('media-eject'));
  await p.locator(tid('media-current')).filter({ hasText: /none/i }).waitFor();
  // The same file again: the page says the name exists and how to go on; the volume stays.
  await p.setInputFiles(tid('media-upload'), iso);
  await p.locator(tid('error')).filter({ hasText: 'already exists' }).waitFor();
  assert.equal(fs.statSync(path.join(poolDir, 'e2e-media.iso')).size, fs.statSync(iso).size);
  const info = JSON.parse((await hvd.hv(['info', 'media', '--format', 'json'])).stdout);
  assert.ok(!JSON.stringify(info).includes('e2e-media.iso'), 'the spec still names the ejected ISO');
});

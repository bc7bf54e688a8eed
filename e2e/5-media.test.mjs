// Scenario 5: virtual media. An ISO uploaded from the browser (into a pool volume, with
// progress) is inserted; the guest sees the medium and its volume label; then it is ejected and
// the guest sees an empty drive. Uploading into a pool needs the storage-admin right, so the
// browser user is an admin.
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
  const adm = await hvd.user('adm', 'admin');
  await hvd.waitConsole('media', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  const p = await page(adm);
  await openVm(p, hvd, 'media');
  await waitScreenDrawn(p);
  await p.locator(tid('media-current')).filter({ hasText: /none/i }).waitFor();
  await p.selectOption(tid('media-pool'), 'isos');

  // A copy named for this test, so the volume's name is known.
  const iso = path.join(hvd.dir, 'e2e-media.iso');
  fs.copyFileSync(assets().data_iso, iso);
  await p.setInputFiles(tid('media-upload'), iso);
  await p.locator(tid('media-upload-progress')).waitFor();
  // The upload is done when the volume can be picked.
  await p.locator(`${tid('media-volume')} option`, { hasText: 'e2e-media.iso' }).waitFor({ state: 'attached' });
  const vol = await hvd.request(adm.token, 'GET', '/v1/pools/isos/volumes/e2e-media.iso');
  assert.equal(vol.status, 200, vol.text());
  assert.equal(fs.statSync(path.join(poolDir, 'e2e-media.iso')).size, fs.statSync(iso).size);

  await p.selectOption(tid('media-volume'), { label: 'e2e-media.iso' }).catch(() =>
    p.selectOption(tid('media-volume'), 'e2e-media.iso'),
  );
  await p.click(tid('media-insert'));
  await p.locator(tid('media-current')).filter({ hasText: 'e2e-media.iso' }).waitFor();
  await typeOnScreen(p, 'hv-media >/dev/ttyS0\n');
  await hvd.waitConsole('media', `HV-MEDIA label=${assets().media_label}`);

  await p.click(tid('media-eject'));
  await p.locator(tid('media-current')).filter({ hasText: /none/i }).waitFor();
  await typeOnScreen(p, 'hv-media >/dev/ttyS0\n');
  await hvd.waitConsole('media', 'HV-MEDIA none');
  const info = JSON.parse((await hvd.hv(['info', 'media', '--format', 'json'])).stdout);
  assert.ok(!JSON.stringify(info).includes('e2e-media.iso'), 'the spec still names the ejected ISO');
});

// Scenario 8: the page's screenshot download and `hv screenshot` both give a PNG of the current
// screen (the guest's VGA text mode, the size the noVNC canvas shows).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { BOOT_TIMEOUT_S, canvasPixels, openVm, pngSize, setup, tid, waitScreenDrawn } from './harness.mjs';

test('screenshot download and hv screenshot give a PNG of the current screen', async (t) => {
  const { hvd, page } = await setup(t, 'screenshot');
  await hvd.vm('shot');
  const viewer = await hvd.user('viewer', 'viewer');
  await hvd.waitConsole('shot', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  // Viewers may take screenshots.
  const p = await page(viewer);
  await openVm(p, hvd, 'shot');
  await waitScreenDrawn(p);
  const canvas = await canvasPixels(p);
  const [download] = await Promise.all([p.waitForEvent('download'), p.click(tid('screenshot-download'))]);
  const fromPage = path.join(hvd.out, 'screenshot-download.png');
  await download.saveAs(fromPage);
  const pageSize = pngSize(fs.readFileSync(fromPage));
  assert.deepEqual(pageSize, { width: canvas.width, height: canvas.height });

  const fromCli = path.join(hvd.out, 'screenshot-cli.png');
  await hvd.hv(['screenshot', 'shot', fromCli]);
  assert.deepEqual(pngSize(fs.readFileSync(fromCli)), pageSize);

  // Over HTTPS with the viewer's token too (the endpoint the page uses).
  const r = await hvd.request(viewer.token, 'GET', '/v1/vms/shot/screenshot');
  assert.equal(r.status, 200, r.text());
  assert.equal(r.headers['content-type'], 'image/png');
  assert.deepEqual(pngSize(r.body), pageSize);
});

// Scenario 8: the page's screenshot download and `hv screenshot` both give a PNG of the current
// screen: the same pixels the noVNC canvas shows (but for a blinking cursor). The switch page's
// thumbnail of the running VM is a screenshot too.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import {
  BOOT_TIMEOUT_S,
  canvasPixels,
  openVm,
  pngDecode,
  rand,
  sameShare,
  setup,
  tid,
  typeOnScreen,
  waitScreenDrawn,
} from './harness.mjs';

/** At least this share of a screenshot's pixels equals the canvas's. */
const SAME = 0.98;

test('screenshot download and hv screenshot give a PNG of the current screen', async (t) => {
  const { hvd, page } = await setup(t, 'screenshot');
  await hvd.vm('shot');
  const op = await hvd.user('op', 'operator');
  const viewer = await hvd.user('viewer', 'viewer');
  await hvd.waitConsole('shot', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  // Something distinctive on the screen first.
  const po = await page(op);
  await openVm(po, hvd, 'shot');
  await waitScreenDrawn(po);
  const marker = `hv-e2e-shot-${rand()}`;
  await typeOnScreen(po, `echo ${marker} >/dev/ttyS0\n`);
  await hvd.waitConsole('shot', marker);

  // Viewers may take screenshots.
  const p = await page(viewer);
  await openVm(p, hvd, 'shot');
  await waitScreenDrawn(p);
  // The canvas may still be taking the last update: compare until it agrees or a deadline.
  const matches = async (png) => {
    let share = 0;
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
      share = sameShare(await canvasPixels(p), png);
      if (share > SAME) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    return share;
  };

  const [download] = await Promise.all([p.waitForEvent('download'), p.click(tid('screenshot-download'))]);
  const fromPage = path.join(hvd.out, 'screenshot-download.png');
  await download.saveAs(fromPage);
  const pagePng = pngDecode(fs.readFileSync(fromPage));
  const pageShare = await matches(pagePng);
  assert.ok(pageShare > SAME, `the downloaded PNG is not the screen: ${(pageShare * 100).toFixed(1)} % equal`);

  const fromCli = path.join(hvd.out, 'screenshot-cli.png');
  await hvd.hv(['screenshot', 'shot', fromCli]);
  const cliShare = await matches(pngDecode(fs.readFileSync(fromCli)));
  assert.ok(cliShare > SAME, `hv screenshot is not the screen: ${(cliShare * 100).toFixed(1)} % equal`);

  // Over HTTPS with the viewer's token too (the endpoint the page uses).
  const r = await hvd.request(viewer.token, 'GET', '/v1/vms/shot/screenshot');
  assert.equal(r.status, 200, r.text());
  assert.equal(r.headers['content-type'], 'image/png');
  assert.deepEqual(
    [pngDecode(r.body).width, pngDecode(r.body).height],
    [pagePng.width, pagePng.height],
  );

  // The switch page shows the running VM's thumbnail.
  await p.goto(`${hvd.base}/ui/`);
  const thumb = p.locator(`${tid('vm-card')}[data-vm="shot"] ${tid('vm-thumb')}`);
  await thumb.waitFor();
  await p.waitForFunction((el) => el.complete && el.naturalWidth > 0, await thumb.elementHandle());
  await p.screenshot({ path: path.join(hvd.out, 'switch-page.png') });
});

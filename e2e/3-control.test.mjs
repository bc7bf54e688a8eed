// Scenario 3: shared control on one VM. Operator A holds control; B watches (B is an operator
// too, since only a user with the console-input right can ever hold control; a pure viewer V is
// checked as well). Both see the same screen and B's keys do not reach the guest, neither from
// the page nor from a raw WebSocket client with B's (or V's) token sending RFB key events. B asks
// for control, A releases it, B takes it and types; an admin takes it. The audit log has each step.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RfbClient } from './rfb-client.mjs';
import {
  BOOT_TIMEOUT_S,
  canvasPixels,
  openVm,
  rand,
  sameShare,
  setup,
  tid,
  typeOnScreen,
  waitHolder,
  waitScreenDrawn,
} from './harness.mjs';

test('one holder at a time: watchers cannot type, hand-over by request and release, admin take, audited', async (t) => {
  const { hvd, page } = await setup(t, 'control');
  await hvd.vm('ctl');
  const a = await hvd.user('opa', 'operator');
  const b = await hvd.user('opb', 'operator');
  const v = await hvd.user('viewer', 'viewer');
  const adm = await hvd.user('adm', 'admin');
  await hvd.waitConsole('ctl', 'HV-GUEST-READY', BOOT_TIMEOUT_S);

  // A opens the console first and so holds control; B then watches.
  const pa = await page(a);
  await openVm(pa, hvd, 'ctl');
  await waitScreenDrawn(pa);
  await waitHolder(pa, 'opa');
  const pb = await page(b);
  await openVm(pb, hvd, 'ctl');
  await waitScreenDrawn(pb);
  await waitHolder(pb, 'opa');
  // B may ask for control but not take it from A (only an admin may).
  await pb.locator(tid('control-request')).waitFor();
  assert.equal(await pb.locator(tid('control-take')).isVisible(), false, 'B is offered to take control from A');
  // Each sees the other watching.
  await pa.locator(tid('watchers')).filter({ hasText: 'opb' }).waitFor();
  await pb.locator(tid('watchers')).filter({ hasText: 'opa' }).waitFor();

  // A types a line; once its marker is in the serial log both screens show the same text.
  const a1 = `hv-e2e-a1-${rand()}`;
  await typeOnScreen(pa, `echo ${a1} >/dev/ttyS0\n`);
  await hvd.waitConsole('ctl', a1);
  // Both canvases get the update asynchronously: compare until they agree or a deadline passes
  // (a blinking cursor is the only difference allowed).
  let share = 0;
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; ) {
    share = sameShare(await canvasPixels(pa), await canvasPixels(pb));
    if (share > 0.98) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.ok(share > 0.98, `the two viewers' screens differ: only ${(share * 100).toFixed(1)} % equal`);

  // B types on the page, and B and V send raw RFB key events: none of it reaches the guest.
  const bPage = `hv-e2e-bpage-${rand()}`;
  await typeOnScreen(pb, `echo ${bPage} >/dev/ttyS0\n`);
  const bRaw = `hv-e2e-braw-${rand()}`;
  const vRaw = `hv-e2e-vraw-${rand()}`;
  const rb = await RfbClient.connect(hvd, b.token, 'ctl');
  const rv = await RfbClient.connect(hvd, v.token, 'ctl');
  t.after(() => {
    rb.close();
    rv.close();
  });
  rb.pointer(1, 10, 10);
  rb.pointer(0, 10, 10);
  rb.keys(`echo ${bRaw} >/dev/ttyS0\n`);
  rv.keys(`echo ${vRaw} >/dev/ttyS0\n`);
  // A raw client of the holder's does reach the guest: a sentinel typed after the others.
  const ra = await RfbClient.connect(hvd, a.token, 'ctl');
  t.after(() => ra.close());
  const aRaw = `hv-e2e-araw-${rand()}`;
  ra.keys(`echo ${aRaw} >/dev/ttyS0\n`);
  await hvd.waitConsole('ctl', aRaw);
  const log = await hvd.consoleLog('ctl');
  for (const m of [bPage, bRaw, vRaw]) assert.ok(!log.includes(m), `${m} reached the guest without control`);
  assert.equal(rb.closed, null, "dropping a watcher's input does not close its connection");

  // B asks; A releases; B takes and types.
  await pb.click(tid('control-request'));
  await pa.locator(tid('control-release')).click();
  await waitHolder(pb, 'nobody');
  await pb.click(tid('control-take'));
  await waitHolder(pb, 'opb');
  await waitHolder(pa, 'opb');
  const b2 = `hv-e2e-b2-${rand()}`;
  await typeOnScreen(pb, `echo ${b2} >/dev/ttyS0\n`);
  await hvd.waitConsole('ctl', b2);

  // An admin takes control from B.
  const padm = await page(adm);
  await openVm(padm, hvd, 'ctl');
  await padm.click(tid('control-take'));
  await waitHolder(padm, 'adm');
  await waitHolder(pa, 'adm');
  await waitHolder(pb, 'adm');
  // A can no longer type (nor could it take control from the admin: that needs an admin).
  const a3 = `hv-e2e-a3-${rand()}`;
  await typeOnScreen(pa, `echo ${a3} >/dev/ttyS0\n`);
  const c = `hv-e2e-adm-${rand()}`;
  await typeOnScreen(padm, `echo ${c} >/dev/ttyS0\n`);
  await hvd.waitConsole('ctl', c);
  assert.ok(!(await hvd.consoleLog('ctl')).includes(a3), 'A typed after the admin took control');
  const refused = await hvd.request(a.token, 'POST', '/v1/vms/ctl/control', { action: 'take' });
  assert.equal(refused.status, 403, refused.text());

  // The audit log has each step, in order: A took, B requested, A released, B took, admin took.
  const steps = (await hvd.audit('ctl'))
    .filter((r) => /control/i.test(r.action) && r.result === 'ok')
    .map((r) => `${r.principal} ${r.action}`);
  const want = [
    ['opa', /take/i],
    ['opb', /request/i],
    ['opa', /release/i],
    ['opb', /take/i],
    ['adm', /take/i],
  ];
  let at = 0;
  for (const [who, what] of want) {
    const i = steps.findIndex((s, k) => k >= at && s.startsWith(`${who} `) && what.test(s));
    assert.ok(i >= 0, `no audit record of ${who} ${what} after record ${at} in:\n${steps.join('\n')}`);
    at = i + 1;
  }
});

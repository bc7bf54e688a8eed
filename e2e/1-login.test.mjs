// Scenario 1: login works; a wrong password is refused; the switch page lists exactly the VMs
// granted to that user.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { login, setup, tid } from './harness.mjs';

test('login, a refused wrong password, and the switch page lists exactly the granted VMs', async (t) => {
  const { hvd, page } = await setup(t, 'login');
  // Defined, not started: listing needs no guest.
  for (const vm of ['app-one', 'app-two', 'db-one']) await hvd.vm(vm, { start: false });
  const alice = await hvd.user('alice', 'operator', 'app-*');

  const p = await page();
  await p.goto(`${hvd.base}/ui/`);
  await p.fill(tid('login-user'), 'alice');
  await p.fill(tid('login-password'), `${alice.password}-wrong`);
  await p.click(tid('login-submit'));
  await p.locator(tid('login-error')).filter({ hasText: /\S/ }).waitFor();
  assert.equal(await p.locator(tid('whoami')).count(), 0, 'a wrong password must not log in');

  await login(p, hvd, alice);
  const cards = p.locator(tid('vm-card'));
  await cards.first().waitFor();
  await p.locator(`${tid('vm-card')}[data-vm="app-two"]`).waitFor();
  const names = (await cards.evaluateAll((els) => els.map((e) => e.dataset.vm))).sort();
  assert.deepEqual(names, ['app-one', 'app-two']);
  for (const vm of names) {
    const card = p.locator(`${tid('vm-card')}[data-vm="${vm}"]`);
    assert.match(await card.locator(tid('vm-state')).innerText(), /stopped|shut ?off/i);
  }
  await p.screenshot({ path: `${hvd.out}/switch-page.png` });

  // The search narrows the list.
  await p.fill(tid('search'), 'two');
  await p.locator(`${tid('vm-card')}[data-vm="app-one"]`).waitFor({ state: 'hidden' });
  assert.equal(await p.locator(`${tid('vm-card')}[data-vm="app-two"]`).isVisible(), true);

  // Logout ends the session: the login form is back and the API refuses the old cookie.
  await p.click(tid('logout'));
  await p.locator(tid('login-user')).waitFor();
  const status = await p.evaluate(async () => (await fetch('/v1/vms')).status);
  assert.equal(status, 401);
});

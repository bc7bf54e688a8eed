// hv-bench's `ui` group: how long the switch page takes to be usable with many VMs. Logs in
// once, then for each run loads /ui/ and times navigation → every VM's card rendered and the
// search box filtering them. Prints one JSON line: {"ms": [ ... ]}.
// Usage: node e2e/bench-switch.mjs URL USER PASSWORD VMS RUNS
import { chromium } from 'playwright-core';

const [url, user, password, vms, runs] = process.argv.slice(2);
const want = Number(vms);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update', '--no-first-run'],
});
try {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const p = await ctx.newPage();
  await p.goto(`${url}/ui/`);
  await p.fill('[data-testid=login-user]', user);
  await p.fill('[data-testid=login-password]', password);
  await p.click('[data-testid=login-submit]');
  await p.locator('[data-testid=whoami]').filter({ hasText: user }).waitFor();
  const ms = [];
  for (let i = 0; i < Number(runs); i++) {
    const t0 = Date.now();
    await p.goto(`${url}/ui/`);
    await p.waitForFunction((n) => document.querySelectorAll('[data-testid=vm-card]').length >= n, want);
    // Usable: the search filters the list down to one card.
    await p.fill('[data-testid=search]', 'ui-0199');
    await p.waitForFunction(() => [...document.querySelectorAll('[data-testid=vm-card]')]
      .filter((c) => c.offsetParent !== null).length === 1);
    ms.push(Date.now() - t0);
  }
  console.log(JSON.stringify({ ms }));
} finally {
  await browser.close();
}

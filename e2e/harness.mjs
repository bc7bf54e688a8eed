// The browser tests' harness (issue 11): a real hvd per test file (its own state dir, Unix
// socket and TLS listener), users, tokens and VMs made with the real `hv` CLI, Debian's
// chromium driven by playwright-core, and a clean-up that always runs: VMs destroyed, hvd
// stopped by PID, any QEMU left from its state dir killed by PID, temp dirs removed.
//
// Screenshots and logs go to target/e2e/<test>/. Waits are deadlines on real events (console
// output through `hv wait`, DOM state through playwright's auto-waiting), never fixed sleeps.

import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const BIN = process.env.HV_E2E_BIN || path.join(ROOT, 'target/debug');
export const OUT = path.join(ROOT, 'target/e2e');
export const CHROMIUM = '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
];
/** How long a TCG guest may take to boot, or a typed command to show its output. */
export const BOOT_TIMEOUT_S = 120;
export const TYPE_TIMEOUT_S = 60;
/** Playwright's timeout for one UI step (a click, an element appearing). */
export const UI_TIMEOUT_MS = 60_000;

/** `[data-testid="ID"]`, the only way the tests find elements. */
export const tid = (id) => `[data-testid="${id}"]`;

/** A short random suffix, so a marker typed in one test matches only that command's output. */
export const rand = () => randomBytes(4).toString('hex');

let assetsCache;
/**
 * The guest files (tiny guest kernel/initrd/cmdline, the boot-prompt CD, the HVMEDIA data CD):
 * from $HV_E2E_ASSETS (set by `cargo xtask test`), else from `cargo xtask e2e-assets`.
 */
export function assets() {
  if (!assetsCache) {
    const text =
      process.env.HV_E2E_ASSETS ||
      execFileSync('cargo', ['xtask', 'e2e-assets'], { cwd: ROOT, encoding: 'utf8' });
    assetsCache = JSON.parse(text);
  }
  return assetsCache;
}

/** A free TCP port on loopback (closed again before hvd binds it). */
async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function run(file, args, { input, env } = {}) {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      { encoding: 'utf8', maxBuffer: 64 << 20, env: { ...process.env, ...env } },
      (error, stdout, stderr) => {
        resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr });
      },
    );
    if (input !== undefined) child.stdin.end(input);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** PIDs of QEMUs whose command line names `needle` (a state dir). */
function qemuPids(needle) {
  const pids = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmd.startsWith('/usr/bin/qemu-system') && cmd.includes(needle)) pids.push(Number(entry));
    } catch {
      // gone already
    }
  }
  return pids;
}

const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Every hvd this process started, for the last-resort kill on exit. */
const started = new Set();
process.on('exit', () => {
  for (const h of started) h.killNow();
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    for (const h of started) h.killNow();
    process.exit(130);
  });
}

/** A hermetic hvd with a TLS listener on 127.0.0.1. */
export class Hvd {
  /** Starts hvd and waits until its socket answers. `name` names target/e2e/<name>/. */
  static async start(name) {
    const h = new Hvd(name);
    await h.#spawn();
    return h;
  }

  constructor(name) {
    this.name = name;
    // Short: QEMU's sockets under it must stay below 107 bytes.
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hve-'));
    this.socket = path.join(this.dir, 'hvd.sock');
    this.stateDir = path.join(this.dir, 'state');
    this.out = path.join(OUT, name);
    fs.rmSync(this.out, { recursive: true, force: true });
    fs.mkdirSync(this.out, { recursive: true });
    // Its own range of 256 QEMU uids (slot 63 of the Rust tests' scheme, which they rarely reach).
    this.qemuUidBase = 0x7000_0000 + ((process.pid % 16_000) * 64 + 63) * 256;
    this.vms = new Set();
  }

  async #spawn() {
    this.port = await freePort();
    this.base = `https://localhost:${this.port}`;
    const log = fs.openSync(path.join(this.dir, 'hvd.log'), 'a');
    this.proc = spawn(
      path.join(BIN, 'hvd'),
      [
        '--socket', this.socket,
        '--state-dir', this.stateDir,
        '--listen', `127.0.0.1:${this.port}`,
        '--qemu-uid-base', String(this.qemuUidBase),
      ],
      { stdio: ['ignore', log, log], env: { ...process.env, HV_LOG: 'info' } },
    );
    fs.closeSync(log);
    this.pid = this.proc.pid;
    started.add(this);
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (this.proc.exitCode !== null) throw new Error(`hvd exited at start:\n${this.log()}`);
      if (fs.existsSync(this.socket) && (await this.hv(['list'], { check: false })).code === 0) break;
      if (Date.now() > deadline) throw new Error(`hvd did not answer within 20 s:\n${this.log()}`);
      await sleep(20);
    }
    this.ca = fs.readFileSync(path.join(this.stateDir, 'tls/ca.pem'));
  }

  log() {
    try {
      return fs.readFileSync(path.join(this.dir, 'hvd.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** Runs `hv --socket SOCKET ARGS` as root (a local admin); throws on failure unless check: false. */
  async hv(args, { input, check = true } = {}) {
    const r = await run(path.join(BIN, 'hv'), ['--socket', this.socket, ...args], { input });
    if (check && r.code !== 0) {
      throw new Error(`hv ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    }
    return r;
  }

  /**
   * A user with a web password and an API token, granted `role` (viewer, operator, admin) on
   * the VMs matching `vm` (all VMs when omitted).
   */
  async user(name, role, vm) {
    const password = `pw-${name}-${rand()}`;
    await this.hv(['user', 'add', name, '--password-stdin'], { input: `${password}\n` });
    await this.hv(['user', 'grant', name, role, ...(vm ? ['--vm', vm] : [])]);
    const token = (await this.hv(['token', 'create', name])).stdout.trim();
    return { name, password, token };
  }

  /**
   * Defines a tiny-guest VM (kernel boot; `ide: true` adds the CD drivers; `cdrom: ''` an
   * empty drive) or, with `bootCdrom`, one that boots that CD. Starts it unless start: false.
   */
  async vm(name, { start = true, ide = false, cdrom, bootCdrom, memory = '192M' } = {}) {
    const a = assets();
    const args = ['create', name, '--memory', memory];
    if (bootCdrom) {
      args.push('--cdrom', bootCdrom, '--boot', 'cdrom');
    } else {
      const cmdline = ide ? `${a.cmdline} ${a.ide_flag}` : a.cmdline;
      args.push('--kernel', a.kernel, '--initrd', a.initrd, '--cmdline', cmdline);
      // An empty drive: the CLI takes no empty --cdrom, so insert a CD and eject it.
      if (cdrom !== undefined) args.push('--cdrom', cdrom || a.data_iso);
    }
    this.vms.add(name);
    await this.hv(args);
    if (cdrom === '') await this.hv(['media', 'eject', name]);
    if (start) await this.hv(['start', name]);
  }

  /** Waits until NAME's console output (since it last started) matches `regex`; returns the match. */
  async waitConsole(name, regex, timeoutS = TYPE_TIMEOUT_S) {
    const r = await this.hv(
      ['wait', name, '--console', regex, '--timeout', String(timeoutS)],
      { check: false },
    );
    if (r.code !== 0) {
      throw new Error(
        `${name}: no console output matching /${regex}/ within ${timeoutS} s (${r.stderr.trim()}); console:\n` +
          (await this.consoleLog(name)).slice(-3000),
      );
    }
    return r.stdout;
  }

  async waitState(name, state, timeoutS = BOOT_TIMEOUT_S) {
    const r = await this.hv(['wait', name, '--state', state, '--timeout', String(timeoutS)], {
      check: false,
    });
    if (r.code !== 0) throw new Error(`${name}: not ${state} within ${timeoutS} s: ${r.stderr.trim()}`);
  }

  async consoleLog(name) {
    return (await this.hv(['console', name, '--log'], { check: false })).stdout;
  }

  /** The audit log (oldest first), optionally for one VM. */
  async audit(vm) {
    const r = await this.hv(['audit', '--format', 'json', ...(vm ? ['--vm', vm] : [])]);
    return JSON.parse(r.stdout);
  }

  /** An HTTPS request to the TLS listener as the bearer of `token` (trusting hvd's own CA). */
  request(token, method, urlPath, body) {
    return new Promise((resolve, reject) => {
      const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = https.request(
        {
          host: '127.0.0.1',
          servername: 'localhost',
          port: this.port,
          method,
          path: urlPath,
          ca: this.ca,
          headers: {
            ...(token ? { authorization: `Bearer ${token}` } : {}),
            ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
          },
        },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () => {
            const buf = Buffer.concat(chunks);
            resolve({
              status: res.statusCode,
              headers: res.headers,
              body: buf,
              text: () => buf.toString('utf8'),
              json: () => JSON.parse(buf.toString('utf8')),
            });
          });
        },
      );
      req.on('error', reject);
      req.end(data);
    });
  }

  /** Copies hvd's log and each VM's logs into target/e2e/<name>/. */
  saveLogs() {
    const copy = (from, to) => {
      try {
        fs.copyFileSync(from, path.join(this.out, to));
      } catch {
        // not there
      }
    };
    copy(path.join(this.dir, 'hvd.log'), 'hvd.log');
    for (const vm of this.vms) {
      for (const f of ['console.log', 'qemu.log', 'qmp.log']) {
        copy(path.join(this.stateDir, 'vms', vm, f), `${vm}.${f}`);
      }
    }
  }

  /** Destroys the VMs, stops hvd (SIGTERM, then SIGKILL), kills any QEMU left, removes the dir. */
  async stop() {
    this.saveLogs();
    if (this.proc && this.proc.exitCode === null) {
      for (const vm of this.vms) {
        await this.hv(['destroy', vm], { check: false });
      }
      this.proc.kill('SIGTERM');
      const deadline = Date.now() + 10_000;
      while (this.proc.exitCode === null && this.proc.signalCode === null && Date.now() < deadline) {
        await sleep(20);
      }
    }
    this.killNow();
  }

  /** Synchronous last resort (also from process 'exit'): SIGKILL hvd and its QEMUs, remove the dir. */
  killNow() {
    if (this.pid && alive(this.pid) && this.proc.exitCode === null) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const pid of qemuPids(this.stateDir)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    started.delete(this);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts an hvd and a headless chromium for test context `t`, and registers their clean-up
 * (which runs also when the test fails). Returns { hvd, browser, page(user) }.
 */
export async function setup(t, name) {
  const hvd = await Hvd.start(name);
  let browser;
  const pages = [];
  // One hook, in order: a screenshot of every page (on failure it shows where it stopped), the
  // browser, then hvd with its VMs.
  t.after(async () => {
    for (const [i, p] of pages.entries()) {
      await p.screenshot({ path: path.join(hvd.out, `final-${i}.png`) }).catch(() => {});
    }
    if (browser) await browser.close().catch(() => {});
    await hvd.stop();
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: CHROMIUM_ARGS,
    headless: true,
  });
  /** A new browser context (own cookies) logged in as `user`, on the switch page. */
  const page = async (user) => {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      acceptDownloads: true,
      viewport: { width: 1280, height: 900 },
    });
    const p = await context.newPage();
    p.setDefaultTimeout(UI_TIMEOUT_MS);
    // The page confirms hard power-off with window.confirm: the tests say yes.
    p.on('dialog', (d) => d.accept().catch(() => {}));
    pages.push(p);
    if (user) await login(p, hvd, user);
    return p;
  };
  return { hvd, browser, page };
}

/** Logs in through the login page and waits for the switch page. */
export async function login(p, hvd, user, password = user.password) {
  await p.goto(`${hvd.base}/ui/`);
  await p.fill(tid('login-user'), user.name);
  await p.fill(tid('login-password'), password);
  await p.click(tid('login-submit'));
  await p.locator(tid('whoami')).filter({ hasText: user.name }).waitFor();
}

/** Opens the VM page of `vm` (the `vm.html?name=` form); see waitScreenDrawn for its screen. */
export async function openVm(p, hvd, vm) {
  await p.goto(`${hvd.base}/ui/vm.html?name=${encodeURIComponent(vm)}`);
  await p.locator(tid('screen')).waitFor({ state: 'attached' });
}

/** Waits until the noVNC canvas in the page shows something other than one flat colour. */
export async function waitScreenDrawn(p) {
  await p.waitForFunction(
    (sel) => {
      const c = document.querySelector(sel);
      if (!c || c.width < 100 || c.height < 100) return false;
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const [r, g, b] = d;
      for (let i = 4; i < d.length; i += 4 * 7) {
        if (d[i] !== r || d[i + 1] !== g || d[i + 2] !== b) return true;
      }
      return false;
    },
    `${tid('screen')} canvas`,
    { timeout: BOOT_TIMEOUT_S * 1000, polling: 250 },
  );
}

/** The noVNC canvas's size and pixels (RGBA), for comparing two viewers' screens. */
export async function canvasPixels(p) {
  return p.evaluate((sel) => {
    const c = document.querySelector(sel);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return { width: c.width, height: c.height, data: Array.from(d) };
  }, `${tid('screen')} canvas`);
}

/** US-layout key names playwright presses for each printable character (shift held for some). */
const SHIFTED = {
  '>': 'Period', '<': 'Comma', '|': 'Backslash', '_': 'Minus', '+': 'Equal', ':': 'Semicolon',
  '"': 'Quote', '?': 'Slash', '!': 'Digit1', '@': 'Digit2', '#': 'Digit3', '$': 'Digit4',
  '%': 'Digit5', '^': 'Digit6', '&': 'Digit7', '*': 'Digit8', '(': 'Digit9', ')': 'Digit0',
  '~': 'Backquote', '{': 'BracketLeft', '}': 'BracketRight',
};
const PLAIN = {
  ' ': 'Space', '.': 'Period', ',': 'Comma', '/': 'Slash', '-': 'Minus', '=': 'Equal',
  ';': 'Semicolon', "'": 'Quote', '\\': 'Backslash', '`': 'Backquote', '[': 'BracketLeft',
  ']': 'BracketRight', '\n': 'Enter', '\t': 'Tab',
};

/**
 * Types `text` key by key as physical US keys (Shift pressed for shifted characters), so noVNC
 * sends the right scan codes whatever the browser's layout.
 */
export async function typeKeys(p, text) {
  for (const ch of text) {
    let key;
    if (/[a-z]/.test(ch)) key = `Key${ch.toUpperCase()}`;
    else if (/[A-Z]/.test(ch)) key = `Shift+Key${ch}`;
    else if (/[0-9]/.test(ch)) key = `Digit${ch}`;
    else if (PLAIN[ch]) key = PLAIN[ch];
    else if (SHIFTED[ch]) key = `Shift+${SHIFTED[ch]}`;
    else throw new Error(`typeKeys: no key for ${JSON.stringify(ch)}`);
    await p.keyboard.press(key);
  }
}

/** Clicks the screen (giving noVNC the keyboard) and types `text` on the guest. */
export async function typeOnScreen(p, text) {
  await p.locator(`${tid('screen')} canvas`).first().click();
  await typeKeys(p, text);
}

/** Width and height from a PNG's IHDR; throws unless `buf` is a PNG. */
export function pngSize(buf) {
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  if (buf.length < 24 || !buf.subarray(0, 8).equals(sig) || buf.toString('latin1', 12, 16) !== 'IHDR') {
    throw new Error(`not a PNG (${buf.length} bytes, starts ${buf.subarray(0, 8).toString('hex')})`);
  }
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

/** Waits until the page's control bar names `user` (or `nobody`) as the holder. */
export async function waitHolder(p, user) {
  const exact = new RegExp(`^\\s*${user.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`);
  await p.locator(tid('control-holder')).filter({ hasText: exact }).waitFor();
}

/**
 * Decodes an 8-bit, non-interlaced RGB or RGBA PNG (what QEMU's screendump writes) into
 * { width, height, data: RGBA bytes }.
 */
export function pngDecode(buf) {
  const { width, height } = pngSize(buf);
  const depth = buf[24];
  const colour = buf[25];
  const interlace = buf[28];
  const channels = { 2: 3, 6: 4 }[colour];
  if (depth !== 8 || !channels || interlace !== 0) {
    throw new Error(`unsupported PNG: depth ${depth}, colour type ${colour}, interlace ${interlace}`);
  }
  const idat = [];
  for (let off = 8; off < buf.length; ) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    if (type === 'IDAT') idat.push(buf.subarray(off + 8, off + 8 + len));
    off += 12 + len;
  }
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const out = Buffer.alloc(width * height * 4);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = Buffer.from(raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1)));
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? line[i - channels] : 0;
      const b = prev[i];
      const c = i >= channels ? prev[i - channels] : 0;
      let add = 0;
      if (filter === 1) add = a;
      else if (filter === 2) add = b;
      else if (filter === 3) add = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        add = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      line[i] = (line[i] + add) & 0xff;
    }
    for (let x = 0; x < width; x++) {
      out[(y * width + x) * 4] = line[x * channels];
      out[(y * width + x) * 4 + 1] = line[x * channels + 1];
      out[(y * width + x) * 4 + 2] = line[x * channels + 2];
      out[(y * width + x) * 4 + 3] = channels === 4 ? line[x * channels + 3] : 255;
    }
    prev = line;
  }
  return { width, height, data: out };
}

/** Share of equal RGB pixels of two same-sized images ({ width, height, data: RGBA }). */
export function sameShare(a, b) {
  if (a.width !== b.width || a.height !== b.height) {
    throw new Error(`sizes differ: ${a.width}x${a.height} and ${b.width}x${b.height}`);
  }
  let same = 0;
  for (let i = 0; i < a.data.length; i += 4) {
    if (a.data[i] === b.data[i] && a.data[i + 1] === b.data[i + 1] && a.data[i + 2] === b.data[i + 2]) same++;
  }
  return same / (a.data.length / 4);
}

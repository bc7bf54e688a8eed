// A raw client of hvd's VNC WebSocket (`GET /v1/vms/{name}/vnc`): a hand-made WebSocket over
// TLS carrying RFB 3.8 with security type None, so a test can send what a modified page could
// send (key events without holding control) and see that hvd drops them.

import { randomBytes } from 'node:crypto';
import tls from 'node:tls';

/** X11 keysyms of the characters `keys()` can type; shifted ones are typed with Shift_L held. */
const SHIFT_L = 0xffe1;
const RETURN = 0xff0d;
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?'.split(''));

export class RfbClient {
  /** Opens the WebSocket as the bearer of `token` and completes the RFB handshake. */
  static async connect(hvd, token, vm) {
    const c = new RfbClient();
    await c.#open(hvd, token, vm);
    await c.#handshake();
    return c;
  }

  constructor() {
    this.raw = Buffer.alloc(0); // bytes from the socket not yet parsed as frames
    this.rfb = Buffer.alloc(0); // RFB bytes from binary frames not yet consumed
    this.waiters = [];
    this.closed = null; // { code, reason } once the server closed
  }

  #open(hvd, token, vm) {
    return new Promise((resolve, reject) => {
      const key = randomBytes(16).toString('base64');
      const sock = tls.connect({ host: '127.0.0.1', port: hvd.port, servername: 'localhost', ca: hvd.ca });
      this.sock = sock;
      let head = Buffer.alloc(0);
      const onHead = (chunk) => {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        sock.off('data', onHead);
        const status = head.toString('latin1', 0, end).split('\r\n')[0];
        if (!/^HTTP\/1\.1 101 /.test(status)) {
          reject(new Error(`the VNC WebSocket was refused: ${head.toString('utf8')}`));
          sock.destroy();
          return;
        }
        sock.on('data', (d) => this.#onData(d));
        this.#onData(head.subarray(end + 4));
        resolve();
      };
      sock.on('data', onHead);
      sock.on('error', (e) => {
        reject(e);
        this.#wake();
      });
      sock.on('close', () => {
        this.closed ??= { code: 1006, reason: 'connection closed without a close frame' };
        this.#wake();
      });
      sock.once('secureConnect', () => {
        sock.write(
          `GET /v1/vms/${encodeURIComponent(vm)}/vnc HTTP/1.1\r\n` +
            `Host: localhost:${hvd.port}\r\n` +
            'Upgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
            'Sec-WebSocket-Protocol: binary\r\n' +
            `Authorization: Bearer ${token}\r\n\r\n`,
        );
      });
    });
  }

  #onData(chunk) {
    this.raw = Buffer.concat([this.raw, chunk]);
    for (;;) {
      if (this.raw.length < 2) break;
      const opcode = this.raw[0] & 0x0f;
      let len = this.raw[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.raw.length < 4) break;
        len = this.raw.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.raw.length < 10) break;
        len = Number(this.raw.readBigUInt64BE(2));
        off = 10;
      }
      if (this.raw.length < off + len) break;
      const payload = this.raw.subarray(off, off + len);
      this.raw = this.raw.subarray(off + len);
      if (opcode === 0x2 || opcode === 0x0) {
        this.rfb = Buffer.concat([this.rfb, payload]);
      } else if (opcode === 0x8) {
        this.closed = {
          code: payload.length >= 2 ? payload.readUInt16BE(0) : 1005,
          reason: payload.subarray(2).toString('utf8'),
        };
        this.sock.end();
      } else if (opcode === 0x9) {
        this.#send(0xa, payload);
      }
    }
    this.#wake();
  }

  #wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** The next `n` RFB bytes from the server. */
  async read(n) {
    while (this.rfb.length < n) {
      if (this.closed) {
        throw new Error(`hvd closed the VNC WebSocket: ${this.closed.code} ${this.closed.reason}`);
      }
      await new Promise((r) => this.waiters.push(r));
    }
    const out = this.rfb.subarray(0, n);
    this.rfb = this.rfb.subarray(n);
    return out;
  }

  /** Sends one masked frame (client frames must be masked). */
  #send(opcode, payload) {
    const mask = randomBytes(4);
    const len = payload.length;
    const head =
      len < 126
        ? Buffer.from([0x80 | opcode, 0x80 | len])
        : Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 0xff]);
    const body = Buffer.from(payload);
    for (let i = 0; i < body.length; i++) body[i] ^= mask[i % 4];
    this.sock.write(Buffer.concat([head, mask, body]));
  }

  send(bytes) {
    this.#send(0x2, Buffer.from(bytes));
  }

  async #handshake() {
    const version = (await this.read(12)).toString('latin1');
    if (!version.startsWith('RFB 003.')) throw new Error(`not RFB: ${JSON.stringify(version)}`);
    this.send(Buffer.from('RFB 003.008\n', 'latin1'));
    const n = (await this.read(1))[0];
    if (n === 0) {
      const len = (await this.read(4)).readUInt32BE(0);
      throw new Error(`RFB refused: ${(await this.read(len)).toString('utf8')}`);
    }
    const types = [...(await this.read(n))];
    if (!types.includes(1)) throw new Error(`no security type None in ${types}`);
    this.send([1]);
    const result = (await this.read(4)).readUInt32BE(0);
    if (result !== 0) throw new Error(`RFB security result ${result}`);
    this.send([1]); // ClientInit: shared
    const init = await this.read(24);
    this.width = init.readUInt16BE(0);
    this.height = init.readUInt16BE(2);
    const nameLen = init.readUInt32BE(20);
    this.desktop = (await this.read(nameLen)).toString('utf8');
  }

  #key(keysym, down) {
    const b = Buffer.alloc(8);
    b[0] = 4; // KeyEvent
    b[1] = down ? 1 : 0;
    b.writeUInt32BE(keysym, 4);
    this.send(b);
  }

  /** Types printable ASCII and `\n` as RFB KeyEvents (keysym = Latin-1 code; Shift_L for shifted). */
  keys(text) {
    for (const ch of text) {
      const sym = ch === '\n' ? RETURN : ch.charCodeAt(0);
      const shift = SHIFTED.has(ch) || /[A-Z]/.test(ch);
      if (shift) this.#key(SHIFT_L, true);
      this.#key(sym, true);
      this.#key(sym, false);
      if (shift) this.#key(SHIFT_L, false);
    }
  }

  /** A PointerEvent (button mask, x, y). */
  pointer(mask, x, y) {
    const b = Buffer.alloc(6);
    b[0] = 5;
    b[1] = mask;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    this.send(b);
  }

  close() {
    if (!this.closed) {
      this.#send(0x8, Buffer.from([0x03, 0xe8]));
      this.sock.end();
    }
  }
}

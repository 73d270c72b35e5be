import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import mqttPacket, {
  type IConnackPacket,
  type IConnectPacket,
  type ISubscription,
  type Packet,
} from 'mqtt-packet';
import type { Broker } from '../../src/broker/broker.js';
import type { Ctx } from './base.js';
import { HANG_GUARD_MS, waitFor, within } from './base.js';

export class RawClient {
  private buf = Buffer.alloc(0);
  closed = false;
  private readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      socket.emit('raw-data');
    });
    socket.on('error', () => {});
    // Not events.once: it rejects on 'error', and a reset (ECONNRESET) is a close here too.
    this.closedPromise = new Promise((resolve) => {
      socket.once('close', () => {
        this.closed = true;
        resolve();
      });
    });
  }

  static async connect(t: Ctx, port: number): Promise<RawClient> {
    const s = netConnect({ host: '127.0.0.1', port });
    await once(s, 'connect');
    t.after(() => {
      s.destroy();
    });
    return new RawClient(s);
  }

  send(bytes: Buffer | number[]): void {
    this.socket.write(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes));
  }

  /** Waits until at least n bytes arrived and takes them. */
  async read(n: number, timeoutMs = HANG_GUARD_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed after ${this.buf.length}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.buf.length})`);
      // One wait, undone whichever ends it: a 20 s timer left pending per read kept the test
      // process alive long after its tests had ended, and listeners piled up on the socket.
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.socket.off('raw-data', done);
          this.socket.off('close', done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.socket.once('raw-data', done);
        this.socket.once('close', done);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves when the broker closes the connection; rejects after timeoutMs. */
  async waitClosed(timeoutMs = HANG_GUARD_MS): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.closedPromise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('connection was not closed')), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  get pending(): Buffer {
    return this.buf;
  }
}

/** Encodes a 3.1.1 CONNECT. */
export function connectPacket(
  clientId: string,
  opts: { clean?: boolean; keepalive?: number; level?: number; name?: string; flags?: number } = {},
): Buffer {
  const name = Buffer.from(opts.name ?? 'MQTT');
  const id = Buffer.from(clientId);
  const flags = opts.flags ?? ((opts.clean ?? true) ? 0x02 : 0);
  const body = Buffer.concat([
    Buffer.from([0, name.length]),
    name,
    Buffer.from([opts.level ?? 4, flags, 0, opts.keepalive ?? 60]),
    Buffer.from([id.length >> 8, id.length & 0xff]),
    id,
  ]);
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

// ---------------------------------------------------------------------------------------------
// Event waits, mqtt.js sessions, and a parsed-packet raw client (exact wire control)

export type ConnectOptions = Omit<IConnectPacket, 'cmd' | 'clientId'>;

/**
 * A raw TCP client that speaks in parsed packets (mqtt-packet): it sends exactly what the test
 * says, acknowledges nothing by itself, and lets the test read packets one by one in wire order.
 */
export class PacketClient {
  private readonly queue: Packet[] = [];
  private readonly parser: ReturnType<typeof mqttPacket.parser>;
  private notify: (() => void) | null = null;
  private parseError: Error | null = null;
  closed = false;
  /** PUBLISH packets received so far (all of them, also after they were read with next) */
  publishes = 0;

  /** `protocolVersion` 5 (from the CONNECT options): packets are parsed and generated as MQTT 5. */
  private constructor(
    readonly socket: Socket,
    readonly protocolVersion: 3 | 4 | 5 = 4,
  ) {
    this.parser = mqttPacket.parser({ protocolVersion });
    this.parser.on('packet', (p: Packet) => {
      if (p.cmd === 'publish') this.publishes++;
      this.queue.push(p);
    });
    this.parser.on('error', (err: Error) => {
      this.parseError = err;
    });
    socket.on('data', (d: Buffer) => {
      this.parser.parse(d);
      this.wake();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  private wake(): void {
    const n = this.notify;
    this.notify = null;
    n?.();
  }

  /** Opens a TCP connection and sends CONNECT; resolves with the CONNACK. */
  static async connect(
    t: Ctx,
    broker: Broker,
    clientId: string,
    opts: ConnectOptions = {},
  ): Promise<{ pc: PacketClient; connack: IConnackPacket }> {
    const s = netConnect({ host: '127.0.0.1', port: broker.port });
    await within(once(s, 'connect'), 'TCP connect');
    t.after(() => {
      s.destroy();
    });
    const pc = new PacketClient(s, opts.protocolVersion === 5 ? 5 : 4);
    pc.send({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clean: true,
      keepalive: 60,
      ...opts,
      clientId,
    });
    const connack = await pc.expect('connack');
    return { pc, connack };
  }

  send(p: Packet | Buffer): void {
    this.socket.write(
      Buffer.isBuffer(p) ? p : mqttPacket.generate(p, { protocolVersion: this.protocolVersion }),
    );
  }

  /** The next packet in wire order; rejects on close or after timeoutMs. */
  async next(timeoutMs = HANG_GUARD_MS): Promise<Packet> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const p = this.queue.shift();
      if (p) return p;
      if (this.parseError) throw this.parseError;
      if (this.closed) throw new Error('connection closed while waiting for a packet');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a packet');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.notify = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** The next packet, which must be a `cmd`. */
  async expect<C extends Packet['cmd']>(
    cmd: C,
    timeoutMs = HANG_GUARD_MS,
  ): Promise<Extract<Packet, { cmd: C }>> {
    const p = await this.next(timeoutMs);
    if (p.cmd !== cmd) throw new Error(`expected ${cmd}, got ${JSON.stringify(p)}`);
    return p as Extract<Packet, { cmd: C }>;
  }

  /**
   * PINGREQ round trip: resolves with the packets that arrived before the PINGRESP. When it
   * resolves, the broker has handled everything this client sent before.
   */
  async ping(timeoutMs = HANG_GUARD_MS): Promise<Packet[]> {
    this.send({ cmd: 'pingreq' });
    const before: Packet[] = [];
    for (;;) {
      const p = await this.next(timeoutMs);
      if (p.cmd === 'pingresp') return before;
      before.push(p);
    }
  }

  /** SUBSCRIBE one filter; resolves with the SUBACK. */
  subscribe(filter: string, qos: 0 | 1 | 2, messageId?: number): Promise<Extract<Packet, { cmd: 'suback' }>>;
  /** SUBSCRIBE with v5 options and an optional Subscription Identifier; resolves with the SUBACK. */
  subscribe(
    subscriptions: ISubscription[],
    messageId?: number,
    subscriptionIdentifier?: number,
  ): Promise<Extract<Packet, { cmd: 'suback' }>>;
  subscribe(
    what: string | ISubscription[],
    a?: number,
    b?: number,
  ): Promise<Extract<Packet, { cmd: 'suback' }>> {
    if (typeof what === 'string') {
      this.send({
        cmd: 'subscribe',
        messageId: b ?? 1,
        subscriptions: [{ topic: what, qos: a as 0 | 1 | 2 }],
      });
    } else {
      this.send({
        cmd: 'subscribe',
        messageId: a ?? 1,
        subscriptions: what,
        ...(b !== undefined ? { properties: { subscriptionIdentifier: b } } : {}),
      });
    }
    return this.expect('suback');
  }

  /** Packets already received and not yet read. */
  get pending(): readonly Packet[] {
    return this.queue;
  }

  /** Resolves when the connection is closed (by either side); rejects after timeoutMs. */
  async waitClosed(timeoutMs = HANG_GUARD_MS): Promise<void> {
    await waitFor(() => this.closed, 'connection close', timeoutMs);
  }

  /** Closes the socket without DISCONNECT and waits for it to be closed. */
  async destroy(): Promise<void> {
    this.socket.destroy();
    await this.waitClosed();
  }
}

// ---------------------------------------------------------------------------------------------
// Broker options, client close, child processes (events with a hang guard, no fixed sleeps)

export type Bytes = Buffer | string | readonly number[];

export function toBuf(b: Bytes): Buffer {
  return Buffer.isBuffer(b) ? b : typeof b === 'string' ? Buffer.from(b, 'utf8') : Buffer.from(b);
}

/** A Variable Byte Integer [MQTT-1.5.5]; values past 268,435,455 give more than 4 bytes (invalid on purpose). */
export function varInt(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/** A frame: first header byte `b0`, the variable-byte remaining length of the parts, the parts. */
export function rawFrame(b0: number, ...parts: Bytes[]): Buffer {
  const body = Buffer.concat(parts.map(toBuf));
  return Buffer.concat([Buffer.from([b0]), varInt(body.length), body]);
}

/** A length-prefixed MQTT string / binary field (bytes taken as given, so they may be invalid UTF-8). */
export function mqttString(s: Bytes): Buffer {
  const b = toBuf(s);
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}

export interface ConnectSpec {
  clientId?: Bytes;
  /** Protocol name (default 'MQTT') and level (default 4) */
  name?: string;
  level?: number;
  clean?: boolean;
  keepalive?: number;
  will?: { topic: Bytes; payload?: Bytes; qos?: number; retain?: boolean };
  username?: Bytes;
  password?: Bytes;
  /** Connect-flags byte to send instead of the one derived from the fields above */
  flags?: number;
}

/**
 * Encodes a CONNECT of any level (a level-5 CONNECT gets an empty property block) with a correct
 * remaining length; `flags` lets a test send flag bits that contradict the fields present.
 */
export function connectFrame(spec: ConnectSpec = {}): Buffer {
  const level = spec.level ?? 4;
  let flags = (spec.clean ?? true) ? 0x02 : 0;
  if (spec.will) flags |= 0x04 | ((spec.will.qos ?? 0) << 3) | (spec.will.retain ? 0x20 : 0);
  if (spec.username !== undefined) flags |= 0x80;
  if (spec.password !== undefined) flags |= 0x40;
  const ka = spec.keepalive ?? 60;
  const parts: Bytes[] = [
    mqttString(spec.name ?? 'MQTT'),
    [level, spec.flags ?? flags, ka >> 8, ka & 0xff],
    ...(level === 5 ? [[0]] : []),
    mqttString(spec.clientId ?? ''),
  ];
  if (spec.will)
    parts.push(
      ...(level === 5 ? [[0]] : []),
      mqttString(spec.will.topic),
      mqttString(spec.will.payload ?? ''),
    );
  if (spec.username !== undefined) parts.push(mqttString(spec.username));
  if (spec.password !== undefined) parts.push(mqttString(spec.password));
  return rawFrame(0x10, ...parts);
}

export interface RawFrame {
  type: number;
  flags: number;
  body: Buffer;
}

/** Reads one whole frame (any remaining length) from a RawClient. */
export async function readFrame(raw: RawClient, timeoutMs = HANG_GUARD_MS): Promise<RawFrame> {
  const b0 = (await raw.read(1, timeoutMs))[0];
  let len = 0;
  let mul = 1;
  for (let i = 0; i < 4; i++) {
    const b = (await raw.read(1, timeoutMs))[0];
    len += (b & 0x7f) * mul;
    mul *= 128;
    if ((b & 0x80) === 0) break;
  }
  const body = len > 0 ? Buffer.from(await raw.read(len, timeoutMs)) : Buffer.alloc(0);
  return { type: b0 >> 4, flags: b0 & 0x0f, body };
}

/**
 * Opens a raw connection, sends `spec` as CONNECT and checks the CONNACK is exactly "accepted,
 * no session present" (20 02 00 00).
 */
export async function rawConnected(t: Ctx, broker: Broker, spec: ConnectSpec): Promise<RawClient> {
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame(spec));
  const connack = await raw.read(4);
  if (!connack.equals(Buffer.from([0x20, 2, 0, 0]))) {
    throw new Error(`expected CONNACK 20 02 00 00, got ${connack.toString('hex')}`);
  }
  return raw;
}

/** PINGREQ → PINGRESP on a raw connection: proves the connection is open and served. */
export async function rawPing(raw: RawClient, timeoutMs = HANG_GUARD_MS): Promise<void> {
  raw.send([0xc0, 0]);
  const f = await readFrame(raw, timeoutMs);
  if (f.type !== 13 || f.body.length !== 0) throw new Error(`expected PINGRESP, got type ${f.type}`);
}

/**
 * A plain socket that has sent CONNECT `clientId` (3.1.1) and reads nothing until the caller
 * says how (attach 'data' or resume; left alone, it never reads: TCP pushes back on the broker).
 */
export async function socketAfterConnect(t: Ctx, broker: Broker, clientId: string): Promise<Socket> {
  const s = netConnect({ host: '127.0.0.1', port: broker.port });
  s.pause();
  s.on('error', () => {});
  t.after(() => {
    s.destroy();
  });
  await once(s, 'connect');
  s.write(connectFrame({ clientId }));
  return s;
}

/**
 * Test harness: a real broker (main thread + real shard worker threads) on an ephemeral port,
 * real TCP clients (`mqtt` from npm, raw sockets for malformed input). Nothing is mocked.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, type TestContext } from 'node:test';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, {
  type IConnackPacket,
  type IConnectPacket,
  type IPublishPacket,
  type ISubscription,
  type Packet,
} from 'mqtt-packet';
import { Broker, type BrokerOptions } from '../../src/broker/broker.js';
import type { Config } from '../../src/config/schema.js';
import { shardOf } from '../../src/listener/client-id.js';

type Ctx = Pick<TestContext, 'after'>;

/**
 * Default hang guard of every wait in these helpers: long enough that a loaded 2-core CI machine
 * never trips it on a working broker, short enough that a broker bug fails the test, not the run.
 */
export const HANG_GUARD_MS = 20_000;

/**
 * Metrics/health and REST API servers on ephemeral ports (tests run side by side), the generated
 * API key kept in a temp dir instead of ./data, no drain wait at stop, and no periodic $SYS
 * messages (their retained ones would show in retained counts); tests of those turn them on.
 */
export const TEST_HTTP_DEFAULTS = {
  'metrics.host': '127.0.0.1',
  'metrics.port': 0,
  'api.host': '127.0.0.1',
  'api.port': 0,
  'node.data_dir': join(tmpdir(), 'emqx-ts-test-data'),
  'node.shutdown_drain_period': 0,
  'sys_topics.sys_msg_interval': 0,
  'sys_topics.sys_heartbeat_interval': 0,
} as const;

/** The same as CLI flags, for tests that spawn the broker as a process. */
export const TEST_HTTP_FLAGS: string[] = Object.entries(TEST_HTTP_DEFAULTS).map(([k, v]) => `--${k}=${v}`);

/** Starts a broker on 127.0.0.1 with an ephemeral port; it is stopped after the test. */
export async function startBroker(t: Ctx, config: Record<string, unknown> = {}): Promise<Broker> {
  const broker = await Broker.start({
    config: {
      'listener.host': '127.0.0.1',
      'listener.port': 0,
      'node.shards': 2,
      'log.level': process.env.TEST_LOG_LEVEL ?? 'silent',
      ...TEST_HTTP_DEFAULTS,
      ...config,
    },
  });
  t.after(() => broker.stop());
  return broker;
}

/** A client id (prefix + n) whose sessions live on `shard`. */
export function idOnShard(broker: Broker, shard: number, prefix = 'c'): string {
  for (let n = 0; ; n++) {
    const id = `${prefix}-${n}`;
    if (shardOf(id, broker.shardCount) === shard) return id;
  }
}

/** Connects an mqtt.js client (MQTT 3.1.1, no auto-reconnect) and waits for CONNACK. */
export async function client(t: Ctx, broker: Broker, opts: IClientOptions = {}): Promise<MqttClient> {
  const c = mqtt.connect({
    host: '127.0.0.1',
    port: broker.port,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: HANG_GUARD_MS,
    ...opts,
  });
  t.after(() => {
    c.end(true);
  });
  await new Promise<void>((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
  c.removeAllListeners('error');
  c.on('error', () => {});
  return c;
}

export interface Received {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  dup: boolean;
}

/** Collects messages and lets a test wait for the n-th one (no fixed sleeps). */
export class Inbox {
  readonly messages: Received[] = [];
  private waiters: { n: number; resolve: () => void }[] = [];

  constructor(c: MqttClient) {
    c.on('message', (topic, payload, packet) => {
      this.messages.push({
        topic,
        payload: payload.toString(),
        qos: packet.qos,
        retain: packet.retain,
        dup: packet.dup,
      });
      this.waiters = this.waiters.filter((w) => {
        if (this.messages.length >= w.n) w.resolve();
        return this.messages.length < w.n;
      });
    });
  }

  /** Resolves when at least n messages arrived; rejects after timeoutMs (a hang guard, not a timing assertion). */
  wait(n: number, timeoutMs = HANG_GUARD_MS): Promise<Received[]> {
    if (this.messages.length >= n) return Promise.resolve(this.messages);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new Error(
              `waited for ${n} messages, got ${this.messages.length}: ${JSON.stringify(this.messages)}`,
            ),
          ),
        timeoutMs,
      );
      this.waiters.push({
        n,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.messages);
        },
      });
    });
  }
}

export function subscribe(c: MqttClient, filter: string | string[], qos: 0 | 1 | 2 = 0): Promise<number[]> {
  return new Promise((resolve, reject) => {
    c.subscribe(filter, { qos }, (err, granted) =>
      err ? reject(err) : resolve((granted ?? []).map((g) => g.qos)),
    );
  });
}

export function publish(
  c: MqttClient,
  topic: string,
  payload: string | Buffer,
  opts: { qos?: 0 | 1 | 2; retain?: boolean } = {},
): Promise<void> {
  return new Promise((resolve, reject) => {
    c.publish(topic, payload, { qos: opts.qos ?? 0, retain: opts.retain ?? false }, (err) =>
      err ? reject(err) : resolve(),
    );
  });
}

/**
 * A round trip through the broker on this connection: when it resolves, everything the
 * broker had to send this client before answering a PINGREQ... is not guaranteed across shards,
 * so tests use a marker message on a private topic instead (see `sync`).
 */
export async function sync(
  pub: MqttClient,
  sub: MqttClient,
  inbox: Inbox,
  marker = `sync/${Math.random()}`,
): Promise<void> {
  await subscribe(sub, marker, 1);
  const before = inbox.messages.length;
  await publish(pub, marker, 'sync', { qos: 1 });
  await inbox.wait(before + 1);
  inbox.messages.splice(
    inbox.messages.findIndex((m) => m.topic === marker),
    1,
  );
}

// ---------------------------------------------------------------------------------------------
// Raw sockets, for malformed input and exact wire checks

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
      await Promise.race([
        once(this.socket, 'raw-data'),
        this.closedPromise,
        new Promise((r) => setTimeout(r, left)),
      ]);
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

/** Polls `cond` until true; rejects after timeoutMs (a hang guard, not a timing assertion). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = HANG_GUARD_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Rejects with `what` if `p` does not settle within timeoutMs. */
export async function within<T>(p: Promise<T>, what: string, timeoutMs = HANG_GUARD_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Connects an mqtt.js client like `client`, but with its Inbox attached before CONNACK (a resumed
 * session may deliver right behind it) and the CONNACK's session-present flag.
 */
export async function clientWithInbox(
  t: Ctx,
  broker: Broker,
  opts: IClientOptions = {},
): Promise<{ c: MqttClient; inbox: Inbox; sessionPresent: boolean }> {
  const c = mqtt.connect({
    host: '127.0.0.1',
    port: broker.port,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: HANG_GUARD_MS,
    ...opts,
  });
  t.after(() => {
    c.end(true);
  });
  const inbox = new Inbox(c);
  const sessionPresent = await new Promise<boolean>((resolve, reject) => {
    c.once('connect', (connack) => resolve(connack.sessionPresent));
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
  c.removeAllListeners('error');
  c.on('error', () => {});
  return { c, inbox, sessionPresent };
}

/** Ends an mqtt.js client with DISCONNECT (graceful) or by destroying its socket (`force`), and waits for close. */
export function endClient(c: MqttClient, force = false): Promise<void> {
  return within(
    new Promise<void>((resolve) => {
      if (c.disconnected) resolve();
      else c.end(force, {}, () => resolve());
    }),
    'client end',
  );
}

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

/** Starts a broker with any BrokerOptions (e.g. `onFatal`); the test config defaults apply. */
export async function startBrokerWith(t: Ctx, opts: BrokerOptions): Promise<Broker> {
  const broker = await Broker.start({
    ...opts,
    config: {
      'listener.host': '127.0.0.1',
      'listener.port': 0,
      'node.shards': 2,
      'log.level': process.env.TEST_LOG_LEVEL ?? 'silent',
      ...TEST_HTTP_DEFAULTS,
      ...(opts.config ?? {}),
    },
  });
  t.after(() => broker.stop());
  return broker;
}

/** Resolves when the mqtt.js client's connection closes (at once if its socket is already destroyed). */
export function closed(c: MqttClient, timeoutMs = HANG_GUARD_MS): Promise<void> {
  if (!c.connected && c.stream?.destroyed) return Promise.resolve();
  return within(
    new Promise<void>((resolve) => c.once('close', () => resolve())),
    `client ${c.options.clientId} to be disconnected`,
    timeoutMs,
  );
}

/** Waits for the first message (already received or coming) that satisfies `pred`. */
export async function waitForMessage(
  inbox: Inbox,
  pred: (m: Received) => boolean,
  timeoutMs = HANG_GUARD_MS,
): Promise<Received> {
  const deadline = Date.now() + timeoutMs;
  for (let n = 1; ; n++) {
    const msgs = await inbox.wait(n, Math.max(1, deadline - Date.now()));
    const found = msgs.find(pred);
    if (found) return found;
  }
}

/** The lines a child process writes on a stream, with a wait for a matching line. */
export class LineReader {
  readonly lines: string[] = [];
  private partial = '';
  private waiters: { pred: (line: string) => boolean; resolve: (line: string) => void }[] = [];

  constructor(stream: NodeJS.ReadableStream) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop() ?? '';
      for (const line of parts) this.push(line);
    });
    stream.on('end', () => {
      if (this.partial) this.push(this.partial);
      this.partial = '';
    });
  }

  private push(line: string): void {
    this.lines.push(line);
    this.waiters = this.waiters.filter((w) => {
      if (!w.pred(line)) return true;
      w.resolve(line);
      return false;
    });
  }

  /** The first line (already seen or coming) that satisfies `pred`; rejects after timeoutMs. */
  waitFor(pred: (line: string) => boolean, what: string, timeoutMs = HANG_GUARD_MS): Promise<string> {
    const seen = this.lines.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const waiter = {
        pred,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(
          new Error(`timed out after ${timeoutMs} ms waiting for ${what}; output so far:\n${this.text}`),
        );
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  get text(): string {
    return this.lines.join('\n') + (this.partial ? `\n${this.partial}` : '');
  }
}

/** Exit code and signal of a child process (resolves immediately if it has already exited). */
export function exited(
  child: ChildProcess,
  timeoutMs = HANG_GUARD_MS,
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return within(
    once(child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
    })),
    `process ${child.pid} to exit`,
    timeoutMs,
  );
}

// ---------------------------------------------------------------------------------------------
// Hand-made (and deliberately malformed) frames for RawClient, and a broker health check

type Bytes = Buffer | string | readonly number[];

function toBuf(b: Bytes): Buffer {
  return Buffer.isBuffer(b) ? b : typeof b === 'string' ? Buffer.from(b, 'utf8') : Buffer.from(b);
}

/** A frame: first header byte `b0`, the variable-byte remaining length of the parts, the parts. */
export function rawFrame(b0: number, ...parts: Bytes[]): Buffer {
  const body = Buffer.concat(parts.map(toBuf));
  const len: number[] = [];
  let n = body.length;
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    len.push(b);
  } while (n > 0);
  return Buffer.concat([Buffer.from([b0, ...len]), body]);
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
 * The broker still works: a fresh subscriber on shard 0 gets a QoS 1 message from a fresh
 * publisher on the last shard (so it crosses shards when there are several).
 */
export async function assertBrokerServes(t: Ctx, broker: Broker): Promise<void> {
  const tag = `${process.hrtime.bigint().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const sub = await client(t, broker, { clientId: idOnShard(broker, 0, `health-sub-${tag}`) });
  const pub = await client(t, broker, {
    clientId: idOnShard(broker, broker.shardCount - 1, `health-pub-${tag}`),
  });
  const inbox = new Inbox(sub);
  await subscribe(sub, `health/${tag}`, 1);
  await publish(pub, `health/${tag}`, tag, { qos: 1 });
  const [m] = await inbox.wait(1);
  if (m.topic !== `health/${tag}` || m.payload !== tag || m.qos !== 1) {
    throw new Error(`health check got ${JSON.stringify(m)}`);
  }
  sub.end(true);
  pub.end(true);
}

// ---------------------------------------------------------------------------------------------
// MQTT 5: mqtt.js clients with their CONNACK, inboxes of whole packets, and raw frames with
// property lists in wire order (mqtt-packet folds repeated user properties into one key)

/** One property as it is on the wire: [identifier, value]; a User Property's value is [name, value]. */
export type Prop5 = [number, number | string | Buffer | [string, string]];

type Prop5Type = 'byte' | 'u16' | 'u32' | 'varint' | 'string' | 'binary' | 'pair';

/** The MQTT 5.0 property identifiers and their data types (§2.2.2.2). */
export const PROP5_TYPES: Readonly<Record<number, Prop5Type>> = {
  1: 'byte',
  2: 'u32',
  3: 'string',
  8: 'string',
  9: 'binary',
  11: 'varint',
  17: 'u32',
  18: 'string',
  19: 'u16',
  21: 'string',
  22: 'binary',
  23: 'byte',
  24: 'u32',
  25: 'byte',
  26: 'string',
  28: 'string',
  31: 'string',
  33: 'u16',
  34: 'u16',
  35: 'u16',
  36: 'byte',
  37: 'byte',
  38: 'pair',
  39: 'u32',
  40: 'byte',
  41: 'byte',
  42: 'byte',
};

function varInt(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/**
 * Encodes a property list with its length prefix, in the given order. `type` forces the data type
 * of an identifier (to send an unknown one); values are written as given, valid or not.
 */
export function props5(list: readonly Prop5[], type: Record<number, Prop5Type> = {}): Buffer {
  const parts: Buffer[] = [];
  for (const [id, v] of list) {
    parts.push(varInt(id));
    switch (type[id] ?? PROP5_TYPES[id]) {
      case 'byte':
        parts.push(Buffer.from([v as number]));
        break;
      case 'u16':
        parts.push(Buffer.from([(v as number) >> 8, (v as number) & 0xff]));
        break;
      case 'u32': {
        const b = Buffer.alloc(4);
        b.writeUInt32BE(v as number);
        parts.push(b);
        break;
      }
      case 'varint':
        parts.push(varInt(v as number));
        break;
      case 'string':
      case 'binary':
        parts.push(mqttString(v as Buffer | string));
        break;
      case 'pair':
        parts.push(mqttString((v as [string, string])[0]), mqttString((v as [string, string])[1]));
        break;
      default:
        throw new Error(`property 0x${id.toString(16)} has no known type`);
    }
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([varInt(body.length), body]);
}

/** Decodes a property list (length prefix at `pos`) in wire order; returns it and the position after it. */
export function parseProps5(buf: Buffer, pos: number): { props: Prop5[]; next: number } {
  const readVar = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[pos++];
      v += (b & 0x7f) * mul;
      mul *= 128;
      if ((b & 0x80) === 0) return v;
    }
  };
  const readBin = (): Buffer => {
    const l = buf.readUInt16BE(pos);
    const b = buf.subarray(pos + 2, pos + 2 + l);
    pos += 2 + l;
    return Buffer.from(b);
  };
  const len = readVar();
  const end = pos + len;
  const props: Prop5[] = [];
  while (pos < end) {
    const id = readVar();
    switch (PROP5_TYPES[id]) {
      case 'byte':
        props.push([id, buf[pos++]]);
        break;
      case 'u16':
        props.push([id, buf.readUInt16BE(pos)]);
        pos += 2;
        break;
      case 'u32':
        props.push([id, buf.readUInt32BE(pos)]);
        pos += 4;
        break;
      case 'varint':
        props.push([id, readVar()]);
        break;
      case 'string':
        props.push([id, readBin().toString('utf8')]);
        break;
      case 'binary':
        props.push([id, readBin()]);
        break;
      case 'pair':
        props.push([id, [readBin().toString('utf8'), readBin().toString('utf8')]]);
        break;
      default:
        throw new Error(`unknown property 0x${id.toString(16)}`);
    }
  }
  if (pos !== end) throw new Error('property list overruns its length');
  return { props, next: end };
}

export interface Connect5Spec {
  clientId?: Bytes;
  clean?: boolean;
  keepalive?: number;
  /** CONNECT properties in wire order, or the raw property block (length prefix included) */
  props?: readonly Prop5[] | Buffer;
  will?: { topic: Bytes; payload?: Bytes; qos?: number; retain?: boolean; props?: readonly Prop5[] };
  username?: Bytes;
  password?: Bytes;
}

/** Encodes an MQTT 5 CONNECT with properties exactly as given (may be invalid on purpose). */
export function connectFrame5(spec: Connect5Spec = {}): Buffer {
  let flags = (spec.clean ?? true) ? 0x02 : 0;
  if (spec.will) flags |= 0x04 | ((spec.will.qos ?? 0) << 3) | (spec.will.retain ? 0x20 : 0);
  if (spec.username !== undefined) flags |= 0x80;
  if (spec.password !== undefined) flags |= 0x40;
  const ka = spec.keepalive ?? 60;
  const parts: Bytes[] = [
    mqttString('MQTT'),
    [5, flags, ka >> 8, ka & 0xff],
    Buffer.isBuffer(spec.props) ? spec.props : props5(spec.props ?? []),
    mqttString(spec.clientId ?? ''),
  ];
  if (spec.will) {
    parts.push(
      props5(spec.will.props ?? []),
      mqttString(spec.will.topic),
      mqttString(spec.will.payload ?? ''),
    );
  }
  if (spec.username !== undefined) parts.push(mqttString(spec.username));
  if (spec.password !== undefined) parts.push(mqttString(spec.password));
  return rawFrame(0x10, ...parts);
}

/** Encodes an MQTT 5 PUBLISH with properties exactly as given (may be invalid on purpose). */
export function publishFrame5(spec: {
  topic: Bytes;
  payload?: Bytes;
  qos?: number;
  retain?: boolean;
  dup?: boolean;
  packetId?: number;
  props?: readonly Prop5[] | Buffer;
}): Buffer {
  const qos = spec.qos ?? 0;
  const b0 = 0x30 | (spec.dup ? 8 : 0) | (qos << 1) | (spec.retain ? 1 : 0);
  const id = spec.packetId ?? 1;
  return rawFrame(
    b0,
    mqttString(spec.topic),
    qos > 0 ? [id >> 8, id & 0xff] : [],
    Buffer.isBuffer(spec.props) ? spec.props : props5(spec.props ?? []),
    toBuf(spec.payload ?? ''),
  );
}

export interface Publish5 {
  qos: number;
  retain: boolean;
  dup: boolean;
  topic: string;
  packetId: number;
  props: Prop5[];
  payload: Buffer;
}

/** Decodes a raw MQTT 5 PUBLISH frame (from `readFrame`) with its properties in wire order. */
export function parsePublish5(f: RawFrame): Publish5 {
  if (f.type !== 3) throw new Error(`expected PUBLISH, got packet type ${f.type}`);
  const qos = (f.flags >> 1) & 3;
  const tl = f.body.readUInt16BE(0);
  const topic = f.body.subarray(2, 2 + tl).toString('utf8');
  let pos = 2 + tl;
  let packetId = 0;
  if (qos > 0) {
    packetId = f.body.readUInt16BE(pos);
    pos += 2;
  }
  const { props, next } = parseProps5(f.body, pos);
  return {
    qos,
    retain: (f.flags & 1) === 1,
    dup: (f.flags & 8) === 8,
    topic,
    packetId,
    props,
    payload: f.body.subarray(next),
  };
}

/** Opens a raw connection, sends an MQTT 5 CONNECT and returns it with its CONNACK (parsed by mqtt-packet). */
export async function rawConnect5(
  t: Ctx,
  broker: Broker,
  spec: Connect5Spec,
): Promise<{ raw: RawClient; connack: IConnackPacket; frame: RawFrame }> {
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame5(spec));
  const frame = await readFrame(raw);
  const connack = parseFrame5(frame);
  if (connack.cmd !== 'connack') throw new Error(`expected CONNACK, got ${connack.cmd}`);
  return { raw, connack: connack as IConnackPacket, frame };
}

/** Re-encodes a raw frame and parses it with mqtt-packet as MQTT 5. */
export function parseFrame5(f: RawFrame): Packet {
  const bytes = Buffer.concat([Buffer.from([(f.type << 4) | f.flags]), varInt(f.body.length), f.body]);
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  let out: Packet | null = null;
  let error: Error | null = null;
  parser.on('packet', (p: Packet) => {
    out ??= p;
  });
  parser.on('error', (e: Error) => {
    error = e;
  });
  parser.parse(bytes);
  if (error) throw error;
  if (!out) throw new Error(`could not parse frame of type ${f.type}`);
  return out;
}

/** A v5 SUBSCRIBE frame: one filter with options byte `opts` (QoS | NL<<2 | RAP<<3 | RH<<4). */
export function subscribeFrame5(packetId: number, filter: string, opts: number, subId = 0): Buffer {
  return rawFrame(
    0x82,
    [packetId >> 8, packetId & 0xff],
    props5(subId ? [[0x0b, subId]] : []),
    mqttString(filter),
    [opts],
  );
}

/** The publish packets an mqtt.js client receives, whole (with `properties`), in arrival order. */
export class PacketInbox {
  readonly packets: IPublishPacket[] = [];
  private waiters: { n: number; resolve: () => void }[] = [];

  constructor(c: MqttClient) {
    c.on('message', (_topic, _payload, packet) => {
      this.packets.push(packet);
      this.waiters = this.waiters.filter((w) => {
        if (this.packets.length >= w.n) w.resolve();
        return this.packets.length < w.n;
      });
    });
  }

  /** Resolves when at least n packets arrived; rejects after timeoutMs (a hang guard). */
  wait(n: number, timeoutMs = HANG_GUARD_MS): Promise<IPublishPacket[]> {
    if (this.packets.length >= n) return Promise.resolve(this.packets);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`waited for ${n} messages, got ${this.packets.length}`)),
        timeoutMs,
      );
      this.waiters.push({
        n,
        resolve: () => {
          clearTimeout(timer);
          resolve(this.packets);
        },
      });
    });
  }
}

/**
 * Connects an mqtt.js MQTT 5 client (no auto-reconnect) with a PacketInbox attached before
 * CONNACK; resolves with the CONNACK packet (its `properties`, `sessionPresent`).
 */
export async function client5(
  t: Ctx,
  broker: Broker,
  opts: IClientOptions = {},
): Promise<{ c: MqttClient; connack: IConnackPacket; inbox: PacketInbox }> {
  const c = mqtt.connect({
    host: '127.0.0.1',
    port: broker.port,
    protocolVersion: 5,
    reconnectPeriod: 0,
    connectTimeout: HANG_GUARD_MS,
    ...opts,
  });
  t.after(() => {
    c.end(true);
  });
  const inbox = new PacketInbox(c);
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    c.once('connect', (p) => resolve(p));
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
  c.removeAllListeners('error');
  c.on('error', () => {});
  return { c, connack, inbox };
}

/** Waits until the wall clock has passed `at` (ms since epoch): for expiry deadlines under test. */
export function untilPast(at: number, what: string, timeoutMs = 15_000): Promise<void> {
  return waitFor(() => Date.now() > at, what, timeoutMs);
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 (shared subscriptions, subscription options): mqtt.js helpers, a raw packet client,
// runtime reconfiguration

/** The first packet (already received or coming) in a PacketInbox that satisfies `pred`. */
export async function waitForPacket(
  inbox: PacketInbox,
  pred: (p: IPublishPacket) => boolean,
  what: string,
  timeoutMs = HANG_GUARD_MS,
): Promise<IPublishPacket> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = inbox.packets.find(pred);
    if (found) return found;
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(inbox.packets.map(summary5))}`);
    }
    await inbox.wait(inbox.packets.length + 1, left).catch(() => {});
  }
}

/** A PUBLISH as [topic, payload, qos, retain] plus its properties, for assertion messages. */
export function summary5(p: IPublishPacket): unknown {
  return [p.topic, p.payload.toString(), p.qos, p.retain, p.properties ?? {}];
}

/** SUBSCRIBE with MQTT 5 options through mqtt.js; resolves with the granted QoS / reason codes. */
export function subscribe5(
  c: MqttClient,
  filter: string | string[],
  opts: { qos?: 0 | 1 | 2; nl?: boolean; rap?: boolean; rh?: number; subscriptionIdentifier?: number } = {},
): Promise<number[]> {
  const { subscriptionIdentifier, ...o } = opts;
  return within(
    new Promise((resolve, reject) => {
      c.subscribe(
        filter,
        {
          qos: o.qos ?? 0,
          nl: o.nl,
          rap: o.rap,
          rh: o.rh,
          ...(subscriptionIdentifier ? { properties: { subscriptionIdentifier } } : {}),
        },
        (err, granted) => (err ? reject(err) : resolve((granted ?? []).map((g) => g.qos))),
      );
    }),
    `SUBACK for ${String(filter)}`,
  );
}

/** PUBLISH through mqtt.js (MQTT 5 properties allowed); resolves when the publish is complete. */
export function publish5(
  c: MqttClient,
  topic: string,
  payload: string | Buffer,
  opts: { qos?: 0 | 1 | 2; retain?: boolean; properties?: IPublishPacket['properties'] } = {},
): Promise<void> {
  return within(
    new Promise((resolve, reject) => {
      c.publish(
        topic,
        payload,
        { qos: opts.qos ?? 0, retain: opts.retain ?? false, properties: opts.properties },
        (err) => (err ? reject(err) : resolve()),
      );
    }),
    `publish to ${topic}`,
  );
}

/** PacketClient.connect with an MQTT 5 CONNECT. */
export const PacketClient5 = {
  connect(
    t: Ctx,
    broker: Broker,
    clientId: string,
    opts: ConnectOptions = {},
  ): Promise<{ pc: PacketClient; connack: IConnackPacket }> {
    return PacketClient.connect(t, broker, clientId, { ...opts, protocolVersion: 5 });
  },
};

/**
 * Changes runtime options in every shard, as a reload (SIGHUP) does, and resolves once every
 * running shard has applied them (a query behind the reconfigure on the same port has answered).
 */
export async function reconfigureShards(broker: Broker, patch: Partial<Config>): Promise<void> {
  Object.assign(broker.config, patch);
  for (const s of broker.supervisor.shards)
    broker.supervisor.post(s, { t: 'reconfigure', config: { ...broker.config } });
  await broker.queries.askAll({ q: 'topics' });
}

/**
 * Brokers shared by the tests of one file that need the same options (each test uses its own
 * client ids and topics); all are stopped when the file's tests are done.
 */
export function brokerPool(): (config?: Record<string, unknown>) => Promise<Broker> {
  const brokers = new Map<string, Promise<Broker>>();
  after(async () => {
    await Promise.all([...brokers.values()].map(async (b) => (await b).stop()));
  });
  return (config = {}) => {
    const key = JSON.stringify(config);
    let b = brokers.get(key);
    // Stopped by the file-level `after` above, not by the first test that used it.
    if (!b) brokers.set(key, (b = startBroker({ after: () => {} }, config)));
    return b;
  };
}

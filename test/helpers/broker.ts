/**
 * Test harness: a real broker (main thread + real shard worker threads) on an ephemeral port,
 * real TCP clients (`mqtt` from npm, raw sockets for malformed input). Nothing is mocked.
 */
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import type { TestContext } from 'node:test';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Broker } from '../../src/broker/broker.js';
import { shardOf } from '../../src/broker/client-id.js';

type Ctx = Pick<TestContext, 'after'>;

/** Starts a broker on 127.0.0.1 with an ephemeral port; it is stopped after the test. */
export async function startBroker(t: Ctx, config: Record<string, unknown> = {}): Promise<Broker> {
  const broker = await Broker.start({
    config: {
      'listener.host': '127.0.0.1',
      'listener.port': 0,
      'node.shards': 2,
      'log.level': process.env.TEST_LOG_LEVEL ?? 'silent',
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
    connectTimeout: 10_000,
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
  wait(n: number, timeoutMs = 10_000): Promise<Received[]> {
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
    this.closedPromise = once(socket, 'close').then(() => {
      this.closed = true;
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
  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
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
  async waitClosed(timeoutMs = 10_000): Promise<void> {
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

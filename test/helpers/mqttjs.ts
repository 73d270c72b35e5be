import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { IConnackPacket, IPublishPacket } from 'mqtt-packet';
import type { Broker } from '../../src/broker/broker.js';
import type { Ctx } from './base.js';
import { HANG_GUARD_MS, within } from './base.js';

/** An mqtt.js client to the broker (MQTT 3.1.1 unless `opts` say, no auto-reconnect), not waited for. */
export function openClient(broker: Broker, opts: IClientOptions = {}): MqttClient {
  return mqtt.connect({
    host: '127.0.0.1',
    port: broker.port,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: HANG_GUARD_MS,
    ...opts,
  });
}

/**
 * Connects an mqtt.js client (no auto-reconnect, closed at the end of the test) and waits for
 * CONNACK; `onClient` sees the client before CONNACK (to attach an inbox that misses nothing).
 */
async function connectMqtt(
  t: Ctx,
  broker: Broker,
  protocolVersion: 4 | 5,
  opts: IClientOptions,
  onClient?: (c: MqttClient) => void,
): Promise<{ c: MqttClient; connack: IConnackPacket }> {
  const c = openClient(broker, { protocolVersion, ...opts });
  t.after(() => {
    c.end(true);
  });
  onClient?.(c);
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    c.once('connect', (p) => resolve(p));
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
  c.removeAllListeners('error');
  c.on('error', () => {});
  return { c, connack };
}

/**
 * Connects an mqtt.js client to a URL (ws://, wss://, mqtts://…; no auto-reconnect, closed at
 * the end of the test) and waits for CONNACK; rejects when refused or closed first.
 */
export async function clientAt(t: Ctx, url: string, opts: IClientOptions = {}): Promise<MqttClient> {
  const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: HANG_GUARD_MS, ...opts });
  t.after(() => {
    c.end(true);
  });
  await within(
    new Promise<void>((resolve, reject) => {
      c.once('connect', () => resolve());
      c.once('error', reject);
      c.once('close', () => reject(new Error('closed before CONNACK')));
    }),
    `CONNACK from ${url}`,
  );
  c.removeAllListeners('error');
  c.on('error', () => {});
  return c;
}

/** Connects an mqtt.js client (MQTT 3.1.1, no auto-reconnect) and waits for CONNACK. */
export async function client(t: Ctx, broker: Broker, opts: IClientOptions = {}): Promise<MqttClient> {
  return (await connectMqtt(t, broker, 4, opts)).c;
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

/**
 * Connects an mqtt.js client like `client`, but with its Inbox attached before CONNACK (a resumed
 * session may deliver right behind it) and the CONNACK's session-present flag.
 */
export async function clientWithInbox(
  t: Ctx,
  broker: Broker,
  opts: IClientOptions = {},
): Promise<{ c: MqttClient; inbox: Inbox; sessionPresent: boolean }> {
  const c = openClient(broker, opts);
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
  let inbox!: PacketInbox;
  const { c, connack } = await connectMqtt(t, broker, 5, opts, (c) => {
    inbox = new PacketInbox(c);
  });
  return { c, connack, inbox };
}

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

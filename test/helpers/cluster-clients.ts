/**
 * MQTT clients of cluster nodes for the cluster tests: connect to a node, subscribe, and
 * collect what arrives, waiting on arrivals (never fixed sleeps).
 */
import assert from 'node:assert/strict';
import mqtt, { type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from 'mqtt';
import { within } from './broker.js';
import { startNode, type TestNode } from './cluster.js';

type Ctx = { after: (fn: () => void | Promise<void>) => void };

export interface Got {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  dup: boolean;
  props?: IPublishPacket['properties'];
}

/** Collects a client's messages. */
export class Inbox {
  readonly got: Got[] = [];
  private wake: (() => void) | null = null;
  constructor(readonly c: MqttClient) {
    c.on('message', (topic, payload, packet) => {
      this.got.push({
        topic,
        payload: payload.toString(),
        qos: packet.qos,
        retain: packet.retain,
        dup: packet.dup,
        props: packet.properties,
      });
      this.wake?.();
    });
  }

  /** Waits until `pred` holds for what has arrived (re-checked on every arrival). */
  async until(pred: (got: Got[]) => boolean, what: string, timeoutMs = 20_000): Promise<Got[]> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.got)) {
      if (Date.now() > deadline) throw new Error(`${what}: got ${JSON.stringify(this.got)}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 100);
      });
    }
    return this.got;
  }

  wait(n: number, what: string, timeoutMs = 20_000): Promise<Got[]> {
    return this.until((g) => g.length >= n, what, timeoutMs);
  }
}

export async function connectTo(
  t: Ctx,
  node: TestNode,
  clientId: string,
  opts: IClientOptions = {},
): Promise<MqttClient> {
  const c = client(t, node, clientId, opts);
  await connected(c, clientId, node);
  return c;
}

/** connectTo with an Inbox that listens before CONNACK (a resumed session's queue may come with it). */
export async function connectInbox(
  t: Ctx,
  node: TestNode,
  clientId: string,
  opts: IClientOptions = {},
): Promise<Inbox> {
  const inbox = new Inbox(client(t, node, clientId, opts));
  await connected(inbox.c, clientId, node);
  return inbox;
}

function client(t: Ctx, node: TestNode, clientId: string, opts: IClientOptions): MqttClient {
  const c = mqtt.connect({ host: '127.0.0.1', port: node.mqttPort, clientId, reconnectPeriod: 0, ...opts });
  t.after(() => new Promise<void>((r) => c.end(true, {}, () => r())));
  return c;
}

/** connectInbox that also resolves with the CONNACK (session present after a takeover). */
export async function resumeInbox(
  t: Ctx,
  node: TestNode,
  clientId: string,
  opts: IClientOptions = {},
): Promise<{ inbox: Inbox; connack: IConnackPacket }> {
  const inbox = new Inbox(client(t, node, clientId, opts));
  return { inbox, connack: await connected(inbox.c, clientId, node) };
}

function connected(c: MqttClient, clientId: string, node: TestNode): Promise<IConnackPacket> {
  return within(
    new Promise<IConnackPacket>((resolve, reject) => {
      c.once('connect', resolve);
      c.once('error', reject);
    }),
    `${clientId} to connect to ${node.name}`,
  );
}

export async function subscribeTo(c: MqttClient, filter: string, qos: 0 | 1 | 2): Promise<void> {
  const granted = await c.subscribeAsync(filter, { qos });
  assert.equal(granted[0].qos, qos, `granted QoS for ${filter}`);
}

/** Polls `read` until `pred` holds. */
export async function pollUntil<T>(
  read: () => Promise<T>,
  pred: (v: T) => boolean,
  what: string,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: last ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A node's stored retained message count (REST /stats). */
export async function retainedCount(node: TestNode): Promise<number> {
  const s = await node.api<Record<string, number>[]>('/stats');
  return s[0]['retained.count'];
}

/**
 * Three nodes: n1 is the seed, n2 and n3 join it; resolves once they form a full mesh.
 * `env1`: more environment variables for n1 (test switches); `args`: more options for all three.
 */
export async function threeNodes(
  t: Ctx,
  prefix: string,
  shards = [1, 2, 1],
  more: { env1?: Record<string, string>; args?: string[] } = {},
): Promise<TestNode[]> {
  const { env1, args } = more;
  const n1 = await startNode(t, { name: `${prefix}1@127.0.0.1`, shards: shards[0], env: env1, args });
  const [n2, n3] = await Promise.all([
    startNode(t, { name: `${prefix}2@127.0.0.1`, seeds: [n1.clusterPort], shards: shards[1], args }),
    startNode(t, { name: `${prefix}3@127.0.0.1`, seeds: [n1.clusterPort], shards: shards[2], args }),
  ]);
  // n3 learns n2 through n1 (members in join/heartbeat answers): a full mesh.
  await Promise.all([
    n1.waitPeer(n2.name, 'running'),
    n1.waitPeer(n3.name, 'running'),
    n2.waitPeer(n3.name, 'running'),
    n3.waitPeer(n2.name, 'running'),
  ]);
  return [n1, n2, n3];
}

/**
 * An MQTT 5 client of `node` with a QoS 1 will on `topic` (payload `gone`), a Will Delay Interval
 * of `delay` s and a Session Expiry Interval of `expiry` s; its errors are ignored (tests cut its
 * connection to make the will due).
 */
export async function willClient(
  t: Ctx,
  node: TestNode,
  clientId: string,
  topic: string,
  delay: number,
  expiry: number,
): Promise<MqttClient> {
  const c = await connectTo(t, node, clientId, {
    protocolVersion: 5,
    properties: { sessionExpiryInterval: expiry },
    will: {
      topic,
      payload: Buffer.from('gone'),
      qos: 1,
      retain: false,
      properties: { willDelayInterval: delay },
    },
  });
  c.on('error', () => {});
  return c;
}

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { Broker, type BrokerOptions } from '../../src/broker/broker.js';
import { type Config, SCHEMA } from '../../src/config/schema.js';
import { shardOf } from '../../src/listener/client-id.js';
import type { Ctx } from './base.js';
import { client, Inbox, publish, subscribe } from './mqttjs.js';

/**
 * Metrics/health and REST API servers on ephemeral ports (tests run side by side), the generated
 * API key kept in a temp dir instead of ./data, no drain wait at stop, and no periodic $SYS
 * messages (their retained ones would show in retained counts); tests of those turn them on.
 * Brokers started from these alone (CLI processes, `Broker.start` in a test) share that dir, so
 * they run memory-only (`durability.mode none`); startBroker gives each broker a fresh data dir
 * and the default durability instead.
 */
export const TEST_HTTP_DEFAULTS = {
  'metrics.host': '127.0.0.1',
  'metrics.port': 0,
  'api.host': '127.0.0.1',
  'api.port': 0,
  'node.data_dir': join(tmpdir(), 'emqx-ts-test-data'),
  'durability.mode': 'none',
  'node.shutdown_drain_period': 0,
  'sys_topics.sys_msg_interval': 0,
  'sys_topics.sys_heartbeat_interval': 0,
} as const;

/** The same as CLI flags, for tests that spawn the broker as a process. */
export const TEST_HTTP_FLAGS: string[] = Object.entries(TEST_HTTP_DEFAULTS).map(([k, v]) => `--${k}=${v}`);

/** Starts a broker on 127.0.0.1 with an ephemeral port; it is stopped after the test. */
export function startBroker(t: Ctx, config: Record<string, unknown> = {}): Promise<Broker> {
  return startBrokerWith(t, { config });
}

/** A client id (prefix + n) whose sessions live on `shard`. */
export function idOnShard(broker: Broker, shard: number, prefix = 'c'): string {
  for (let n = 0; ; n++) {
    const id = `${prefix}-${n}`;
    if (shardOf(id, broker.shardCount) === shard) return id;
  }
}

/** Starts a broker with any BrokerOptions (e.g. `onFatal`); the test config defaults apply. */
export async function startBrokerWith(t: Ctx, opts: BrokerOptions): Promise<Broker> {
  // Its own data dir (tests run in parallel), removed after it stops; durability as configured
  // by default, so that every test also runs the durable paths.
  const dataDir = mkdtempSync(join(tmpdir(), 'emqx-ts-data-'));
  let broker: Broker;
  try {
    broker = await Broker.start({
      ...opts,
      config: {
        'listener.host': '127.0.0.1',
        'listener.port': 0,
        'node.shards': 2,
        'log.level': process.env.TEST_LOG_LEVEL ?? 'silent',
        ...TEST_HTTP_DEFAULTS,
        'node.data_dir': dataDir,
        'durability.mode': process.env.TEST_DURABILITY ?? SCHEMA['durability.mode'].default,
        ...(opts.config ?? {}),
      },
    });
  } catch (err) {
    rmSync(dataDir, { recursive: true, force: true });
    throw err;
  }
  t.after(async () => {
    await broker.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  return broker;
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
  // Each broker's own cleanup (stop, remove its data dir), run by the file-level `after`.
  const cleanups: (() => unknown)[] = [];
  after(async () => {
    await Promise.all([...brokers.values()].map((b) => b.catch(() => {})));
    await Promise.all(cleanups.map((fn) => fn()));
  });
  return (config = {}) => {
    const key = JSON.stringify(config);
    let b = brokers.get(key);
    // Stopped by the file-level `after` above, not by the first test that used it.
    if (!b) brokers.set(key, (b = startBroker({ after: (fn: () => unknown) => cleanups.push(fn) }, config)));
    return b;
  };
}

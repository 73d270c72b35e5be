// Retained messages across nodes (issue #11: "replicate the store, or look up remotely — your
// choice, measured"). emqx-ts replicates: every node holds the whole retained set, so a
// SUBSCRIBE reads it locally. This measures what that costs and buys, with 1 and 2 nodes:
//  - storing N retained messages (QoS 1, a window of publishes in flight, each PUBACK waits for
//    every running peer's store): msg/s and CPU µs per message of all node processes;
//  - the peer's memory for the replicated set (RSS growth per message);
//  - a late subscriber of `#` on the peer (node 2) against one on the publisher's node: time to
//    receive all N (both read their own copy).
//   npm run build && node --import tsx bench/cluster-retained.ts [--count 20000] [--payload 64] [--window 200] [--rounds 2]
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { HOST } from './brokers.js';
import { metric, type Node, sleep, startNode } from './cluster-node.js';
import { cpuMicros, rssBytes } from './procstat.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    count: { type: 'string', default: '20000' },
    payload: { type: 'string', default: '64' },
    window: { type: 'string', default: '200' },
    rounds: { type: 'string', default: '2' },
  },
});
const COUNT = Number(args.count);
const PAYLOAD = Buffer.alloc(Number(args.payload), 0x61);
const WINDOW = Number(args.window);
/** Late subscribers get the whole set queued */
const QUEUE = ['--mqtt.max_mqueue_len=1000000'];

function connect(n: Node, clientId: string): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect({ host: HOST, port: n.mqtt, clientId, reconnectPeriod: 0 });
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

/** N retained messages on distinct topics, at most WINDOW unacknowledged. */
async function storeRetained(c: MqttClient, prefix: string): Promise<void> {
  let next = 0;
  let done = 0;
  await new Promise<void>((resolve, reject) => {
    const one = () => {
      if (next >= COUNT) return;
      const i = next++;
      c.publish(`${prefix}/${i}`, PAYLOAD, { qos: 1, retain: true }, (err) => {
        if (err) return reject(err);
        if (++done === COUNT) resolve();
        else one();
      });
    };
    for (let k = 0; k < WINDOW; k++) one();
  });
}

/** Subscribes `prefix/#` and resolves with the ms until all N retained messages arrived. */
async function lateSubscriber(n: Node, id: string, prefix: string): Promise<number> {
  const c = await connect(n, id);
  let got = 0;
  const t0 = performance.now();
  const all = new Promise<void>((resolve) =>
    c.on('message', (_t, _p, packet) => {
      if (packet.retain && ++got === COUNT) resolve();
    }),
  );
  await c.subscribeAsync(`${prefix}/#`, { qos: 0 });
  await all;
  const ms = performance.now() - t0;
  c.end(true);
  return ms;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function round(r: number, nodes: 1 | 2): Promise<Record<string, number>> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'emqx-ts-bench-ret-'));
  const n1 = await startNode(`ret${r}a@${HOST}`, nodes === 1 ? null : [], dir, root, QUEUE);
  const all = [n1];
  if (nodes === 2) {
    all.push(await startNode(`ret${r}b@${HOST}`, [n1.cluster], dir, root, QUEUE));
    // (its metrics port may open just after MQTT's)
    while ((await metric(n1, 'emqx_cluster_nodes_running').catch(() => 0)) < 2) await sleep(50);
  }
  try {
    const peer = all[nodes - 1];
    await sleep(500);
    const rss0 = rssBytes(peer.child.pid!);
    const pub = await connect(n1, `ret${r}-pub`);
    const cpu0 = all.map((n) => cpuMicros(n.child.pid!));
    const t0 = performance.now();
    await storeRetained(pub, `r${r}`);
    const ms = performance.now() - t0;
    const cpu = all.reduce((s, n, i) => s + cpuMicros(n.child.pid!) - cpu0[i], 0);
    // Every acked message is in every running peer's store (the ack waited for it).
    const stored = await metric(peer, 'emqx_retained_count');
    pub.end(true);
    const rss = rssBytes(peer.child.pid!);
    const out: Record<string, number> = {
      rate: (COUNT / ms) * 1000,
      cpuPerMsg: cpu / COUNT,
      peerStored: stored,
      peerRssPerMsg: (rss - rss0) / COUNT,
      subLocalMs: await lateSubscriber(n1, `ret${r}-s1`, `r${r}`),
    };
    if (nodes === 2) out.subPeerMs = await lateSubscriber(peer, `ret${r}-s2`, `r${r}`);
    return out;
  } finally {
    for (const n of all) n.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  console.log(
    `retained across nodes: ${COUNT} retained × ${PAYLOAD.length} B, QoS 1, window ${WINDOW}, ${args.rounds} round(s); load ${os.loadavg()[0].toFixed(2)}`,
  );
  const results: Record<string, Record<string, number>[]> = { '1 node': [], '2 nodes': [] };
  for (let r = 0; r < Number(args.rounds); r++) {
    results['1 node'].push(await round(r * 2, 1));
    results['2 nodes'].push(await round(r * 2 + 1, 2));
  }
  for (const [name, rs] of Object.entries(results)) {
    const m = (k: string) => median(rs.map((x) => x[k]));
    const line = [
      `${name.padEnd(8)} store ${Math.round(m('rate'))} msg/s`,
      `${m('cpuPerMsg').toFixed(1)} µs CPU/msg (all nodes)`,
      `stored on the last node ${m('peerStored')}`,
      `its RSS +${Math.round(m('peerRssPerMsg'))} B/msg`,
      `late # subscriber on node 1: ${Math.round(m('subLocalMs'))} ms`,
    ];
    if (name === '2 nodes') line.push(`on node 2 (replica): ${Math.round(m('subPeerMs'))} ms`);
    console.log(line.join(', '));
  }
  console.log(`load ${os.loadavg()[0].toFixed(2)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

// Chaos with loss accounting (issue #11): 3 emqx-ts nodes on loopback, a QoS 1 publisher and a
// persistent QoS 1 subscriber on every node; every --every seconds a random node is killed with
// SIGKILL and restarted --down seconds later (same ports). Clients of the killed node reconnect
// to it once it is back. Reports messages published, acked, delivered, duplicated and lost.
// "Lost" counts only acked messages that the rules say must arrive: the subscriber was connected
// and its node and the publisher's node were up (and had been for --settle seconds, so that
// routes had resynced) from before the publish until after its ack. Others missed (published
// around a kill: at most once across nodes, or to a subscriber whose session died with its node)
// are reported apart.
//   npm run build && bash scripts/chaos.sh [--duration 60] [--every 10] [--down 3] [--rate 100] [--down-after 5]
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { freePort, HOST } from './brokers.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '60' },
    every: { type: 'string', default: '10' },
    down: { type: 'string', default: '3' },
    rate: { type: 'string', default: '100' },
    settle: { type: 'string', default: '4' },
    // cluster.down_after of the nodes (the product default is 5 s)
    'down-after': { type: 'string', default: '5' },
  },
});
const DURATION = Number(args.duration) * 1000;
const EVERY = Number(args.every) * 1000;
const DOWN = Number(args.down) * 1000;
const RATE = Number(args.rate);
const SETTLE = Number(args.settle) * 1000;
const DOWN_AFTER = Number(args['down-after']);

interface Node {
  i: number;
  name: string;
  mqtt: number;
  cluster: number;
  metrics: number;
  child: ChildProcess | null;
  /** [up since, down at] intervals; the last one open while up */
  up: [number, number][];
}

const dir = mkdtempSync(path.join(os.tmpdir(), 'emqx-ts-chaos-'));
const nodes: Node[] = [];

async function start(n: Node): Promise<void> {
  const seeds = nodes.filter((m) => m !== n).map((m) => `${HOST}:${m.cluster}`);
  const child = spawn(
    process.execPath,
    [
      path.join(root, 'dist/src/main.js'),
      `--name=${n.name}`,
      `--host=${HOST}`,
      `--port=${n.mqtt}`,
      '--shards=1',
      `--metrics.port=${n.metrics}`,
      '--metrics.host=127.0.0.1',
      `--api.port=${await freePort()}`,
      '--api.host=127.0.0.1',
      `--node.data_dir=${path.join(dir, n.name)}`,
      '--log.level=warn',
      '--cluster.discovery=static',
      `--cluster.static.seeds=${seeds.join(',')}`,
      `--cluster.port=${n.cluster}`,
      '--cluster.listen_host=127.0.0.1',
      '--cluster.advertise=127.0.0.1',
      `--cluster.down_after=${DOWN_AFTER}`,
    ],
    { stdio: ['ignore', openSync(path.join(dir, `${n.name}.log`), 'a'), 'inherit'] },
  );
  n.child = child;
  for (let k = 0; k < 200; k++) {
    try {
      const r = await fetch(`http://${HOST}:${n.metrics}/readyz`);
      if (r.status === 200) break;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  n.up.push([Date.now(), Number.POSITIVE_INFINITY]);
}

function kill(n: Node): void {
  n.child?.kill('SIGKILL');
  n.child = null;
  n.up[n.up.length - 1][1] = Date.now();
}

/** Was the node up, and settled, during the whole of [from, to]? */
function upDuring(n: Node, from: number, to: number): boolean {
  return n.up.some(([a, b]) => a + SETTLE <= from && to <= b);
}

interface Sub {
  node: Node;
  client: MqttClient | null;
  connected: [number, number][];
  got: Map<string, number>;
}

function connectSub(s: Sub, id: string): void {
  const c = mqtt.connect({
    host: HOST,
    port: s.node.mqtt,
    clientId: id,
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 600 },
    reconnectPeriod: 200,
    connectTimeout: 2000,
  });
  s.client = c;
  c.on('connect', () => {
    s.connected.push([Date.now(), Number.POSITIVE_INFINITY]);
    c.subscribe('chaos/#', { qos: 1 });
  });
  c.on('close', () => {
    const last = s.connected[s.connected.length - 1];
    if (last && last[1] === Number.POSITIVE_INFINITY) last[1] = Date.now();
  });
  c.on('error', () => {});
  c.on('message', (_t, payload) => {
    const k = payload.toString();
    s.got.set(k, (s.got.get(k) ?? 0) + 1);
  });
}

/** Connected (and subscribed for SETTLE) over the whole of [from, to]. */
function subDuring(s: Sub, from: number, to: number): boolean {
  return s.connected.some(([a, b]) => a + SETTLE <= from && to <= b);
}

interface Sent {
  key: string;
  node: Node;
  at: number;
  ackedAt: number;
}

async function main(): Promise<void> {
  for (let i = 1; i <= 3; i++) {
    const [m, c, x] = await Promise.all([freePort(), freePort(), freePort()]);
    nodes.push({ i, name: `chaos${i}@127.0.0.1`, mqtt: m, cluster: c, metrics: x, child: null, up: [] });
  }
  await Promise.all(nodes.map(start));
  const subs: Sub[] = nodes.map((node) => ({ node, client: null, connected: [], got: new Map() }));
  for (const [i, s] of subs.entries()) connectSub(s, `chaos-sub-${i}`);
  const sent: Sent[] = [];
  let published = 0;
  const pubs = nodes.map((node, i) => {
    // MQTT 5: a failed forward comes back as PUBACK 0x80 (an error here: not counted as acked).
    const c = mqtt.connect({
      host: HOST,
      port: node.mqtt,
      clientId: `chaos-pub-${i}`,
      protocolVersion: 5,
      reconnectPeriod: 200,
    });
    c.on('error', () => {});
    return { node, c };
  });
  await new Promise((r) => setTimeout(r, SETTLE + 1000));
  const t0 = Date.now();
  const timers: NodeJS.Timeout[] = [];
  for (const [i, p] of pubs.entries()) {
    let seq = 0;
    timers.push(
      setInterval(() => {
        if (!p.c.connected) return;
        const key = `${i}:${seq++}`;
        const s: Sent = { key, node: p.node, at: Date.now(), ackedAt: 0 };
        published++;
        p.c.publish(`chaos/${i}`, key, { qos: 1 }, (err) => {
          if (!err) {
            s.ackedAt = Date.now();
            sent.push(s);
          }
        });
      }, 1000 / RATE),
    );
  }
  let kills = 0;
  while (Date.now() - t0 < DURATION) {
    await new Promise((r) => setTimeout(r, EVERY));
    if (Date.now() - t0 >= DURATION) break;
    const victim = nodes[Math.floor(Math.random() * nodes.length)];
    kill(victim);
    kills++;
    await new Promise((r) => setTimeout(r, DOWN));
    await start(victim);
  }
  for (const t of timers) clearInterval(t);
  // Let deliveries in flight arrive.
  await new Promise((r) => setTimeout(r, 3000));
  const end = Date.now();
  let expected = 0;
  let lost = 0;
  const lostBy = new Map<string, { n: number; first: number; last: number }>();
  let missedUnprotected = 0;
  // Wider: the publisher's node may die right after the ack (the ack says every remote node it
  // was routed to had accepted it), as the issue words it: to subscribers on surviving nodes.
  let afterAckExpected = 0;
  let afterAckLost = 0;
  let delivered = 0;
  let dup = 0;
  for (const s of subs) {
    for (const n of s.got.values()) {
      delivered += n;
      dup += n - 1;
    }
  }
  for (const m of sent) {
    for (const s of subs) {
      const must =
        upDuring(m.node, m.at, m.ackedAt + 1000) &&
        upDuring(s.node, m.at, m.ackedAt + 1000) &&
        subDuring(s, m.at, m.ackedAt + 1000);
      const got = s.got.has(m.key);
      if (
        upDuring(m.node, m.at, m.ackedAt) &&
        upDuring(s.node, m.at, m.ackedAt + 1000) &&
        subDuring(s, m.at, m.ackedAt + 1000)
      ) {
        afterAckExpected++;
        if (!got) afterAckLost++;
      }
      if (must) {
        expected++;
        if (!got) {
          lost++;
          const k = `pub on node ${m.node.i} → sub on node ${s.node.i}`;
          const e = lostBy.get(k) ?? { n: 0, first: m.at, last: m.at };
          e.n++;
          e.last = m.at;
          lostBy.set(k, e);
        }
      } else if (!got) missedUnprotected++;
    }
  }
  const row = (k: string, v: number | string) => console.log(`${k.padEnd(52)} ${v}`);
  console.log(
    `chaos: 3 nodes, ${kills} kill -9 in ${((end - t0) / 1000).toFixed(0)} s (every ${EVERY / 1000} s, down ${DOWN / 1000} s), ${RATE} msg/s per publisher`,
  );
  row('published (QoS 1)', published);
  row('acked', sent.length);
  row('deliveries (3 subscribers)', delivered);
  row('duplicates', dup);
  row('must-arrive (acked, both nodes up and settled)', expected);
  row('lost among must-arrive', lost);
  row('missed, not protected (around a kill)', missedUnprotected);
  row("must-arrive if the publisher's node may die after the ack", afterAckExpected);
  row('lost among those', afterAckLost);
  for (const [k, e] of lostBy)
    row(
      `  lost ${k}`,
      `${e.n} (published at +${((e.first - t0) / 1000).toFixed(1)}..+${((e.last - t0) / 1000).toFixed(1)} s)`,
    );
  const events = nodes.flatMap((n) =>
    n.up.map(
      ([a, b]) =>
        `node ${n.i} up +${((a - t0) / 1000).toFixed(1)}..${b === Number.POSITIVE_INFINITY ? 'end' : `+${((b - t0) / 1000).toFixed(1)}`}`,
    ),
  );
  console.log(events.join('; '));
  for (const p of pubs) p.c.end(true);
  for (const s of subs) s.client?.end(true);
  for (const n of nodes) if (n.child) kill(n);
  const ok = lost === 0 && afterAckLost === 0;
  if (ok) rmSync(dir, { recursive: true, force: true });
  else console.log(`node logs kept in ${dir}`);
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  console.error(err);
  for (const n of nodes) n.child?.kill('SIGKILL');
  process.exit(2);
});

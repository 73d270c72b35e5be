// Cluster bench (issue #10): 2 emqx-ts nodes on loopback, one publisher, one subscriber.
// Cross-node (publisher on node 1, subscriber on node 2) against same-node (both on node 1),
// interleaved in one run; msg/s delivered and CPU µs per delivered message (both node
// processes, all threads, from /proc), the cross/same CPU ratio against the target (≤ 2×) and
// the cross-node QoS 0 rate against its target (≥ 100k msg/s).
//   npm run build && node --import tsx bench/cluster.ts [--qos 0,1] [--duration 5] [--rounds 2] [--payload 64] [--window 2000]
// A/B: BENCH_EMQX_TS_ROOT=/other/built/checkout runs a second pair of nodes from that build,
// measured in the same rounds (the two builds alternate, first one first, then the other).
// BENCH_EMQX_TS_NODE_ARGS (or BENCH_NODE_ARGS): extra node flags, e.g. --cpu-prof; with
// BENCH_NODE_STDOUT=PREFIX each node's stdout goes to PREFIX.<node name> (e.g. --trace-gc).
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { HOST } from './brokers.js';
import { metric, type Node, nodeArgs, sleep, startNode } from './cluster-node.js';
import { cpuMicros } from './procstat.js';
import {
  encodeConnect,
  encodePublishTemplate,
  encodeSubscribe,
  FrameSplitter,
  PUBACK,
  PUBLISH,
} from './proto.js';

/** Deep enough for the closed loop's window at QoS 1 */
const QUEUE = ['--mqtt.max_mqueue_len=100000'];
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    qos: { type: 'string', default: '0,1' },
    duration: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '2' },
    payload: { type: 'string', default: '64' },
    // Messages published and not yet received (closed loop)
    window: { type: 'string', default: '2000' },
    // cross | same | both (cross alone for a profile of the forward path)
    only: { type: 'string', default: 'both' },
  },
});

/** CPU seconds of each thread of a node (builds that export emqx_ts_thread_cpu_seconds), by name. */
async function threadCpu(n: Node): Promise<Map<string, number>> {
  const text = await (await fetch(`http://${HOST}:${n.metrics}/metrics`)).text();
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^emqx_ts_thread_cpu_seconds\{thread="([^"]+)"\} (\S+)$/gm))
    out.set(m[1], Number(m[2]));
  return out;
}

/** A raw MQTT 3.1.1 connection: counts PUBLISH/PUBACK frames, acks QoS 1 deliveries. */
class Conn {
  readonly sock: net.Socket;
  received = 0;
  acked = 0;
  private readonly split = new FrameSplitter();
  private suback: (() => void) | null = null;
  constructor(port: number, id: string) {
    this.sock = net.connect(port, HOST);
    this.sock.setNoDelay(true);
    this.sock.write(encodeConnect(id, 60));
    const acks: Buffer[] = [];
    this.sock.on('data', (chunk) => {
      this.split.push(chunk, {
        onFrame: (first, buf, start) => {
          const type = first >> 4;
          if (type === PUBLISH) {
            this.received++;
            if ((first & 6) !== 0) {
              const tlen = buf.readUInt16BE(start);
              acks.push(Buffer.from([0x40, 2, buf[start + 2 + tlen], buf[start + 3 + tlen]]));
            }
          } else if (type === PUBACK) this.acked++;
          else if (type === 9) this.suback?.();
        },
      });
      if (acks.length > 0) this.sock.write(Buffer.concat(acks.splice(0)));
    });
    this.sock.on('error', () => {});
  }
  subscribe(filter: string, qos: number): Promise<void> {
    return new Promise((resolve) => {
      this.suback = resolve;
      this.sock.write(encodeSubscribe(1, filter, qos));
    });
  }
}

/**
 * Closed loop: at most `window` messages published and not yet received by the subscriber,
 * so that the rate measured is what the whole path (publisher node, link, subscriber node)
 * sustains, not how fast queues fill. QoS 1 acks from the publisher's node are also awaited.
 */
async function blast(
  pub: Conn,
  sub: Conn,
  qos: number,
  payload: number,
  ms: number,
  window = 2000,
): Promise<number> {
  const t = encodePublishTemplate('bench/cluster/x', qos, payload, 1, 0);
  const batch = 100;
  let sent = 0;
  let pid = 0;
  const base = sub.received;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (sent - (sub.received - base) > window - batch || (qos > 0 && sent - pub.acked > window - batch)) {
      await new Promise((r) => setImmediate(r));
      continue;
    }
    const frames: Buffer[] = [];
    for (let i = 0; i < batch; i++) {
      const f = Buffer.from(t.frame);
      if (qos > 0) f.writeUInt16BE((pid = (pid % 65535) + 1), t.pidOffset);
      frames.push(f);
    }
    sent += batch;
    if (!pub.sock.write(Buffer.concat(frames))) await new Promise((r) => pub.sock.once('drain', r));
  }
  return sent;
}

interface Result {
  rate: number;
  cpu: number;
  /** CPU per message less what the pair burns idle over the same time (heartbeats, timers) */
  net: number;
  /** Publishes per gRPC batch on the link (cross-node, builds that count them) */
  perBatch: number;
  /** µs of CPU per delivered message by thread, "n1.shard0" etc. (empty: build without it) */
  threads: Map<string, number>;
  line: string;
}

async function run(
  nodes: Node[],
  cross: boolean,
  qos: number,
  payload: number,
  s: number,
  idlePerS: number,
): Promise<Result> {
  const tag = `${cross ? 'cross' : 'same'}-${qos}-${Math.random().toString(36).slice(2, 6)}`;
  const sub = new Conn(nodes[cross ? 1 : 0].mqtt, `sub-${tag}`);
  await sub.subscribe('bench/cluster/+', qos);
  const pub = new Conn(nodes[0].mqtt, `pub-${tag}`);
  // Routes replicate asynchronously (≤ 20 ms scan + a push): probe until a message arrives.
  for (let i = 0; sub.received === 0 && i < 200; i++) {
    await blast(pub, sub, 0, payload, 1, 100);
    await sleep(20);
  }
  await sleep(300);
  pub.acked = 0;
  const base = sub.received;
  const dropped0 = await metric(nodes[0], 'emqx_ts_cluster_forward_dropped_total');
  const batches0 = await metric(nodes[0], 'emqx_ts_cluster_wire_batches_sent_total');
  const th0 = await Promise.all(nodes.map(threadCpu));
  const cpu0 = nodes.reduce((a, n) => a + cpuMicros(n.child.pid!), 0);
  const t0 = process.hrtime.bigint();
  const sent = await blast(pub, sub, qos, payload, s * 1000, Number(args.window));
  if (process.env.BENCH_DEBUG) {
    const text = (
      await Promise.all(nodes.map(async (n) => (await fetch(`http://${HOST}:${n.metrics}/metrics`)).text()))
    ).join('\n');
    console.log(
      text
        .split('\n')
        .filter(
          (l) =>
            l.startsWith('emqx_ts_cluster') ||
            l.startsWith('emqx_messages_forward ') ||
            l.startsWith('emqx_messages_delivered ') ||
            l.startsWith('emqx_delivery_dropped'),
        )
        .join('\n'),
    );
  }
  // Let the tail drain (at most 2 s) so that CPU and deliveries cover the same messages.
  for (let last = -1, i = 0; sub.received !== last && i < 40; i++) {
    last = sub.received;
    await sleep(50);
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = nodes.reduce((a, n) => a + cpuMicros(n.child.pid!), 0) - cpu0;
  const th1 = await Promise.all(nodes.map(threadCpu));
  const got = sub.received - base;
  const threads = new Map<string, number>();
  th1.forEach((m, i) => {
    for (const [t, v] of m) threads.set(`n${i + 1}.${t}`, ((v - (th0[i].get(t) ?? v)) * 1e6) / got);
  });
  const dropped = (await metric(nodes[0], 'emqx_ts_cluster_forward_dropped_total')) - dropped0;
  const batches = (await metric(nodes[0], 'emqx_ts_cluster_wire_batches_sent_total')) - batches0;
  pub.sock.destroy();
  sub.sock.destroy();
  const rate = got / secs;
  const net = (cpu - idlePerS * secs) / got;
  const perBatch = cross && batches > 0 ? got / batches : Number.NaN;
  const line =
    `${cross ? 'cross-node' : 'same-node '}  QoS ${qos}  ${payload} B  ${Math.round(rate)} msg/s  ` +
    `${(cpu / got).toFixed(2)} µs CPU/msg (both nodes; ${net.toFixed(2)} net of idle)  sent ${sent} delivered ${got} forward-dropped ${dropped}` +
    (Number.isNaN(perBatch) ? '' : `  ${Math.round(perBatch)} msg/batch`) +
    `  load ${os.loadavg()[0].toFixed(1)}` +
    (threads.size > 0
      ? `\n    µs/msg by thread: ${[...threads].map(([t, v]) => `${t} ${v.toFixed(2)}`).join('  ')}`
      : '');
  return { rate, cpu: cpu / got, net, perBatch, threads, line };
}

/** CPU the idle pair burns (timers, heartbeats, route scans), µs per second. */
async function idleCpu(nodes: Node[], ms = 2000): Promise<number> {
  const th0 = await Promise.all(nodes.map(threadCpu));
  const c0 = nodes.reduce((a, n) => a + cpuMicros(n.child.pid!), 0);
  const t0 = Date.now();
  await sleep(ms);
  const c1 = nodes.reduce((a, n) => a + cpuMicros(n.child.pid!), 0);
  const secs = (Date.now() - t0) / 1000;
  const th1 = await Promise.all(nodes.map(threadCpu));
  const parts: string[] = [];
  th1.forEach((m, i) => {
    for (const [t, v] of m)
      parts.push(`n${i + 1}.${t} ${Math.round(((v - (th0[i].get(t) ?? v)) * 1e6) / secs)}`);
  });
  if (parts.length > 0) console.log(`  idle µs/s by thread: ${parts.join('  ')}`);
  return (c1 - c0) / secs;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0
    ? Number.NaN
    : s.length % 2
      ? s[(s.length - 1) / 2]
      : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const range = (xs: number[], digits: number) =>
  `${median(xs).toFixed(digits)} (${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)})`;

const dir = mkdtempSync(path.join(os.tmpdir(), 'emqx-ts-bench-cluster-'));
const builds = [{ name: 'this', root }];
if (process.env.BENCH_EMQX_TS_ROOT)
  builds.push({ name: 'base', root: path.resolve(process.env.BENCH_EMQX_TS_ROOT) });
const pairs: { name: string; root: string; nodes: Node[]; idle: number }[] = [];
for (const b of builds) {
  const n1 = await startNode(`${b.name}1@127.0.0.1`, [], dir, b.root, QUEUE);
  const n2 = await startNode(`${b.name}2@127.0.0.1`, [n1.cluster], dir, b.root, QUEUE);
  pairs.push({ ...b, nodes: [n1, n2], idle: 0 });
}
const qoses = args.qos!.split(',').map(Number);
const cases = [false, true].filter((cross) => args.only === 'both' || cross === (args.only === 'cross'));
/** results[build][qos][same|cross] */
const results = new Map<string, Result[]>();
const key = (b: string, qos: number, cross: boolean) => `${b} ${qos} ${cross ? 'cross' : 'same'}`;
try {
  await sleep(1500); // join + first heartbeats
  console.log(
    `node ${process.version}, ${os.cpus().length} CPUs (${os.cpus()[0]?.model}), 1 shard per node, load ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  for (const p of pairs) {
    p.idle = await idleCpu(p.nodes, Number(process.env.BENCH_IDLE_MS ?? 3000));
    console.log(`${p.name} (${p.root}): idle CPU of the 2 nodes ${Math.round(p.idle)} µs/s`);
  }
  for (let r = 0; r < Number(args.rounds); r++) {
    // Alternate which build goes first, so neither always runs after the other.
    const order = r % 2 === 0 ? pairs : [...pairs].reverse();
    for (const qos of qoses) {
      for (const p of order) {
        for (const cross of cases) {
          const res = await run(p.nodes, cross, qos, Number(args.payload), Number(args.duration), p.idle);
          console.log(`round ${r + 1}  ${p.name}  ${res.line}`);
          const k = key(p.name, qos, cross);
          results.set(k, [...(results.get(k) ?? []), res]);
        }
      }
    }
  }
  console.log(
    `\nSummary: median (min–max) over ${args.rounds} rounds; load ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  for (const qos of qoses) {
    for (const p of pairs) {
      const same = results.get(key(p.name, qos, false)) ?? [];
      const cross = results.get(key(p.name, qos, true)) ?? [];
      for (const [label, rs] of [
        ['same-node ', same],
        ['cross-node', cross],
      ] as const) {
        if (rs.length === 0) continue;
        const pb = rs.map((x) => x.perBatch).filter((x) => !Number.isNaN(x));
        console.log(
          `${p.name.padEnd(5)} QoS ${qos} ${label}  ${range(
            rs.map((x) => x.rate / 1000),
            1,
          )}k msg/s  ${range(
            rs.map((x) => x.cpu),
            2,
          )} µs CPU/msg` + (pb.length > 0 ? `  ${Math.round(median(pb))} msg/batch` : ''),
        );
        const names = [...new Set(rs.flatMap((x) => [...x.threads.keys()]))].sort();
        if (names.length > 0)
          console.log(
            `      by thread (µs/msg, median): ${names
              .map((t) => `${t} ${median(rs.map((x) => x.threads.get(t) ?? Number.NaN)).toFixed(2)}`)
              .join('  ')}`,
          );
      }
      if (same.length > 0 && same.length === cross.length) {
        // Per-round ratio: each round's cross-node run against the same-node run next to it.
        const ratios = cross.map((c, i) => c.cpu / same[i].cpu);
        const rm = median(ratios);
        console.log(
          `${p.name.padEnd(5)} QoS ${qos} CPU per message cross/same ${range(ratios, 2)}×  target ≤ 2×: ${rm <= 2 ? 'met' : 'NOT met'}`,
        );
      }
      if (qos === 0 && cross.length > 0) {
        const rate = median(cross.map((x) => x.rate));
        console.log(
          `${p.name.padEnd(5)} QoS 0 cross-node rate ${Math.round(rate / 1000)}k msg/s  target ≥ 100k msg/s: ${rate >= 100_000 ? 'met' : 'NOT met'}`,
        );
      }
    }
  }
} finally {
  // SIGTERM when profiling: --cpu-prof writes its files only on a normal exit.
  const sig = nodeArgs.length > 0 ? 'SIGTERM' : 'SIGKILL';
  const all = pairs.flatMap((p) => p.nodes);
  const exited = all.map((n) => new Promise((r) => n.child.once('exit', r)));
  for (const n of all) n.child.kill(sig);
  await Promise.all(exited);
  rmSync(dir, { recursive: true, force: true });
}

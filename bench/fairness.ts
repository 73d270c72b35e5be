// QoS 0 fairness under a flood (issue #9 item 10), emqx-ts against mosquitto and aedes in one run,
// brokers interleaved round by round. One publisher floods a topic with QoS 0 (64 B payloads) as
// fast as its socket takes them, for --duration seconds, while:
//   slow:    the topic's subscriber reads continuously but at --read-mbps only;
//   stopped: one subscriber of the topic stops reading, another reads flat out.
// Meanwhile a bystander pair (another publisher and subscriber, another topic) sends 1,000 msg/s.
// Printed per case: flood messages written by the publisher, the share each subscriber got, the
// bystander's share and worst latency, and the broker's RSS growth.
//   npm run build && node --import tsx bench/fairness.ts [--brokers emqx-ts,mosquitto,aedes]
//     [--duration 5] [--rounds 2] [--read-mbps 2] [--base <checkout>]
// --base: also runs that checkout's build (as `base`, interleaved with the others): A/B of two
// commits under the same load (as BENCH_EMQX_TS_ROOT, see bench/brokers.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { shardOf } from '../src/listener/client-id.js';
import { BROKERS, type Broker, type BrokerName, BrokerUnavailable, HOST, startBroker } from './brokers.js';
import { rssBytes } from './procstat.js';
import * as proto from './proto.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    brokers: { type: 'string', default: BROKERS.join(',') },
    duration: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '2' },
    'read-mbps': { type: 'string', default: '2' },
    base: { type: 'string' },
    // emqx-ts shards of the bystander publisher and subscriber (the flood publisher is on 0,
    // the flood's subscribers on 1): 0,1 crosses shards behind the flood.
    bystander: { type: 'string', default: '0,1' },
  },
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A raw MQTT 3.1.1 client counting the PUBLISH frames it reads (and their latency, if timed). */
class Client {
  readonly sock: net.Socket;
  received = 0;
  maxLatencyMs = 0;
  readonly latencies: number[] = [];
  lastDataAt = Date.now();
  private readonly split = new proto.FrameSplitter();
  private suback: (() => void) | null = null;
  /** Bytes per ms this client reads at most (0: as fast as it can); -1: stopped */
  rate = 0;

  constructor(port: number, id: string, timed = false) {
    this.sock = net.connect(port, HOST);
    this.sock.setNoDelay(true);
    this.sock.on('error', () => {});
    this.sock.write(proto.encodeConnect(id, 60));
    this.sock.on('data', (chunk: Buffer) => {
      this.lastDataAt = Date.now();
      this.split.push(chunk, {
        onFrame: (first, buf, _start, end) => {
          const type = first >> 4;
          if (type === proto.PUBLISH) {
            this.received++;
            if (timed) {
              const lat = performance.now() - buf.readDoubleLE(end - 8);
              if (lat > this.maxLatencyMs) this.maxLatencyMs = lat;
              this.latencies.push(lat);
            }
          } else if (type === proto.SUBACK) this.suback?.();
        },
      });
      if (this.rate > 0) {
        this.sock.pause();
        setTimeout(() => this.sock.resume(), Math.ceil(chunk.length / this.rate));
      } else if (this.rate < 0) this.sock.pause();
    });
  }

  subscribe(filter: string): Promise<void> {
    return new Promise((resolve) => {
      this.suback = resolve;
      this.sock.write(proto.encodeSubscribe(1, filter, 0));
    });
  }

  close(): void {
    this.sock.destroy();
  }

  get p99LatencyMs(): number {
    if (this.latencies.length === 0) return 0;
    const s = [...this.latencies].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))];
  }
}

/**
 * A client id `prefix-n` that emqx-ts (2 shards, the bench default on this machine) places on
 * `shard`: the flood publisher and the bystander publisher share shard 0, the subscribers are on
 * shard 1; the bystander's by `--bystander` (default 0,1: its messages cross shards behind the flood).
 * Other brokers ignore it.
 */
function onShard(prefix: string, shard: number): string {
  for (let n = 0; ; n++) if (shardOf(`${prefix}-${n}`, 2) === shard) return `${prefix}-${n}`;
}

/** Writes QoS 0 PUBLISHes to `topic` as fast as the socket takes them until `end`. */
async function flood(pub: Client, topic: string, end: number): Promise<number> {
  const t = proto.encodePublishTemplate(topic, 0, 64, 1, 0);
  const per = 256;
  const batch = Buffer.concat(Array.from({ length: per }, () => t.frame));
  let sent = 0;
  while (Date.now() < end) {
    sent += per;
    if (!pub.sock.write(batch)) await new Promise((r) => pub.sock.once('drain', r));
  }
  return sent;
}

/** 1,000 msg/s of 64 B with a send timestamp, until `end`. */
async function bystander(pub: Client, topic: string, end: number): Promise<number> {
  const t = proto.encodePublishTemplate(topic, 0, 64, 2, 0);
  let sent = 0;
  const start = Date.now();
  while (Date.now() < end) {
    const due = Math.floor((Date.now() - start) * 1);
    while (sent < due) {
      const f = Buffer.from(t.frame);
      f.writeDoubleLE(performance.now(), f.length - 8);
      pub.sock.write(f);
      sent++;
    }
    await sleep(5);
  }
  return sent;
}

/** Waits until `c` got `n` messages or has read nothing for 1 s (at most 30 s). */
async function settle(clients: Client[], n: number): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (clients.every((c) => c.received >= n || Date.now() - c.lastDataAt > 1000)) return;
    await sleep(50);
  }
}

const pct = (a: number, b: number) => `${((100 * a) / Math.max(1, b)).toFixed(1)} %`;

async function runCase(b: Broker, label: string, kind: 'slow' | 'stopped', round: number): Promise<string> {
  const tag = `${kind}${round}${Math.random().toString(36).slice(2, 6)}`;
  const topic = `fair/${tag}`;
  const sub = new Client(b.port, onShard(`sub-${tag}`, 1));
  await sub.subscribe(topic);
  const other = kind === 'stopped' ? new Client(b.port, onShard(`reader-${tag}`, 1)) : null;
  await other?.subscribe(topic);
  const [byPubShard, bySubShard] = args.bystander!.split(',').map(Number);
  const bySub = new Client(b.port, onShard(`bysub-${tag}`, bySubShard), true);
  await bySub.subscribe(`by/${tag}`);
  const pub = new Client(b.port, onShard(`pub-${tag}`, 0));
  const byPub = new Client(b.port, onShard(`bypub-${tag}`, byPubShard));
  sub.rate = kind === 'slow' ? (Number(args['read-mbps']) * 1e6) / 1000 : -1;
  await sleep(200);
  const rss0 = rssBytes(b.pid);
  const end = Date.now() + Number(args.duration) * 1000;
  const [sent, bySent] = await Promise.all([flood(pub, topic, end), bystander(byPub, `by/${tag}`, end)]);
  const rssPeak = rssBytes(b.pid);
  await settle(kind === 'slow' ? [sub, bySub] : [other!, bySub], sent);
  const line =
    `${label.padEnd(9)} ${kind.padEnd(7)} flood ${String(sent).padStart(9)} written` +
    (kind === 'slow'
      ? `  slow reader got ${pct(sub.received, sent).padStart(7)}`
      : `  reader got ${pct(other!.received, sent).padStart(7)}, stopped one ${pct(sub.received, sent).padStart(7)}`) +
    `  bystander ${pct(bySub.received, bySent)} (max ${bySub.maxLatencyMs.toFixed(0)} ms, p99 ${bySub.p99LatencyMs.toFixed(0)} ms)` +
    `  RSS +${((rssPeak - rss0) / 2 ** 20).toFixed(1)} MiB`;
  for (const c of [sub, other, bySub, pub, byPub]) c?.close();
  return line;
}

const names = args.brokers!.split(',') as (BrokerName | 'base')[];
if (args.base) names.unshift('base');
const dir = mkdtempSync(path.join(os.tmpdir(), 'emqx-ts-bench-fair-'));
console.log(
  `node ${process.version}, ${os.cpus().length} CPUs; flood QoS 0 64 B for ${args.duration} s; slow reader ${args['read-mbps']} MB/s`,
);
try {
  for (let r = 0; r < Number(args.rounds); r++) {
    for (const name of names) {
      let b: Broker;
      try {
        if (name === 'base') process.env.BENCH_EMQX_TS_ROOT = path.resolve(args.base!);
        b = await startBroker(name === 'base' ? 'emqx-ts' : name, { repoRoot: root, tmpDir: dir });
        delete process.env.BENCH_EMQX_TS_ROOT;
      } catch (err) {
        if (err instanceof BrokerUnavailable) {
          console.log(`${name}: skipped (${err.message})`);
          continue;
        }
        throw err;
      }
      try {
        for (const kind of ['slow', 'stopped'] as const) console.log(await runCase(b, name, kind, r));
      } finally {
        await b.stop();
      }
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

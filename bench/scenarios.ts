// Scenario planning (who connects where, on which thread) and one measured run against one broker.

import hdr from 'hdr-histogram-js';
import type { Broker } from './brokers.js';
import { HOST } from './brokers.js';
import { LoadPool } from './pool.js';
import { cpuMicros, rssBytes } from './procstat.js';
import {
  PHASE,
  PHASE_GO,
  PHASE_MEASURE,
  PHASE_STOP,
  type PubSpec,
  type Qos,
  type RunSpec,
  type SharedBuffers,
  STAT_CONNECTED,
  STAT_DUPS,
  STAT_FIELDS,
  STAT_SENT,
  STAT_UNIQUE,
  type SubSpec,
  type WorkerResult,
} from './types.js';

export const SCENARIOS = ['conn', 'pairs', 'fanin', 'fanout', 'latency'] as const;
export type ScenarioName = (typeof SCENARIOS)[number];

export interface CaseSpec {
  scenario: ScenarioName;
  qos: Qos;
  payload: number;
  /** pairs/latency: pairs; fanin: publishers; fanout: subscribers; conn: connections. */
  connections: number;
  durationS: number;
  warmupS: number;
  /** conn: idle seconds before each RSS reading (V8 gives memory back over tens of seconds) */
  settleS: number;
  /** latency: total messages/s. */
  rate: number;
  /** Total deliveries in flight across all publishers (closed loop), unless `window` is set. */
  inflight: number;
  window: number | null;
  threads: number;
}

export function caseKey(c: CaseSpec): string {
  if (c.scenario === 'conn') return `conn n=${c.connections}`;
  const base = `${c.scenario} qos=${c.qos} payload=${c.payload}B`;
  if (c.scenario === 'latency') return `${base} pairs=${c.connections} rate=${c.rate}/s`;
  const what = c.scenario === 'pairs' ? 'pairs' : c.scenario === 'fanin' ? 'publishers' : 'subscribers';
  return `${base} ${what}=${c.connections}`;
}

export interface Outcome {
  broker: string;
  key: string;
  scenario: ScenarioName;
  qos: Qos;
  round: number;
  sent: number;
  received: number;
  lost: number;
  dups: number;
  stray: number;
  writeOffs: number;
  reordered: number;
  genReads: number;
  genWrites: number;
  windowS: number;
  windowDelivered: number;
  msgsPerS: number;
  brokerCpuUs: number;
  genCpuUs: number;
  latency: string[];
  /** conn scenario */
  connections: number;
  connectsPerS: number;
  rssBefore: number;
  rssAfter: number;
  connectLatency: string[];
  errors: string[];
}

interface Plan {
  specs: RunSpec[];
  pubs: number;
  fanout: number;
}

/** Unacknowledged QoS 1/2 per publisher: EMQX's (and emqx-ts's) default max_awaiting_rel. */
const MAX_ACK_WINDOW = 100;

let nextRunId = 1 + Math.floor(Math.random() * 1e6);

function plan(c: CaseSpec, port: number, transport: RunSpec['transport']): Plan {
  const runId = nextRunId++;
  const pubsBy: PubSpec[][] = [];
  const subsBy: SubSpec[][] = [];
  const idleBy: number[] = [];
  const owner: number[] = [];
  const n = c.connections;
  // Fewer threads than roles would leave empty threads; never more threads than connections.
  const threads = Math.max(
    1,
    Math.min(c.threads, c.scenario === 'fanout' || c.scenario === 'fanin' ? n + 1 : n),
  );
  for (let w = 0; w < threads; w++) {
    pubsBy.push([]);
    subsBy.push([]);
    idleBy.push(0);
  }
  const addPub = (w: number, i: number, topic: string): void => {
    pubsBy[w]!.push({ pubIdx: i, clientId: `eb${runId}p${i}`, topic });
    owner[i] = w;
  };
  const addSub = (w: number, i: number, filter: string): void => {
    subsBy[w]!.push({ clientId: `eb${runId}s${i}`, filter });
  };
  let fanout = 1;
  switch (c.scenario) {
    case 'pairs':
    case 'latency':
      // A pair's publisher and subscriber share a thread: flow-control feedback stays thread-local.
      for (let i = 0; i < n; i++) {
        addSub(i % threads, i, `bench/${i}`);
        addPub(i % threads, i, `bench/${i}`);
      }
      break;
    case 'fanin':
      addSub(0, 0, 'bench/#');
      for (let i = 0; i < n; i++) addPub((i + 1) % threads, i, `bench/${i}`);
      break;
    case 'fanout':
      fanout = n;
      addPub(0, 0, 'bench/fanout');
      for (let i = 0; i < n; i++) addSub((i + 1) % threads, i, 'bench/fanout');
      break;
    case 'conn':
      for (let w = 0; w < threads; w++) idleBy[w] = Math.floor(n / threads) + (w < n % threads ? 1 : 0);
      break;
  }
  const pubs = owner.length;
  const ratePerPub = c.scenario === 'latency' ? c.rate / Math.max(1, pubs) : 0;
  const window =
    c.window ??
    (c.scenario === 'latency'
      ? Math.max(64, Math.ceil(ratePerPub / 2)) // half a second of backlog before the loop closes
      : Math.min(5000, Math.max(1, Math.round(c.inflight / (Math.max(1, pubs) * fanout)))));
  const specs = pubsBy.map(
    (pubsOfW, w): RunSpec => ({
      runId,
      workerId: w,
      host: HOST,
      port,
      transport,
      qos: c.qos,
      payload: c.payload,
      pubs: pubsOfW,
      subs: subsBy[w]!,
      idle: idleBy[w]!,
      idlePrefix: `eb${runId}w${w}c`,
      fanout,
      window,
      ackWindow: Math.min(window, MAX_ACK_WINDOW),
      ratePerPub,
      pubOwner: owner,
      keepaliveS: 60,
      connectConcurrency: c.scenario === 'conn' ? Math.ceil(100 / threads) : 20,
      stallMs: 500,
    }),
  );
  return { specs, pubs, fanout };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function sumStat(stats: Float64Array, workers: number, field: number): number {
  let s = 0;
  for (let w = 0; w < workers; w++) s += stats[w * STAT_FIELDS + field]!;
  return s;
}

/** Sleeps up to `ms`, failing fast if the broker dies meanwhile. */
async function watch(broker: Broker, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (broker.exit !== null) throw new Error(`${broker.name} ${broker.exit}`);
    await sleep(Math.min(100, end - Date.now()));
  }
}

function emptyOutcome(broker: Broker, c: CaseSpec, round: number): Outcome {
  return {
    broker: broker.name,
    key: caseKey(c),
    scenario: c.scenario,
    qos: c.qos,
    round,
    sent: 0,
    received: 0,
    lost: 0,
    dups: 0,
    stray: 0,
    writeOffs: 0,
    reordered: 0,
    genReads: 0,
    genWrites: 0,
    windowS: 0,
    windowDelivered: 0,
    msgsPerS: 0,
    brokerCpuUs: 0,
    genCpuUs: 0,
    latency: [],
    connections: 0,
    connectsPerS: 0,
    rssBefore: 0,
    rssAfter: 0,
    connectLatency: [],
    errors: [],
  };
}

function absorb(out: Outcome, results: WorkerResult[]): void {
  for (const r of results) {
    out.sent += r.sent;
    out.received += r.unique;
    out.dups += r.dups;
    out.stray += r.stray;
    out.writeOffs += r.writeOffs;
    out.reordered += r.reordered;
    out.genReads += r.reads;
    out.genWrites += r.writes;
    if (r.latency !== null) out.latency.push(r.latency);
    if (r.connectLatency !== null) out.connectLatency.push(r.connectLatency);
    out.errors.push(...r.errors);
  }
}

/** Runs one case against one broker. Throws only if the load threads themselves failed. */
export async function runCase(pool: LoadPool, broker: Broker, c: CaseSpec, round: number): Promise<Outcome> {
  const p = plan(c, broker.port, broker.transport);
  const shared: SharedBuffers = LoadPool.shared(p.pubs);
  const ctrl = new Int32Array(shared.ctrl);
  const stats = new Float64Array(shared.stats);
  const nw = p.specs.length;
  const out = emptyOutcome(broker, c, round);
  const clean = async (): Promise<void> => {
    Atomics.store(ctrl, PHASE, PHASE_STOP);
    absorb(out, await pool.finish(15_000));
  };

  if (c.scenario === 'conn') {
    await watch(broker, Math.max(300, c.settleS * 1000));
    out.rssBefore = rssBytes(broker.pid);
    const cpu0 = cpuMicros(broker.pid);
    const gen0 = cpuMicros(process.pid);
    let ready: Awaited<ReturnType<LoadPool['start']>>;
    try {
      ready = await pool.start(p.specs, shared, 120_000);
    } catch (err) {
      out.errors.push((err as Error).message);
      await clean();
      return out;
    }
    const startNs = Math.min(...ready.map((r) => r.connectStartNs));
    const endNs = Math.max(...ready.map((r) => r.connectEndNs));
    out.brokerCpuUs = cpuMicros(broker.pid) - cpu0;
    out.genCpuUs = cpuMicros(process.pid) - gen0;
    await watch(broker, c.settleS * 1000); // let the broker settle before reading RSS
    out.rssAfter = rssBytes(broker.pid);
    out.windowS = (endNs - startNs) / 1e9;
    await clean();
    out.connections = countConnected(out, c.connections, stats, nw);
    out.connectsPerS = out.connections / out.windowS;
    return out;
  }

  try {
    await pool.start(p.specs, shared, 60_000);
  } catch (err) {
    out.errors.push((err as Error).message);
    await clean();
    return out;
  }
  Atomics.store(ctrl, PHASE, PHASE_GO);
  pool.go();
  try {
    await watch(broker, c.warmupS * 1000);
    const t0 = process.hrtime.bigint();
    const b0 = cpuMicros(broker.pid);
    const g0 = cpuMicros(process.pid);
    const u0 = sumStat(stats, nw, STAT_UNIQUE);
    Atomics.store(ctrl, PHASE, PHASE_MEASURE);
    await watch(broker, c.durationS * 1000);
    const b1 = cpuMicros(broker.pid);
    const g1 = cpuMicros(process.pid);
    const u1 = sumStat(stats, nw, STAT_UNIQUE);
    const t1 = process.hrtime.bigint();
    Atomics.store(ctrl, PHASE, PHASE_STOP);
    await pool.stop(15_000);
    out.windowS = Number(t1 - t0) / 1e9;
    out.windowDelivered = u1 - u0;
    out.msgsPerS = out.windowDelivered / out.windowS;
    out.brokerCpuUs = b1 - b0;
    out.genCpuUs = g1 - g0;
    // Drain: wait until everything sent arrived, or nothing moved for a second (that is loss).
    let last = -1;
    let still = Date.now();
    for (let i = 0; i < 200; i++) {
      const got = sumStat(stats, nw, STAT_UNIQUE) + sumStat(stats, nw, STAT_DUPS);
      if (sumStat(stats, nw, STAT_UNIQUE) >= sumStat(stats, nw, STAT_SENT) * p.fanout) break;
      if (got !== last) {
        last = got;
        still = Date.now();
      } else if (Date.now() - still > 1000) break;
      await watch(broker, 50);
    }
  } catch (err) {
    out.errors.push((err as Error).message);
  }
  await clean();
  out.lost = Math.max(0, out.sent * p.fanout - out.received);
  return out;
}

function countConnected(out: Outcome, wanted: number, stats: Float64Array, nw: number): number {
  const got = sumStat(stats, nw, STAT_CONNECTED);
  if (got < wanted) out.errors.push(`only ${got} of ${wanted} connections succeeded`);
  return got;
}

export function mergeHistograms(encoded: string[]): ReturnType<typeof hdr.build> {
  const h = hdr.build({ numberOfSignificantValueDigits: 3 });
  for (const e of encoded) h.add(hdr.decodeFromCompressedBase64(e));
  return h;
}

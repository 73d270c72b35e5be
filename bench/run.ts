// Benchmark driver: runs scenarios against emqx-ts, mosquitto and aedes interleaved in one run.
//   node --import tsx bench/run.ts [--scenario pairs|fanin|fanout|conn|latency|cluster|all] [--qos 0,1,2]
//     [--payload 64,1024] [--brokers emqx-ts,mosquitto,aedes] [--duration s] [--rounds n]
//     [--connections n] [--threads n] [--rate msg/s] [--inflight n] [--window n] [--warmup s] [--settle s]
//     [--transport tcp,tls,ws] [--variant 'label=DIR [broker options]']... [--out results.json] [--smoke]

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  BROKERS,
  type Broker,
  type BrokerName,
  BrokerUnavailable,
  startBroker,
  TRANSPORTS,
  type Transport,
} from './brokers.js';
import { LoadPool } from './pool.js';
import { clockTicks } from './procstat.js';
import { PAYLOAD_HEADER } from './proto.js';
import { render, summarize } from './report.js';
import { type CaseSpec, caseKey, type Outcome, runCase, SCENARIOS, type ScenarioName } from './scenarios.js';
import type { Qos } from './types.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function cli() {
  return parseArgs({
    options: {
      scenario: { type: 'string', default: 'all' },
      qos: { type: 'string', default: '0,1,2' },
      payload: { type: 'string', default: '64,1024' },
      brokers: { type: 'string', default: BROKERS.join(',') },
      duration: { type: 'string', default: '5' },
      warmup: { type: 'string', default: '1' },
      // conn: seconds the broker idles before RSS is read, before and after the storm.
      settle: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '3' },
      connections: { type: 'string' },
      // One load thread per two CPUs: on 2 cores one thread plus the broker already fill the machine.
      threads: { type: 'string', default: String(Math.max(1, Math.floor(os.availableParallelism() / 2))) },
      rate: { type: 'string', default: '10000' },
      inflight: { type: 'string', default: '1000' },
      window: { type: 'string' },
      // emqx-ts over MQTT/TLS and MQTT/WebSocket next to plain TCP (docs/ARCHITECTURE.md, transports).
      transport: { type: 'string', default: 'tcp' },
      // More emqx-ts brokers in the same run, interleaved: `label=DIR [options]` (DIR another
      // built checkout, `.` this one), e.g. --variant 'base=/work/base --durability.mode=none'.
      variant: { type: 'string', multiple: true, default: [] },
      out: { type: 'string' },
      smoke: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  });
}

let parsed: ReturnType<typeof cli>;
try {
  parsed = cli();
} catch (err) {
  console.error(`${(err as Error).message}\nTry --help.`);
  process.exit(2);
}
const args = parsed.values;

// The cluster scenario (2 emqx-ts nodes, cross-node vs same-node) has its own driver.
if (args.scenario === 'cluster') {
  const qos = args.qos === '0,1,2' ? '0,1' : args.qos!;
  execFileSync(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(repoRoot, 'bench/cluster.ts'),
      '--qos',
      qos,
      '--duration',
      args.duration!,
    ].concat(['--rounds', args.rounds!, '--payload', args.payload!.split(',')[0]]),
    { stdio: 'inherit' },
  );
  process.exit(0);
}

if (args.help) {
  console.log(
    'usage: node --import tsx bench/run.ts [--scenario pairs|fanin|fanout|conn|latency|all] [--qos 0,1,2]\n' +
      '  [--payload 64,1024] [--brokers emqx-ts,mosquitto,aedes] [--duration s] [--rounds n] [--connections n]\n' +
      '  [--threads n] [--rate msg/s] [--inflight n] [--window n] [--warmup s] [--settle s] [--out file.json] [--smoke]\n' +
      '  [--transport tcp,tls,ws]  (emqx-ts only: each transport is measured as its own broker, emqx-ts/tls…)\n' +
      "  [--variant 'label=DIR [broker options]']...  (more emqx-ts builds/options in the same run, interleaved)\n" +
      'See docs/PERFORMANCE.md.',
  );
  process.exit(0);
}

function num(name: string, v: string | undefined, min: number): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) {
    console.error(`--${name}: expected a number >= ${min}, got ${v}`);
    process.exit(2);
  }
  return n;
}

function list<T extends string | number>(
  name: string,
  v: string,
  allowed: readonly T[],
  parse: (s: string) => T,
): T[] {
  const out = v.split(',').map((s) => parse(s.trim()));
  for (const x of out) {
    if (!allowed.includes(x)) {
      console.error(`--${name}: ${x} is not one of ${allowed.join(', ')}`);
      process.exit(2);
    }
  }
  return out;
}

const DEFAULT_CONNECTIONS: Record<ScenarioName, number> = {
  conn: 5000,
  pairs: 50,
  fanin: 50,
  fanout: 50,
  latency: 10,
};

function buildCases(): CaseSpec[] {
  const threads = num('threads', args.threads, 1);
  const inflight = num('inflight', args.inflight, 1);
  const window = args.window === undefined ? null : num('window', args.window, 1);
  if (args.smoke) {
    // Short but covering every code path: storm, all three QoS, both payloads, fixed-rate latency.
    const base = { durationS: 1, warmupS: 0.3, settleS: 1, rate: 2000, inflight, window, threads };
    return [
      { ...base, scenario: 'conn', qos: 0, payload: 64, connections: 300 },
      { ...base, scenario: 'pairs', qos: 1, payload: 64, connections: 10 },
      { ...base, scenario: 'fanin', qos: 2, payload: 1024, connections: 10 },
      { ...base, scenario: 'fanout', qos: 0, payload: 64, connections: 10 },
      { ...base, scenario: 'latency', qos: 1, payload: 64, connections: 5 },
    ];
  }
  const scenarios: ScenarioName[] =
    args.scenario === 'all'
      ? [...SCENARIOS]
      : list('scenario', args.scenario!, SCENARIOS, (s) => s as ScenarioName);
  const qoses = list('qos', args.qos!, [0, 1, 2] as const, (s) => Number(s) as Qos);
  const payloads = args.payload!.split(',').map((s) => num('payload', s, PAYLOAD_HEADER));
  const cases: CaseSpec[] = [];
  for (const scenario of scenarios) {
    const connections =
      args.connections === undefined
        ? DEFAULT_CONNECTIONS[scenario]
        : num('connections', args.connections, 1);
    const base = {
      scenario,
      connections,
      durationS: num('duration', args.duration, 0.1),
      warmupS: num('warmup', args.warmup, 0),
      settleS: num('settle', args.settle, 0),
      rate: num('rate', args.rate, 1),
      inflight,
      window,
      threads,
    };
    if (scenario === 'conn') {
      cases.push({ ...base, qos: 0, payload: 64 });
      continue;
    }
    for (const qos of qoses) for (const payload of payloads) cases.push({ ...base, qos, payload });
  }
  return cases;
}

const cases = buildCases();
const rounds = args.smoke ? 1 : num('rounds', args.rounds, 1);
const wantedBrokers = list('brokers', args.brokers!, BROKERS, (s) => s as BrokerName);
const transports = list('transport', args.transport!, TRANSPORTS, (s) => s as Transport);
/** What is measured, in order: each broker over tcp, and emqx-ts over each other transport asked for. */
const wanted: { label: string; name: BrokerName; transport: Transport; root?: string; args?: string[] }[] =
  wantedBrokers.flatMap((name) =>
    transports
      .filter((tr) => tr === 'tcp' || name === 'emqx-ts')
      .map((transport) => ({ label: transport === 'tcp' ? name : `${name}/${transport}`, name, transport })),
  );
for (const v of args.variant ?? []) {
  const m = /^([\w.:@+-]+)=(\S+)(?:\s+(.*))?$/.exec(v);
  if (!m || wanted.some((w) => w.label === m[1])) {
    console.error(`--variant: expected 'label=DIR [broker options]' with a new label, got ${v}`);
    process.exit(2);
  }
  const root = m[2] === '.' ? repoRoot : path.resolve(m[2]);
  wanted.push({ label: m[1], name: 'emqx-ts', transport: 'tcp', root, args: m[3]?.split(/\s+/) ?? [] });
}

// Hard stop: every step has its own timeout, this is the backstop so the bench always ends.
const budgetS =
  60 +
  rounds *
    wanted.length *
    cases.reduce(
      (a, c) =>
        a + c.durationS + c.warmupS + (c.scenario === 'conn' ? c.connections / 200 + 8 + 2 * c.settleS : 8),
      0,
    );
const watchdog = setTimeout(() => {
  console.error(`bench: exceeded its time budget of ${Math.round(budgetS)} s, aborting`);
  process.exit(3);
}, budgetS * 1000);
watchdog.unref();

const failures: string[] = [];
const skipped: string[] = [];
const outcomes: Outcome[] = [];
const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'emqx-ts-bench-'));
const brokers = new Map<string, Broker>();
// Never leave brokers behind, whatever ends the bench (watchdog, Ctrl-C, kill, uncaught error).
process.on('exit', () => {
  for (const b of brokers.values()) b.kill();
  rmSync(tmpDir, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    console.error(`bench: ${sig}, stopping`);
    process.exit(130);
  });
}

async function start(label: string): Promise<Broker | null> {
  const w = wanted.find((x) => x.label === label)!;
  try {
    const b = await startBroker(
      w.name,
      { repoRoot, tmpDir, emqxRoot: w.root, extraArgs: w.args, label: w.root ? w.label : undefined },
      w.transport,
    );
    brokers.set(label, b);
    return b;
  } catch (err) {
    brokers.delete(label);
    if (err instanceof BrokerUnavailable) skipped.push(`${label}: ${err.message}`);
    else failures.push(`${label}: failed to start: ${(err as Error).message}`);
    return null;
  }
}

/** Checks one outcome against the invariants; returns the problems found. */
function problems(o: Outcome, b: Broker): string[] {
  const p = [...o.errors];
  if (b.exit !== null) p.push(`broker ${b.exit}`);
  if (o.dups > 0) p.push(`${o.dups} duplicates`);
  if (o.qos > 0 && o.lost > 0) p.push(`${o.lost} lost at QoS ${o.qos}`);
  if (o.stray > 0) p.push(`${o.stray} messages from another run or malformed`);
  return p;
}

function progress(o: Outcome): string {
  if (o.scenario === 'conn') {
    return `${o.connections} conns ${Math.round(o.connectsPerS)} conn/s rss +${((o.rssAfter - o.rssBefore) / 1048576).toFixed(1)} MiB`;
  }
  const us = (x: number): string => (o.windowDelivered > 0 ? (x / o.windowDelivered).toFixed(2) : '-');
  return (
    `${Math.round(o.msgsPerS)} msg/s brk ${us(o.brokerCpuUs)} µs/msg gen ${us(o.genCpuUs)} µs/msg ` +
    `sent ${o.sent} recv ${o.received} lost ${o.lost} dup ${o.dups} ` +
    `(gen ${(o.genReads / Math.max(1, o.received)).toFixed(2)} reads, ${(o.genWrites / Math.max(1, o.received)).toFixed(2)} writes /msg)` +
    (o.writeOffs > 0 ? ` stalls ${o.writeOffs}` : '')
  );
}

/** Which broker code was measured (read-only git query; the lead commits). */
function revision(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
      cwd: repoRoot,
      encoding: 'utf8',
    }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'workers'], {
      cwd: repoRoot,
      encoding: 'utf8',
    }).trim();
    return `${head}${dirty ? ' (src modified)' : ''}`;
  } catch {
    return 'unknown';
  }
}

async function main(): Promise<void> {
  console.log(`emqx-ts revision ${revision()}, ${new Date().toISOString()}`);
  console.log(
    `emqx-ts bench: ${cases.length} case(s) x ${rounds} round(s) x brokers [${wanted.map((w) => w.label).join(', ')}]; ` +
      `node ${process.version}, ${os.cpus().length} CPUs, CLK_TCK ${clockTicks()}, load ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
  );
  const order: string[] = [];
  for (const { label: name } of wanted) {
    const b = await start(name);
    if (b !== null) {
      order.push(name);
      console.log(`started ${name} pid ${b.pid} on 127.0.0.1:${b.port}`);
    }
  }
  const used = new Set<string>();
  let pool = new LoadPool(Math.max(...cases.map((c) => c.threads)));
  for (const c of cases) {
    const key = caseKey(c);
    console.log(`\n# ${key}`);
    for (let r = 0; r < rounds; r++) {
      for (const name of order) {
        let b = brokers.get(name);
        if (b === undefined) continue; // crashed earlier
        if (c.scenario === 'conn' && used.has(name)) {
          // Fresh process: RSS of a broker that already served connections includes freed-but-kept heap.
          await b.stop();
          const fresh = await start(name);
          if (fresh === null) continue;
          b = fresh;
        }
        if (!pool.usable) {
          await pool.close();
          pool = new LoadPool(Math.max(...cases.map((x) => x.threads)));
        }
        let o: Outcome;
        used.add(name);
        const t0 = Date.now();
        try {
          o = await runCase(pool, b, c, r);
        } catch (err) {
          failures.push(`${name} ${key} round ${r + 1}: load generator: ${(err as Error).message}`);
          await pool.close();
          pool = new LoadPool(Math.max(...cases.map((x) => x.threads)));
          continue;
        }
        outcomes.push(o);
        const bad = problems(o, b);
        const took = `[${((Date.now() - t0) / 1000).toFixed(1)} s${process.env.BENCH_NODE_STDOUT ? ` from ${t0}` : ''}]`;
        console.log(
          `  r${r + 1} ${name.padEnd(9)} ${progress(o)} ${took}${bad.length ? `  !! ${bad.join('; ')}` : ''}`,
        );
        if (bad.length > 0) {
          // The broker's own last words usually say why it dropped clients.
          const said = [...new Set(b.logTail().split('\n').slice(-5))].join('\n    ');
          failures.push(`${name} ${key} round ${r + 1}: ${bad.join('; ')}${said ? `\n    ${said}` : ''}`);
        }
        if (b.exit !== null) {
          const tail = b.logTail();
          failures.push(`${name} crashed (${b.exit})${tail ? `\n--- last output ---\n${tail}` : ''}`);
          brokers.delete(name);
        }
      }
    }
  }
  await pool.close();
  await Promise.all([...brokers.values()].map((b) => b.stop()));
  rmSync(tmpDir, { recursive: true, force: true });

  const summaries = summarize(outcomes);
  console.log(`\n${render(summaries, order)}`);
  console.log(
    'msg/s = unique deliveries/s in the measured window; µs/msg = process CPU (utime+stime, all threads) / deliveries;\n' +
      'gen = this load generator; ratios are broker / mosquitto (same run, interleaved rounds).',
  );
  if (args.out !== undefined) {
    writeFileSync(args.out, JSON.stringify({ argv: process.argv.slice(2), summaries, outcomes }, null, 2));
    console.log(`raw results written to ${args.out}`);
  }
  for (const s of skipped) console.log(`skipped ${s}`);
  if (failures.length > 0) {
    console.error(`\nFAILED (${failures.length}):\n- ${failures.join('\n- ')}`);
    process.exitCode = 1;
  }
  clearTimeout(watchdog);
}

main().catch(async (err: Error) => {
  console.error(`bench: ${err.stack ?? err.message}`);
  await Promise.all([...brokers.values()].map((b) => b.stop().catch(() => undefined)));
  process.exit(1);
});

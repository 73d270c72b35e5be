// What hooks cost on the publish path (issue #12: "an event that no hook provides costs nothing").
// Runs the `pairs` scenario against variants of emqx-ts, interleaved round by round (rotated
// order) under one load generator, and prints deliveries/s and broker CPU µs per delivery:
//   before          another checkout's build (--before DIR: e.g. the commit before hooks landed)
//   no hooks        this checkout, no hooks configured (the default)
//   unrelated hook  a hook providing only onSessionCreated: nothing on the publish path
//   onPublish hook  a hook providing onPublish (changes nothing): the cost of a hook in use
//
//   node --import tsx bench/hooks.ts [--before DIR] [--rounds 5] [--duration 5] [--qos 0]
//     [--payload 64] [--connections 50] [--threads n]
// Build first (npm run build here; npm ci && npm run build in DIR).

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type Broker, startBroker } from './brokers.js';
import { LoadPool } from './pool.js';
import { type CaseSpec, runCase } from './scenarios.js';
import type { Qos } from './types.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    before: { type: 'string' },
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '5' },
    qos: { type: 'string', default: '0' },
    payload: { type: 'string', default: '64' },
    connections: { type: 'string', default: '50' },
    threads: { type: 'string', default: String(Math.max(1, Math.floor(os.availableParallelism() / 2))) },
  },
  strict: true,
});

interface Variant {
  name: string;
  emqxRoot?: string;
  extraArgs?: string[];
  broker?: Broker;
  msgsPerS: number[];
  cpuUsPerMsg: number[];
}

const hook = (f: string): string => `--hooks.modules=${path.join(repoRoot, 'bench/hooks', f)}`;
const variants: Variant[] = [
  ...(args.before
    ? [{ name: 'before', emqxRoot: path.resolve(args.before), msgsPerS: [], cpuUsPerMsg: [] }]
    : []),
  { name: 'no hooks', msgsPerS: [], cpuUsPerMsg: [] },
  { name: 'unrelated hook', extraArgs: [hook('unrelated.mjs')], msgsPerS: [], cpuUsPerMsg: [] },
  { name: 'onPublish hook', extraArgs: [hook('on-publish.mjs')], msgsPerS: [], cpuUsPerMsg: [] },
];

const spec: CaseSpec = {
  scenario: 'pairs',
  qos: Number(args.qos) as Qos,
  payload: Number(args.payload),
  connections: Number(args.connections),
  durationS: Number(args.duration),
  warmupS: 1,
  settleS: 0,
  rate: 10_000,
  inflight: 1000,
  window: null,
  threads: Number(args.threads),
};

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.floor(s.length / 2)];
};

async function main(): Promise<void> {
  const rounds = Number(args.rounds);
  const tmpDir = mkdtempSync(path.join(os.tmpdir(), 'emqx-ts-bench-hooks-'));
  console.log(
    `bench/hooks: pairs qos=${spec.qos} payload=${spec.payload}B pairs=${spec.connections} ` +
      `${spec.durationS}s x ${rounds} rounds; node ${process.version}, ${os.cpus().length} CPUs, load ${os
        .loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
  );
  const pool = new LoadPool(spec.threads);
  try {
    for (const v of variants)
      v.broker = await startBroker('emqx-ts', {
        repoRoot,
        tmpDir,
        emqxRoot: v.emqxRoot,
        extraArgs: v.extraArgs,
      });
    for (let r = 0; r < rounds; r++) {
      // Rotated each round so that no variant always runs first (or right after a given one).
      for (let i = 0; i < variants.length; i++) {
        const v = variants[(i + r) % variants.length];
        const o = await runCase(pool, v.broker!, spec, r);
        if (o.errors.length > 0 || v.broker!.exit !== null)
          throw new Error(`${v.name}: ${[...o.errors, v.broker!.exit].filter(Boolean).join('; ')}`);
        const us = o.windowDelivered > 0 ? o.brokerCpuUs / o.windowDelivered : Number.NaN;
        v.msgsPerS.push(o.msgsPerS);
        v.cpuUsPerMsg.push(us);
        console.log(
          `  r${r + 1} ${v.name.padEnd(15)} ${Math.round(o.msgsPerS)} msg/s  broker ${us.toFixed(2)} µs/msg`,
        );
      }
    }
  } finally {
    await pool.close();
    await Promise.all(variants.map((v) => v.broker?.stop()));
    rmSync(tmpDir, { recursive: true, force: true });
  }
  const base = variants.find((v) => v.name === 'no hooks')!;
  console.log('\nmedian over rounds (ratio to "no hooks"):');
  for (const v of variants) {
    const m = median(v.msgsPerS);
    const c = median(v.cpuUsPerMsg);
    console.log(
      `  ${v.name.padEnd(15)} ${String(Math.round(m)).padStart(7)} msg/s (${(m / median(base.msgsPerS)).toFixed(3)})  ` +
        `broker ${c.toFixed(2)} µs/msg (${(c / median(base.cpuUsPerMsg)).toFixed(3)})  ` +
        `range ${Math.min(...v.cpuUsPerMsg).toFixed(2)}–${Math.max(...v.cpuUsPerMsg).toFixed(2)} µs/msg`,
    );
  }
  console.log('µs/msg = broker process CPU (all threads) / deliveries in the measured window.');
}

main().catch((err: Error) => {
  console.error(`bench/hooks: ${err.stack ?? err.message}`);
  process.exit(1);
});

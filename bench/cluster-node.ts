// An emqx-ts node for the cluster benches (bench/cluster.ts, bench/cluster-retained.ts): its own
// ports and data dir on loopback, 1 shard, static discovery (or none: `seeds` null).
// BENCH_EMQX_TS_NODE_ARGS (or BENCH_NODE_ARGS): node flags before the script, e.g. --cpu-prof;
// BENCH_NODE_STDOUT=PREFIX: each node's stdout to PREFIX.<name> (e.g. for --trace-gc).
import { type ChildProcess, spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort, HOST } from './brokers.js';

export interface Node {
  child: ChildProcess;
  mqtt: number;
  cluster: number;
  metrics: number;
}

/** A counter of a node's Prometheus exposition. */
export async function metric(n: Node, name: string): Promise<number> {
  const text = await (await fetch(`http://${HOST}:${n.metrics}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : Number.NaN;
}

export const nodeArgs = (process.env.BENCH_EMQX_TS_NODE_ARGS ?? process.env.BENCH_NODE_ARGS ?? '')
  .split(' ')
  .filter(Boolean);

/** Starts a node of the build at `build`; resolves once its MQTT port accepts. `extra`: more options. */
export async function startNode(
  name: string,
  seeds: number[] | null,
  dir: string,
  build: string,
  extra: string[] = [],
): Promise<Node> {
  const [mqtt, cluster, metrics, api] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const clusterArgs =
    seeds === null
      ? ['--cluster.discovery=none']
      : [
          '--cluster.discovery=static',
          `--cluster.port=${cluster}`,
          `--cluster.advertise=${HOST}`,
          `--cluster.listen_host=${HOST}`,
          `--cluster.static.seeds=${seeds.map((p) => `${HOST}:${p}`).join(',')}`,
        ];
  const child = spawn(
    process.execPath,
    [
      ...nodeArgs,
      path.join(build, 'dist/src/main.js'),
      `--name=${name}`,
      `--host=${HOST}`,
      `--port=${mqtt}`,
      '--shards=1',
      `--metrics.port=${metrics}`,
      `--api.port=${api}`,
      `--node.data_dir=${path.join(dir, name)}`,
      '--log-level=warn',
      '--sys_topics.sys_msg_interval=0',
      '--sys_topics.sys_heartbeat_interval=0',
      '--mqtt.max_inflight=1000',
      ...clusterArgs,
      ...extra,
    ],
    {
      stdio: process.env.BENCH_NODE_STDOUT
        ? ['ignore', openSync(`${process.env.BENCH_NODE_STDOUT}.${name}`, 'w'), 'ignore']
        : 'ignore',
    },
  );
  const node = { child, mqtt, cluster, metrics };
  for (let i = 0; i < 200; i++) {
    if (await canConnect(mqtt)) return node;
    await sleep(50);
  }
  throw new Error(`${name} did not start`);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const canConnect = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, HOST, () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

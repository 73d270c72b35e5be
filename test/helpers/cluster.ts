/**
 * Cluster nodes as separate broker processes on loopback (`node dist/src/main.js`), each on its
 * own ephemeral ports: MQTT, metrics and REST on port 0, the cluster service on port 0 too, its
 * bound port read from the node's log; later nodes are seeded with earlier nodes' cluster ports.
 * `npm test` builds dist/ first.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LineReader, TEST_HTTP_FLAGS, within } from './broker.js';
import { basicAuth, parsePrometheus, type Scrape } from './ops.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = join(ROOT, 'dist/src/main.js');
const KEY = 'cluster-test';
const SECRET = 'cluster-test-secret';

type Ctx = { after: (fn: () => void | Promise<void>) => void };

export interface NodeOptions {
  name: string;
  /** Cluster ports of the seed nodes on 127.0.0.1 */
  seeds?: number[];
  downAfter?: number;
  shards?: number;
  /** Fixed cluster port (a restarted node keeps its address); 0 = ephemeral */
  clusterPort?: number;
  /** More CLI flags */
  args?: string[];
  /** A JSON config file (--config): what SIGHUP re-reads */
  config?: string;
  /** More environment variables (e.g. KUBECONFIG) */
  env?: Record<string, string>;
  /** node.data_dir of a node started again after a crash (the caller removes it); else a new one */
  dataDir?: string;
}

export interface ClusterNodeInfo {
  node: string;
  node_status: 'running' | 'stopped';
  routes?: number;
}

export class TestNode {
  dataDir = '';
  mqttPort = 0;
  clusterPort = 0;
  apiPort = 0;
  metricsPort = 0;
  readonly out: LineReader;
  readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    this.out = new LineReader(child.stdout!);
    new LineReader(child.stderr!);
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** SIGKILL: no leave, no goodbye, as a crash or an OOM kill. */
  async kill9(): Promise<void> {
    this.child.kill('SIGKILL');
    await within(this.exited, `${this.name} to exit`);
  }

  async api<T>(path: string): Promise<T> {
    const res = await fetch(`http://127.0.0.1:${this.apiPort}/api/v5${path}`, {
      headers: { authorization: basicAuth(KEY, SECRET) },
    });
    assert.equal(res.status, 200, `GET ${path} on ${this.name}`);
    return (await res.json()) as T;
  }

  /** GET without asserting the status (404 is an answer too). */
  async get(path: string): Promise<{ status: number; body: unknown }> {
    const res = await fetch(`http://127.0.0.1:${this.apiPort}/api/v5${path}`, {
      headers: { authorization: basicAuth(KEY, SECRET) },
    });
    return { status: res.status, body: await res.json() };
  }

  nodes(): Promise<ClusterNodeInfo[]> {
    return this.api<ClusterNodeInfo[]>('/nodes');
  }

  async scrape(): Promise<Scrape> {
    const res = await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`);
    return parsePrometheus(await res.text());
  }

  /** Waits until this node sees `peer` with `status` (and, if given, holding routes matching `routes`). */
  async waitPeer(
    peer: string,
    status: 'running' | 'stopped',
    routes?: (n: number) => boolean,
    timeoutMs = 20_000,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: ClusterNodeInfo[] = [];
    for (;;) {
      last = await this.nodes();
      const p = last.find((n) => n.node === peer);
      if (p !== undefined && p.node_status === status && (!routes || routes(p.routes ?? 0))) return;
      if (Date.now() > deadline) {
        throw new Error(
          `timed out waiting for ${this.name} to see ${peer} ${status}; nodes: ${JSON.stringify(last)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Starts a node and waits until it serves MQTT and its cluster service listens. */
export async function startNode(t: Ctx, opts: NodeOptions): Promise<TestNode> {
  assert.ok(existsSync(MAIN), `${MAIN} is missing: run \`npm run build\` first (npm test does)`);
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'emqx-ts-cluster-'));
  const seeds = (opts.seeds ?? []).map((p) => `127.0.0.1:${p}`).join(',');
  const args = [
    MAIN,
    ...TEST_HTTP_FLAGS,
    `--node.data_dir=${dataDir}`,
    '--host=127.0.0.1',
    '--port=0',
    `--shards=${opts.shards ?? 1}`,
    `--name=${opts.name}`,
    `--api.key=${KEY}`,
    `--api.secret=${SECRET}`,
    '--cluster.discovery=static',
    `--cluster.port=${opts.clusterPort ?? 0}`,
    '--cluster.listen_host=127.0.0.1',
    '--cluster.advertise=127.0.0.1',
    `--cluster.down_after=${opts.downAfter ?? 2}`,
    ...(seeds ? [`--cluster.static.seeds=${seeds}`] : []),
    ...(opts.config ? [`--config=${opts.config}`] : []),
    ...(opts.args ?? []),
  ];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const node = new TestNode(opts.name, child);
  node.dataDir = dataDir;
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await node.exited;
    }
    if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
  });
  const field = async (msg: string): Promise<Record<string, number>> =>
    JSON.parse(await node.out.waitFor((l) => l.includes(`"msg":"${msg}"`), `${opts.name}: ${msg}`, 30_000));
  node.clusterPort = (await field('cluster thread ready')).port;
  node.mqttPort = (await field('listening')).port;
  const http = await field('metrics, health and REST API listening');
  node.apiPort = http.apiPort;
  node.metricsPort = http.metricsPort;
  return node;
}

/**
 * The broker under fuzzing as a child process (`node dist/src/main.js`): its exit, its
 * error-level log lines, its metrics and REST API, its RSS, and what it left in its durable store.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { open as openLmdb } from 'lmdb';

export const HOST = '127.0.0.1';
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const MAIN = join(ROOT, 'dist/src/main.js');

/** How the broker is started (the fuzzer's options of the same names). */
export interface BrokerOptions {
  shards: number;
  /** Extra broker flags (`--mqtt.max_inflight=8`…) */
  brokerArgs: string[];
  /** Extra environment of the broker process (e.g. MALLOC_ARENA_MAX) */
  brokerEnv: Record<string, string>;
  /** Node flags of the broker process (e.g. a fault-injection preload) */
  nodeArgs: string[];
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const a = srv.address();
      srv.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

const API_SECRET = 'fuzz-secret';

/** What the broker left in its durable store (lmdb in node.data_dir): records per database. */
function countStoreRecords(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    const env = openLmdb({ path: dir, readOnly: true, maxDbs: 8 });
    for (const name of ['sessions', 'deliveries', 'awaiting_rel', 'outbox', 'marks', 'retained'])
      out[name] = env.openDB({ name }).getCount();
    out.fileBytes = statSync(join(dir, 'data.mdb')).size;
    void env.close();
  } catch {
    // no store (durability.mode none) or unreadable: nothing to report
  }
  return out;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** VmRSS and its anonymous and file-backed parts, bytes (0 once the process is gone). */
export function rssParts(pid: number): { rss: number; anon: number; file: number } {
  try {
    const st = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k: string): number =>
      Number(new RegExp(`^${k}:\\s+(\\d+)\\s+kB`, 'm').exec(st)?.[1] ?? 0) * 1024;
    return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
  } catch {
    return { rss: 0, anon: 0, file: 0 };
  }
}

export function rssOf(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The broker as a child process: its exit, its error-level log lines, its metrics. */
export class BrokerProcess {
  exit: string | null = null;
  readonly errorLines = new Map<string, { count: number; example: string }>();
  readonly tail: string[] = [];
  private readonly exited: Promise<void>;

  private constructor(
    readonly proc: ChildProcess,
    readonly port: number,
    readonly metricsPort: number,
    readonly apiPort: number,
    private readonly dataDir: string,
  ) {
    this.exited = new Promise((resolve) =>
      proc.once('exit', (code, signal) => {
        this.exit = signal ? `killed by ${signal}` : `exited with code ${code}`;
        resolve();
      }),
    );
    for (const stream of [proc.stdout, proc.stderr]) {
      if (stream) createInterface({ input: stream }).on('line', (l) => this.onLine(l));
    }
  }

  static async start(o: BrokerOptions): Promise<BrokerProcess> {
    const [port, metricsPort, apiPort] = [await freePort(), await freePort(), await freePort()];
    const dataDir = mkdtempSync(join(tmpdir(), 'emqx-ts-fuzz-'));
    // Error level: per-connection warnings (every refused frame) would be most of the broker's work.
    const args = [
      ...o.nodeArgs,
      MAIN,
      `--listener.port=${port}`,
      `--listener.host=${HOST}`,
      '--log-level=error',
      `--metrics.host=${HOST}`,
      `--metrics.port=${metricsPort}`,
      `--api.host=${HOST}`,
      `--api.port=${apiPort}`,
      '--api.key=fuzz',
      `--api.secret=${API_SECRET}`,
      `--node.data_dir=${dataDir}`,
      `--node.shards=${o.shards}`,
      '--node.shutdown_drain_period=0',
      ...o.brokerArgs,
    ];
    const proc = spawn(process.execPath, args, {
      cwd: ROOT,
      env: { PATH: process.env.PATH, ...o.brokerEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const b = new BrokerProcess(proc, port, metricsPort, apiPort, dataDir);
    const deadline = Date.now() + 30_000;
    while (b.exit === null && Date.now() < deadline) {
      try {
        await b.metrics();
        return b;
      } catch {
        await sleep(50);
      }
    }
    await b.stop();
    throw new Error(`broker did not start: ${b.exit ?? 'timeout'}\n${b.tail.join('\n')}`);
  }

  private onLine(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 50) this.tail.shift();
    let rec: { level?: number; msg?: string; err?: { message?: string } };
    try {
      rec = JSON.parse(line);
    } catch {
      rec = { level: 50, msg: line.slice(0, 200) };
    }
    if ((rec.level ?? 0) < 50) return;
    const key = `${rec.msg}${rec.err?.message ? `: ${rec.err.message}` : ''}`;
    const e = this.errorLines.get(key);
    if (e) e.count++;
    else this.errorLines.set(key, { count: 1, example: line.slice(0, 2000) });
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  /** The metrics endpoint's text. */
  async scrape(): Promise<string> {
    const res = await fetch(`http://${HOST}:${this.metricsPort}/metrics`, {
      signal: AbortSignal.timeout(5000),
    });
    if (!res.ok) throw new Error(`metrics: HTTP ${res.status}`);
    return res.text();
  }

  /** The metrics endpoint as name → value (labels dropped: values of one name are summed). */
  async metrics(): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    for (const line of (await this.scrape()).split('\n')) {
      if (line.startsWith('#') || line === '') continue;
      const m = /^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m) out.set(m[1], (out.get(m[1]) ?? 0) + Number(m[2]));
    }
    return out;
  }

  /** Messages queued and inflight over all sessions (REST /api/v5/clients, every page). */
  async queued(): Promise<{ queued: number; inflight: number }> {
    const auth = `Basic ${Buffer.from(`fuzz:${API_SECRET}`).toString('base64')}`;
    let queued = 0;
    let inflight = 0;
    for (let page = 1; ; page++) {
      const res = await fetch(`http://${HOST}:${this.apiPort}/api/v5/clients?limit=10000&page=${page}`, {
        headers: { authorization: auth },
        signal: AbortSignal.timeout(10_000),
      });
      if (!res.ok) throw new Error(`clients: HTTP ${res.status}`);
      const body = (await res.json()) as {
        data: { mqueue_len: number; inflight_cnt: number }[];
        meta: { hasnext: boolean };
      };
      for (const c of body.data) {
        queued += c.mqueue_len;
        inflight += c.inflight_cnt;
      }
      if (!body.meta.hasnext) return { queued, inflight };
    }
  }

  /** Records per database of the durable store, read once the broker has stopped (then removed). */
  storeRecords: Record<string, number> = {};

  async stop(): Promise<void> {
    if (this.exit === null) {
      this.proc.kill('SIGTERM');
      const r = await Promise.race([this.exited.then(() => 'exit'), sleep(10_000)]);
      if (r !== 'exit') {
        this.proc.kill('SIGKILL');
        await this.exited;
      }
    }
    this.storeRecords = countStoreRecords(this.dataDir);
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

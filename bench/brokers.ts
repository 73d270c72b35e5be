// Starts each broker under test as a child process on a free loopback port and stops it again.

import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';

export const BROKERS = ['emqx-ts', 'mosquitto', 'aedes'] as const;
export type BrokerName = (typeof BROKERS)[number];

export const HOST = '127.0.0.1';

/** How the load generator reaches the broker: plain TCP, MQTT over TLS, MQTT over WebSocket (emqx-ts only). */
export const TRANSPORTS = ['tcp', 'tls', 'ws'] as const;
export type Transport = (typeof TRANSPORTS)[number];

/** The broker cannot run here (not built / not installed): reported and skipped, not a failure. */
export class BrokerUnavailable extends Error {}

export interface Broker {
  /** The broker, plus `/tls` or `/ws` when measured over that transport */
  readonly name: string;
  readonly transport: Transport;
  readonly port: number;
  readonly pid: number;
  /** Set when the process exits; a broker exiting during a run is a crash. */
  exit: string | null;
  logTail(): string;
  stop(): Promise<void>;
  /** Synchronous last resort when the bench itself exits abnormally. */
  kill(): void;
}

const MOSQUITTO_PATHS = ['/usr/sbin/mosquitto', '/usr/local/sbin/mosquitto', '/usr/bin/mosquitto'];

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function tryConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class ChildBroker implements Broker {
  exit: string | null = null;
  private readonly tail: string[] = [];
  private readonly exited: Promise<void>;
  private lineWaiters: { re: RegExp; resolve: () => void }[] = [];

  constructor(
    readonly name: string,
    readonly port: number,
    private readonly proc: ChildProcess,
    readonly transport: Transport = 'tcp',
  ) {
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exit = signal !== null ? `killed by ${signal}` : `exited with code ${code}`;
        resolve();
      });
    });
    proc.once('error', (err) => {
      this.exit = `failed to start: ${err.message}`;
    });
    // Always drain stdout/stderr: a full pipe would block a logging broker and distort the figures.
    // BENCH_NODE_STDOUT=PREFIX: every line also to PREFIX.<label>, after its wall-clock ms (e.g.
    // --trace-gc in BENCH_EMQX_TS_NODE_ARGS, matched to the rounds' start times of the output).
    const prefix = process.env.BENCH_NODE_STDOUT;
    const copy = prefix ? createWriteStream(`${prefix}.${name.replace(/[^\w.-]/g, '_')}`) : null;
    for (const stream of [proc.stdout, proc.stderr]) {
      if (stream)
        createInterface({ input: stream }).on('line', (line) => {
          copy?.write(`${Date.now()} ${line}\n`);
          this.onLine(line);
        });
    }
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  private onLine(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 40) this.tail.shift();
    this.lineWaiters = this.lineWaiters.filter((w) => {
      if (!w.re.test(line)) return true;
      w.resolve();
      return false;
    });
  }

  logTail(): string {
    return this.tail.join('\n');
  }

  async waitReady(how: 'tcp' | RegExp, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    if (how instanceof RegExp) {
      const seen = new Promise<void>((resolve) => this.lineWaiters.push({ re: how, resolve }));
      const res = await Promise.race([
        seen.then(() => 'ok'),
        this.exited.then(() => 'exit'),
        sleep(timeoutMs),
      ]);
      if (res === 'ok') return;
      throw new Error(`${this.name}: ${this.exit ?? 'no "listening" log line'} within ${timeoutMs} ms`);
    }
    while (Date.now() < deadline) {
      if (this.exit !== null) throw new Error(`${this.name}: ${this.exit}`);
      if (await tryConnect(this.port)) return;
      await sleep(50);
    }
    throw new Error(`${this.name}: port ${this.port} not accepting connections within ${timeoutMs} ms`);
  }

  kill(): void {
    if (this.exit === null) this.proc.kill('SIGKILL');
  }

  async stop(): Promise<void> {
    if (this.exit !== null) return;
    this.proc.kill('SIGTERM');
    const res = await Promise.race([this.exited.then(() => 'exit'), sleep(3000)]);
    if (res !== 'exit') {
      this.proc.kill('SIGKILL');
      await this.exited;
    }
  }
}

export interface StartOptions {
  repoRoot: string;
  tmpDir: string;
  /** emqx-ts: this checkout's build instead of repoRoot / BENCH_EMQX_TS_ROOT (bench/hooks.ts A/B) */
  emqxRoot?: string;
  /** emqx-ts: extra CLI options, e.g. `--hooks.modules=…` */
  extraArgs?: readonly string[];
  /** The name its results are reported under (run.ts --variant), instead of the broker's */
  label?: string;
}

/** A throw-away self-signed certificate for the tls transport (never committed). */
function benchCert(tmpDir: string): { cert: string; key: string } {
  const cert = path.join(tmpDir, 'bench.crt');
  const key = path.join(tmpDir, 'bench.key');
  if (!existsSync(cert)) {
    execFileSync(
      'openssl',
      [
        ...'req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost'.split(' '),
        ...['-keyout', key, '-out', cert],
      ],
      { stdio: 'ignore' },
    );
  }
  return { cert, key };
}

/** emqx-ts flags for a listener of `transport` on `port` (the tcp one stays on its own port). */
function transportFlags(transport: Transport, port: number, tmpDir: string): string[] {
  if (transport === 'ws')
    return ['--listeners.ws.default.enable=true', `--listeners.ws.default.bind=${HOST}:${port}`];
  const { cert, key } = benchCert(tmpDir);
  return [
    `--listeners.ssl.default.bind=${HOST}:${port}`,
    `--listeners.ssl.default.ssl_options.certfile=${cert}`,
    `--listeners.ssl.default.ssl_options.keyfile=${key}`,
  ];
}

export async function startBroker(
  name: BrokerName,
  opts: StartOptions,
  transport: Transport = 'tcp',
): Promise<Broker> {
  if (transport !== 'tcp' && name !== 'emqx-ts') {
    throw new BrokerUnavailable(`${name}: --transport ${transport} is measured for emqx-ts only`);
  }
  const port = await freePort();
  const tcpPort = transport === 'tcp' ? port : await freePort();
  let proc: ChildProcess;
  let ready: 'tcp' | RegExp = 'tcp';
  const stdio: ['ignore', 'pipe', 'pipe'] = ['ignore', 'pipe', 'pipe'];
  switch (name) {
    case 'emqx-ts': {
      // BENCH_EMQX_TS_ROOT: another checkout's build (A/B runs of two commits under the same load).
      const root = opts.emqxRoot ?? process.env.BENCH_EMQX_TS_ROOT ?? opts.repoRoot;
      const main = path.join(root, 'dist/src/main.js');
      if (!existsSync(main)) throw new BrokerUnavailable(`${main} not found (run npm run build)`);
      // Logs at warn, as mosquitto is configured (per-connection lines are not what is measured);
      // HTTP ports ephemeral and the API key in the run's temp dir. The MQTT port accepts only
      // once every shard is up, so a TCP connect is the readiness check.
      // BENCH_EMQX_TS_NODE_ARGS: extra node flags, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to
      // profile every thread of the broker during a scenario (written when it stops).
      const nodeArgs = (process.env.BENCH_EMQX_TS_NODE_ARGS ?? '').split(' ').filter(Boolean);
      // BENCH_EMQX_TS_ARGS: extra broker flags, e.g. `--shards 1` (no tunnels: the cost of TLS
      // alone) or `--durability.mode=none` (docs/PERFORMANCE.md).
      const brokerArgs = (process.env.BENCH_EMQX_TS_ARGS ?? '').split(' ').filter(Boolean);
      proc = spawn(
        process.execPath,
        [
          ...nodeArgs,
          main,
          '--port',
          String(tcpPort),
          ...(transport === 'tcp' ? [] : transportFlags(transport, port, opts.tmpDir)),
          '--host',
          HOST,
          '--log-level',
          'warn',
          '--metrics.port=0',
          '--api.port=0',
          // A fresh data dir per start: no sessions or retained messages of an earlier case.
          `--node.data_dir=${mkdtempSync(path.join(opts.tmpDir, 'emqx-ts-data-'))}`,
          ...(opts.extraArgs ?? []),
          ...brokerArgs,
        ],
        { cwd: root, stdio },
      );
      ready = 'tcp';
      break;
    }
    case 'mosquitto': {
      const bin = MOSQUITTO_PATHS.find((p) => existsSync(p));
      if (bin === undefined)
        throw new BrokerUnavailable('mosquitto not installed (apt-get install mosquitto)');
      const conf = path.join(opts.tmpDir, `mosquitto-${port}.conf`);
      writeFileSync(
        conf,
        [
          `listener ${port} ${HOST}`,
          'allow_anonymous true',
          // Large queue so QoS 1/2 is never dropped by the queue limit; the bench bounds in-flight itself.
          'max_queued_messages 1000000',
          // BENCH_MOSQUITTO_PERSISTENCE=1: `persistence true` (snapshots every autosave_interval,
          // default 1800 s, and at exit), for the durability comparison.
          process.env.BENCH_MOSQUITTO_PERSISTENCE === '1'
            ? `persistence true\npersistence_location ${mkdtempSync(path.join(opts.tmpDir, 'mosquitto-data-'))}/`
            : 'persistence false',
          // No inflight limit: with the default 20, mosquitto 2.0.11 stops delivering queued QoS 2
          // messages to a subscriber after the first 20 (reproduced; see docs/PERFORMANCE.md).
          // In-flight is bounded by the bench's own per-publisher window instead.
          'max_inflight_messages 0',
          // Same as the Node brokers (noDelay): otherwise Nagle + delayed ACK adds up to 40 ms of latency.
          'set_tcp_nodelay true',
          // Per-connection notices would cost CPU during connection storms.
          'log_dest stderr',
          'log_type error',
          'log_type warning',
          '',
        ].join('\n'),
      );
      proc = spawn(bin, ['-c', conf], { stdio });
      break;
    }
    case 'aedes': {
      const script = path.join(opts.repoRoot, 'bench/aedes-server.ts');
      proc = spawn(process.execPath, ['--import', 'tsx', script, '--port', String(port), '--host', HOST], {
        cwd: opts.repoRoot,
        stdio,
      });
      break;
    }
  }
  const label = opts.label ?? (transport === 'tcp' ? name : `${name}/${transport}`);
  const broker = new ChildBroker(label, port, proc, transport);
  try {
    await broker.waitReady(ready, 20_000);
  } catch (err) {
    await broker.stop();
    const tail = broker.logTail();
    throw new Error(`${(err as Error).message}${tail ? `\n--- last output ---\n${tail}` : ''}`);
  }
  return broker;
}

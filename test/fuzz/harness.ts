/**
 * Drives the real broker process (`node dist/src/main.js`) with mutated packet streams over many
 * concurrent loopback TCP connections, while two healthy mqtt.js clients (one per shard) keep
 * doing QoS 1 round trips through it. Watches for: the process exiting (crash), shard restarts
 * (the `emqx_ts_shard_restarts_total` metric and the supervisor's log line), a stuck shard (a
 * healthy round trip that does not complete), error-level log lines (a handler that threw on
 * input a check missed), and RSS (/proc/<pid>/status) over the run.
 */
import { connect as netConnect, type Socket } from 'node:net';
import mqtt, { type MqttClient } from 'mqtt';
import { shardOf } from '../../src/listener/client-id.js';
import { BrokerProcess, HOST, MAIN, rssOf, rssParts, sleep } from './broker-process.js';
import { type FuzzStream, fuzzStream, Rng } from './packets.js';
import { parseSample, type StateSample, sampleTable } from './samples.js';

export { BrokerProcess, MAIN, rssOf };

export interface FuzzOptions {
  seed: number;
  /** Stop after this many frames were written… */
  frames: number;
  /** …or after this many seconds, whichever comes first (0 = no time limit) */
  seconds: number;
  /** Concurrent fuzzing connections */
  connections: number;
  /** Probability that a frame (other than CONNECT: a third of it) is mutated */
  rate: number;
  /** Most packets after CONNECT per connection */
  maxFrames: number;
  shards: number;
  /** A healthy round trip slower than this means a stuck shard */
  roundTripTimeoutMs: number;
  /** Extra broker flags (`--mqtt.max_inflight=8`…) */
  brokerArgs: string[];
  /** Extra environment of the broker process (e.g. MALLOC_ARENA_MAX) */
  brokerEnv: Record<string, string>;
  /** Node flags of the broker process (e.g. a fault-injection preload) */
  nodeArgs: string[];
  /** Idle seconds after the run before RSS is sampled once more (`rss.settled`; 0 = not sampled) */
  settleSeconds: number;
  /** Called with the broker's pid once fuzzing has started (fault injection in tests) */
  onStart: ((pid: number) => void) | null;
  /** Progress lines (every few seconds), or null */
  progress: ((line: string) => void) | null;
}

export const DEFAULTS: FuzzOptions = {
  seed: 1,
  frames: 100_000,
  seconds: 0,
  connections: 48,
  rate: 0.08,
  maxFrames: 40,
  shards: 2,
  roundTripTimeoutMs: 10_000,
  brokerArgs: [],
  brokerEnv: {},
  nodeArgs: [],
  onStart: null,
  settleSeconds: 0,
  progress: null,
};

export interface FuzzResult {
  seed: number;
  frames: number;
  streams: number;
  bytes: number;
  seconds: number;
  /** Packets the broker parsed and dispatched (packets.received): frames behind a fatal one are never read */
  brokerPackets: number;
  malformed: number;
  protocolErrors: number;
  restarts: number;
  threadMessageErrors: number;
  /** Error/fatal log lines by message, with the first line of each */
  errorLines: Map<string, { count: number; example: string }>;
  /** Set if the broker process exited during the run */
  crash: string | null;
  rss: { start: number; peak: number; end: number; settled: number };
  /** RSS once a second: [seconds since the start, frames written so far, RSS bytes] */
  rssTimeline: [number, number, number][];
  /** Broker state and per-thread memory about once a second, and once more after the settle */
  samples: StateSample[];
  healthy: { roundTrips: number; maxLatencyMs: number; p99LatencyMs: number; failures: string[] };
  retained: number;
  /** Broker state at the end (gauges): what the bounded state grew to */
  state: {
    sessions: number;
    subscriptions: number;
    topics: number;
    liveConnections: number;
    queued: number;
    inflight: number;
  };
  /** Seed and mutations of the streams in flight when something failed (for replay) */
  lastStreams: string[];
  /** Records per database the broker's durable store held after it stopped, and the file size */
  storeRecords: Record<string, number>;
}

/**
 * Two mqtt.js clients, one on each of two shards, that publish QoS 1 to each other in turn and
 * time each round trip (PUBLISH sent → delivered to the other client).
 */
class HealthyPair {
  roundTrips = 0;
  readonly latencies: number[] = [];
  readonly failures: string[] = [];
  private running = true;
  private loop: Promise<void> = Promise.resolve();

  private constructor(
    private readonly a: MqttClient,
    private readonly b: MqttClient,
    private readonly timeoutMs: number,
  ) {
    for (const c of [a, b]) {
      c.on('close', () => {
        if (this.running) this.failures.push(`healthy client ${c.options.clientId} disconnected`);
      });
    }
  }

  static async start(port: number, shards: number, timeoutMs: number): Promise<HealthyPair> {
    const id = (prefix: string, shard: number): string => {
      for (let n = 0; ; n++)
        if (shardOf(`${prefix}-${n}`, shards) === shard % shards) return `${prefix}-${n}`;
    };
    const connect = async (clientId: string, protocolVersion: 4 | 5): Promise<MqttClient> => {
      const c = mqtt.connect({
        host: HOST,
        port,
        clientId,
        protocolVersion,
        reconnectPeriod: 0,
        keepalive: 30,
      });
      await new Promise<void>((resolve, reject) => {
        c.once('connect', () => resolve());
        c.once('error', reject);
      });
      c.on('error', () => {});
      await c.subscribeAsync(`healthy/${clientId}`, { qos: 1 });
      return c;
    };
    const a = await connect(id('healthy-a', 0), 4);
    const b = await connect(id('healthy-b', 1), 5);
    const pair = new HealthyPair(a, b, timeoutMs);
    pair.loop = pair.run();
    return pair;
  }

  /** One QoS 1 message from `from` to `to`; resolves with the latency, rejects on timeout. */
  private trip(from: MqttClient, to: MqttClient, n: number): Promise<number> {
    const topic = `healthy/${to.options.clientId}`;
    const payload = `rt-${n}`;
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        to.removeListener('message', onMessage);
        reject(
          new Error(
            `round trip ${n} ${from.options.clientId} → ${to.options.clientId} took > ${this.timeoutMs} ms`,
          ),
        );
      }, this.timeoutMs);
      const onMessage = (t: string, p: Buffer): void => {
        if (t !== topic || p.toString() !== payload) return;
        clearTimeout(timer);
        to.removeListener('message', onMessage);
        resolve(performance.now() - t0);
      };
      to.on('message', onMessage);
      from.publish(topic, payload, { qos: 1 }, (err) => {
        if (err) {
          clearTimeout(timer);
          to.removeListener('message', onMessage);
          reject(err);
        }
      });
    });
  }

  private async run(): Promise<void> {
    for (let n = 0; this.running; n++) {
      const [from, to] = n % 2 === 0 ? [this.a, this.b] : [this.b, this.a];
      try {
        this.latencies.push(await this.trip(from, to, n));
        this.roundTrips++;
      } catch (err) {
        if (!this.running) return;
        this.failures.push((err as Error).message);
        if (from.disconnected || to.disconnected) return;
      }
      // Paced, not flat out: the healthy client is a witness, not load.
      await sleep(5);
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    this.a.end(true);
    this.b.end(true);
  }

  get maxLatencyMs(): number {
    let m = 0;
    for (const l of this.latencies) if (l > m) m = l;
    return m;
  }

  get p99LatencyMs(): number {
    if (this.latencies.length === 0) return 0;
    const s = [...this.latencies].sort((x, y) => x - y);
    return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))];
  }
}

/** Sends one stream on a new connection and ends it; resolves when the connection is closed. */
export function runStream(port: number, s: FuzzStream, rng: Rng): Promise<number> {
  return new Promise((resolve) => {
    const sock: Socket = netConnect({ host: HOST, port });
    let bytes = 0;
    let timer: NodeJS.Timeout | undefined;
    let finished = false;
    const done = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(bytes);
    };
    sock.setNoDelay(true);
    sock.on('error', () => {});
    sock.once('close', done);
    // A few connections never read what the broker sends (output back-pressure).
    const reading = rng.chance(0.95);
    if (reading) sock.on('data', () => {});
    else sock.pause();
    // Hang guard: a broker that neither reads nor closes (e.g. a partial frame) is cut off here;
    // a connection that does not read cannot see the broker close it, and is cut off sooner.
    timer = setTimeout(done, reading ? 3000 : 300);
    const how = rng.int(10);
    sock.once('connect', () => {
      if (how < 6) {
        // Everything in one write, then FIN: the broker reads all of it, then closes.
        const all = Buffer.concat(s.frames);
        bytes = all.length;
        sock.end(all);
      } else if (how < 9) {
        // Frame by frame, some split in two: frames cross reads.
        for (const f of s.frames) {
          bytes += f.length;
          if (f.length > 2 && rng.chance(0.3)) {
            const at = 1 + rng.int(f.length - 1);
            sock.write(f.subarray(0, at));
            sock.write(f.subarray(at));
          } else sock.write(f);
        }
        sock.end();
      } else {
        // Part of the stream, then a reset.
        const all = Buffer.concat(s.frames);
        const cut = rng.int(all.length + 1);
        bytes = cut;
        sock.write(all.subarray(0, cut), () => sock.destroy());
      }
    });
  });
}

/** Runs the fuzzer against a fresh broker process and returns what it saw. */
export async function fuzz(options: Partial<FuzzOptions> = {}): Promise<FuzzResult> {
  const o = { ...DEFAULTS, ...options };
  const broker = await BrokerProcess.start(o);
  const result: FuzzResult = {
    seed: o.seed,
    frames: 0,
    streams: 0,
    bytes: 0,
    seconds: 0,
    brokerPackets: 0,
    malformed: 0,
    protocolErrors: 0,
    restarts: 0,
    threadMessageErrors: 0,
    errorLines: broker.errorLines,
    crash: null,
    rss: { start: 0, peak: 0, end: 0, settled: 0 },
    rssTimeline: [],
    samples: [],
    healthy: { roundTrips: 0, maxLatencyMs: 0, p99LatencyMs: 0, failures: [] },
    retained: 0,
    state: { sessions: 0, subscriptions: 0, topics: 0, liveConnections: 0, queued: 0, inflight: 0 },
    lastStreams: [],
    storeRecords: {},
  };
  let healthy: HealthyPair | null = null;
  try {
    healthy = await HealthyPair.start(broker.port, o.shards, o.roundTripTimeoutMs);
    const before = await broker.metrics();
    result.rss.start = rssOf(broker.pid);
    result.rss.peak = result.rss.start;
    const t0 = performance.now();
    const deadline = o.seconds > 0 ? t0 + o.seconds * 1000 : Number.POSITIVE_INFINITY;
    let ticks = 0;
    const sampler = setInterval(() => {
      const r = rssOf(broker.pid);
      if (r > result.rss.peak) result.rss.peak = r;
      if (++ticks % 4 === 0) result.rssTimeline.push([ticks / 4, result.frames, r]);
    }, 250);
    // Broker state once a second (one scrape at a time; a slow scrape skips a tick).
    let scraping = false;
    const sample = async (): Promise<void> => {
      const at = (performance.now() - t0) / 1000;
      const frames = result.frames;
      const text = await broker.scrape();
      result.samples.push(parseSample(text, at, frames, rssParts(broker.pid)));
    };
    const stateSampler = setInterval(() => {
      if (scraping || broker.exit !== null) return;
      scraping = true;
      sample()
        .catch(() => {})
        .finally(() => {
          scraping = false;
        });
    }, 1000);
    let lastProgress = t0;
    // Each stream gets its own seed drawn from the run's PRNG: `--seed S` replays all of them,
    // and a stream seed alone replays one stream.
    const master = new Rng(o.seed);
    const inFlight = new Map<number, string>();
    let stop = false;
    const failed = (): boolean => broker.exit !== null || (healthy?.failures.length ?? 0) > 0;
    const worker = async (w: number): Promise<void> => {
      while (!stop) {
        if (result.frames >= o.frames || performance.now() > deadline || failed()) {
          stop = true;
          return;
        }
        const streamSeed = master.u32();
        const rng = new Rng(streamSeed);
        const s = fuzzStream(rng, { clientIds: 400, soup: 0.3, rate: o.rate, maxFrames: o.maxFrames });
        inFlight.set(
          w,
          `stream seed ${streamSeed} (v${s.v5 ? 5 : 4}, ${s.frames.length} frames, ${s.mutations.join(',') || 'valid'})`,
        );
        result.frames += s.frames.length;
        result.streams++;
        const sent = await runStream(broker.port, s, rng);
        result.bytes += sent;
        const now = performance.now();
        if (o.progress && now - lastProgress > 5000) {
          lastProgress = now;
          const secs = (now - t0) / 1000;
          o.progress(
            `${result.frames} frames in ${secs.toFixed(0)} s (${Math.round(result.frames / secs)}/s), RSS ${(rssOf(broker.pid) / 2 ** 20).toFixed(0)} MiB, healthy round trips ${healthy?.roundTrips}, max ${healthy?.maxLatencyMs.toFixed(0)} ms`,
          );
        }
      }
    };
    const workers = Promise.all(Array.from({ length: o.connections }, (_, w) => worker(w)));
    o.onStart?.(broker.pid);
    await workers;
    result.seconds = (performance.now() - t0) / 1000;
    clearInterval(sampler);
    clearInterval(stateSampler);
    if (failed()) result.lastStreams = [...inFlight.values()];
    // After the storm: the broker must still serve (a last healthy round trip) and settle.
    if (broker.exit === null) {
      const n = healthy.roundTrips;
      const until = Date.now() + o.roundTripTimeoutMs;
      while (healthy.roundTrips < n + 2 && healthy.failures.length === 0 && Date.now() < until)
        await sleep(20);
      if (healthy.roundTrips < n + 2 && healthy.failures.length === 0)
        healthy.failures.push('no healthy round trip after the fuzzing stopped');
      result.rss.end = rssOf(broker.pid);
      // Idle (only the healthy pair) for a while: what V8 and malloc give back once the load stops.
      if (o.settleSeconds > 0) {
        await sleep(o.settleSeconds * 1000);
        result.rss.settled = rssOf(broker.pid);
        await sample().catch(() => {});
      }
      if (result.rss.end > result.rss.peak) result.rss.peak = result.rss.end;
      const after = await broker.metrics();
      const delta = (name: string): number => (after.get(name) ?? 0) - (before.get(name) ?? 0);
      result.brokerPackets = delta('emqx_packets_received');
      result.malformed = delta('emqx_ts_malformed_packets_total');
      result.protocolErrors = delta('emqx_ts_protocol_errors_total');
      result.restarts = delta('emqx_ts_shard_restarts_total');
      result.threadMessageErrors = delta('emqx_ts_thread_message_errors_total');
      result.retained = after.get('emqx_retained_count') ?? 0;
      result.state = {
        sessions: after.get('emqx_sessions_count') ?? 0,
        subscriptions: after.get('emqx_subscriptions_count') ?? 0,
        topics: after.get('emqx_topics_count') ?? 0,
        liveConnections: after.get('emqx_live_connections_count') ?? 0,
        ...(await broker.queued()),
      };
    }
  } finally {
    result.crash = broker.exit;
    if (healthy) {
      await healthy.stop();
      result.healthy = {
        roundTrips: healthy.roundTrips,
        maxLatencyMs: healthy.maxLatencyMs,
        p99LatencyMs: healthy.p99LatencyMs,
        failures: healthy.failures,
      };
    }
    // Shard restarts are also logged: count them even if the metrics could not be read.
    for (const [k, v] of broker.errorLines)
      if (k.startsWith('shard exited')) result.restarts = Math.max(result.restarts, v.count);
    if (result.crash)
      result.errorLines.set(`process ${result.crash}`, { count: 1, example: broker.tail.join('\n') });
    await broker.stop();
    result.storeRecords = broker.storeRecords;
  }
  return result;
}

const mib = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;

/**
 * RSS growth over the first and the second half of the run (by frames written). Bounded state
 * (sessions up to mqtt.max_mqueue_len, retained topics, V8 heap reaching its working size)
 * fills early and then stays; a leak keeps growing in the second half as in the first.
 */
export function rssHalves(r: FuzzResult): { first: number; second: number } {
  const mid = r.rssTimeline.find(([, frames]) => frames >= r.frames / 2)?.[2] ?? r.rss.end;
  return { first: mid - r.rss.start, second: r.rss.end - mid };
}

/** The figures of a run, as printed by `npm run fuzz` and in a failing test's message. */
export function report(r: FuzzResult): string {
  const lines = [
    `seed ${r.seed}: ${r.frames} frames (${r.streams} connections, ${mib(r.bytes)}) in ${r.seconds.toFixed(1)} s = ${Math.round(r.frames / Math.max(r.seconds, 0.001))} frames/s`,
    `broker: ${r.brokerPackets} packets dispatched, ${r.malformed} malformed, ${r.protocolErrors} protocol errors; at the end ${r.state.sessions} sessions (${r.state.queued} messages queued, ${r.state.inflight} inflight), ${r.state.subscriptions} subscriptions, ${r.state.topics} filters, ${r.retained} retained, ${r.state.liveConnections} live connections`,
    `crash: ${r.crash ?? 'none'}; shard restarts: ${r.restarts}; thread message errors: ${r.threadMessageErrors}`,
    `RSS start ${mib(r.rss.start)}, peak ${mib(r.rss.peak)}, end ${mib(r.rss.end)} (growth over the first half ${mib(rssHalves(r).first)}, second half ${mib(rssHalves(r).second)})${r.rss.settled ? `, ${mib(r.rss.settled)} after the idle settle` : ''}`,
    sampleTable(r.samples),
    `durable store after the stop: ${
      Object.entries(r.storeRecords)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ') || 'none'
    }`,
    `healthy client: ${r.healthy.roundTrips} QoS 1 round trips, p99 ${r.healthy.p99LatencyMs.toFixed(1)} ms, max ${r.healthy.maxLatencyMs.toFixed(1)} ms, failures: ${r.healthy.failures.length ? r.healthy.failures.join('; ') : 'none'}`,
  ];
  if (r.errorLines.size > 0) {
    lines.push('error log lines:');
    for (const [k, v] of r.errorLines) lines.push(`  ${v.count} × ${k}\n    ${v.example}`);
  }
  if (r.lastStreams.length > 0)
    lines.push('streams in flight at the failure:', ...r.lastStreams.map((s) => `  ${s}`));
  return lines.join('\n');
}

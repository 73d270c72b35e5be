import { EventEmitter } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { ClusterThread } from '../cluster/thread.js';
import type { Config } from '../config/schema.js';
import { fdutil } from '../listener/fdutil.js';
import type { Logger } from '../log.js';
import { Counter, type Counters } from '../metrics/counters.js';
import { RUNNING_TS } from '../paths.js';
import type { TopicIndex } from '../routing/topic-index.js';
import type { ClusterInit, ListenerFd, MainToShard, ShardInit, ShardToMain } from '../threads/messages.js';

class ShardHandle {
  worker: Worker | null = null;
  generation = 0;
  ready = false;
  /** Accepting on the listening socket (answered `listening`) */
  listening = false;
  /** Waiting for `reconfigured`, in the order the `reconfigure` messages were posted */
  reconfiguring: (() => void)[] = [];
  startedAt = 0;
  /** Recorded at start: Node reports -1 once the worker has exited */
  threadId = -1;
  /**
   * Dups of the listening socket posted to this shard's current thread. Main closes them when
   * the thread exits: a thread that dies (crash, OOM) cannot, and fds outlive threads.
   */
  listenFds: number[] = [];
  constructor(readonly id: number) {}
}

export interface SupervisorEvents {
  message: [shard: number, msg: ShardToMain];
  fatal: [reason: string];
}

/**
 * Owns the shard worker threads: starts them, wires a MessagePort between every pair, hands
 * them sockets, and restarts a shard that dies (exponential backoff, restart-intensity limit
 * like an OTP supervisor; past the limit the broker gives up and exits so that the pod restarts).
 */
export class Supervisor extends EventEmitter<SupervisorEvents> {
  readonly shards: ShardHandle[];
  private stopping = false;
  private restarts: number[] = [];
  /** Main's own dups of the listening sockets (one per listener): every shard (and a restarted one) gets dups of them */
  private listenFds: ListenerFd[] = [];
  private onListening: ((err?: Error) => void) | null = null;
  /** The cluster thread, when cluster.discovery is not none (src/cluster/thread.ts) */
  readonly cluster: ClusterThread | null = null;

  constructor(
    private readonly config: Config,
    count: number,
    private readonly index: TopicIndex,
    private readonly sharedIndex: TopicIndex,
    private readonly counters: Counters,
    private readonly log: Logger,
    /** Routes of other nodes; null without a cluster */
    remoteIndex: TopicIndex | null = null,
  ) {
    super();
    this.shards = Array.from({ length: count }, (_, i) => new ShardHandle(i));
    if (remoteIndex) {
      this.cluster = new ClusterThread(
        config,
        index,
        remoteIndex,
        counters,
        count + 1,
        count,
        {
          spawn: (entry, init, transfer) => this.createWorker(entry, init, transfer),
          shardPorts: () => this.clusterPorts(),
          onFatal: (reason) => this.emit('fatal', reason),
        },
        log,
      );
    }
  }

  /** Starts every shard, then the cluster thread; resolves when all report ready. */
  async start(): Promise<void> {
    applyHeapGrowing(this.config['node.heap_growing_percent']);
    applyMemoryReducer(this.config['node.memory_reducer']);
    applyMarkingStart(this.config['node.gc_marking_start_percent']);
    await Promise.all(this.shards.map((s) => this.spawn(s)));
    await this.cluster?.start();
  }

  /** A new channel between the (re)starting cluster thread and every running shard. */
  private clusterPorts(): (MessagePort | null)[] {
    return this.shards.map((s) => {
      if (!s.worker) return null;
      const ch = new MessageChannel();
      this.post(s, { t: 'cluster', port: ch.port1 }, [ch.port1]);
      return ch.port2;
    });
  }

  get allReady(): boolean {
    return this.shards.every((s) => s.ready);
  }

  /**
   * From compiled JS the worker runs dist/workers/shard.js. From TypeScript (tests) it runs the
   * .ts source through tsx, unless EMQX_TS_WORKERS=dist asks for the compiled worker, which
   * starts several times faster (`npm test` builds first and sets it).
   */
  private createWorker(
    entry: 'shard' | 'cluster',
    init: ShardInit | ClusterInit,
    transfer: MessagePort[],
  ): Worker {
    // V8 grows a shard's young generation during a connection storm (or heavy QoS 1/2 traffic)
    // and gives it back only slowly; a cap trades CPU per message for idle memory
    // (docs/PERFORMANCE.md). Off by default.
    const youngMb = this.config['node.shard_young_generation_mb'];
    const resourceLimits =
      youngMb > 0 && entry === 'shard' ? { maxYoungGenerationSizeMb: youngMb } : undefined;
    const options = { workerData: init, transferList: transfer, resourceLimits };
    if (!RUNNING_TS) return new Worker(new URL(`../../workers/${entry}.js`, import.meta.url), options);
    if (process.env.EMQX_TS_WORKERS === 'dist')
      return new Worker(new URL(`../../dist/workers/${entry}.js`, import.meta.url), options);
    return new Worker(new URL('../../workers/tsx-entry.mjs', import.meta.url), {
      ...options,
      workerData: { ...init, entry: new URL(`../../workers/${entry}.ts`, import.meta.url).href },
    });
  }

  private spawn(shard: ShardHandle): Promise<void> {
    shard.generation++;
    shard.ready = false;
    const peers: (MessagePort | null)[] = this.shards.map(() => null);
    const transfer: MessagePort[] = [];
    for (const other of this.shards) {
      if (other === shard || !other.worker) continue;
      const ch = new MessageChannel();
      peers[other.id] = ch.port1;
      transfer.push(ch.port1);
      this.post(other, { t: 'peer', shard: shard.id, port: ch.port2 }, [ch.port2]);
    }
    const init: ShardInit = {
      shardId: shard.id,
      shardCount: this.shards.length,
      generation: shard.generation,
      config: this.config,
      index: this.index.shared,
      sharedIndex: this.sharedIndex.shared,
      counters: this.counters.shared,
      peers,
    };
    if (this.cluster) {
      init.remoteIndex = this.cluster.remoteIndex.shared;
      init.cluster = this.cluster.portForShard(shard.id);
      if (init.cluster) transfer.push(init.cluster);
    }
    const worker = this.createWorker('shard', init, transfer);
    shard.worker = worker;
    shard.threadId = worker.threadId;
    shard.startedAt = Date.now();
    const generation = shard.generation;

    return new Promise<void>((resolve) => {
      worker.on('message', (msg: ShardToMain) => {
        if (msg.t === 'ready') {
          shard.ready = true;
          this.log.info({ shard: shard.id, generation, ms: Date.now() - shard.startedAt }, 'shard ready');
          // A restarted shard accepts again (the first start waits for listen()).
          if (this.listenFds.length > 0 && !this.stopping) this.postListen(shard);
          resolve();
          return;
        }
        if (msg.t === 'reconfigured') {
          shard.reconfiguring.shift()?.();
          return;
        }
        if (msg.t === 'listening') {
          shard.listening = true;
          if (this.onListening && this.shards.every((s) => s.listening)) this.onListening();
          return;
        }
        if (msg.t === 'listenFailed') {
          // A dup of a listening socket that cannot be listened on: no shard will accept either.
          const err = new Error(`shard ${shard.id} cannot accept: ${msg.error}`);
          if (this.onListening) this.onListening(err);
          else this.emit('fatal', err.message);
          return;
        }
        this.emit('message', shard.id, msg);
      });
      worker.on('error', (err) => {
        this.log.error({ shard: shard.id, generation, err }, 'shard crashed');
      });
      worker.on('exit', (code) => {
        if (shard.worker === worker) shard.worker = null;
        for (const fd of shard.listenFds.splice(0)) {
          try {
            fdutil.close(fd);
          } catch (err) {
            this.log.warn({ err, fd }, "closing a dead shard's listening-socket dup failed");
          }
        }
        shard.ready = false;
        shard.listening = false;
        // A dead shard answers nothing; its restart starts with the current configuration.
        for (const done of shard.reconfiguring.splice(0)) done();
        if (this.stopping) return;
        this.onShardDied(shard, code);
        resolve();
      });
    });
  }

  private onShardDied(shard: ShardHandle, code: number): void {
    this.counters.row[Counter.shardRestarts]++;
    // A shard that died inside a subscribe must not leave the index's writer lock held.
    if (this.index.releaseLockHeldBy(shard.threadId))
      this.log.warn({ shard: shard.id }, 'released topic-index lock held by dead shard');
    if (this.sharedIndex.releaseLockHeldBy(shard.threadId)) {
      this.log.warn({ shard: shard.id }, 'released shared-index lock held by dead shard');
    }
    // Its subscriptions went with it: stop routing to it, and to its shared-group members.
    // Durable: not its bits. Its persistent sessions come back with its restart, and a QoS 1/2
    // message published meanwhile must reach them: peers keep routing to it, into their outbox
    // (its port is gone), and re-send that to the restarted shard, which clears the bits its
    // restored sessions do not need (Shard.restore). Cleared here, such a message matched no
    // subscriber and was acked, then lost for them. The same for the shared groups it owns:
    // their members on other shards rejoin the restarted owner, which then gets what was
    // published to them meanwhile, and clears the bits no group needs once they have rejoined.
    if (this.config['durability.mode'] === 'none') {
      this.index.clearShardEverywhere(shard.id);
      this.sharedIndex.clearShardEverywhere(shard.id);
    }
    for (const other of this.shards)
      if (other !== shard && other.worker) this.post(other, { t: 'shardDown', shard: shard.id });
    this.counters.resetRow(shard.id + 1, true);
    const now = Date.now();
    const period = this.config['node.shard_restart_period'] * 1000;
    this.restarts = this.restarts.filter((t) => now - t < period);
    this.restarts.push(now);
    if (this.restarts.length > this.config['node.shard_restart_intensity']) {
      const reason = `${this.restarts.length} shard restarts within ${period / 1000}s`;
      this.log.fatal({ shard: shard.id, code }, `restart intensity exceeded: ${reason}`);
      this.emit('fatal', reason);
      return;
    }
    const delay = Math.min(5000, 50 * 2 ** (this.restarts.length - 1));
    this.log.error({ shard: shard.id, code, restartInMs: delay }, 'shard exited; restarting');
    setTimeout(() => {
      if (!this.stopping) void this.spawn(shard);
    }, delay).unref();
  }

  /**
   * Shares the listening sockets with every shard: each accepts on its own dups of the fds (which
   * the supervisor now owns). Resolves when all of them accept.
   */
  listen(fds: ListenerFd[]): Promise<void> {
    this.listenFds = fds;
    return new Promise((resolve, reject) => {
      this.onListening = (err) => {
        this.onListening = null;
        if (err) reject(err);
        else resolve();
      };
      for (const s of this.shards) if (s.ready) this.postListen(s);
    });
  }

  /** Posts a new configuration to every running shard and the cluster thread; resolves once all have applied it. */
  reconfigure(config: Config): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const s of this.shards) {
      if (!s.worker || !s.ready) continue;
      waits.push(new Promise<void>((resolve) => s.reconfiguring.push(resolve)));
      this.post(s, { t: 'reconfigure', config });
    }
    if (this.cluster) waits.push(this.cluster.reconfigure(config));
    return Promise.all(waits).then(() => undefined);
  }

  /** Every live shard accepts (false while one is restarting: it queues in the backlog). */
  get accepting(): boolean {
    return this.listenFds.length > 0 && this.shards.every((s) => s.listening);
  }

  private postListen(shard: ShardHandle): void {
    const listeners: ListenerFd[] = [];
    try {
      for (const l of this.listenFds) {
        const fd = fdutil.dup(l.fd);
        shard.listenFds.push(fd);
        listeners.push({ id: l.id, fd });
      }
    } catch (err) {
      this.emit('fatal', `cannot share the listening socket: ${(err as Error).message}`);
      return;
    }
    this.post(shard, { t: 'listen', listeners });
  }

  post(shard: ShardHandle | number, msg: MainToShard, transfer?: MessagePort[]): void {
    const s = typeof shard === 'number' ? this.shards[shard] : shard;
    s.worker?.postMessage(msg, transfer);
  }

  /**
   * Asks every shard to close its clients (spread over `drainMs` when > 0), then stops the
   * threads; a shard that has not finished `timeoutMs` after the drain is terminated.
   */
  async stop(timeoutMs = 5000, drainMs = 0): Promise<void> {
    this.stopping = true;
    await this.cluster?.stop();
    const live = this.shards.filter((s) => s.worker);
    await Promise.all(
      live.map(
        (s) =>
          new Promise<void>((resolve) => {
            const w = s.worker!;
            const timer = setTimeout(() => void w.terminate().then(() => resolve()), timeoutMs + drainMs);
            w.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            w.on('message', (m: ShardToMain) => {
              if (m.t === 'shutdownDone') void w.terminate();
            });
            w.postMessage({ t: 'shutdown', drainMs } satisfies MainToShard);
          }),
      ),
    );
    for (const l of this.listenFds.splice(0)) fdutil.close(l.fd);
  }
}

/**
 * V8's heap growing factor, for every isolate of the process (V8 flags are process-wide; set
 * before the workers start, and read by each heap at every full GC). V8 picks a factor between
 * 1.1 and 4 from GC and allocation speed on a machine with a large heap limit: under a
 * connection storm it picks the top one, so a shard with ~40 MiB live reserved 140-160 MiB and
 * kept it (the 1M-frame fuzz: RSS 140 → 584 MiB). 1.3 held it at ~85 MiB (docs/RELIABILITY.md).
 * 0 leaves V8's own choice.
 */
function applyHeapGrowing(percent: number): void {
  if (percent > 0) setFlagsFromString(`--heap-growing-percent=${percent}`);
}

/**
 * V8's memory reducer, off unless `node.memory_reducer` (process-wide flag, set before the first
 * worker starts; each heap reads it when it is created). When a thread goes idle it runs
 * memory-reducing mark-compacts that shrink the young generation and set a tight old-generation
 * limit; a shard that then takes a burst of QoS 1/2 traffic (thousands of held messages alive
 * at each scavenge) promotes them, reaches that limit within two scavenges, and stays for
 * seconds in a regime of ~10 mark-compacts a second, about twice the CPU per message
 * (docs/PERFORMANCE.md, cluster, "Sixth stop"). Without it the heap keeps the size its load
 * gave it, as V8's regular GCs size it.
 */
function applyMemoryReducer(on: boolean): void {
  if (!on) setFlagsFromString('--no-memory-reducer');
}

/**
 * When a heap starts incremental marking, `node.gc_marking_start_percent` (process-wide flags,
 * set before the first worker). V8's own rule (as read from its traces) starts it as soon as the old generation's room
 * left (limit − size) is less than the young generation's capacity. After a full GC the limit
 * is live + max(live × heap_growing_percent, 8 MiB) + the young generation's capacity, so with
 * `node.heap_growing_percent` at 30 and a young generation grown to its 16 MiB semi-spaces (a
 * busy QoS 1 shard) the room is 24 MiB, under the 32 MiB of the two semi-spaces, and marking
 * starts again right after every mark-compact: ~20 a second whatever is promoted (fan-in, in
 * `none` and `sync` alike; docs/PERFORMANCE.md, Durability, fourth pass). With a percent, it
 * starts once the old generation is that full (soft trigger: from a task), and at once half-way
 * from there to the limit (hard trigger). The limit itself is unchanged.
 */
function applyMarkingStart(percent: number): void {
  if (percent <= 0) return;
  setFlagsFromString(`--incremental-marking-soft-trigger=${percent}`);
  setFlagsFromString(`--incremental-marking-hard-trigger=${Math.floor((percent + 100) / 2)}`);
}

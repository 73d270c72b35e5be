import { randomInt } from 'node:crypto';
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { Counters } from '../metrics/counters.js';
import type { TopicIndex } from '../routing/topic-index.js';
import type { ClusterInit, ClusterMember, ClusterToMain, MainToCluster } from '../threads/messages.js';
import { MAX_PEERS } from './peers.js';
import type { ClusterStateToMain, MainToClusterState } from './state-messages.js';

/** What the handle needs from the shard supervisor. */
export interface ClusterHost {
  spawn(entry: 'cluster', init: ClusterInit, transfer: MessagePort[]): Worker;
  /** Posts the cluster end of a new channel to every running shard; returns the other ends */
  shardPorts(): (MessagePort | null)[];
  onFatal(reason: string): void;
}

/**
 * Main's handle on the cluster thread: starts it, restarts it when it dies (backoff 100 ms
 * doubling to 5 s, like a shard), wires a port between it and every shard, and keeps the last
 * membership it reported (REST /nodes, metrics) so that reading it needs no round trip.
 */
export class ClusterThread {
  worker: Worker | null = null;
  generation = 0;
  /**
   * The first cluster thread's first join round is over (ClusterToMain `synced`): the node
   * holds its peers' routes. Stays true across thread restarts (its clients are served on).
   */
  synced = false;
  /** One per process: peers tell a restarted cluster thread from a restarted node by it */
  private readonly boot = BigInt(Date.now()) * 1000n + BigInt(randomInt(1000));
  ready = false;
  port = 0;
  restarts = 0;
  members: ClusterMember[] = [];
  private stopping = false;
  private threadId = -1;
  private firstStart: ((err?: Error) => void) | null = null;
  /** Waiting for `reconfigured`, in the order posted */
  private reconfigured: (() => void)[] = [];
  /** Cluster II (retained replication): its messages, and the thread's exit */
  onState: ((m: ClusterStateToMain) => void) | null = null;
  onExit: (() => void) | null = null;

  constructor(
    private readonly config: Config,
    private readonly index: TopicIndex,
    readonly remoteIndex: TopicIndex,
    private readonly counters: Counters,
    private readonly counterRow: number,
    private readonly shardCount: number,
    private readonly host: ClusterHost,
    private readonly log: Logger,
  ) {}

  /** Resolves once the cluster service listens (rejects if it cannot). */
  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.firstStart = (err) => {
        this.firstStart = null;
        if (err) reject(err);
        else resolve();
      };
      this.spawn();
    });
  }

  /** A new channel to a (re)started shard: returns the shard's end, posts the other one here. */
  portForShard(shard: number): MessagePort | null {
    if (!this.worker) return null;
    const ch = new MessageChannel();
    this.post({ t: 'shard', shard, port: ch.port2 }, [ch.port2]);
    return ch.port1;
  }

  /** Posts a Cluster II message; false when no thread is running to take it. */
  postState(m: MainToClusterState): boolean {
    if (!this.worker || !this.ready) return false;
    this.post(m);
    return true;
  }

  private post(m: MainToCluster, transfer?: MessagePort[]): void {
    this.worker?.postMessage(m, transfer);
  }

  private spawn(): void {
    this.generation++;
    this.ready = false;
    const shards = this.host.shardPorts();
    const init: ClusterInit = {
      generation: this.generation,
      boot: this.boot,
      // A restart listens on the port the first thread bound (cluster.port 0 = ephemeral), so
      // that peers who know this node's address reach the new thread.
      config: this.port > 0 ? { ...this.config, 'cluster.port': this.port } : this.config,
      index: this.index.shared,
      remoteIndex: this.remoteIndex.shared,
      counters: this.counters.shared,
      counterRow: this.counterRow,
      shardCount: this.shardCount,
      shards,
    };
    const worker = this.host.spawn(
      'cluster',
      init,
      shards.filter((p): p is MessagePort => p !== null),
    );
    this.worker = worker;
    this.threadId = worker.threadId;
    worker.on('message', (m: ClusterToMain) => {
      if (m.t === 'ready') {
        this.ready = true;
        this.port = m.port;
        this.log.info({ port: m.port, generation: m.generation }, 'cluster thread ready');
        this.firstStart?.();
      } else if (m.t === 'synced') {
        if (!this.synced) this.log.info({ peers: m.peers }, 'cluster synced');
        this.synced = true;
      } else if (m.t === 'listenFailed') {
        const reason = `cluster service cannot listen: ${m.error}`;
        if (this.firstStart) this.firstStart(new Error(reason));
        else this.host.onFatal(reason);
      } else if (m.t === 'members') this.members = m.members;
      else if (m.t === 'reconfigured') this.reconfigured.shift()?.();
      else if (m.t === 'shutdownDone') void worker.terminate();
      else this.onState?.(m);
    });
    worker.on('error', (err) => this.log.error({ err }, 'cluster thread crashed'));
    worker.on('exit', (code) => {
      if (this.worker === worker) this.worker = null;
      this.ready = false;
      // A reload it did not answer: the restarted thread starts with main's (reloaded) config.
      for (const done of this.reconfigured.splice(0)) done();
      this.onExit?.();
      // What it wrote to the remote index goes with it: the new thread rejoins and resyncs.
      this.remoteIndex.releaseLockHeldBy(this.threadId);
      this.index.releaseLockHeldBy(this.threadId); // its reader slot in the local index

      for (let slot = 0; slot < MAX_PEERS; slot++) this.remoteIndex.clearShardEverywhere(slot);
      this.members = this.members.filter((m) => m.self);
      if (this.stopping || this.firstStart) return;
      this.restarts++;
      const delay = Math.min(5000, 100 * 2 ** Math.min(6, this.restarts - 1));
      this.log.error({ code, restartInMs: delay }, 'cluster thread exited; restarting');
      setTimeout(() => {
        if (!this.stopping) this.spawn();
      }, delay).unref();
    });
  }

  /**
   * Posts a reloaded configuration to the thread; resolves once it applied it (or at once when
   * no thread runs: the next one starts with main's config, which reload mutated in place).
   */
  reconfigure(config: Config): Promise<void> {
    if (!this.worker) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.reconfigured.push(resolve);
      this.post({ t: 'reconfigure', config });
    });
  }

  /** Leaves the cluster (peers are told) and ends the thread; bounded by `timeoutMs`. */
  async stop(timeoutMs = 3000): Promise<void> {
    this.stopping = true;
    const w = this.worker;
    if (!w) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => void w.terminate().then(() => resolve()), timeoutMs);
      w.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      this.post({ t: 'shutdown' });
    });
  }

  crash(): void {
    void this.worker?.terminate();
  }
}

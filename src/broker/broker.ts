import { once } from 'node:events';
import type { Server as HttpServer } from 'node:http';
import { createServer } from 'node:net';
import type { Registry } from 'prom-client';
import { RetainedReplica } from '../cluster/retained-merge.js';
import { type ConfigInput, type LoadSources, loadConfig, shardCount } from '../config/load.js';
import { type ConfigDiff, diffConfig } from '../config/reload.js';
import type { Config } from '../config/schema.js';
import { checkHooksAtStart, type HookModuleRef, hookModulesOption } from '../hooks/main.js';
import { MainSecurity } from '../hooks/main-security.js';
import { apiHandler } from '../http/api.js';
import { type ApiCredentials, loadOrCreateCredentials } from '../http/credentials.js';
import { metricsHandler } from '../http/metrics-server.js';
import { boundPort, closeServer, listen } from '../http/util.js';
import { fdutil, handleFd } from '../listener/fdutil.js';
import { enabledListeners } from '../listener/listeners.js';
import { createLogger, type Logger } from '../log.js';
import { Counter, Counters, sampleMemory } from '../metrics/counters.js';
import { StatsTracker } from '../metrics/emqx.js';
import { createRegistry } from '../metrics/prometheus.js';
import { type RetainedChunk, RetainedPager } from '../retained/pager.js';
import { RetainedStore } from '../retained/store.js';
import { MatchResult, TopicIndex } from '../routing/topic-index.js';
import { ensureDataDir } from '../storage/open.js';
import { RetainedDurability } from '../storage/retained.js';
import { SysPublisher } from '../sys/publisher.js';
import type {
  BrokerPublish,
  ClusterMember,
  ListenerFd,
  RetainedRecord,
  ShardToMain,
} from '../threads/messages.js';
import { VERSION } from '../version.js';
import { ShardQueries } from './queries.js';
import { Supervisor } from './supervisor.js';
import type { BrokerView, Readiness } from './view.js';

export interface BrokerOptions {
  /** Programmatic options (nested `{listener: {port: 0}}` or flat `{'listener.port': 0}`) */
  config?: ConfigInput;
  argv?: readonly string[];
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
  /**
   * Called when the shard supervisor gives up (restart intensity exceeded). The default stops
   * the broker and exits the process with code 1 so that the pod restarts; embedders and
   * tests may handle it themselves.
   */
  onFatal?: (reason: string, broker: Broker) => void;
  /**
   * Hook modules loaded in every shard, after `hooks.modules` (src/hooks; README "Hooks"). Module
   * paths or URLs, not objects: hooks run in the shard worker threads.
   */
  hooks?: readonly HookModuleRef[];
}

/** What /readyz reports. */
export type { Readiness } from './view.js';

/**
 * The main thread: binds the MQTT port and shares it with the shard workers, which accept and
 * own the connections; it owns the retained-message store, the shard supervisor and the
 * operations endpoints. It never touches a connection's bytes.
 */
export class Broker implements BrokerView {
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly index: TopicIndex;
  readonly sharedIndex: TopicIndex;
  readonly retained = new RetainedStore();
  /** Retained messages in the durable store (storage/retained.ts) */
  private readonly retainedDurability: RetainedDurability;
  /** Retained matches sent to shards in chunks, paced by the subscriber (retained/pager.ts) */
  readonly retainedPager = new RetainedPager(
    this.retained,
    () => this.config['retainer.flow_control.batch_read_number'],
  );
  readonly supervisor: Supervisor;
  /** Banned clients and built-in users, posted to the shards (src/hooks/main-security.ts) */
  readonly security: MainSecurity;
  /** Bound port per listener id (the listening sockets themselves live in the shards' acceptors) */
  private readonly ports: Record<string, number> = {};
  private stopped: Promise<void> | null = null;
  // Operating it (metrics, $SYS, health, REST API, reload): see docs/ARCHITECTURE.md.
  readonly startedAt = Date.now();
  readonly version = VERSION;
  readonly sysdescr = 'emqx-ts';
  readonly stats: StatsTracker;
  readonly registry: Registry;
  readonly queries: ShardQueries;
  credentials: ApiCredentials;
  private readonly sys: SysPublisher;
  private readonly sources: LoadSources;
  private metricsServer: HttpServer | null = null;
  private apiServer: HttpServer | null = null;
  private statsTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  private readonly scratch = new MatchResult(8);
  /** Cluster: the retained store replicated on every node (src/cluster/retained-merge.ts) */
  private readonly retainedReplica: RetainedReplica | null = null;

  private constructor(opts: BrokerOptions) {
    this.sources = { argv: opts.argv, env: opts.env, overrides: opts.config };
    if (opts.hooks?.length) this.sources.overrides = withHooks(opts.config, opts.hooks);
    this.config = loadConfig(this.sources);
    this.log = opts.logger ?? createLogger(this.config['log.level'], { thread: 'main' });
    ensureDataDir(this.config);
    this.credentials = loadOrCreateCredentials(this.config, this.log);
    const shards = shardCount(this.config);
    // Rows: main, one per shard, and the cluster thread's last.
    this.counters = Counters.create(shards + 2);
    this.index = TopicIndex.create({
      maxNodes: this.config['node.topic_index_max_nodes'],
      arenaBytes: this.config['node.topic_index_arena_bytes'],
    });
    // Shared-subscription filters are far fewer than plain ones: a smaller reservation.
    this.sharedIndex = TopicIndex.create({ maxNodes: 1 << 16, arenaBytes: 4 << 20 });
    this.supervisor = new Supervisor(
      this.config,
      shards,
      this.index,
      this.sharedIndex,
      this.counters,
      this.log,
      // Routes of other nodes (written by the cluster thread), when clustered.
      this.config['cluster.discovery'] === 'none'
        ? null
        : TopicIndex.create({ maxNodes: 1 << 18, arenaBytes: 8 << 20 }),
    );
    this.supervisor.on('message', (shard, msg) => this.onShardMessage(shard, msg));
    this.security = new MainSecurity(this.config, (msg, shard) => {
      for (const s of this.supervisor.shards)
        if (shard === undefined || s.id === shard) this.supervisor.post(s, { t: 'security', msg });
    });
    const cluster = this.supervisor.cluster;
    if (cluster) {
      const cfg = this.config;
      const replica = new RetainedReplica(
        this.retained,
        cfg['node.name'],
        (rec) => this.storeRetained(rec),
        (m) => cluster.postState(m),
        (shard, reqId, code) => this.supervisor.post(shard, { t: 'retainAck', reqId, code }),
        this.counters.row,
      );
      this.retainedReplica = replica;
      cluster.onState = (m) => replica.onCluster(m);
      cluster.onExit = () => replica.onClusterExit();
    }
    const onFatal = opts.onFatal ?? (() => void this.stop().then(() => process.exit(1)));
    this.supervisor.on('fatal', (reason) => {
      this.log.fatal({ reason }, 'giving up');
      onFatal(reason, this);
    });
    this.stats = new StatsTracker(this.counters, this.index);
    this.registry = createRegistry({
      counters: this.counters,
      stats: this.stats,
      supervisor: this.supervisor,
      indexes: { topics: this.index, shared: this.sharedIndex },
    });
    this.queries = new ShardQueries(this.supervisor);
    this.sys = new SysPublisher(this);
    this.retainedDurability = new RetainedDurability(this.config, this.retained, this.counters, this.log);
  }

  static async start(opts: BrokerOptions = {}): Promise<Broker> {
    const broker = new Broker(opts);
    await checkHooksAtStart(broker.config, broker.log); // src/hooks: fail early, warn if anonymous
    broker.security.load();
    // The data dir is checked (and retained messages loaded) before any shard opens it.
    await broker.retainedDurability.open();
    await broker.supervisor.start();
    try {
      await broker.listen();
    } catch (err) {
      // Port in use, address not available…: stop the shards, then a clear error for the CLI.
      await broker.supervisor.stop();
      throw err;
    }
    broker.log.info(
      {
        host: enabledListeners(broker.config).find((l) => l.type === 'tcp')?.host,
        port: broker.port,
        listeners: broker.listenerPorts,
        shards: broker.supervisor.shards.length,
      },
      'listening',
    );
    await broker.startOperations();
    return broker;
  }

  /**
   * Binds the MQTT port here, then the shards accept on it: main keeps a dup of the socket for
   * shards that restart and closes its own handle before it could accept anything (the
   * 'listening' continuation runs before the event loop polls), so connections never touch
   * the main thread. Until every shard accepts, the kernel queues connections in the backlog.
   */
  private async listen(): Promise<void> {
    const specs = enabledListeners(this.config);
    if (specs.length === 0) throw new Error('no MQTT listener is enabled (listeners.*.default.enable)');
    const fds: ListenerFd[] = [];
    try {
      for (const spec of specs) {
        const server = createServer();
        server.listen({ port: spec.port, host: spec.host, backlog: this.config['listener.backlog'] });
        try {
          await once(server, 'listening'); // rejects on 'error'
        } catch (err) {
          throw new Error(
            `cannot listen on ${spec.host}:${spec.port} (MQTT ${spec.id}): ${(err as Error).message}`,
          );
        }
        const addr = server.address();
        this.ports[spec.id] = addr && typeof addr === 'object' ? addr.port : 0;
        fds.push({ id: spec.id, fd: fdutil.dup(handleFd(server)) });
        server.close();
      }
    } catch (err) {
      for (const l of fds) fdutil.close(l.fd);
      throw err;
    }
    await this.supervisor.listen(fds);
  }

  /** Bound port of each running listener, by id (`tcp:default`, `ssl:default`, `ws:default`, `wss:default`). */
  get listenerPorts(): Readonly<Record<string, number>> {
    return this.ports;
  }

  /** Metrics/health and REST API servers, $SYS messages, the 1 s stats sample (for the maxima). */
  private async startOperations(): Promise<void> {
    const cfg = this.config;
    try {
      this.metricsServer = await listen(
        metricsHandler(this),
        cfg['metrics.host'],
        cfg['metrics.port'],
        'metrics',
      );
      this.apiServer = await listen(apiHandler(this), cfg['api.host'], cfg['api.port'], 'REST API');
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.statsTimer = setInterval(() => {
      this.stats.sample();
      sampleMemory(this.counters.row);
    }, 1000).unref();
    this.sys.start();
    this.log.info(
      { metricsPort: this.metricsPort, apiPort: this.apiPort, apiKeyFile: this.credentials.file },
      'metrics, health and REST API listening',
    );
  }

  /** Bound port of the metrics/health server (useful with `metrics.port` 0). */
  get metricsPort(): number {
    return boundPort(this.metricsServer);
  }

  /** Bound port of the REST API (useful with `api.port` 0). */
  get apiPort(): number {
    return boundPort(this.apiServer);
  }

  /**
   * For /readyz: the MQTT listener is up, every shard is running, no shutdown has begun and,
   * clustered, the first join round is over — a node that takes clients before it holds its
   * peers' routes would ack their publishes to remote subscribers and route them nowhere.
   */
  readiness(): Readiness {
    const shards = this.supervisor.shards.map((s) => ({
      shard: s.id,
      running: s.ready && s.worker !== null,
    }));
    const listener = this.supervisor.accepting;
    const cluster = this.supervisor.cluster;
    const clusterSynced = cluster ? cluster.synced : undefined;
    const ready = listener && !this.stopping && shards.every((s) => s.running) && clusterSynced !== false;
    return { ready, listener, stopping: this.stopping, shards, clusterSynced };
  }

  /** Routes messages from the broker itself ($SYS, REST publish) through a running shard. */
  publishInternal(messages: BrokerPublish[]): boolean {
    const shard = this.supervisor.shards.find((s) => s.ready && s.worker);
    if (!shard || messages.length === 0) return false;
    this.supervisor.post(shard, { t: 'publish', messages });
    return true;
  }

  hasSubscribers(topic: string): boolean {
    return this.index.matchString(topic, this.scratch) > 0;
  }

  clusterMembers(): readonly ClusterMember[] {
    return this.supervisor.cluster?.members ?? [];
  }

  /**
   * SIGHUP: reads the configuration again from the same sources (file, environment, flags,
   * options), validates it (a ConfigError leaves everything as it was), applies what can change
   * at runtime (log level, MQTT limits, $SYS intervals, API key…) here and in every shard, and
   * reports options that only a restart changes.
   */
  async reload(): Promise<ConfigDiff> {
    const next = loadConfig(this.sources);
    const diff = diffConfig(this.config, next);
    const merged: Record<string, unknown> = { ...this.config };
    for (const key of diff.applied) merged[key] = next[key];
    // Checked before anything changes: a key without its secret fails the whole reload.
    const rotated =
      diff.applied.includes('api.key') || diff.applied.includes('api.secret')
        ? loadOrCreateCredentials(merged as Config, this.log)
        : null;
    Object.assign(this.config, merged);
    if (rotated) this.credentials = rotated;
    this.log.level = this.config['log.level'];
    this.sys.schedule();
    // Resolved once every shard has it: a connection made after reload() gets the new limits.
    await this.supervisor.reconfigure({ ...this.config });
    this.log.info({ applied: diff.applied, needRestart: diff.needRestart }, 'configuration reloaded');
    if (diff.needRestart.length > 0) {
      this.log.warn(
        { options: diff.needRestart },
        'these options change only with a restart; kept as they were',
      );
    }
    return diff;
  }

  /** The plain TCP listener's port (0 when it is disabled). */
  get port(): number {
    return this.ports['tcp:default'] ?? 0;
  }

  get shardCount(): number {
    return this.supervisor.shards.length;
  }

  /**
   * A message from a shard. A malformed one (a bug, or input that slipped past a check) is
   * logged, counted and dropped: nothing a shard posts may end the main thread.
   */
  private onShardMessage(shard: number, msg: ShardToMain): void {
    try {
      this.handleShardMessage(shard, msg);
    } catch (err) {
      this.counters.row[Counter.threadMessageErrors]++;
      this.log.error({ err, shard, t: (msg as { t?: unknown })?.t }, 'malformed message from shard dropped');
    }
  }

  private handleShardMessage(shard: number, msg: ShardToMain): void {
    switch (msg.t) {
      case 'retain': {
        const rec = msg.record;
        const replica = this.retainedReplica;
        replica?.stamp(rec);
        // Over a retainer limit: routed (the shard already did) but not stored.
        const stored = this.storeRetained(rec);
        const reqId = msg.reqId;
        // Cluster: the ack waits until every running peer has the update too.
        if (stored && replica?.replicate(rec, shard, reqId)) {
          this.retainedDurability.stored(rec, stored, null);
          break;
        }
        // Durable: written to the store; sync mode acks once it is committed.
        const ack = reqId > 0 ? () => this.supervisor.post(shard, { t: 'retainAck', reqId }) : null;
        this.retainedDurability.stored(rec, stored, ack);
        break;
      }
      case 'retainedLookup':
        this.postRetained(shard, msg.reqId, this.retainedPager.first(shard, msg.reqId, msg.filters));
        break;
      case 'retainedNext': {
        const chunk = this.retainedPager.next(shard, msg.reqId);
        if (chunk) this.postRetained(shard, msg.reqId, chunk);
        break;
      }
      case 'retainedCancel':
        this.retainedPager.cancel(shard, msg.reqId);
        break;
      case 'queryResult':
        this.queries.onResult(msg);
        break;
      case 'securityRequest':
        this.security.onShardRequest(shard);
        break;
      default:
        break;
    }
  }

  private postRetained(shard: number, reqId: number, chunk: RetainedChunk): void {
    this.supervisor.post(shard, { t: 'retained', reqId, records: chunk.records, more: chunk.more });
  }

  /** Stores (or deletes) a retained message within the retainer limits; false: refused. */
  private storeRetained(rec: RetainedRecord): boolean {
    const cfg = this.config;
    const ok = this.retained.set(
      rec,
      cfg['retainer.max_retained_messages'],
      cfg['retainer.max_payload_size'],
    );
    if (ok) {
      if (rec.payload.length > 0) this.counters.row[Counter.messagesRetained]++;
    } else this.retainedRefused(rec);
    this.counters.row[Counter.retainedCount] = this.retained.size;
    return ok;
  }

  /** Counts a retained message a limit refused; logs the first and then one per 1000. */
  private retainedRefused(rec: RetainedRecord): void {
    const n = this.counters.row[Counter.retainedRefused]++;
    if (n % 1000 !== 0) return;
    const cfg = this.config;
    this.log.warn(
      {
        topic: rec.topic.length > 256 ? `${rec.topic.slice(0, 256)}…` : rec.topic,
        payloadBytes: rec.payload.length,
        stored: this.retained.size,
        maxRetainedMessages: cfg['retainer.max_retained_messages'],
        maxPayloadSize: cfg['retainer.max_payload_size'],
        refusedSoFar: n + 1,
      },
      'retained message not stored: retainer limit (logged once per 1000)',
    );
  }

  /**
   * Graceful stop: not ready any more (/readyz 503), no new connections, shards close their
   * clients spread over `node.shutdown_drain_period`, threads end, then the HTTP servers close.
   */
  stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = (async () => {
        this.stopping = true;
        this.log.info({ drainS: this.config['node.shutdown_drain_period'] }, 'stopping');
        this.sys.stop();
        if (this.statsTimer) clearInterval(this.statsTimer);
        await this.supervisor.stop(undefined, this.config['node.shutdown_drain_period'] * 1000);
        await this.retainedDurability.close();
        this.queries.close();
        await this.security.close();
        await Promise.all([closeServer(this.metricsServer), closeServer(this.apiServer)]);
        this.log.info('stopped');
      })();
    }
    return this.stopped;
  }
}

/** `hooks` of BrokerOptions appended to the configured hooks.modules. */
function withHooks(config: ConfigInput | undefined, hooks: readonly HookModuleRef[]): ConfigInput {
  const flat = loadConfig({ overrides: config });
  const before = flat['hooks.modules'];
  const added = hookModulesOption(hooks);
  return { ...config, 'hooks.modules': before ? `${before},${added}` : added };
}

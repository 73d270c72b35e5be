/**
 * The Prometheus exposition, built on the main thread at scrape time. Nothing here runs per
 * message: every collector reads the shared counter rows (one sum per metric over the threads),
 * the shard supervisor (per-shard state, `eventLoopUtilization()` of each worker) or the topic
 * index's control block when Prometheus asks.
 */
import { readFileSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { collectDefaultMetrics, Gauge, type Metric, Counter as PromCounter, Registry } from 'prom-client';
import type { Supervisor } from '../broker/supervisor.js';
import type { TopicIndex, TopicIndexStats } from '../routing/topic-index.js';
import { DURABLE_COUNTERS } from '../storage/metrics.js';
import { Counter, type Counters, HANDOFF_BUCKETS, HANDOFF_BUCKETS_S } from './counters.js';
import { EMQX_METRICS, EMQX_STATS, promName, type StatsTracker } from './emqx.js';
import { listenerGauge, TRANSPORT_COUNTERS } from './transport-metrics.js';

export interface PrometheusSources {
  counters: Counters;
  stats: StatsTracker;
  supervisor: Supervisor;
  /** The shared-memory indexes, read at scrape time (their control blocks) */
  indexes?: { topics: TopicIndex; shared: TopicIndex };
}

/**
 * Usage of the topic indexes, label `index` = topics | shared: live nodes and arena bytes (they
 * return to the baseline when filters are unsubscribed), high-water marks and capacities.
 */
function topicIndexGauges(indexes: { topics: TopicIndex; shared: TopicIndex }, registers: Registry[]): void {
  const fields: [string, string, keyof TopicIndexStats][] = [
    ['nodes', 'Live trie nodes', 'nodes'],
    ['arena_bytes', 'Bytes of level text in allocated arena blocks', 'arenaBytes'],
    ['retired_nodes', 'Removed nodes waiting for readers to move on before reuse', 'retiredNodes'],
    ['nodes_high_water', 'Node slots ever used', 'nodesHighWater'],
    ['arena_high_water_bytes', 'Arena bytes ever carved', 'arenaHighWater'],
    ['capacity_nodes', 'Node capacity', 'capacityNodes'],
    ['capacity_arena_bytes', 'Arena capacity, bytes', 'capacityArenaBytes'],
  ];
  for (const [suffix, help, key] of fields) {
    new Gauge({
      name: `emqx_ts_topic_index_${suffix}`,
      help,
      labelNames: ['index'],
      registers,
      collect() {
        this.set({ index: 'topics' }, indexes.topics.stats()[key]);
        this.set({ index: 'shared' }, indexes.shared.stats()[key]);
      },
    });
  }
}

type EventLoopUtilization = ReturnType<Worker['performance']['eventLoopUtilization']>;

export function createRegistry(src: PrometheusSources): Registry {
  const registry = new Registry();
  const { counters, stats, supervisor } = src;
  const registers = [registry];

  // EMQX's counters, named as EMQX names them (no `_total`).
  for (const def of EMQX_METRICS) {
    new PromCounter({
      name: def.prom ?? promName(def.name),
      help: def.help,
      registers,
      collect() {
        this.reset();
        this.inc(Math.max(0, def.value(counters)));
      },
    });
  }

  // EMQX's stats, `_count` and `_max` (sampling also updates the maxima; it is a few loads).
  for (const name of EMQX_STATS) {
    for (const kind of ['count', 'max'] as const) {
      new Gauge({
        name: promName(`${name}.${kind}`),
        help: `${kind === 'count' ? 'Current' : 'Highest seen'} ${name.replaceAll('.', ' ')}`,
        registers,
        collect() {
          this.set(stats.sample()[`${name}.${kind}`] ?? 0);
        },
      });
    }
  }
  // Members as the cluster thread last reported them; without a cluster this node alone.
  const nodesWith = (status: 'running' | 'stopped'): number => {
    const members = supervisor.cluster?.members ?? [];
    if (members.length === 0) return status === 'running' ? 1 : 0;
    return members.filter((m) => m.status === status).length;
  };
  new Gauge({
    name: 'emqx_cluster_nodes_running',
    help: 'Running cluster nodes, this one included',
    registers,
    collect() {
      this.set(nodesWith('running'));
    },
  });
  new Gauge({
    name: 'emqx_cluster_nodes_stopped',
    help: 'Cluster nodes known but down',
    registers,
    collect() {
      this.set(nodesWith('stopped'));
    },
  });
  const peerGauges = [
    ['inflight', 'Forwarded bytes sent to a peer node and not yet acknowledged'],
    ['queued', 'Forwarded bytes waiting for a peer node (window full or joining)'],
  ] as const;
  for (const [kind, help] of peerGauges) {
    new Gauge({
      name: `emqx_ts_cluster_peer_${kind}_bytes`,
      help,
      labelNames: ['peer'] as const,
      registers,
      collect() {
        this.reset();
        for (const m of supervisor.cluster?.members ?? []) {
          if (!m.self) this.set({ peer: m.name }, kind === 'inflight' ? m.inflightBytes : m.queuedBytes);
        }
      },
    });
  }

  new Gauge({
    name: 'emqx_ts_cluster_shared_remote_groups',
    help: 'Shared groups with members on another node, counted once per such node',
    registers,
    collect() {
      this.set(counters.total(Counter.sharedRemoteGroups));
    },
  });
  // This broker's own: per shard.
  const labelNames = ['shard'] as const;
  new Gauge({
    name: 'emqx_ts_shard_up',
    help: '1 while the shard worker is running and ready, 0 while it is restarting',
    labelNames,
    registers,
    collect() {
      this.reset();
      for (const s of supervisor.shards) this.set({ shard: String(s.id) }, s.ready && s.worker ? 1 : 0);
    },
  });
  // Cells of the shared counter rows, one series per thread (row 0 = main, shard N = row N + 1).
  const shardRows = (): [string, number][] =>
    supervisor.shards.map((s): [string, number] => [String(s.id), s.id + 1]);
  counterCellGauge(
    counters,
    registers,
    'emqx_ts_shard_connections',
    'Connected clients per shard',
    'shard',
    shardRows,
    [['', Counter.connections]],
  );
  counterCellGauge(
    counters,
    registers,
    'emqx_ts_shard_sessions',
    'Sessions (connected or not) per shard',
    'shard',
    shardRows,
    [['', Counter.sessions]],
  );
  const lastElu = new WeakMap<Worker, EventLoopUtilization>();
  new Gauge({
    name: 'emqx_ts_shard_event_loop_utilization',
    help: "Share of time each shard's event loop was busy since the previous scrape (0..1)",
    labelNames,
    registers,
    collect() {
      this.reset();
      for (const s of supervisor.shards) {
        const w = s.worker;
        if (!w) continue;
        const now = w.performance.eventLoopUtilization();
        const prev = lastElu.get(w);
        const u = prev ? w.performance.eventLoopUtilization(now, prev).utilization : now.utilization;
        lastElu.set(w, now);
        this.set({ shard: String(s.id) }, Number.isFinite(u) ? u : 0);
      }
    },
  });

  /** Each thread's name and counter row: main, shard N, cluster. */
  const threadRows = (): [string, number][] => {
    const threads: [string, number][] = [
      ['main', 0],
      ...supervisor.shards.map((s): [string, number] => [`shard${s.id}`, s.id + 1]),
    ];
    if (supervisor.cluster) threads.push(['cluster', supervisor.shards.length + 1]);
    return threads;
  };

  // Memory per thread as each thread last sampled it (about once a second): RSS is the whole
  // process; this tells which thread's heap or buffers hold it (docs/RELIABILITY.md).
  counterCellGauge(
    counters,
    registers,
    'emqx_ts_thread_memory_bytes',
    'V8 heap used and reserved (heap_total), external and ArrayBuffer bytes of each thread (main, shard N, cluster)',
    'thread',
    threadRows,
    [
      ['heap_used', Counter.memHeapUsed],
      ['heap_total', Counter.memHeapTotal],
      ['external', Counter.memExternal],
      ['array_buffers', Counter.memArrayBuffers],
    ],
  );

  // CPU per thread (Linux): each thread writes its OS thread id in its row (sampleMemory); the
  // scrape reads that thread's run time from /proc (schedstat: ns), so a bench can tell what a
  // message costs main, each shard and the cluster thread without a profiler.
  new Gauge({
    name: 'emqx_ts_thread_cpu_seconds',
    help: 'CPU time used so far by each thread (main, shard N, cluster), from /proc (Linux only)',
    labelNames: ['thread'] as const,
    registers,
    collect() {
      this.reset();
      for (const [thread, row] of threadRows()) {
        const tid = counters.get(row, Counter.threadId);
        if (tid <= 0) continue;
        try {
          const ns = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
          if (Number.isFinite(ns)) this.set({ thread }, ns / 1e9);
        } catch {
          // the thread is gone (a shard restarting) or no schedstat: nothing for it
        }
      }
    },
  });

  const own: [string, string, number][] = [
    ['emqx_ts_shard_restarts_total', 'Shard worker restarts after a crash', Counter.shardRestarts],
    ['emqx_ts_cross_shard_messages_total', 'Messages routed to another shard', Counter.crossShardMessages],
    ['emqx_ts_cross_shard_batches_total', 'Batches posted between shards', Counter.crossShardBatches],
    [
      'emqx_ts_cluster_forward_received_total',
      'Messages received from other nodes',
      Counter.messagesForwardReceived,
    ],
    [
      'emqx_ts_cluster_forward_dropped_total',
      'Forwards dropped (peer queue full, peer down, cluster thread restarting)',
      Counter.forwardDropped,
    ],
    [
      'emqx_ts_cluster_forward_batches_total',
      'Batches shards handed to the cluster thread',
      Counter.forwardBatches,
    ],
    ['emqx_ts_cluster_errors_total', 'Malformed cluster input refused', Counter.clusterErrors],
    [
      'emqx_ts_cluster_forward_timeouts_total',
      'Forward streams closed as stalled (a batch unacknowledged past cluster.forward_ack_timeout)',
      Counter.clusterForwardTimeouts,
    ],
    [
      'emqx_ts_cluster_held_acks_failed_total',
      'PUBACK/PUBRECs of forwarded QoS 1/2 publishes sent as failed (MQTT 5: 0x80 lost, 0x97 peer queue full)',
      Counter.clusterHeldAcksFailed,
    ],
    [
      'emqx_ts_cluster_stream_breaks_total',
      'Forward streams that broke while the peer was not known down',
      Counter.clusterStreamBreaks,
    ],
    [
      'emqx_ts_cluster_reloads_total',
      'Configuration reloads applied by the cluster thread',
      Counter.clusterReloads,
    ],
    [
      'emqx_ts_cluster_wire_batches_sent_total',
      'gRPC ForwardBatch messages sent on forward streams',
      Counter.clusterWireBatchesOut,
    ],
    [
      'emqx_ts_cluster_wire_bytes_sent_total',
      'Entry bytes sent on forward streams',
      Counter.clusterWireBytesOut,
    ],
    [
      'emqx_ts_cluster_wire_batches_received_total',
      'gRPC ForwardBatch messages received on forward streams',
      Counter.clusterWireBatchesIn,
    ],
    [
      'emqx_ts_cluster_wire_bytes_received_total',
      'Entry bytes received on forward streams',
      Counter.clusterWireBytesIn,
    ],
    // Cluster II (src/cluster/state.ts)
    [
      'emqx_ts_cluster_wills_published_total',
      'Wills of clients of a dead node published by this node',
      Counter.clusterWillsPublished,
    ],
    [
      'emqx_ts_cluster_wills_received_total',
      'Wills of other nodes’ clients received (to publish if that node dies)',
      Counter.willsReceived,
    ],
    ['emqx_ts_cluster_retained_merged_total', 'Retained updates from peers kept', Counter.retainedMerged],
    [
      'emqx_ts_cluster_shared_forwarded_total',
      'Shared-group messages sent to a member on another node',
      Counter.sharedForwarded,
    ],
    [
      'emqx_ts_cluster_shared_redispatched_total',
      'Unacknowledged shared messages moved to another member after their node went down',
      Counter.sharedRedispatched,
    ],
    ['emqx_ts_cluster_sessions_shipped_total', 'Sessions shipped to another node', Counter.sessionsShipped],
    [
      'emqx_ts_cluster_sessions_imported_total',
      'Sessions taken over from another node',
      Counter.sessionsImported,
    ],
    [
      'emqx_ts_cluster_claim_failures_total',
      'Cross-node session claims that failed (the session started on this node)',
      Counter.claimFailures,
    ],
    [
      'emqx_ts_cluster_heal_closed_total',
      'Sessions closed on this node when a netsplit healed (the same client id was claimed later on the other side)',
      Counter.healClosed,
    ],
    [
      'emqx_ts_cluster_claims_refused_total',
      'CONNECTs refused with Server unavailable: claim_quorum = majority and no majority or lock node reachable',
      Counter.claimsRefused,
    ],
    [
      'emqx_ts_cluster_takeover_drain_timeouts_total',
      'Cross-node takeovers exported before every other shard had routed what it held (a shard died)',
      Counter.takeoverDrainTimeouts,
    ],
    [
      'emqx_ts_cluster_tombstones_total',
      'Sessions shipped to another node that this node then forwarded late messages for',
      Counter.tombstones,
    ],
    [
      'emqx_ts_cluster_tombstone_forwarded_total',
      'Messages that reached this node for a session that had moved, forwarded to its new node',
      Counter.tombstoneForwarded,
    ],
    [
      'emqx_ts_cluster_tombstones_dropped_total',
      'Tombstones ended early (cap reached, new node down) or forwards to a moved session that failed',
      Counter.tombstonesDropped,
    ],
    [
      'emqx_ts_cluster_takeover_batches_held_total',
      'Incoming forward batches held while a session was being exported',
      Counter.takeoverBatchesHeld,
    ],
    [
      'emqx_ts_cluster_takeover_hold_timeouts_total',
      'Holds of incoming forward batches ended by their 1 s bound instead of the export',
      Counter.takeoverHoldTimeouts,
    ],
    [
      'emqx_ts_cluster_takeover_late_uncopied_total',
      'Forward batches not copied for the late scan of an export that outlived its hold (64 MiB bound): their messages for the moving session may be lost',
      Counter.takeoverLateUncopied,
    ],
    [
      'emqx_ts_cluster_session_merge_timeouts_total',
      'Imported sessions whose old node never said it forwarded everything (merge ended by its timer)',
      Counter.sessionMergeTimeouts,
    ],
    [
      'emqx_ts_cluster_sessions_restored_total',
      'Sessions shipped to a node that died before storing them, restored on this node',
      Counter.shippedRestored,
    ],
    ['emqx_ts_handoffs_total', 'Accepted connections adopted by their owning shard', Counter.handoffs],
    [
      'emqx_ts_handoffs_cross_shard_total',
      'Accepted connections whose fd went to another shard (the owner of the client id)',
      Counter.handoffsCrossShard,
    ],
    [
      'emqx_ts_connect_rejected_total',
      'Connections refused before reaching a shard',
      Counter.connectRejected,
    ],
    [
      'emqx_ts_malformed_packets_total',
      'Connections closed for a malformed packet',
      Counter.malformedPackets,
    ],
    ['emqx_ts_protocol_errors_total', 'Connections closed for a protocol violation', Counter.protocolErrors],
    [
      'emqx_ts_oversized_packets_total',
      'Connections closed for an oversized packet',
      Counter.oversizedPackets,
    ],
    ['emqx_ts_keepalive_timeouts_total', 'Connections closed by keep-alive', Counter.keepaliveTimeouts],
    ['emqx_ts_wills_published_total', 'Will messages published', Counter.willsPublished],
    [
      'emqx_ts_wills_restored_dropped_total',
      'Wills restored from the data dir and not published: the cluster published them when this node’s previous incarnation died',
      Counter.willsRestoredDropped,
    ],
    ['emqx_ts_sessions_expired_total', 'Persistent sessions expired', Counter.sessionExpired],
    [
      'emqx_ts_thread_message_errors_total',
      'Malformed inter-thread messages dropped (the thread kept running)',
      Counter.threadMessageErrors,
    ],
    [
      'emqx_ts_topic_levels_refused_total',
      'PUBLISH topics and topic filters refused for more than mqtt.max_topic_levels levels',
      Counter.topicLevelsRefused,
    ],
    [
      'emqx_ts_retained_refused_total',
      'Retained messages routed but not stored (retainer limits)',
      Counter.retainedRefused,
    ],
    [
      'emqx_ts_connections_refused_max_total',
      'Connections refused because listener.max_connections was reached',
      Counter.connectionsRefusedMax,
    ],
    [
      'emqx_ts_handoffs_lost_total',
      'Handed-off connections closed because their owner shard died before adopting them',
      Counter.handoffsLost,
    ],
    [
      'emqx_ts_peer_closed_total',
      'Connections the client closed (its FIN read), ended at once even if output was still queued',
      Counter.peerClosed,
    ],
    [
      'emqx_ts_subscriptions_index_full_total',
      'Subscriptions refused (SUBACK 0x97 / 0x80) because the topic index was full',
      Counter.subscriptionsIndexFull,
    ],
    [
      'emqx_ts_subscriptions_refused_max_total',
      'Subscriptions refused (SUBACK 0x97 / 0x80) beyond mqtt.max_subscriptions',
      Counter.subscriptionsRefusedMax,
    ],
    [
      'emqx_ts_output_read_paused_total',
      "Times a connection's reading was paused because its own unsent output passed mqtt.max_output_buffer",
      Counter.outputReadPaused,
    ],
    [
      'emqx_ts_output_force_shutdown_total',
      'Connections closed because their unsent output passed force_shutdown.max_output_bytes',
      Counter.outputForceShutdown,
    ],
    // Hooks and authentication (src/hooks, src/auth); the EMQX-named auth metrics are above.
    ['emqx_ts_hook_errors_total', 'Hook calls that threw (logged; treated as no answer)', Counter.hookErrors],
    ['emqx_ts_hook_dropped_total', 'Messages dropped by an onPublish hook', Counter.hookDropped],
    [
      'emqx_ts_authentication_timeouts_total',
      'CONNECTs refused because the authentication chain did not answer within auth.timeout',
      Counter.authnTimeouts,
    ],
    [
      'emqx_ts_banned_refused_total',
      'Connections refused (CONNACK 0x8A / 5) because the client is banned',
      Counter.bannedRefused,
    ],
    ...DURABLE_COUNTERS,
    [
      'emqx_ts_retained_delivery_paced_total',
      "Times retained messages for a new subscription waited for the subscriber's socket to drain or its inflight window to free",
      Counter.retainedPaced,
    ],
    [
      'emqx_ts_publishers_held_total',
      'Times a QoS 0 publisher was not read until a congested subscriber it feeds drained (back-pressure)',
      Counter.publishersHeld,
    ],
    [
      'emqx_ts_slow_consumers_total',
      'Subscribers that took no output for mqtt.slow_consumer_timeout: their publishers released, QoS 0 to them dropped until they drain',
      Counter.slowConsumers,
    ],
    [
      'emqx_ts_peer_window_holds_total',
      'Times a publisher was not read because another shard had 1 MiB of its batches unprocessed',
      Counter.peerWindowHolds,
    ],
    [
      'emqx_ts_read_budget_yields_total',
      'Times a connection read 64 KiB in one event-loop turn and was not read again until the turn ended (fairness)',
      Counter.readBudgetYields,
    ],
  ];
  for (const [name, help, idx] of [...own, ...TRANSPORT_COUNTERS]) {
    new PromCounter({
      name,
      help,
      registers,
      collect() {
        this.reset();
        this.inc(counters.total(idx));
      },
    });
  }
  registry.registerMetric(handoffHistogram(counters) as unknown as Metric);
  if (src.indexes) topicIndexGauges(src.indexes, registers);
  listenerGauge(counters, registers);

  // Process metrics of the main thread (CPU, memory, event-loop lag, GC).
  // The event-loop lag histogram samples with a timer: 10 ms (the default) woke the main thread
  // 100 times a second, most of an idle broker's CPU; 100 ms still shows any stall that matters.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  return registry;
}

/**
 * A gauge over cells of the shared counter rows: one series per (row, cell), the row named by
 * `label` (a shard, a thread) and, when there is more than one cell, the cell by `kind`. `rows`
 * is read at each scrape (shards restart, the cluster thread may be absent).
 */
function counterCellGauge(
  counters: Counters,
  registers: Registry[],
  name: string,
  help: string,
  label: 'shard' | 'thread',
  rows: () => [string, number][],
  cells: readonly (readonly [string, number])[],
): void {
  const byKind = cells.length > 1;
  new Gauge({
    name,
    help,
    labelNames: byKind ? [label, 'kind'] : [label],
    registers,
    collect() {
      this.reset();
      for (const [value, row] of rows())
        for (const [kind, cell] of cells)
          this.set(byKind ? { [label]: value, kind } : { [label]: value }, counters.get(row, cell));
    },
  });
}

/**
 * Accept → adoption latency of connections. Shards record each handoff in bucket cells of their
 * counter row (counters.ts `observeHandoff`); this turns the sums into Prometheus' cumulative
 * histogram form. prom-client's Histogram cannot be fed bucket counts, hence a small metric
 * object of the shape the Registry expects.
 */
function handoffHistogram(counters: Counters) {
  const name = 'emqx_ts_handoff_latency_seconds';
  return {
    name,
    help: 'Time from accepting a connection on the main thread to its adoption by the owning shard',
    type: 'histogram',
    aggregator: 'sum',
    labelNames: [],
    reset() {},
    async get() {
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
      let cum = 0;
      for (let i = 0; i <= HANDOFF_BUCKETS_S.length; i++) {
        cum += counters.total(HANDOFF_BUCKETS + i);
        const le = i < HANDOFF_BUCKETS_S.length ? HANDOFF_BUCKETS_S[i] : '+Inf';
        values.push({ labels: { le }, value: cum, metricName: `${name}_bucket` });
      }
      values.push({
        labels: {},
        value: counters.total(Counter.handoffLatencySumNs) / 1e9,
        metricName: `${name}_sum`,
      });
      values.push({
        labels: {},
        value: counters.total(Counter.handoffLatencyCount),
        metricName: `${name}_count`,
      });
      return { name, help: this.help, type: this.type, values, aggregator: this.aggregator };
    },
  };
}

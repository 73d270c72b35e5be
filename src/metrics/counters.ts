import { readlinkSync } from 'node:fs';

/**
 * Hot-path counters in shared memory. Every thread owns one row of a Float64Array over a
 * SharedArrayBuffer and increments its own cells with a plain `+=` (single writer, no Atomics,
 * no prom-client call per message); the main thread sums the rows at scrape time. Float64 is
 * exact up to 2^53, and aligned 8-byte loads do not tear on the platforms Node supports.
 *
 * (The operating issue asks for `Atomics.add`; a plain `+=` on a row with a single writer is
 * cheaper and as safe, since no two threads ever write the same cell. Atomics would only be
 * needed for cells written by several threads, and there are none.)
 */
export const Counter = {
  connections: 0, // gauge: live connections on this thread
  sessions: 1, // gauge: sessions (online + offline) on this thread
  messagesReceived: 2,
  messagesSent: 3,
  messagesDropped: 4,
  messagesDroppedNoSubscribers: 5,
  deliveryDroppedQueueFull: 6,
  deliveryDroppedQos0Slow: 7,
  packetsReceived: 8,
  packetsSent: 9,
  bytesReceived: 10,
  bytesSent: 11,
  malformedPackets: 12,
  protocolErrors: 13,
  oversizedPackets: 14,
  crossShardMessages: 15,
  crossShardBatches: 16,
  clientConnected: 17,
  clientDisconnected: 18,
  sessionCreated: 19,
  sessionResumed: 20,
  sessionTakenover: 21,
  sessionDiscarded: 22,
  sessionTerminated: 23,
  sessionExpired: 24,
  keepaliveTimeouts: 25,
  willsPublished: 26,
  shardRestarts: 27,
  handoffs: 28,
  connectRejected: 29,
  subscriptions: 30, // gauge
  retainedCount: 31, // gauge (main thread)
  messagesRetained: 32,
  // EMQX metrics (see metrics/emqx.ts for how each maps to an EMQX name). The three QoS cells of
  // each direction are contiguous: `row[Counter.messagesQos0Received + qos]++`.
  messagesQos0Received: 33,
  messagesQos1Received: 34,
  messagesQos2Received: 35,
  messagesQos0Sent: 36,
  messagesQos1Sent: 37,
  messagesQos2Sent: 38,
  messagesDroppedAwaitPubrelTimeout: 39,
  packetsPublishInuse: 40,
  packetsPublishError: 41,
  packetsPublishDropped: 42,
  packetsPubackMissed: 43,
  packetsPubrecMissed: 44,
  packetsPubrelMissed: 45,
  packetsPubcompMissed: 46,
  packetsSubscribeError: 47,
  packetsConnackError: 48,
  packetsConnackAuthError: 49,
  handoffLatencySumNs: 50,
  handoffLatencyCount: 51,
  deliveryDroppedTooLarge: 52,
  deliveryDroppedNoLocal: 53,
  deliveryDroppedExpired: 54,
  messagesDroppedExpired: 55,
  subscriptionsShared: 56, // gauge
  handoffsCrossShard: 57,
  // Hardening (issue #9): refusals of input that would otherwise break a thread or the broker.
  threadMessageErrors: 58, // malformed inter-thread messages dropped by a handler
  topicLevelsRefused: 59, // PUBLISH topics / filters beyond mqtt.max_topic_levels
  retainedRefused: 60, // retained messages not stored (retainer.max_retained_messages / max_payload_size)
  connectionsRefusedMax: 61, // connections refused: listener.max_connections reached
  /** Connections closed because their unread output passed force_shutdown.max_output_bytes */
  outputForceShutdown: 62,
  /** Reads paused because a connection's own unread output passed mqtt.max_output_buffer */
  outputReadPaused: 63,
  /** Bytes copied to reassemble frames split across reads (debug: must stay linear in size) */
  frameBytesCopied: 64,
  handoffsLost: 65, // handed-off fds closed because their owner shard died before adopting them
  // Cluster (issue #10)
  messagesForward: 66, // publishes handed to the cluster thread for other nodes (once per destination node)
  messagesForwardReceived: 67, // publishes received from other nodes
  forwardDropped: 68, // forwards dropped: peer queue over cluster.max_queue_bytes, or no cluster thread
  forwardBatches: 69, // batches a shard handed to the cluster thread
  clusterErrors: 70, // malformed cluster input (bad batch, bad request) refused
  // Cluster II (slots 80..89)
  /** Forward streams closed because a batch waited longer than cluster.forward_ack_timeout */
  clusterForwardTimeouts: 80,
  /** Held PUBACK/PUBRECs of forwarded QoS 1/2 publishes released as failed (lost or refused by a peer's queue) */
  clusterHeldAcksFailed: 81,
  /** Forward streams that broke (error) while the peer was not known down */
  clusterStreamBreaks: 82,
  /** Configuration reloads applied by the cluster thread */
  clusterReloads: 83,
  // Cluster data plane (issue #10 bench): gRPC messages on forward streams, each way, and their
  // entries bytes (publishes per batch = forwards / batches: the lever of CPU per message)
  clusterWireBatchesOut: 84,
  clusterWireBytesOut: 85,
  clusterWireBatchesIn: 86,
  clusterWireBytesIn: 87,
  /** Gauge: the OS thread id (Linux tid) of the thread that owns the row, for per-thread CPU */
  threadId: 88,
  // 76..79 hardening, 89 cluster, 92, 93 free; 96..159 unnamed ranges (below);
  // Hardening (issue #9, items 9 and 10)
  /** Retained deliveries on subscribe that waited for the subscriber's drain or acks */
  retainedPaced: 71,
  /** QoS 0 publishers held (not read) for a congested subscriber that still takes output */
  publishersHeld: 72,
  /** Subscribers that took no output for mqtt.slow_consumer_timeout: QoS 0 to them dropped */
  slowConsumers: 73,
  /** Publishers held because a peer shard had a window of their batches unprocessed */
  peerWindowHolds: 74,
  /** Times a connection used up its read budget (64 KiB) in a turn and was paused until its end */
  readBudgetYields: 75,
  // 76..79 hardening, 89 cluster, 92, 93 free; 96..159 unnamed ranges (below);
  // 160..179 auth, 180..199 transports, 200..219 durable storage, 230..245 free, 246..255 hardening.
  /** Subscriptions refused because the topic index (or shared-subscription index) is full */
  subscriptionsIndexFull: 90,
  /** Subscriptions refused because the client has mqtt.max_subscriptions already */
  subscriptionsRefusedMax: 91,
  /** Connections ended when the client's FIN was read (also a half-close that stops reading) */
  peerClosed: 94,
  // Hooks, authentication, authorization, banned (issue #12; src/hooks, src/auth, src/authz): 160..179
  hookErrors: 160, // a hook threw (logged, event treated as unanswered)
  hookDropped: 161, // messages dropped by an onPublish hook
  authnSuccess: 162, // emqx authentication.success (includes anonymous)
  authnSuccessAnonymous: 163, // authentication.success.anonymous
  authnFailure: 164, // authentication.failure
  authnTimeouts: 165, // authentication chains that did not answer within auth.timeout (also failures)
  authzAllow: 166, // authorization.allow
  authzDeny: 167, // authorization.deny
  authzCacheHit: 168, // authorization.cache_hit
  publishAuthError: 169, // PUBLISH refused by authorization
  subscribeAuthError: 170, // SUBSCRIBE filters refused by authorization
  bannedRefused: 171, // connections refused because the client is banned
  // 172..179 free for auth.
  // Durable storage (issue #14): 200..219
  storeWrites: 200, // records put or removed in the durable store (sessions, deliveries, outbox, marks)
  storeCommits: 201, // commits this thread waited for (sync mode: one per event-loop turn with writes)
  storeErrors: 202, // failed store writes or commits (logged; the broker keeps running in memory)
  sessionsRestored: 203, // persistent sessions loaded from the store at start
  sessionsPurged: 204, // expired sessions removed at start
  messagesRestored: 205, // queued/inflight deliveries loaded from the store at start
  messagesPurged: 206, // expired deliveries removed at start
  outboxReplayed: 207, // cross-shard batches re-sent to a restarted shard from the outbox
  outboxDuplicates: 208, // replayed batches a shard had committed already (skipped)
  storeAcksHeld: 209, // QoS 1/2 acks held until their turn's commit (sync mode)
  storeWritesSkipped: 210, // delivery/outbox puts and removes never made: done before their flush
  outboxSkipped: 211, // QoS 1/2 batches to a shard with no persistent session: sent without an outbox record
  persistentSessions: 212, // gauge: this shard's persistent sessions (read by the other shards; 1 until restored)
  storeHeldAcked: 213, // QoS 1 deliveries to connected sessions acknowledged within durability.online_ack_wait: never written
  storeHeldWritten: 214, // QoS 1 deliveries held for durability.online_ack_wait and written when it was over
  outboxHeldConfirmed: 215, // outbox entries held for durability.online_ack_wait that the receiver confirmed first: never written
  outboxConfirmedUnwritten: 216, // peer batches confirmed without a commit: every persistent delivery of them acknowledged, nothing stored
  // Transports (issue #13): 180..199, src/listener/.
  tlsHandshakeErrors: 180, // TLS handshakes that failed (not TLS, bad or missing client certificate, timeout)
  tlsPeerCertRefused: 181, // handshakes done but the client certificate refused (verify_peer)
  wsUpgradeRefused: 182, // HTTP requests on a WebSocket listener not upgraded (path, method, headers)
  wsProtocolErrors: 183, // WebSocket connections closed for bad frames, text frames or oversized messages
  proxyProtocolErrors: 184, // connections closed for a missing, malformed or late PROXY header
  tunnelsOpened: 185, // TLS/WS connections whose owner is another shard: carried over the peer port
  tunnelBytesToOwner: 186, // bytes a terminating shard carried to owner shards
  tunnelBytesFromOwner: 187, // bytes owner shards sent back through the terminating shard
  tunnelBatches: 188, // tunnel batches posted (one per peer per turn with traffic)
  tunnelsLost: 189, // tunnelled connections closed because the shard at the other end died
  listenerConnectionsRefusedMax: 190, // refused: the listener's own max_connections reached
  tlsCertReloads: 191, // certificate files re-read on SIGHUP (per shard and listener)
  tlsCertReloadErrors: 192, // SIGHUP certificate reloads that failed (old certificates kept)
  // 195..198: gauges of live connections per listener (tcp, ssl, ws, wss) on this shard: LISTENER_GAUGES
  // Cluster II (issue #11): 220..239
  clusterWillsPublished: 220, // wills of clients of a dead node published by this node
  retainedMerged: 221, // retained updates from peers kept (newer than ours)
  sharedForwarded: 222, // shared-group messages sent to a member on another node
  sharedRedispatched: 223, // unacked shared messages moved to another member after their node went down
  sessionsShipped: 224, // sessions this node shipped to another node (cross-node takeover)
  sessionsImported: 225, // sessions taken over from another node
  willsReceived: 227, // wills of other nodes' clients received (set) by this node
  sharedRemoteGroups: 228, // gauge: (peer, shared group) pairs this node knows have members (cluster thread)
  claimFailures: 226, // cross-node claims that failed (lock node or owner unreachable): session started here
  takeoverDrainTimeouts: 229, // takeovers exported before every other shard had drained (a shard died)
  // Takeover gap (issue #11): 234..239
  tombstones: 234, // sessions shipped to another node whose late messages this node forwarded after (cluster thread)
  tombstoneForwarded: 235, // messages that reached this node for a session that had moved, forwarded to its new node
  tombstonesDropped: 236, // tombstones ended early (cap, new node down) or forwards that failed
  takeoverBatchesHeld: 237, // incoming forward batches held while a session was exported
  takeoverHoldTimeouts: 238, // holds ended by their bound (1 s) rather than by the export
  sessionMergeTimeouts: 239, // imported sessions whose old node's `done` never came (merge ended by timer)
  shippedRestored: 240, // sessions shipped to a node that died before storing them, restored here (cluster thread)
  takeoverLateUncopied: 241, // batches not copied for a late scan: an export outlived its hold past MAX_LATE_BYTES
  willsRestoredDropped: 242, // restored wills not published: the cluster published them for this node's previous incarnation
  healClosed: 244, // sessions closed here after a netsplit healed: the client was claimed later on the other side
  claimsRefused: 245, // CONNECTs refused (0x88 / 3): cluster.claim_quorum = majority and no quorum reachable
  // Memory of the thread that owns the row (gauges, bytes; issue #9 item 11): 246..249, written
  // by that thread about once a second (`sampleMemory`). 250..255 free for hardening.
  memHeapUsed: 246,
  memHeapTotal: 247,
  memExternal: 248,
  memArrayBuffers: 249,
} as const;

export type CounterName = keyof typeof Counter;
export const COUNTER_SLOTS = 256;

/**
 * Unnamed ranges after the named counters (not part of `snapshot()`):
 * - packets received / sent by MQTT packet type: `row[PACKETS_RECEIVED_BY_TYPE + type]++`
 *   (counted where frames are read and written, so every packet type is covered at once);
 * - handoff latency histogram buckets (accept → adopted by the owning shard), one cell per
 *   bucket of HANDOFF_BUCKETS_S plus +Inf, non-cumulative (Prometheus' cumulative form is built
 *   at scrape time).
 */
export const PACKETS_RECEIVED_BY_TYPE = 96;
export const PACKETS_SENT_BY_TYPE = 112;
export const HANDOFF_BUCKETS = 128;
export const HANDOFF_BUCKETS_S = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
] as const;

/**
 * This thread's `process.memoryUsage()` (V8 heap used and reserved, external and ArrayBuffer
 * bytes of this isolate) into its own row: a few µs, called from a once-a-second timer.
 */
export function sampleMemory(row: Float64Array): void {
  if (row[Counter.threadId] === 0) row[Counter.threadId] = ownThreadId();
  const m = process.memoryUsage();
  row[Counter.memHeapUsed] = m.heapUsed;
  row[Counter.memHeapTotal] = m.heapTotal;
  row[Counter.memExternal] = m.external;
  row[Counter.memArrayBuffers] = m.arrayBuffers;
}

/** This thread's OS thread id (Linux: /proc/thread-self), -1 where there is none. */
export function ownThreadId(): number {
  try {
    const link = readlinkSync('/proc/thread-self'); // "<pid>/task/<tid>"
    const tid = Number(link.slice(link.lastIndexOf('/') + 1));
    return Number.isInteger(tid) && tid > 0 ? tid : -1;
  } catch {
    return -1;
  }
}

/** Records one handoff latency (ns) in this thread's row: a handful of adds per connection. */
export function observeHandoff(row: Float64Array, ns: number): void {
  const s = ns / 1e9;
  let i = 0;
  while (i < HANDOFF_BUCKETS_S.length && s > HANDOFF_BUCKETS_S[i]) i++;
  row[HANDOFF_BUCKETS + i]++;
  row[Counter.handoffLatencySumNs] += ns;
  row[Counter.handoffLatencyCount]++;
}

export interface CountersShared {
  sab: SharedArrayBuffer;
  rows: number;
  /** Int32 cells changed with Atomics by several threads: LIVE_CONNECTIONS */
  atomics: SharedArrayBuffer;
}

/** Connections over all shards, for listener.max_connections (every shard accepts). */
export const LIVE_CONNECTIONS = 0;
/** Connections per listener (tcp, ssl, ws, wss: cells 1..4), for listeners.*.default.max_connections */
export const LISTENER_CONNECTIONS = 1;
/** Row cells 195..198: this shard's live connections per listener (same order as the cells above) */
export const LISTENER_GAUGES = 195;

export class Counters {
  readonly row: Float64Array;
  /** Cells several threads write (with Atomics); see LIVE_CONNECTIONS */
  readonly atomics: Int32Array;
  private readonly all: Float64Array;

  private constructor(
    readonly shared: CountersShared,
    rowIndex: number,
  ) {
    this.all = new Float64Array(shared.sab);
    this.atomics = new Int32Array(shared.atomics);
    this.row = new Float64Array(shared.sab, rowIndex * COUNTER_SLOTS * 8, COUNTER_SLOTS);
  }

  /** Row 0 is the main thread's; row i+1 is shard i's. */
  static create(rows: number): Counters {
    const sab = new SharedArrayBuffer(rows * COUNTER_SLOTS * 8);
    return new Counters({ sab, rows, atomics: new SharedArrayBuffer(8 * 4) }, 0);
  }

  /** A cell of another thread's row (a plain read: its single writer may change it any time). */
  peek(rowIndex: number, slot: number): number {
    return this.all[rowIndex * COUNTER_SLOTS + slot];
  }

  static attach(shared: CountersShared, rowIndex: number): Counters {
    return new Counters(shared, rowIndex);
  }

  /** Resets one row (a restarted shard starts its gauges from zero). */
  resetRow(rowIndex: number, keepTotals: boolean): void {
    const base = rowIndex * COUNTER_SLOTS;
    if (!keepTotals) {
      this.all.fill(0, base, base + COUNTER_SLOTS);
      return;
    }
    // A dead shard's connections closed with it: they no longer count against the limit.
    Atomics.sub(this.atomics, LIVE_CONNECTIONS, this.all[base + Counter.connections]);
    for (let l = 0; l < 4; l++) {
      Atomics.sub(this.atomics, LISTENER_CONNECTIONS + l, this.all[base + LISTENER_GAUGES + l]);
      this.all[base + LISTENER_GAUGES + l] = 0;
    }
    this.all[base + Counter.connections] = 0;
    this.all[base + Counter.sessions] = 0;
    this.all[base + Counter.subscriptions] = 0;
    this.all[base + Counter.subscriptionsShared] = 0;
  }

  /** Sum of a counter over all threads. */
  total(c: number): number {
    let s = 0;
    for (let r = 0; r < this.shared.rows; r++) s += this.all[r * COUNTER_SLOTS + c];
    return s;
  }

  get(rowIndex: number, c: number): number {
    return this.all[rowIndex * COUNTER_SLOTS + c];
  }

  snapshot(): Record<CounterName, number> {
    const out = {} as Record<CounterName, number>;
    for (const [name, idx] of Object.entries(Counter)) out[name as CounterName] = this.total(idx);
    return out;
  }
}

/**
 * Every message that crosses a thread boundary is defined here. Threads only exchange plain,
 * structured-clonable data (plus transferred MessagePorts and ArrayBuffers).
 *
 *   main  → shard : MainToShard   (worker.postMessage)
 *   shard → main  : ShardToMain   (parentPort.postMessage)
 *   shard ↔ shard : ShardToShard: ArrayBuffer batches of routed messages (routing/batch.ts),
 *                   shared-subscription membership and connection handoffs (fds), on a
 *                   MessagePort per pair of shards created by main. One port per pair keeps
 *                   batches and joins in order.
 *   main  ↔ cluster: MainToCluster / ClusterToMain (the cluster thread, src/cluster/)
 *   shard ↔ cluster: ShardToCluster / ClusterToShard on a MessagePort per shard created by
 *                   main: batches of publishes for remote nodes, and forwards received from them.
 */
import type { MessagePort } from 'node:worker_threads';
import type { UserRecord } from '../auth/users-file.js';
import type { BannedEntry } from '../authz/banned.js';
import type {
  ClusterStateToMain,
  ClusterStateToShard,
  MainToClusterState,
  ShardToClusterState,
} from '../cluster/state-messages.js';
import type { Config } from '../config/schema.js';
import type { CountersShared } from '../metrics/counters.js';
import type { ConnectPacket } from '../protocol/codec.js';
import type { TopicIndexShared } from '../routing/topic-index.js';

/** What a shard worker is started with (`workerData`). */
export interface ShardInit {
  shardId: number;
  shardCount: number;
  generation: number;
  config: Config;
  index: TopicIndexShared;
  /** Index of shared-subscription filters; only a group's owner shard sets its bit */
  sharedIndex: TopicIndexShared;
  counters: CountersShared;
  /** peers[i] = port to shard i (null for itself) */
  peers: (MessagePort | null)[];
  /** Remote routes (cluster): topic filters of peer nodes, bit = peer slot; absent without a cluster */
  remoteIndex?: TopicIndexShared;
  /** Port to the cluster thread (null while it is not running) */
  cluster?: MessagePort | null;
}

/** What the cluster thread is started with. */
export interface ClusterInit {
  generation: number;
  /** The process's start id, the same for every cluster thread it runs (NodeInfo.boot) */
  boot: bigint;
  config: Config;
  /** This node's topic index: the cluster thread reads which filters have local subscribers */
  index: TopicIndexShared;
  /** Written only by the cluster thread: routes of the peer nodes */
  remoteIndex: TopicIndexShared;
  counters: CountersShared;
  /** Counter row of the cluster thread */
  counterRow: number;
  shardCount: number;
  /** Port per shard (null: that shard is not running; it comes later as `shard`) */
  shards: (MessagePort | null)[];
}

/** A cluster member as the cluster thread reports it to main (REST, metrics, $SYS). */
export interface ClusterMember {
  name: string;
  address: string;
  status: 'running' | 'stopped';
  /** This node itself */
  self: boolean;
  /** ms since epoch of the last heartbeat or join seen from it */
  lastSeen: number;
  /** Route filters it holds */
  routes: number;
  /** Forwarded bytes sent to it and not acknowledged, and queued for it */
  inflightBytes: number;
  queuedBytes: number;
}

export type MainToCluster =
  /** A (re)started shard's port to the cluster thread */
  | { t: 'shard'; shard: number; port: MessagePort }
  /** Tell peers we leave, then end */
  | { t: 'shutdown' }
  /** SIGHUP: the reloaded configuration (restart-only options unchanged); answered `reconfigured` */
  | { t: 'reconfigure'; config: Config }
  | MainToClusterState;

export type ClusterToMain =
  | { t: 'ready'; generation: number; port: number }
  /**
   * The first join round is over: every peer that answered holds our routes and we hold
   * theirs (or the bound ran out); /readyz waits for it
   */
  | { t: 'synced'; peers: number }
  | { t: 'listenFailed'; error: string }
  /** Sent on every membership change and once a second */
  | { t: 'members'; members: ClusterMember[] }
  | { t: 'reconfigured' }
  | { t: 'shutdownDone' }
  | ClusterStateToMain;

/** Publishes for remote nodes: per destination peer slot, its cluster/codec.ts entries. */
export interface ShardForward {
  t: 'forward';
  parts: ForwardPart[];
  /** > 0: the batch holds QoS 1/2 publishes whose acks wait; answered with `forwardAcked` */
  seq: number;
}

export interface ForwardPart {
  /** Peer slot (bit of the remote-route index) */
  slot: number;
  /** Transferred; entries in [0, len) */
  buf: ArrayBuffer;
  len: number;
  count: number;
}

export type ShardToCluster = ShardForward | ShardToClusterState;

/** Publishes received from a peer node, for this shard to route to local subscribers only. */
export type ClusterToShard =
  | { t: 'forwarded'; buf: ArrayBuffer; off: number; len: number; count: number }
  /**
   * Every peer batch `seq` went to has accepted it (or is known down), code 0; or some part was
   * lost (0x80: stream broken or stalled) or refused (0x97: peer queue full). Its held
   * PUBACK/PUBRECs go, with that reason code to MQTT 5 publishers.
   */
  | { t: 'forwardAcked'; seq: number; code: number }
  /**
   * Durable start: the cluster thread's first join round is over. Of this shard's restored wills
   * (pending in restored sessions, or of sessions that expired while the node was down), the
   * cluster published those of `clientIds` for this node's previous incarnation: they are
   * dropped; the others are this node's to publish (none of its peers held them).
   */
  | { t: 'firedWills'; clientIds: string[] }
  | ClusterStateToShard;

/** A retained message as stored by main and returned to shards. */
export interface RetainedRecord {
  topic: string;
  payload: Uint8Array;
  qos: 0 | 1 | 2;
  /** MQTT 5 properties to forward (raw), if any */
  props?: Uint8Array | null;
  /** ms since epoch when it expires (Message Expiry Interval); 0 = never */
  expiryAt?: number;
  /** Cluster: hybrid timestamp and node where it was published (last writer wins) */
  ts?: number;
  origin?: string;
}

/** A connection whose CONNECT the accepting shard has read and validated. */
export interface ConnectionOrigin {
  connect: ConnectPacket;
  /** Bytes read after the CONNECT frame, to be parsed before anything read from the fd */
  leftover: Uint8Array;
  /** True when the broker generated the client id (empty client id in CONNECT) */
  assignedClientId: boolean;
  remoteAddress: string;
  remotePort: number;
  /** hrtime (ns) when the socket was accepted, for handoff latency */
  acceptedAt: number;
  /** The listener it came in on (`tcp:default`…) and that listener's connection-count cell */
  listener?: string;
  listenerIndex?: number;
  /** The broker's port the client connected to (the terminating shard's, for a tunnel) */
  localPort?: number;
}

/** A listening socket of one listener (`tcp:default`, `ssl:default`…), shared with a shard. */
export interface ListenerFd {
  id: string;
  fd: number;
}

/** A connection accepted by one shard and owned by another (client id hash), sent as an fd. */
export interface Handoff extends ConnectionOrigin {
  /** dup()ed file descriptor, owned by the receiving shard from now on */
  fd: number;
}

export type MainToShard =
  /** Accept on (dups of) the listening sockets; the fds stay main's, closed when the thread exits */
  | { t: 'listen'; listeners: ListenerFd[] }
  | { t: 'peer'; shard: number; port: MessagePort }
  /** The (re)started cluster thread's port */
  | { t: 'cluster'; port: MessagePort }
  /** `code` ≥ 0x80: stored here, but a peer node did not confirm it (MQTT 5 reason code) */
  | { t: 'retainAck'; reqId: number; code?: number }
  /** One chunk of a lookup's matches; `more`: the shard asks for the next with retainedNext */
  | { t: 'retained'; reqId: number; records: RetainedRecord[]; more: boolean }
  /** Close the clients and end; with drainMs, the closes are spread over that many ms first. */
  | { t: 'shutdown'; drainMs?: number }
  | { t: 'crash' }
  /** A shard died: drop its members from the shared groups this shard owns. */
  | { t: 'shardDown'; shard: number }
  /** Route messages published by the broker itself ($SYS, REST API) as if a client had sent them. */
  | { t: 'publish'; messages: BrokerPublish[] }
  /** A read-only question (or a kick) from the REST API; answered with `queryResult`. */
  | { t: 'query'; reqId: number; query: ShardQuery }
  /** Runtime-changeable options reloaded (SIGHUP): the shard swaps them into its config. */
  | { t: 'reconfigure'; config: Config }
  /** Banned clients and built-in users, whose authority is main (src/hooks/security.ts) */
  | { t: 'security'; msg: SecurityToShard };

/** Main → shard security state: whole lists on a shard's `securityRequest`, then changes. */
export type SecurityToShard =
  | { t: 'banned'; entries: BannedEntry[] }
  | { t: 'users'; users: UserRecord[] }
  | { t: 'userPut'; user: UserRecord }
  | { t: 'userDelete'; username: string };

export type ShardToMain =
  | { t: 'ready'; generation: number }
  /** Store (or delete, when payload is empty) a retained message; reqId > 0 asks for a retainAck. */
  | { t: 'retain'; reqId: number; record: RetainedRecord }
  /** Retained messages matching these filters, for a new subscription. */
  | { t: 'retainedLookup'; reqId: number; filters: string[] }
  /** The subscriber took the previous chunk of this lookup: send the next (or stop: cancel) */
  | { t: 'retainedNext' | 'retainedCancel'; reqId: number }
  | { t: 'shutdownDone' }
  | { t: 'listening' }
  /** Answer to `reconfigure`: the new configuration is in force in this shard */
  | { t: 'reconfigured' }
  | { t: 'listenFailed'; error: string }
  | { t: 'queryResult'; reqId: number; result: ShardQueryResult }
  /** A (re)started shard asks for the banned list and built-in users (answered with `security`) */
  | { t: 'securityRequest' };

/** A batch of routed messages (routing/batch.ts), transferred. */
export interface PeerBatch {
  t: 'batch';
  buf: ArrayBuffer;
  len: number;
  count: number;
  /** Durable modes: the batch's outbox sequence number (it has QoS 1/2 messages) */
  seq?: number;
  /** Re-sent from the outbox after a restart: node ids are stale, the receiver matches again */
  replay?: boolean;
}

/**
 * The two messages a receiving shard posts per batch, as bare numbers (a number is about half
 * the cost of a small object to post, and the subscriber's shard of fan-in posts one or two per
 * batch): `seq > 0` — batchCommitted: the receiver committed (or needs nothing stored of) every
 * batch up to `seq` from this shard, its outbox entries may go; `-bytes < 0` — batchAck: a batch
 * of `bytes` from the receiver was processed (routing/peer-window.ts). See `peerBatchCommitted`
 * and `peerBatchAck`.
 */
export type PeerBatchNumber = number;

/** batchCommitted for outbox seq `seq` (> 0) */
export function peerBatchCommitted(seq: number): PeerBatchNumber {
  return seq;
}

/** batchAck of a batch of `bytes` (> 0) */
export function peerBatchAck(bytes: number): PeerBatchNumber {
  return -bytes;
}

/** A session on the sending shard joins or leaves a shared group owned by the receiver. */
export interface SharedMembership {
  t: 'sharedJoin' | 'sharedLeave';
  group: string;
  filter: string;
  clientId: string;
  shard: number;
  qos: 0 | 1 | 2;
  subId: number;
  /** A join whose SUBACK waits: the owner answers `sharedJoined` with this id (0: no answer) */
  reqId?: number;
}

/** The owner has added the member: the SUBACK held for it can go (answers `reqId`). */
export interface SharedJoined {
  t: 'sharedJoined';
  reqId: number;
  /** false: the owner's index is full and the member was not added (SUBACK 0x97 / 0x80) */
  ok?: boolean;
}

/**
 * The sender, told of the receiver's (re)start (`peer`), has posted its members' joins of the
 * groups the receiver owns and its outbox replay: everything it rejoins is in the port ahead of
 * this. A restarted owner (durable modes) clears the shared-index bits its predecessor left
 * once every live peer has said so (SharedGroupRouting.onRejoined).
 */
export interface SharedRejoined {
  t: 'sharedRejoined';
}

/** Connections accepted by the sending shard whose client ids belong to the receiver. */
export interface PeerAdopt {
  t: 'adopt';
  conns: Handoff[];
  /** Answered with `adopted` of the same seq once the receiver owns the fds */
  seq: number;
}

/**
 * The receiver of `adopt` `seq` owns its fds. Until then the sender keeps them (with their
 * socket inodes), so that when the receiver dies unread they are closed, not leaked.
 */
export interface PeerAdopted {
  t: 'adopted';
  seq: number;
}

/** A TLS/WebSocket connection terminated by the sender and owned by the receiver (listener/tunnel.ts). */
export interface TunnelOpen extends ConnectionOrigin {
  id: number;
}

/** Tunnel opens and records (listener/tunnel.ts), one transferred buffer per turn. */
export interface TunnelBatch {
  t: 'tunnel';
  opens: TunnelOpen[];
  buf: ArrayBuffer;
  len: number;
}

/** A congested subscriber holds a QoS 0 publisher of the receiving shard, or lets go (flow-control.ts). */
export type PeerHold = { t: 'hold'; clientId: string } | { t: 'release'; clientId: string };

/**
 * Cluster takeover barrier (cluster/shard-state.ts): everything this shard routed to the
 * receiver before it is in the receiver's port ahead of this message.
 */
export interface PeerDrained {
  t: 'drained';
  reqId: number;
}

export type ShardToShard =
  | PeerBatch
  | PeerDrained
  | PeerBatchNumber
  | SharedMembership
  | SharedJoined
  | SharedRejoined
  | PeerAdopt
  | PeerAdopted
  | TunnelBatch
  | PeerHold;

/** A message published by the broker (not by a client). */
export interface BrokerPublish {
  topic: string;
  payload: Uint8Array;
  qos: 0 | 1 | 2;
  retain: boolean;
  /** `$SYS` messages: not counted as dropped when nobody subscribes (as EMQX) */
  sys: boolean;
}

/** One client (session) as the REST API shows it; field names are EMQX's. */
export interface ClientInfo {
  clientid: string;
  username: string | null;
  connected: boolean;
  ip_address: string;
  port: number;
  /** The listener it is connected through (`tcp:default`, `ssl:default`…) */
  listener: string;
  keepalive: number;
  clean_start: boolean;
  proto_name: string;
  proto_ver: number;
  /** ms since epoch (the REST layer formats them) */
  connected_at: number;
  disconnected_at: number;
  created_at: number;
  expiry_interval: number;
  subscriptions_cnt: number;
  inflight_cnt: number;
  mqueue_len: number;
  awaiting_rel_cnt: number;
  shard: number;
}

export interface SubscriptionInfo {
  clientid: string;
  topic: string;
  qos: 0 | 1 | 2;
}

/** Filters the REST API passes down, so shards return only what matches. */
export interface ClientFilter {
  clientid?: string;
  like_clientid?: string;
  username?: string;
  like_username?: string;
  ip_address?: string;
  conn_state?: 'connected' | 'disconnected';
  clean_start?: boolean;
  proto_ver?: number;
  gte_created_at?: number;
  lte_created_at?: number;
  gte_connected_at?: number;
  lte_connected_at?: number;
}

export interface SubscriptionFilter {
  clientid?: string;
  topic?: string;
  qos?: number;
  /** subscriptions whose topic filter is matched by this filter (EMQX: emqx_topic:match(Topic, MatchTopic)) */
  match_topic?: string;
}

/**
 * Queries a shard answers from its own state. Lists come back sorted, at most `limit` items
 * plus the total count, so main merges the shards' first pages instead of everything.
 */
export type ShardQuery =
  | { q: 'clients'; filter: ClientFilter; limit: number }
  | { q: 'client'; clientId: string }
  | { q: 'kick'; clientId: string }
  | { q: 'subscriptions'; filter: SubscriptionFilter; limit: number }
  | { q: 'clientSubscriptions'; clientId: string }
  | { q: 'topics'; topic?: string }
  | { q: 'memory' };

export interface ShardQueryResults {
  clients: { count: number; items: ClientInfo[] };
  client: ClientInfo | null;
  kick: boolean;
  subscriptions: { count: number; items: SubscriptionInfo[] };
  clientSubscriptions: SubscriptionInfo[] | null;
  /** topic filters with subscribers on this shard */
  topics: string[];
  /** this shard's heap and ArrayBuffer bytes (after a full GC when the process runs with --expose-gc) */
  memory: { heapUsed: number; arrayBuffers: number };
}

export type ShardQueryResult = ShardQueryResults[keyof ShardQueryResults];

/**
 * Every message that crosses a thread boundary is defined here. Threads only exchange plain,
 * structured-clonable data (plus transferred MessagePorts and ArrayBuffers).
 *
 *   main  → shard : MainToShard   (worker.postMessage)
 *   shard → main  : ShardToMain   (parentPort.postMessage)
 *   shard ↔ shard : ArrayBuffer batches of routed messages (see routing/batch.ts), on a
 *                   MessagePort per pair of shards, created by main.
 */
import type { MessagePort } from 'node:worker_threads';
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
  counters: CountersShared;
  /** peers[i] = port to shard i (null for itself) */
  peers: (MessagePort | null)[];
}

/** A retained message as stored by main and returned to shards. */
export interface RetainedRecord {
  topic: string;
  payload: Uint8Array;
  qos: 0 | 1 | 2;
}

/** A connection whose CONNECT main has read and validated, handed to the owning shard. */
export interface Handoff {
  /** dup()ed file descriptor, owned by the receiving shard from now on */
  fd: number;
  connect: ConnectPacket;
  /** Bytes read after the CONNECT frame, to be parsed before anything read from the fd */
  leftover: Uint8Array;
  /** True when the broker generated the client id (empty client id in CONNECT) */
  assignedClientId: boolean;
  remoteAddress: string;
  remotePort: number;
  /** hrtime (ns) when main accepted the socket, for handoff latency */
  acceptedAt: number;
}

export type MainToShard =
  | { t: 'adopt'; conns: Handoff[] }
  | { t: 'peer'; shard: number; port: MessagePort }
  | { t: 'retainAck'; reqId: number }
  | { t: 'retained'; reqId: number; records: RetainedRecord[] }
  | { t: 'shutdown' }
  | { t: 'crash' };

export type ShardToMain =
  | { t: 'ready'; generation: number }
  /** Store (or delete, when payload is empty) a retained message; reqId > 0 asks for a retainAck. */
  | { t: 'retain'; reqId: number; record: RetainedRecord }
  /** Retained messages matching these filters, for a new subscription. */
  | { t: 'retainedLookup'; reqId: number; filters: string[] }
  | { t: 'shutdownDone' };

// Messages and shared-memory layout between bench/run.ts (main) and bench/load-worker.ts.

import type { MessagePort } from 'node:worker_threads';

export type Qos = 0 | 1 | 2;

export interface PubSpec {
  pubIdx: number;
  clientId: string;
  topic: string;
}

export interface SubSpec {
  clientId: string;
  filter: string;
}

export interface RunSpec {
  runId: number;
  workerId: number;
  host: string;
  port: number;
  /** tcp, tls (certificate not verified: the bench's own) or ws (path /mqtt) */
  transport: 'tcp' | 'tls' | 'ws';
  qos: Qos;
  payload: number;
  pubs: PubSpec[];
  subs: SubSpec[];
  /** `conn` scenario: plain idle connections to open as fast as allowed. */
  idle: number;
  idlePrefix: string;
  /** Subscribers each message is expected to reach. */
  fanout: number;
  /** Max messages per publisher not yet delivered (and, at QoS 1/2, not yet acknowledged). */
  window: number;
  /** Max QoS 1/2 messages per publisher not yet PUBACKed/PUBCOMPed (hard limit, never written off). */
  ackWindow: number;
  /** Messages/s per publisher; 0 = closed loop as fast as the window allows. */
  ratePerPub: number;
  /** Worker id owning each publisher index (for cross-thread wake-ups). */
  pubOwner: number[];
  keepaliveS: number;
  connectConcurrency: number;
  stallMs: number;
}

export interface SharedBuffers {
  /** Int32: [PHASE], then one "stalled" flag per worker at STALLED_BASE + id. */
  ctrl: SharedArrayBuffer;
  /** Int32 per publisher index: unique deliveries seen by any subscriber. */
  delivered: SharedArrayBuffer;
  /** Float64 STAT_FIELDS per worker. */
  stats: SharedArrayBuffer;
}

export const PHASE = 0;
export const STALLED_BASE = 1;
export const CTRL_SLOTS = 64;

export const PHASE_SETUP = 0;
export const PHASE_GO = 1; // sending, warm-up: latency not recorded
export const PHASE_MEASURE = 2; // sending, latency recorded
export const PHASE_STOP = 3; // no new messages; draining

export const STAT_SENT = 0;
export const STAT_UNIQUE = 1;
export const STAT_DUPS = 2;
export const STAT_CONNECTED = 3;
export const STAT_FIELDS = 8;

export type ToWorker =
  | { type: 'init'; id: number; ports: (MessagePort | null)[] }
  | { type: 'run'; spec: RunSpec; shared: SharedBuffers }
  | { type: 'go' }
  | { type: 'stop' }
  | { type: 'finish' };

export interface WorkerResult {
  sent: number;
  unique: number;
  dups: number;
  stray: number;
  acked: number;
  writeOffs: number;
  /** Socket reads ('data' events) and writes by the generator: syscalls dominate its cost. */
  reads: number;
  writes: number;
  /** Messages received out of order (gaps later filled). */
  reordered: number;
  latency: string | null;
  connectLatency: string | null;
  connectStartNs: number;
  connectEndNs: number;
  connected: number;
  errors: string[];
}

export type FromWorker =
  | { type: 'ready'; connectStartNs: number; connectEndNs: number }
  | { type: 'stopped'; sent: number }
  | { type: 'result'; result: WorkerResult }
  | { type: 'fatal'; message: string };

/**
 * The durable store's interface: what the broker asks of any backend. The built-in one is LMDB
 * (storage/lmdb.ts); an embedding user can plug in another with `durability.store = <module>`,
 * a module exporting `openStore(options): DurableStore | Promise<DurableStore>`. It is opened
 * once in the main thread (retained messages) and once in every shard worker thread (sessions
 * of the client ids that hash to it), all on the same `path`, so a backend must allow several
 * openers in one process.
 *
 * Writes are queued and return nothing; `commit()` tells when everything queued so far is
 * durable. The broker calls it at most once per event-loop turn (group commit).
 */
import type { WillMessage } from '../protocol/codec.js';

export interface StoreOptions {
  /** node.data_dir, resolved */
  path: string;
  /** 'sync' or 'batched' ('none' never opens a store) */
  mode: 'sync' | 'batched';
  /** batched: how long writes may wait before they are committed together (ms) */
  flushIntervalMs: number;
  /** Who opens it: 'main' (retained) or 'shard' */
  role: 'main' | 'shard';
}

/** A subscription as stored: filter, options, shared group ('' = not shared). */
export interface StoredSubscription {
  f: string;
  q: number;
  nl: boolean;
  rap: boolean;
  rh: number;
  id: number;
  /** `$share/{group}/…` group, '' when not shared */
  g: string;
  /** The shared subscription's plain filter (after the group prefix) */
  sf: string;
}

/** A persistent session without its messages. */
export interface StoredSession {
  /** Session Expiry Interval (s); NEVER_EXPIRES = never */
  e: number;
  /** ms when it expires while offline; 0 while connected (or never) */
  x: number;
  /** ms since epoch when it was created */
  c: number;
  /** The will of the connection using it (null when offline or none) */
  w: WillMessage | null;
  /** A will waiting for its delay, and when it is due */
  pw: WillMessage | null;
  wa: number;
  subs: StoredSubscription[];
}

/** One queued or inflight QoS 1/2 delivery of a session. */
export interface StoredDelivery {
  /** topic, payload, QoS of the delivery, RETAIN flag on the wire, MQTT 5 properties */
  t: string;
  p: Uint8Array;
  q: number;
  r: boolean;
  pr: Uint8Array | null;
  /** message expiry (ms since epoch), 0 = never */
  e: number;
  /** publisher client id */
  f: string;
  /** sent as a retained message (on subscribe) */
  dr: boolean;
  s: number[] | null;
  g: string | null;
  /** packet id once sent (0 = queued, never sent) */
  i: number;
  /** QoS 2: PUBREL sent, waiting for PUBCOMP */
  rel: boolean;
}

export interface LoadedSession {
  clientId: string;
  session: StoredSession;
  /** by sequence number (arrival order) */
  deliveries: { seq: number; d: StoredDelivery }[];
  /** inbound QoS 2 packet ids awaiting PUBREL, with their arrival time (ms) */
  awaitingRel: [number, number][];
}

/** A retained message as stored (the same fields main's store keeps). */
export interface StoredRetained {
  topic: string;
  payload: Uint8Array;
  qos: number;
  props: Uint8Array | null;
  expiryAt: number;
}

export interface DurableStore {
  putSession(clientId: string, s: StoredSession): void;
  /** Removes the session with its deliveries and awaiting-PUBREL ids */
  deleteSession(clientId: string): void;
  putDelivery(clientId: string, seq: number, d: StoredDelivery): void;
  deleteDelivery(clientId: string, seq: number): void;
  putAwaitingRel(clientId: string, packetId: number, at: number): void;
  deleteAwaitingRel(clientId: string, packetId: number): void;
  /** A cross-shard batch from shard `from` to `to`, kept until `to` has committed it */
  putOutbox(from: number, to: number, seq: number, batch: Uint8Array): void;
  deleteOutbox(from: number, to: number, seq: number): void;
  /** The last batch from `from` that shard `to` has committed (committed with its deliveries) */
  putMark(to: number, from: number, seq: number): void;
  putRetained(topic: string, r: StoredRetained): void;
  deleteRetained(topic: string): void;

  /** Sessions whose client id `mine` accepts */
  loadSessions(mine: (clientId: string) => boolean): LoadedSession[];
  loadOutbox(from: number): { to: number; seq: number; batch: Uint8Array }[];
  loadMarks(to: number): Map<number, number>;
  loadRetained(): StoredRetained[];

  /** Resolves once every write queued so far is committed; null when none is pending */
  commit(): Promise<void> | null;
  close(): Promise<void>;
}

export type OpenStore = (o: StoreOptions) => DurableStore | Promise<DurableStore>;

/** The data dir cannot be used: the broker refuses to start rather than run memory-only. */
export class StorageError extends Error {}

import { Counter } from '../metrics/counters.js';
import type { RetainedStore } from '../retained/store.js';
import type { RetainedRecord } from '../threads/messages.js';
import type { ClusterStateToMain, MainToClusterState } from './state-messages.js';

/** Deletions are remembered this long, so that a full sync from a stale peer cannot resurrect them */
const TOMBSTONE_MS = 60 * 60 * 1000;
const MAX_TOMBSTONES = 100_000;

/**
 * Main's side of the replicated retained store. Every node keeps the whole store (a subscriber
 * on any node looks it up locally, with no round trip: retained lookups stay as cheap as on one
 * node, and a node that loses its peers still serves what it has). Each update is stamped where
 * it is published with a hybrid timestamp (ms × 1000 + counter) and the node name; every node
 * keeps the greater (ts, origin), deletions included (tombstones, kept an hour), so the replicas
 * converge whatever the order of live updates and full syncs. The publisher's PUBACK waits until
 * every running peer has the update in its store (its main merged it), as it already waits for
 * main here: a client that has seen the ack and subscribes on any node gets the message. A peer
 * that did not confirm (call failed or refused) while not known down makes it 0x80 for MQTT 5.
 */
export class RetainedReplica {
  private clock = 0;
  private readonly tombstones = new Map<string, { ts: number; origin: string; at: number }>();
  /** retainedOut ids → the shard ack they hold */
  private readonly pending = new Map<number, { shard: number; reqId: number }>();
  private seq = 0;

  constructor(
    private readonly store: RetainedStore,
    private readonly node: string,
    /** Stores a record with the retainer limits applied (false: refused) */
    private readonly set: (rec: RetainedRecord) => boolean,
    private readonly toCluster: (m: MainToClusterState) => boolean,
    private readonly ackShard: (shard: number, reqId: number, code: number) => void,
    /** main's counter row */
    private readonly row: Float64Array,
  ) {}

  /** A shard's retained message, before it is stored: stamped here. */
  stamp(rec: RetainedRecord): void {
    const now = Date.now() * 1000;
    this.clock = Math.max(now, this.clock + 1);
    rec.ts = this.clock;
    rec.origin = this.node;
    if (rec.payload.length === 0) this.tombstone(rec);
  }

  /**
   * Stored locally: replicate. Returns true when the shard's ack (reqId > 0) waits for the
   * peers; false when the caller acks now (no cluster thread running).
   */
  replicate(rec: RetainedRecord, shard: number, reqId: number): boolean {
    const id = ++this.seq;
    if (!this.toCluster({ t: 'retainedOut', id, entries: [rec] })) return false;
    if (reqId > 0) this.pending.set(id, { shard, reqId });
    return reqId > 0;
  }

  onCluster(m: ClusterStateToMain): void {
    if (m.t === 'retainedReplicated') {
      for (const id of m.ids) this.release(id, m.code);
    } else if (m.t === 'retainedIn') {
      for (const rec of m.entries) this.merge(rec);
      // In the store now: the peer's call is answered (its publisher's ack waits for it).
      if (m.id > 0) this.toCluster({ t: 'retainedMerged', id: m.id });
    } else if (m.t === 'retainedSnapshotReq') {
      this.toCluster({ t: 'retainedSnapshot', peer: m.peer, entries: this.snapshot() });
    }
  }

  /** The cluster thread died: nothing it held will be answered, the acks go now. */
  onClusterExit(): void {
    for (const id of [...this.pending.keys()]) this.release(id, 0);
  }

  private release(id: number, code: number): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    this.ackShard(p.shard, p.reqId, code);
  }

  /** A peer's record: kept if it is newer than ours (or our deletion). */
  merge(rec: RetainedRecord): void {
    const ts = rec.ts ?? 0;
    const origin = rec.origin ?? '';
    const cur = this.store.get(rec.topic) ?? this.tombstones.get(rec.topic);
    if (cur && !newer(ts, origin, cur.ts ?? 0, cur.origin ?? '')) return;
    // Our clock moves past what we saw, so a later local update wins over it.
    this.clock = Math.max(this.clock, Math.floor(ts / 1000) * 1000);
    this.row[Counter.retainedMerged]++;
    if (rec.payload.length === 0) {
      this.tombstone(rec);
      this.set(rec);
      return;
    }
    if (this.set(rec)) this.tombstones.delete(rec.topic);
  }

  private tombstone(rec: RetainedRecord): void {
    const now = Date.now();
    this.tombstones.delete(rec.topic); // re-insert: the map stays in age order
    this.tombstones.set(rec.topic, { ts: rec.ts ?? 0, origin: rec.origin ?? '', at: now });
    for (const [topic, t] of this.tombstones) {
      if (this.tombstones.size <= MAX_TOMBSTONES && now - t.at < TOMBSTONE_MS) break;
      this.tombstones.delete(topic);
    }
  }

  /** Every stored record and every tombstone (empty payload). */
  snapshot(): RetainedRecord[] {
    const out = this.store.all();
    for (const [topic, t] of this.tombstones)
      out.push({ topic, payload: new Uint8Array(0), qos: 0, ts: t.ts, origin: t.origin });
    return out;
  }
}

function newer(ts: number, origin: string, curTs: number, curOrigin: string): boolean {
  return ts > curTs || (ts === curTs && origin > curOrigin);
}

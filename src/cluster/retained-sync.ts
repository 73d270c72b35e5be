import { create } from '@bufbuild/protobuf';
import { Counter } from '../metrics/counters.js';
import { topicNameError } from '../protocol/topic.js';
import type { RetainedRecord } from '../threads/messages.js';
import {
  type RetainedBatch,
  type RetainedEntry,
  RetainedEntrySchema,
} from './gen/emqx_ts/cluster/v1/state_pb.js';
import type { Peer } from './peers.js';
import { caller, callTimeout, runningPeers, type StateHost, stateClient } from './state-host.js';

/** Records per ReplicateRetained call of a full sync */
const CHUNK = 500;

/**
 * The cluster thread's side of the replicated retained store (main keeps the store; see
 * retained-merge.ts): local updates go to every running peer in one call per peer per turn,
 * and main hears when all have answered (the publishers' acks wait for that); a peer we join
 * gets our whole store (its merge keeps the newer of each topic, so both directions of a join
 * converge); updates from peers go to main to merge.
 */
export class RetainedSync {
  private out: RetainedRecord[] = [];
  private outIds: number[] = [];
  private scheduled = false;

  constructor(private readonly host: StateHost) {}

  /** main: stored locally */
  onOut(id: number, entries: RetainedRecord[]): void {
    for (const e of entries) this.out.push(e);
    this.outIds.push(id);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const entries = this.out.map(toEntry);
    const ids = this.outIds;
    this.out = [];
    this.outIds = [];
    const calls = runningPeers(this.host.peers).map((p) => this.send(p, entries));
    void Promise.all(calls).then((codes) =>
      this.host.postMain({ t: 'retainedReplicated', ids, code: Math.max(0, ...codes) }),
    );
  };

  /**
   * Resolves when the peer has the entries in its store (0), or with 0x80 when it did not
   * confirm while it is not known down — as a forward to it would end (data-plane.ts): a peer
   * that left or restarted meanwhile is known down (what it held is gone anyway, and a rejoin
   * sends it our whole store); one that timed out, broke the call or refused it is not.
   */
  private send(p: Peer, entries: RetainedEntry[]): Promise<number> {
    const incarnation = p.incarnation;
    const failed = (err: unknown) => {
      this.host.log.debug({ peer: p.name, err: String(err) }, 'retained replication failed');
      return p.left || p.incarnation !== incarnation ? 0 : 0x80;
    };
    return stateClient(p.address)
      .replicateRetained(
        { from: this.host.name, incarnation: this.host.incarnation, entries },
        { timeoutMs: callTimeout(this.host.config) },
      )
      .then((r) => (r.applied ? 0 : failed('not applied: the peer does not know us as running')), failed);
  }

  private inSeq = 0;
  /** Peers' batches waiting for main to have merged them */
  private readonly merging = new Map<number, () => void>();

  /** main: the `retainedIn` `id` is in the store. */
  onMerged(id: number): void {
    this.merging.get(id)?.();
  }

  /** We joined `p`: it gets the whole store, once main has sent it (onSnapshot). */
  synced(p: Peer): void {
    this.host.postMain({ t: 'retainedSnapshotReq', peer: p.name });
  }

  onSnapshot(peer: string, records: RetainedRecord[]): void {
    const p = this.host.peers.byName.get(peer);
    if (!p?.synced) return;
    const entries = records.map(toEntry);
    void (async () => {
      for (let i = 0; i < entries.length; i += CHUNK) {
        if (!p.synced) return;
        await this.send(p, entries.slice(i, i + CHUNK)); // a failed chunk: the next join resends
      }
      this.host.log.debug({ peer, records: entries.length }, 'retained store sent to peer');
    })();
  }

  /** Server side: a peer's updates, checked, for main to merge; answered once they are in the store. */
  async onBatch(req: RetainedBatch): Promise<{ applied: boolean }> {
    if (!caller(this.host.peers, req.from, req.incarnation)) return { applied: false };
    const records: RetainedRecord[] = [];
    for (const e of req.entries) {
      if (topicNameError(e.topic) !== null || e.qos > 2) {
        this.host.counters.row[Counter.clusterErrors]++;
        continue;
      }
      records.push(fromEntry(e));
    }
    if (records.length === 0) return { applied: true };
    const id = ++this.inSeq;
    const stored = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => done(false), callTimeout(this.host.config));
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.merging.delete(id);
        resolve(ok);
      };
      this.merging.set(id, () => done(true));
      this.host.postMain({ t: 'retainedIn', entries: records, id });
    });
    return { applied: stored };
  }
}

function toEntry(r: RetainedRecord): RetainedEntry {
  return create(RetainedEntrySchema, {
    topic: r.topic,
    payload: r.payload,
    qos: r.qos,
    props: r.props ?? new Uint8Array(0),
    expiryAt: BigInt(r.expiryAt ?? 0),
    ts: BigInt(r.ts ?? 0),
    origin: r.origin ?? '',
  });
}

function fromEntry(e: RetainedEntry): RetainedRecord {
  return {
    topic: e.topic,
    payload: e.payload,
    qos: e.qos as 0 | 1 | 2,
    props: e.props.length > 0 ? e.props : null,
    expiryAt: Number(e.expiryAt),
    ts: Number(e.ts),
    origin: e.origin,
  };
}

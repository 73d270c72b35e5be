import { Counter } from '../metrics/counters.js';
import type { InflightEntry, QueuedDelivery, Session } from '../session/session.js';
import type { HeldAck } from '../shard/connection.js';
import type { ShardState } from '../shard/state.js';
import type { ShardToShard } from '../threads/messages.js';
import type { DurableStore, StoredDelivery, StoredSession, StoredSubscription } from './types.js';

/** What an ack waits on: the connection to release it on, once written. */
interface AckConnection {
  readonly closed: boolean;
  releaseAcks(): void;
}

const EMPTY = new Uint8Array(0);

/**
 * A shard's side of the durable store (docs/DURABILITY.md). Persistent sessions (Session
 * Expiry Interval > 0) are written as they change: the session record (subscriptions, expiry,
 * wills) once per turn in which it changed, each QoS 1/2 delivery when it is queued or sent and
 * removed when acknowledged, inbound QoS 2 ids until PUBREL. Clean sessions write nothing.
 *
 * Messages to other shards: a batch with QoS 1/2 messages is put in this shard's outbox, in the
 * same turn's commit, until the receiver says it committed the batch (`batchCommitted`); the
 * receiver keeps the last sequence number it committed per sender (a mark, in the same commit
 * as its deliveries), so a batch re-sent after a restart (`replayTo`) is delivered once.
 *
 * `sync`: a client's QoS 1/2 ack is held until the commit of the turn that routed the message
 * (local deliveries and outbox): one commit per event-loop turn, not per message.
 */
export class ShardDurability {
  readonly sync: boolean;
  private readonly dirty = new Set<Session>();
  private acks: { conn: AckConnection; held: HeldAck }[] = [];
  /** Run once this turn is committed (held SUBACKs of persistent sessions) */
  private after: (() => void)[] = [];
  /** [sender shard, seq] pairs to confirm once this turn is committed */
  private confirms: number[] = [];
  private outSeq = 0;
  /** Unconfirmed outbox batches per receiving shard, seq → bytes (insertion = seq order) */
  private readonly unconfirmed: Map<number, Buffer>[];
  /** Last batch seq committed here, per sender shard */
  private readonly marks: Map<number, number>;

  constructor(
    private readonly s: ShardState,
    readonly store: DurableStore,
    private readonly scheduleTurnEnd: () => void,
  ) {
    this.sync = s.config['durability.mode'] === 'sync';
    this.unconfirmed = s.peers.map(() => new Map());
    for (const o of store.loadOutbox(s.id)) {
      const m = this.unconfirmed[o.to];
      if (m) m.set(o.seq, Buffer.from(o.batch));
      if (o.seq > this.outSeq) this.outSeq = o.seq;
    }
    this.marks = store.loadMarks(s.id);
  }

  private wrote(n: number): void {
    this.s.counters.row[Counter.storeWrites] += n;
    this.scheduleTurnEnd();
  }

  // ------------------------------------------------------------------------------------------
  // Sessions and their deliveries

  /** After restoring: the restored sessions' records are as stored, nothing to rewrite. */
  restored(): void {
    this.dirty.clear();
  }

  /** The session's record (subscriptions, expiry, wills) is written at the end of this turn. */
  sessionChanged(session: Session): void {
    if (session.expiryInterval === 0) return;
    this.dirty.add(session);
    this.scheduleTurnEnd();
  }

  /** The session ended (discarded, expired, or no longer persistent): all its records go. */
  sessionGone(session: Session): void {
    this.dirty.delete(session);
    this.store.deleteSession(session.clientId);
    this.wrote(1);
  }

  /** A QoS 1/2 delivery was queued (packetId 0) or sent into the inflight window. */
  held(session: Session, e: QueuedDelivery | InflightEntry, packetId: number): void {
    if (session.expiryInterval === 0 || e.qos === 0) return;
    const m = e.msg;
    const d: StoredDelivery = {
      t: m.topic,
      p: m.payload,
      q: e.qos,
      r: e.retainFlag,
      pr: m.props,
      e: m.expiryAt,
      f: m.from,
      dr: m.deliverRetained,
      s: e.subIds,
      g: e.group,
      i: packetId,
      rel: false,
    };
    this.store.putDelivery(session.clientId, e.seq, d);
    this.wrote(1);
  }

  /** QoS 2 PUBREC received, PUBREL sent: only the packet id matters now (the payload is delivered). */
  released(session: Session, e: InflightEntry, packetId: number): void {
    if (session.expiryInterval === 0) return;
    const d: StoredDelivery = {
      t: e.msg.topic,
      p: EMPTY,
      q: 2,
      r: false,
      pr: null,
      e: 0,
      f: '',
      dr: false,
      s: null,
      g: e.group,
      i: packetId,
      rel: true,
    };
    this.store.putDelivery(session.clientId, e.seq, d);
    this.wrote(1);
  }

  /** The delivery is complete (acknowledged) or dropped (expired, queue full, redispatched). */
  done(session: Session, e: QueuedDelivery | InflightEntry): void {
    if (session.expiryInterval === 0 || e.qos === 0) return;
    this.store.deleteDelivery(session.clientId, e.seq);
    this.wrote(1);
  }

  /** Inbound QoS 2: PUBREC sent, the id is remembered until PUBREL [MQTT-4.3.3-2]. */
  awaitingRel(session: Session, packetId: number, at: number): void {
    if (session.expiryInterval === 0) return;
    this.store.putAwaitingRel(session.clientId, packetId, at);
    this.wrote(1);
  }

  relDone(session: Session, packetId: number): void {
    if (session.expiryInterval === 0) return;
    this.store.deleteAwaitingRel(session.clientId, packetId);
    this.wrote(1);
  }

  // ------------------------------------------------------------------------------------------
  // Acks (sync mode)

  /** Holds a client's ack until this turn is committed (releaseAcks keeps PUBLISH order). */
  holdAck(conn: AckConnection & { holdAck(frame: Buffer): HeldAck }, frame: Buffer): void {
    this.acks.push({ conn, held: conn.holdAck(frame) });
    this.s.counters.row[Counter.storeAcksHeld]++;
    this.scheduleTurnEnd();
  }

  /** An ack already held for something else (main's retained store) waits for this commit too. */
  alsoWaitFor(conn: AckConnection, held: HeldAck): void {
    held.waits = (held.waits ?? 1) + 1;
    this.acks.push({ conn, held });
    this.s.counters.row[Counter.storeAcksHeld]++;
    this.scheduleTurnEnd();
  }

  /** Runs `fn` once this turn's writes are committed. */
  afterCommit(fn: () => void): void {
    this.after.push(fn);
    this.scheduleTurnEnd();
  }

  // ------------------------------------------------------------------------------------------
  // Cross-shard outbox

  /**
   * A batch with QoS 1/2 messages for shard `to`: kept (store and memory) until `to` confirms.
   * Returns its sequence number, increasing across restarts (it starts from the clock, µs).
   */
  outboxAdd(to: number, ab: ArrayBuffer, len: number): number {
    const seq = Math.max(Date.now() * 1000, this.outSeq + 1);
    this.outSeq = seq;
    const copy = Buffer.allocUnsafeSlow(len);
    copy.set(new Uint8Array(ab, 0, len));
    this.unconfirmed[to].set(seq, copy);
    this.store.putOutbox(this.s.id, to, seq, copy);
    this.wrote(1);
    return seq;
  }

  /** Shard `from` committed our batches up to `seq`. */
  onConfirmed(from: number, seq: number): void {
    const m = this.unconfirmed[from];
    if (!m) return;
    let n = 0;
    for (const k of m.keys()) {
      if (k > seq) break;
      m.delete(k);
      this.store.deleteOutbox(this.s.id, from, k);
      n++;
    }
    if (n > 0) this.wrote(n);
  }

  /**
   * A batch from shard `from` with outbox seq `seq`: false when it was committed here already
   * (a replay after a restart), so it is not delivered twice. Either way it is confirmed after
   * this turn's commit.
   */
  acceptBatch(from: number, seq: number): boolean {
    this.confirms.push(from, seq);
    this.scheduleTurnEnd();
    if (seq <= (this.marks.get(from) ?? 0)) {
      this.s.counters.row[Counter.outboxDuplicates]++;
      return false;
    }
    this.marks.set(from, seq);
    this.store.putMark(this.s.id, from, seq);
    this.wrote(1);
    return true;
  }

  /** Re-sends the unconfirmed batches for `to` (it restarted, or we did), in order. */
  replayTo(to: number): void {
    const port = this.s.peers[to];
    const m = this.unconfirmed[to];
    if (!port || !m || m.size === 0) return;
    for (const [seq, bytes] of m) {
      const buf = new ArrayBuffer(bytes.length);
      new Uint8Array(buf).set(bytes);
      port.postMessage(
        { t: 'batch', buf, len: bytes.length, count: 0, seq, replay: true } satisfies ShardToShard,
        [buf],
      );
      this.s.counters.row[Counter.outboxReplayed]++;
    }
  }

  replayAll(): void {
    for (let to = 0; to < this.unconfirmed.length; to++) if (to !== this.s.id) this.replayTo(to);
  }

  // ------------------------------------------------------------------------------------------
  // End of turn: one commit

  endTurn(): void {
    if (this.dirty.size > 0) {
      for (const session of this.dirty) this.store.putSession(session.clientId, storedSession(session));
      this.wrote(this.dirty.size);
      this.dirty.clear();
    }
    const acks = this.acks;
    const confirms = this.confirms;
    const after = this.after;
    if (acks.length === 0 && confirms.length === 0 && after.length === 0) {
      // Nothing waits for this turn's writes: lmdb-js commits them on its own schedule.
      return;
    }
    this.acks = [];
    this.confirms = [];
    this.after = [];
    let p: Promise<void> | null;
    try {
      p = this.store.commit();
    } catch (err) {
      this.storeError(err);
      p = null;
    }
    if (p === null) this.committed(acks, confirms, after);
    else {
      this.s.counters.row[Counter.storeCommits]++;
      p.then(
        () => this.committed(acks, confirms, after),
        (err: unknown) => {
          this.storeError(err);
          this.committed(acks, confirms, after);
        },
      );
    }
  }

  private committed(
    acks: { conn: AckConnection; held: HeldAck }[],
    confirms: number[],
    after: (() => void)[],
  ): void {
    for (let i = 0; i < after.length; i++) after[i]();
    for (let i = 0; i < acks.length; i++) {
      const { conn, held } = acks[i];
      if (held.waits !== undefined && --held.waits > 0) continue;
      held.ready = true;
      if (!conn.closed) conn.releaseAcks();
    }
    for (let i = 0; i < confirms.length; i += 2) {
      this.s.peers[confirms[i]]?.postMessage({
        t: 'batchCommitted',
        seq: confirms[i + 1],
      } satisfies ShardToShard);
    }
  }

  /** A failed commit is logged and counted; the broker keeps serving (acks go out). */
  private storeError(err: unknown): void {
    this.s.counters.row[Counter.storeErrors]++;
    this.s.log.error({ err }, 'durable store commit failed');
  }
}

function storedSession(session: Session): StoredSession {
  const subs: StoredSubscription[] = [];
  if (session.subscriptionCount > 0)
    for (const [f, sub] of session.subscriptions)
      subs.push({
        f,
        q: sub.qos,
        nl: sub.noLocal,
        rap: sub.retainAsPublished,
        rh: sub.retainHandling,
        id: sub.subId,
        g: sub.shared?.group ?? '',
        sf: sub.shared?.filter ?? '',
      });
  return {
    e: session.expiryInterval,
    x: session.expiresAt,
    c: session.createdAt,
    w: session.conn ? session.will : null,
    pw: session.pendingWill,
    wa: session.willAt,
    subs,
  };
}

import type { InflightEntry, QueuedDelivery, Session } from '../session/session.js';
import type { HeldAck } from '../shard/held-ack.js';
import type { DurableStore, StoredDelivery, StoredSession, StoredSubscription } from './types.js';

const EMPTY = new Uint8Array(0);
const NO_ENTRY = { seq: 0 } as QueuedDelivery;

/**
 * A batch from a peer shard being delivered here (sync mode): it is confirmed to its sender —
 * and its mark written — only once none of its deliveries is held back any more (each one
 * acknowledged, or moved into a flush). `deferred` counts those still held.
 */
export interface BatchWaiter {
  readonly from: number;
  readonly seq: number;
  /** Its deliveries still held for their PUBACK (durability.online_ack_wait) */
  deferred: number;
  /** Still being delivered (readBatch): more deliveries may come */
  open: boolean;
  /** A replay this shard had delivered already: confirmed, no mark */
  readonly dup: boolean;
  /**
   * It wrote a record (a delivery not held, or written after the wait; an outbox entry passing
   * it on): confirmed after the commit, with its mark. Otherwise nothing of it is stored — its
   * persistent subscribers acknowledged every delivery — and it is confirmed at once.
   */
  written: boolean;
}

/** What a delivery op stands for */
const HELD = 0; // a first write held for the PUBACK (in the held queue)
const PUT = 1; // its latest state, written at the next flush (in the pending list)
const DEL = 2; // its record is removed at the next flush (in the pending list)
const DEAD = 3; // nothing any more: skipped (and freed) where it is listed

/**
 * A delivery's write not flushed yet. Linked from the delivery itself (`e.w`), so that a
 * change of the same delivery (queued, then sent; acknowledged) finds it without a lookup; it
 * is listed once, in the held queue or in the pending list, and freed from there.
 */
interface DeliveryOp {
  e: QueuedDelivery | InflightEntry;
  /** Its session's client id (the store key) */
  c: string;
  state: number;
  /** packet id once sent (0 = queued) */
  i: number;
  /** QoS 2 after PUBREC: only the packet id is kept */
  rel: boolean;
  /** sync: the publisher's ack waiting for this record (until flushed and committed, or done) */
  t: HeldAck | null;
  /** Held for its PUBACK: written at the first flush from this time on (ms); 0 = not held */
  due: number;
  /** Held: the peer batch it came in, confirmed once none of its deliveries is held */
  b: BatchWaiter | null;
}

/** A free slot of the held queue */
const NO_OP: DeliveryOp = { e: NO_ENTRY, c: '', state: DEAD, i: 0, rel: false, t: null, due: 0, b: null };

/** An outbox entry to put (bytes) or remove (null), with the acks waiting for the put. */
interface OutboxOp {
  to: number;
  bytes: Buffer | null;
  ts: HeldAck[] | null;
  /** Held for the receiver's confirmation: written at the first flush from this time on (ms) */
  due: number;
}

/**
 * A shard's store writes between two flushes, collapsed by key: a delivery changed several
 * times (queued, then sent with its packet id) is written once, in its latest state, and one
 * that is done (acknowledged, dropped) before its first flush is never written at all — no put
 * and no remove. The same for outbox entries confirmed before their flush and for marks (the
 * last one per sender). Session records are written once per flush, removed sessions first.
 *
 * Flushes only happen when no commit of this thread is in flight (shard-durability.ts), so a
 * flush's reads (the keys of a removed session) see every earlier flush committed.
 */
export class PendingWrites {
  /** Delivery writes for the next flush, in the order of their first change (PUT, DEL, DEAD) */
  private pend: DeliveryOp[] = [];
  /** Delivery ops written or dropped, for reuse */
  private readonly freeOps: DeliveryOp[] = [];
  /** Sessions whose record (subscriptions, expiry, wills) is written at the next flush */
  private readonly dirty = new Set<Session>();
  /** Client ids whose records go, before anything else of the flush */
  private gone: string[] = [];
  /** Inbound QoS 2 ids in order: at < 0 removes */
  private rel: { c: string; id: number; at: number; t: HeldAck | null }[] = [];
  /** outbox seq → entry to put (bytes) or remove (null), and the acks waiting for the put */
  private readonly outbox = new Map<number, OutboxOp>();
  /** outbox seq → entry held for the receiver's confirmation (insertion = due order) */
  private readonly outboxHeld = new Map<number, OutboxOp>();
  /** Held delivery ops in due order (a queue: `heldHead` is its first live index) */
  private heldQ: DeliveryOp[] = [];
  private heldHead = 0;
  /** Held deliveries not yet written nor done */
  private heldLive = 0;
  /** sender shard → last batch seq committed here */
  private readonly marks = new Map<number, number>();
  /** Writes saved: a put and its remove that were never made */
  skipped = 0;
  /** Held deliveries acknowledged before their wait ended (never written) */
  heldAcked = 0;
  /** Held deliveries written because their wait ended */
  heldWritten = 0;
  /** Held outbox entries confirmed before their wait ended (never written) */
  outboxHeldConfirmed = 0;
  /** A peer batch may be ready to confirm (its last held delivery is done or written) */
  batchesReady = false;

  /** @param holdMs durability.online_ack_wait: how long a held write waits (ms) */
  constructor(private readonly holdMs = 0) {}

  /** Held writes (deliveries, outbox entries) not written yet */
  get heldCount(): number {
    return this.heldLive + this.outboxHeld.size;
  }

  /** When the first held write is due (ms), or 0 when none is held. */
  nextDue(): number {
    const q = this.heldQ;
    while (this.heldHead < q.length && q[this.heldHead].state !== HELD) this.popHeld();
    let due = this.heldHead < q.length ? q[this.heldHead].due : 0;
    this.compactHeld();
    if (this.outboxHeld.size > 0) {
      const o = this.outboxHeld.values().next().value as OutboxOp;
      if (due === 0 || o.due < due) due = o.due;
    }
    return due;
  }

  get empty(): boolean {
    return (
      this.pend.length === 0 &&
      this.dirty.size === 0 &&
      this.gone.length === 0 &&
      this.rel.length === 0 &&
      this.outbox.size === 0 &&
      this.marks.size === 0
    );
  }

  sessionChanged(session: Session): void {
    this.dirty.add(session);
  }

  /** A session not in memory (stored, see ShardDurability.recordGone): its records go. */
  recordGone(clientId: string): void {
    this.gone.push(clientId);
  }

  /** The session ended: its records go, and nothing of it that is pending is written. */
  sessionGone(session: Session): void {
    const c = session.clientId;
    this.dirty.delete(session);
    // Nothing is stored for a discarded session: acks waiting for its deliveries are free.
    if (session.inflightCount > 0) for (const e of session.inflight.values()) this.forget(e);
    for (let i = 0; i < session.queue.length; i++) this.forget(session.queue.get(i));
    if (this.rel.length > 0)
      this.rel = this.rel.filter((o) => {
        if (o.c !== c) return true;
        o.t?.partDone();
        return false;
      });
    this.gone.push(c);
  }

  /** A delivery of a session that is gone: its write is not made, its ack is free of it. */
  private forget(e: QueuedDelivery): void {
    e.stored = false;
    const op = e.w as DeliveryOp | null;
    if (op === null) return;
    e.w = null;
    if (op.state === HELD) this.dropHeld(op);
    else {
      op.t?.partDone();
      op.t = null;
      op.state = DEAD;
    }
  }

  /**
   * A delivery's new state. `hold`: a QoS 1 delivery to a connected subscriber — its first
   * write waits up to the hold time for the PUBACK (then it is never written); `b` is the peer
   * batch it came in (its confirmation waits while the write is held).
   */
  putDelivery(
    clientId: string,
    e: QueuedDelivery | InflightEntry,
    i: number,
    rel: boolean,
    t: HeldAck | null,
    hold = false,
    b: BatchWaiter | null = null,
  ): void {
    const op = e.w as DeliveryOp | null;
    if (op !== null) {
      // A later state of an unflushed delivery: the ack waiting for it waits for this one.
      if (t !== null) {
        if (op.t !== null && op.t !== t) op.t.partDone();
        op.t = t;
      }
      op.i = i;
      op.rel = rel;
      if (op.state !== HELD || hold) return;
      // No longer to be held (QoS 2 released, …): written at the next flush.
      if (op.b !== null) op.b.written = true;
      const p = this.op(e, clientId, PUT, i, rel, op.t);
      op.t = null;
      this.dropHeld(op);
      e.w = p;
      this.pend.push(p);
      return;
    }
    if (hold && this.holdMs > 0 && !e.stored) {
      // First write of a delivery to a connected subscriber: held for its PUBACK.
      const h = this.op(e, clientId, HELD, i, rel, t);
      h.due = Date.now() + this.holdMs;
      h.b = b;
      if (b !== null) b.deferred++;
      e.w = h;
      this.heldQ.push(h);
      this.heldLive++;
      return;
    }
    const p = this.op(e, clientId, PUT, i, rel, t);
    e.w = p;
    this.pend.push(p);
  }

  /** A delivery op from the free list (no allocation per delivery once warm). */
  private op(
    e: QueuedDelivery | InflightEntry,
    c: string,
    state: number,
    i: number,
    rel: boolean,
    t: HeldAck | null,
  ): DeliveryOp {
    const op = this.freeOps.pop();
    if (op === undefined) return { e, c, state, i, rel, t, due: 0, b: null };
    op.e = e;
    op.c = c;
    op.state = state;
    op.i = i;
    op.rel = rel;
    op.t = t;
    return op;
  }

  private freeOp(op: DeliveryOp): void {
    op.t = null;
    op.e = NO_ENTRY;
    op.c = '';
    op.state = DEAD;
    op.due = 0;
    op.b = null;
    if (this.freeOps.length < 1024) this.freeOps.push(op);
  }

  /** A held delivery done (acknowledged, dropped, or moved to a new op): its ack and batch are free of it. */
  private dropHeld(h: DeliveryOp): void {
    h.t?.partDone();
    h.t = null;
    this.releaseBatch(h);
    h.state = DEAD; // freed when it reaches the queue's head
    this.heldLive--;
  }

  private releaseBatch(h: DeliveryOp): void {
    const b = h.b;
    if (b === null) return;
    h.b = null;
    if (--b.deferred === 0 && !b.open) this.batchesReady = true;
  }

  private popHeld(): void {
    const q = this.heldQ;
    const h = q[this.heldHead];
    q[this.heldHead++] = NO_OP;
    this.freeOp(h);
    // Emptied in place; compacted only by release() and nextDue(), after their loops over it.
    if (this.heldHead === q.length) {
      q.length = 0;
      this.heldHead = 0;
    }
  }

  private compactHeld(): void {
    const q = this.heldQ;
    if (this.heldHead >= 1024 && this.heldHead * 2 >= q.length) {
      this.heldQ = q.slice(this.heldHead);
      this.heldHead = 0;
    }
  }

  /**
   * Held writes whose wait is over (all of them with `all`) go into the next flush: delivery
   * records into their client's pending writes, outbox entries into the outbox writes.
   */
  release(now: number, all: boolean): void {
    const q = this.heldQ;
    while (this.heldHead < q.length) {
      const h = q[this.heldHead];
      if (h.state === HELD) {
        if (!all && h.due > now) break;
        if (h.b !== null) h.b.written = true;
        this.releaseBatch(h);
        this.heldLive--;
        this.heldWritten++;
        // Moved, not copied: the queue's slot lets go of it.
        q[this.heldHead] = NO_OP;
        h.due = 0;
        h.state = PUT;
        this.pend.push(h);
        this.heldHead++;
        if (this.heldHead === q.length) {
          q.length = 0;
          this.heldHead = 0;
        }
        continue;
      }
      this.popHeld();
    }
    this.compactHeld();
    if (this.outboxHeld.size > 0)
      for (const [seq, o] of this.outboxHeld) {
        if (!all && o.due > now) break;
        this.outboxHeld.delete(seq);
        this.outbox.set(seq, o);
      }
  }

  /** The delivery is done (acknowledged, dropped): its record goes, or is never written. */
  removeDelivery(clientId: string, e: QueuedDelivery | InflightEntry): void {
    const op = e.w as DeliveryOp | null;
    if (op !== null) {
      if (op.state === HELD) {
        // Acknowledged within the wait: never written (its record was never stored).
        e.w = null;
        this.dropHeld(op);
        this.skipped += 2;
        this.heldAcked++;
        return;
      }
      // Done before its record was flushed: nothing to store for it, its publisher's ack is free.
      op.t?.partDone();
      op.t = null;
      if (e.stored) op.state = DEL;
      else {
        e.w = null;
        op.state = DEAD;
        this.skipped += 2;
      }
      return;
    }
    if (e.stored) {
      const p = this.op(e, clientId, DEL, 0, false, null);
      e.w = p;
      this.pend.push(p);
    }
  }

  /** Returns the op, so that the PUBLISH's ack (held after this) can wait for it. */
  putAwaitingRel(clientId: string, id: number, at: number): { t: HeldAck | null } {
    const op: { c: string; id: number; at: number; t: HeldAck | null } = { c: clientId, id, at, t: null };
    this.rel.push(op);
    return op;
  }

  removeAwaitingRel(clientId: string, id: number): void {
    this.rel.push({ c: clientId, id, at: -1, t: null });
  }

  /** `hold`: the put waits up to the hold time for the receiver's confirmation (then it is never written). */
  putOutbox(to: number, seq: number, bytes: Buffer, ts: HeldAck[] | null, hold = false): void {
    if (hold && this.holdMs > 0) this.outboxHeld.set(seq, { to, bytes, ts, due: Date.now() + this.holdMs });
    else this.outbox.set(seq, { to, bytes, ts, due: 0 });
  }

  removeOutbox(to: number, seq: number): void {
    if (this.outboxHeld.size > 0) {
      const h = this.outboxHeld.get(seq);
      if (h !== undefined) {
        this.outboxHeld.delete(seq);
        this.skipped += 2;
        this.outboxHeldConfirmed++;
        if (h.ts !== null) for (const t of h.ts) t.partDone();
        return;
      }
    }
    const o = this.outbox.get(seq);
    if (o === undefined) this.outbox.set(seq, { to, bytes: null, ts: null, due: 0 });
    else if (o.bytes !== null) {
      // Confirmed by the receiver (committed there) before our flush: never written here.
      this.outbox.delete(seq);
      this.skipped += 2;
      if (o.ts !== null) for (const t of o.ts) t.partDone();
    }
  }

  putMark(from: number, seq: number): void {
    this.marks.set(from, seq);
  }

  /**
   * Hands everything pending to the store (not committed yet); returns the records written.
   * The held acks waiting for the records written go to `parts` (one entry per record), each
   * entry's part done once the commit is done.
   */
  flush(store: DurableStore, shard: number, parts: HeldAck[]): number {
    let n = 0;
    for (let i = 0; i < this.gone.length; i++) store.deleteSession(this.gone[i]);
    n += this.gone.length;
    this.gone = [];
    for (const s of this.dirty) store.putSession(s.clientId, storedSession(s));
    n += this.dirty.size;
    this.dirty.clear();
    const pend = this.pend;
    for (let k = 0; k < pend.length; k++) {
      const op = pend[k];
      const e = op.e;
      if (op.state === PUT) {
        store.putDelivery(op.c, e.seq, storedDelivery(op));
        e.stored = true;
        if (op.t !== null) parts.push(op.t);
        n++;
      } else if (op.state === DEL) {
        store.deleteDelivery(op.c, e.seq);
        e.stored = false;
        n++;
      }
      if (e.w === op) e.w = null;
      this.freeOp(op);
    }
    pend.length = 0;
    for (let i = 0; i < this.rel.length; i++) {
      const o = this.rel[i];
      if (o.at < 0) store.deleteAwaitingRel(o.c, o.id);
      else store.putAwaitingRel(o.c, o.id, o.at);
      if (o.t !== null) parts.push(o.t);
    }
    n += this.rel.length;
    this.rel = [];
    for (const [seq, o] of this.outbox) {
      if (o.bytes === null) store.deleteOutbox(shard, o.to, seq);
      else store.putOutbox(shard, o.to, seq, o.bytes);
      if (o.ts !== null) for (const t of o.ts) parts.push(t);
    }
    n += this.outbox.size;
    this.outbox.clear();
    for (const [from, seq] of this.marks) store.putMark(shard, from, seq);
    n += this.marks.size;
    this.marks.clear();
    return n;
  }
}

function storedDelivery(op: DeliveryOp): StoredDelivery {
  const e = op.e;
  if (op.rel)
    // QoS 2 PUBREC received, PUBREL sent: only the packet id matters now (the payload is delivered).
    return {
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
      i: op.i,
      rel: true,
    };
  const m = e.msg;
  return {
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
    i: op.i,
    rel: false,
  };
}

export function storedSession(session: Session): StoredSession {
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

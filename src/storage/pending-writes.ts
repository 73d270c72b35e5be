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

/** A delivery's latest state, written at the next flush (null: remove it). */
interface DeliveryOp {
  e: QueuedDelivery | InflightEntry;
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
  /** Held: its client (for the move into a flush) */
  r: ClientDeliveries | null;
  /** Held and then done (acknowledged, dropped): skipped when it reaches the queue's head */
  dead: boolean;
}

/** One client id's deliveries: what the store holds and what changes at the next flush. */
class ClientDeliveries {
  /** seq → latest state (insertion order = first change since the last flush) */
  readonly pending = new Map<number, DeliveryOp | null>();
  /**
   * seq → a first write held for the subscriber's PUBACK (durability.online_ack_wait): moved
   * into `pending` when the wait is over, dropped (never written) when acknowledged first
   */
  readonly held = new Map<number, DeliveryOp>();
  /** seqs written to the store by earlier flushes (or loaded from it) and not removed since */
  readonly stored = new Set<number>();
  constructor(readonly clientId: string) {}
}

/** A free slot of the held queue */
const NO_OP: DeliveryOp = { e: NO_ENTRY, i: 0, rel: false, t: null, due: 0, b: null, r: null, dead: true };

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
  private readonly clients = new Map<string, ClientDeliveries>();
  private readonly touched = new Set<ClientDeliveries>();
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
    while (this.heldHead < q.length && q[this.heldHead].dead) this.popHeld();
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
      this.touched.size === 0 &&
      this.dirty.size === 0 &&
      this.gone.length === 0 &&
      this.rel.length === 0 &&
      this.outbox.size === 0 &&
      this.marks.size === 0
    );
  }

  /** After restoring: the deliveries the store holds, so that their removal is written. */
  loaded(clientId: string, seqs: Iterable<number>): void {
    const r = this.client(clientId);
    for (const s of seqs) r.stored.add(s);
    if (r.stored.size === 0) this.clients.delete(clientId);
  }

  private client(clientId: string): ClientDeliveries {
    let r = this.clients.get(clientId);
    if (r === undefined) {
      r = new ClientDeliveries(clientId);
      this.clients.set(clientId, r);
    }
    return r;
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
    const r = this.clients.get(c);
    if (r !== undefined) {
      // Nothing is stored for a discarded session: acks waiting for its deliveries are free.
      for (const op of r.pending.values())
        if (op !== null) {
          op.t?.partDone();
          this.freeOp(op);
        }
      for (const op of r.held.values()) this.dropHeld(op);
      r.held.clear();
      this.touched.delete(r);
      this.clients.delete(c);
    }
    if (this.rel.length > 0)
      this.rel = this.rel.filter((o) => {
        if (o.c !== c) return true;
        o.t?.partDone();
        return false;
      });
    this.gone.push(c);
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
    const r = this.client(clientId);
    if (r.held.size > 0) {
      const h = r.held.get(e.seq);
      if (h !== undefined) {
        if (t !== null) {
          if (h.t !== null && h.t !== t) h.t.partDone();
          h.t = t;
        }
        h.e = e;
        h.i = i;
        h.rel = rel;
        if (hold) return;
        // No longer to be held (QoS 2 released, …): written at the next flush.
        r.held.delete(e.seq);
        if (h.b !== null) h.b.written = true;
        const op = this.op(h.e, h.i, h.rel, h.t);
        h.t = null;
        this.dropHeld(h);
        r.pending.set(e.seq, op);
        this.touched.add(r);
        return;
      }
    }
    const op = r.pending.get(e.seq);
    if (op === undefined && hold && this.holdMs > 0 && !r.stored.has(e.seq)) {
      // First write of a delivery to a connected subscriber: held for its PUBACK.
      const h = this.op(e, i, rel, t);
      h.due = Date.now() + this.holdMs;
      h.b = b;
      h.r = r;
      if (b !== null) b.deferred++;
      r.held.set(e.seq, h);
      this.heldQ.push(h);
      this.heldLive++;
      return;
    }
    if (op == null) r.pending.set(e.seq, this.op(e, i, rel, t));
    else {
      // A later state of an unflushed delivery: the ack waiting for it waits for this one.
      if (t !== null) {
        if (op.t !== null && op.t !== t) op.t.partDone();
        op.t = t;
      }
      op.e = e;
      op.i = i;
      op.rel = rel;
    }
    this.touched.add(r);
  }

  /** A delivery op from the free list (no allocation per delivery once warm). */
  private op(e: QueuedDelivery | InflightEntry, i: number, rel: boolean, t: HeldAck | null): DeliveryOp {
    const op = this.freeOps.pop();
    if (op === undefined) return { e, i, rel, t, due: 0, b: null, r: null, dead: false };
    op.e = e;
    op.i = i;
    op.rel = rel;
    op.t = t;
    return op;
  }

  private freeOp(op: DeliveryOp): void {
    op.t = null;
    op.e = NO_ENTRY;
    op.due = 0;
    op.b = null;
    op.r = null;
    op.dead = false;
    if (this.freeOps.length < 1024) this.freeOps.push(op);
  }

  /** A held delivery done (acknowledged, dropped, or moved to `pending`): its ack and batch are free of it. */
  private dropHeld(h: DeliveryOp): void {
    h.t?.partDone();
    h.t = null;
    this.releaseBatch(h);
    h.dead = true; // freed when it reaches the queue's head
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
      if (!h.dead) {
        if (!all && h.due > now) break;
        const r = h.r!;
        r.held.delete(h.e.seq);
        if (h.b !== null) h.b.written = true;
        this.releaseBatch(h);
        this.heldLive--;
        this.heldWritten++;
        // Moved, not copied: the queue's slot lets go of it.
        q[this.heldHead] = NO_OP;
        h.due = 0;
        h.r = null;
        r.pending.set(h.e.seq, h);
        this.touched.add(r);
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

  removeDelivery(clientId: string, seq: number): void {
    const r = this.clients.get(clientId);
    if (r === undefined) return;
    if (r.held.size > 0) {
      const h = r.held.get(seq);
      if (h !== undefined) {
        // Acknowledged within the wait: never written (its record was never stored).
        r.held.delete(seq);
        this.dropHeld(h);
        this.skipped += 2;
        this.heldAcked++;
        if (r.pending.size === 0 && r.held.size === 0 && r.stored.size === 0) this.clients.delete(clientId);
        return;
      }
    }
    // Done before its record was flushed: nothing to store for it, its publisher's ack is free.
    const op = r.pending.get(seq);
    if (op != null) {
      op.t?.partDone();
      this.freeOp(op);
    }
    if (r.stored.has(seq)) {
      r.pending.set(seq, null);
      this.touched.add(r);
    } else if (r.pending.delete(seq)) this.skipped += 2;
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
    for (const r of this.touched) {
      for (const [seq, op] of r.pending) {
        if (op === null) {
          store.deleteDelivery(r.clientId, seq);
          r.stored.delete(seq);
        } else {
          store.putDelivery(r.clientId, seq, storedDelivery(op));
          r.stored.add(seq);
          if (op.t !== null) parts.push(op.t);
          this.freeOp(op);
        }
        n++;
      }
      r.pending.clear();
      if (r.stored.size === 0 && r.held.size === 0) this.clients.delete(r.clientId);
    }
    this.touched.clear();
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

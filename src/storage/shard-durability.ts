import { Counter } from '../metrics/counters.js';
import type { InflightEntry, QueuedDelivery, Session } from '../session/session.js';
import type { HeldAck } from '../shard/held-ack.js';
import type { ShardState } from '../shard/state.js';
import { peerBatchCommitted, type ShardToShard } from '../threads/messages.js';
import { type BatchWaiter, PendingWrites } from './pending-writes.js';
import type { DurableStore } from './types.js';

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
 * Writes are collected in memory (pending-writes.ts) and flushed to the store when this thread
 * has no commit in flight: at the end of a turn when the store is idle, else as soon as the commit
 * in flight is done, for everything of the turns in between (group commit: at most one commit in
 * flight per thread). A delivery that is done before its flush — a QoS 1 message acknowledged by
 * an online subscriber while the previous commit ran — is never written at all.
 *
 * `sync`: a client's QoS 1/2 ack is held until each of the message's records (deliveries to
 * this shard's persistent sessions, the outbox entries of the batches carrying it to other
 * shards, its QoS 2 id) is committed, or no longer needed: a delivery the subscriber has
 * acknowledged before its record was flushed needs nothing stored. Each record is one part
 * of the PUBLISH's HeldAck (shard/held-ack.ts), the same count main's retained store and the
 * cluster peers decrement: nothing is allocated per PUBLISH. A flush waits
 * `durability.sync_delay` (2 ms; 0: one event-loop turn) for the acks of what was just sent: an
 * online subscriber's PUBACK that comes within it means neither the put nor the remove is made,
 * and the publisher's ack goes out without waiting for any commit.
 * `durability.online_ack_wait` (sync, default 20 ms): a QoS 1 delivery to a *connected*
 * persistent session is not written at the next flush but held for up to that long for its
 * PUBACK; acknowledged within it, it is never written. Its publisher's ack still waits for it
 * (the subscriber's PUBACK or the commit of the record once written), so the wait only delays
 * the write, never an acked message's safety. Outbox entries likewise wait for the receiver's
 * confirmation; a peer batch is confirmed (and its mark written) only once none of its
 * deliveries is held any more, so a batch whose sender drops it is always stored here.
 * `batched`: acks go at once; a flush at most `durability.flush_interval` after the previous
 * commit.
 */
export class ShardDurability {
  readonly sync: boolean;
  private readonly w: PendingWrites;
  /** The commit in flight (its acks released when it resolves), or null */
  private current: Promise<void> | null = null;
  /** batched: the flush timer */
  private timer: NodeJS.Timeout | null = null;
  /** sync: a flush is scheduled for the next turn */
  private flushSoon = false;
  /** sync: the ack of the client PUBLISH being routed (beginAck … endAck) */
  private ack: HeldAck | null = null;
  /** Parts its records added so far */
  private ackParts = 0;
  /** Its QoS 2 awaiting-PUBREL record, written just before it is routed */
  private relOp: { t: HeldAck | null } | null = null;
  /** Acks of messages added to this turn's batch for each peer shard (its outbox entry) */
  private readonly batchAcks: HeldAck[][];
  /** This turn's batch for each peer shard goes to the outbox (the peer had a persistent session) */
  private readonly batchDurable: boolean[];
  /** This turn's batch for each peer shard carries messages of a peer batch: its put is not held */
  private readonly batchRelayed: boolean[];
  /** The peer batch being delivered (acceptBatch … endBatch), or null */
  private batchW: BatchWaiter | null = null;
  /** Per sender shard: its batches delivered here and not confirmed yet, in arrival order */
  private readonly inBatches: BatchWaiter[][];
  /** Per sender shard: the last mark written */
  private readonly storedMarks: number[];
  /** Per sender shard: its confirmations waiting for a commit (a later one must not overtake them) */
  private readonly confirmsHeld: number[];
  /** sync: QoS 1 writes to connected sessions wait this long for their PUBACK (ms); 0 = not held */
  private readonly holdMs: number;
  /**
   * Set while messages whose stored record is being removed move elsewhere (a shared group's
   * member left: its deliveries go to another member): their new records are not held, so the
   * flush that removes the old record writes the new one.
   */
  holdOff = false;
  /** The timer that flushes held writes when their wait is over */
  private holdTimer: NodeJS.Timeout | null = null;
  /** This shard's persistent sessions (client ids): while none, peers send it no outbox records */
  private readonly persistent = new Set<string>();
  private readonly flushIntervalMs: number;
  private readonly syncDelayMs: number;
  /** Acks held until this turn is committed (SUBACKs of persistent sessions) */
  private acks: HeldAck[] = [];
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
    this.flushIntervalMs = s.config['durability.flush_interval'];
    this.syncDelayMs = s.config['durability.sync_delay'];
    this.holdMs = this.sync ? s.config['durability.online_ack_wait'] : 0;
    this.w = new PendingWrites(this.holdMs);
    this.unconfirmed = s.peers.map(() => new Map());
    this.batchAcks = s.peers.map(() => []);
    this.batchDurable = s.peers.map(() => false);
    this.batchRelayed = s.peers.map(() => false);
    this.inBatches = s.peers.map(() => []);
    // Not known before the restore: peers keep storing what they send us until then.
    s.counters.row[Counter.persistentSessions] = 1;
    for (const o of store.loadOutbox(s.id)) {
      const m = this.unconfirmed[o.to];
      if (m) m.set(o.seq, Buffer.from(o.batch));
      if (o.seq > this.outSeq) this.outSeq = o.seq;
    }
    this.marks = store.loadMarks(s.id);
    this.storedMarks = s.peers.map((_, i) => this.marks.get(i) ?? 0);
    this.confirmsHeld = s.peers.map(() => 0);
  }

  // ------------------------------------------------------------------------------------------
  // Sessions and their deliveries

  /** After restoring: the restored sessions' records are as stored (their deliveries are marked `stored`). */
  restored(): void {
    for (const session of this.s.sessions.values())
      if (session.expiryInterval > 0) this.persistent.add(session.clientId);
    this.s.counters.row[Counter.persistentSessions] = this.persistent.size;
  }

  /** The session's record (subscriptions, expiry, wills) is written at the next flush. */
  sessionChanged(session: Session): void {
    if (session.expiryInterval === 0) return;
    if (!this.persistent.has(session.clientId)) {
      // Before its first subscription reaches the index: a peer that routes to it from then on
      // stores what it sends us.
      this.persistent.add(session.clientId);
      this.s.counters.row[Counter.persistentSessions] = this.persistent.size;
    }
    this.w.sessionChanged(session);
    this.scheduleTurnEnd();
  }

  /**
   * The record of a session that is not in memory (expired while the broker was down, kept for
   * its will) goes at the next flush — unless a persistent session of that client id has been
   * made since: its own record replaced that one.
   */
  recordGone(clientId: string): void {
    if (this.persistent.has(clientId)) return;
    this.w.recordGone(clientId);
    this.scheduleTurnEnd();
  }

  /** The session ended (discarded, expired, or no longer persistent): all its records go. */
  sessionGone(session: Session): void {
    if (this.persistent.delete(session.clientId))
      this.s.counters.row[Counter.persistentSessions] = this.persistent.size;
    this.w.sessionGone(session);
    this.scheduleTurnEnd();
  }

  /** A QoS 1/2 delivery was queued (packetId 0) or sent into the inflight window. */
  held(session: Session, e: QueuedDelivery | InflightEntry, packetId: number): void {
    if (session.expiryInterval === 0 || e.qos === 0) return;
    const t = this.ack;
    if (t !== null) {
      t.parts++;
      this.ackParts++;
    }
    // A QoS 1 delivery to a connected subscriber: its write waits for the PUBACK a while.
    const c = session.conn;
    const hold = this.holdMs > 0 && e.qos === 1 && c !== null && !c.closed && !this.holdOff;
    const b = this.batchW;
    if (b !== null && !hold) b.written = true;
    this.w.putDelivery(session.clientId, e, packetId, false, t, hold, b);
    this.scheduleTurnEnd();
  }

  /** QoS 2 PUBREC received, PUBREL sent: only the packet id matters now (the payload is delivered). */
  released(session: Session, e: InflightEntry, packetId: number): void {
    if (session.expiryInterval === 0) return;
    this.w.putDelivery(session.clientId, e, packetId, true, null);
    this.scheduleTurnEnd();
  }

  /** The delivery is complete (acknowledged) or dropped (expired, queue full, redispatched). */
  done(session: Session, e: QueuedDelivery | InflightEntry): void {
    if (session.expiryInterval === 0 || e.qos === 0) return;
    this.w.removeDelivery(session.clientId, e);
    this.countHeld();
    // Its batch's last held delivery: confirmed now when nothing of it was stored.
    if (this.w.batchesReady) this.settleBatches();
    this.scheduleTurnEnd();
  }

  /** Inbound QoS 2: PUBREC sent, the id is remembered until PUBREL [MQTT-4.3.3-2]. */
  awaitingRel(session: Session, packetId: number, at: number): void {
    if (session.expiryInterval === 0) return;
    const op = this.w.putAwaitingRel(session.clientId, packetId, at);
    // The PUBLISH is routed next: its PUBREC also waits for this record [MQTT-4.3.3-2].
    if (this.sync) this.relOp = op;
    this.scheduleTurnEnd();
  }

  relDone(session: Session, packetId: number): void {
    if (session.expiryInterval === 0) return;
    this.w.removeAwaitingRel(session.clientId, packetId);
    this.scheduleTurnEnd();
  }

  // ------------------------------------------------------------------------------------------
  // Acks (sync mode)

  /** A client's QoS 1/2 PUBLISH is about to be routed: each record it writes is a part of its ack. */
  beginAck(held: HeldAck): void {
    this.ack = held;
    this.ackParts = 0;
    const rel = this.relOp;
    if (rel !== null) {
      this.relOp = null;
      rel.t = held;
      held.parts++;
      this.ackParts++;
    }
  }

  /**
   * The message was added to this turn's batch for shard `to`. With QoS 1/2 the batch goes to
   * the outbox, and the ack waits for it — unless `to` has no persistent session: its
   * subscribers are all clean sessions, which a restart of either shard ends anyway, so there is
   * nothing to store or re-send (fan-out and pairs to clean subscribers write nothing).
   */
  routedTo(to: number, always = false): void {
    if (!always && this.s.counters.peek(to + 1, Counter.persistentSessions) === 0) return;
    this.batchDurable[to] = true;
    // Passed on from a peer batch (a shared group's owner): written at the next flush, so the
    // peer batch's confirmation (after that flush's commit) implies it is stored.
    if (this.batchW !== null) {
      this.batchRelayed[to] = true;
      this.batchW.written = true;
    } else if (this.holdOff) this.batchRelayed[to] = true;
    const t = this.ack;
    if (t === null) return;
    t.parts++;
    this.ackParts++;
    this.batchAcks[to].push(t);
  }

  /** Routing done: how many parts of the ack wait for this shard's commits. */
  endAck(): number {
    this.ack = null;
    return this.ackParts;
  }

  /** Holds a client's ack until this turn is committed (releaseAcks keeps PUBLISH order). */
  holdAck(conn: { holdAck(frame: Buffer): HeldAck }, frame: Buffer): void {
    this.acks.push(conn.holdAck(frame));
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
   * Returns its sequence number, increasing across restarts (it starts from the clock, µs);
   * 0 when it is not kept (`to` had no persistent session when its messages were routed).
   */
  outboxAdd(to: number, ab: ArrayBuffer, len: number): number {
    if (!this.batchDurable[to]) {
      this.s.counters.row[Counter.outboxSkipped]++;
      return 0;
    }
    this.batchDurable[to] = false;
    const seq = Math.max(Date.now() * 1000, this.outSeq + 1);
    this.outSeq = seq;
    const copy = Buffer.allocUnsafeSlow(len);
    copy.set(new Uint8Array(ab, 0, len));
    this.unconfirmed[to].set(seq, copy);
    const ts = this.batchAcks[to];
    if (ts.length > 0) this.batchAcks[to] = [];
    // Held for the receiver's confirmation (durability.online_ack_wait), unless it relays a peer batch.
    const hold = !this.batchRelayed[to];
    this.batchRelayed[to] = false;
    this.w.putOutbox(to, seq, copy, ts.length > 0 ? ts : null, hold);
    this.scheduleTurnEnd();
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
      this.w.removeOutbox(from, k);
      n++;
    }
    if (n > 0) {
      this.countHeld();
      this.scheduleTurnEnd();
    }
  }

  /**
   * A batch from shard `from` with outbox seq `seq`: false when it was delivered here already
   * (a replay after a restart), so it is not delivered twice. Either way it is confirmed — and
   * its mark written — once none of its deliveries is held for a PUBACK any more, after the
   * commit of the flush that wrote them (in arrival order: confirmations are cumulative).
   * `endBatch()` follows once it has been delivered.
   */
  acceptBatch(from: number, seq: number): boolean {
    const dup = seq <= (this.marks.get(from) ?? 0);
    const b: BatchWaiter = { from, seq, deferred: 0, open: true, dup, written: false };
    this.inBatches[from]?.push(b);
    this.scheduleTurnEnd();
    if (dup) {
      this.s.counters.row[Counter.outboxDuplicates]++;
      b.open = false;
      this.w.batchesReady = true;
      return false;
    }
    this.marks.set(from, seq);
    this.batchW = b;
    return true;
  }

  /** The batch acceptBatch took has been delivered. */
  endBatch(): void {
    const b = this.batchW;
    if (b === null) return;
    this.batchW = null;
    b.open = false;
    if (b.deferred === 0) this.settleBatches();
    this.scheduleTurnEnd();
  }

  /**
   * Peer batches none of whose deliveries is held any more, in arrival order per sender: their
   * marks go into this flush and their confirmations after its commit. What they wrote is in
   * this flush or an earlier one (flushes commit in order).
   */
  private settleBatches(): void {
    this.w.batchesReady = false;
    for (let from = 0; from < this.inBatches.length; from++) {
      const q = this.inBatches[from];
      if (q.length === 0) continue;
      let n = 0;
      let mark = 0;
      let now = 0;
      while (n < q.length && !q[n].open && q[n].deferred === 0) {
        const b = q[n++];
        if (!b.written && this.holdMs > 0 && this.confirmsHeld[from] === 0) {
          // Nothing of it stored (each persistent subscriber acknowledged its delivery) and no
          // earlier confirmation waits for a commit: confirmed now, without a mark. A replay
          // after a crash can only deliver those QoS 1 messages again (at least once).
          now = b.seq;
          continue;
        }
        this.confirms.push(from, b.seq);
        this.confirmsHeld[from]++;
        if (!b.dup && b.seq > mark) mark = b.seq;
      }
      if (now > 0) {
        this.s.counters.row[Counter.outboxConfirmedUnwritten]++;
        this.s.peers[from]?.postMessage(peerBatchCommitted(now) satisfies ShardToShard);
      }
      if (n === 0) continue;
      if (n === q.length) q.length = 0;
      else q.splice(0, n);
      if (mark > this.storedMarks[from]) {
        this.storedMarks[from] = mark;
        this.w.putMark(from, mark);
      }
    }
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
  // Flushes and commits: at most one commit in flight

  /** End of an event-loop turn: flush now if the store is idle (sync), else once it is. */
  endTurn(): void {
    if (this.current !== null) return; // flushed when the commit in flight is done
    if (
      this.w.empty &&
      !this.w.batchesReady &&
      this.acks.length === 0 &&
      this.confirms.length === 0 &&
      this.after.length === 0
    ) {
      // Only held writes: a flush when the first one's wait is over.
      if (this.w.heldCount > 0 && this.holdTimer === null && !this.flushSoon) {
        const due = this.w.nextDue();
        if (due > 0) this.holdTimer = setTimeout(this.onHoldDue, Math.max(0, due - Date.now()) + 1);
      }
      return;
    }
    if (this.sync) {
      if (!this.flushSoon) {
        this.flushSoon = true;
        if (this.syncDelayMs > 0) setTimeout(this.onSoon, this.syncDelayMs);
        else setImmediate(this.onSoon);
      }
    } else if (this.timer === null) this.timer = setTimeout(this.onTimer, this.flushIntervalMs);
  }

  private readonly onHoldDue = (): void => {
    this.holdTimer = null;
    if (this.current === null) this.flush();
  };

  private readonly onSoon = (): void => {
    this.flushSoon = false;
    if (this.current === null) this.flush();
  };

  private readonly onTimer = (): void => {
    this.timer = null;
    if (this.current === null) this.flush();
  };

  /** Everything pending goes to the store in one commit; acks waiting for it go after it. */
  private flush(all = false): void {
    const row = this.s.counters.row;
    // Held writes whose wait is over (all of them at shutdown), then the peer batches settled.
    if (this.w.heldCount > 0) this.w.release(Date.now(), all);
    if (this.w.batchesReady) this.settleBatches();
    this.countHeld();
    const acks = this.acks;
    const confirms = this.confirms;
    const after = this.after;
    this.acks = [];
    this.confirms = [];
    this.after = [];
    const parts: HeldAck[] = [];
    let p: Promise<void> | null = null;
    try {
      row[Counter.storeWrites] += this.w.flush(this.store, this.s.id, parts);
      p = this.store.commit();
    } catch (err) {
      this.storeError(err);
    }
    if (this.w.skipped > 0) {
      row[Counter.storeWritesSkipped] += this.w.skipped;
      this.w.skipped = 0;
    }
    if (p === null) {
      this.committed(acks, confirms, after, parts);
      // Held writes left: their timer.
      if (this.w.heldCount > 0) this.endTurn();
      return;
    }
    row[Counter.storeCommits]++;
    this.current = p.then(
      () => this.commitDone(acks, confirms, after, parts),
      (err: unknown) => {
        this.storeError(err);
        this.commitDone(acks, confirms, after, parts);
      },
    );
  }

  private commitDone(acks: HeldAck[], confirms: number[], after: (() => void)[], parts: HeldAck[]): void {
    this.current = null;
    this.committed(acks, confirms, after, parts);
    // What the turns since this flush wrote, and the acks they hold.
    this.endTurn();
  }

  /** The held-write counters (slots 213-215), as they happen. */
  private countHeld(): void {
    const w = this.w;
    if (w.heldAcked > 0 || w.heldWritten > 0 || w.outboxHeldConfirmed > 0) {
      const row = this.s.counters.row;
      row[Counter.storeHeldAcked] += w.heldAcked;
      row[Counter.storeHeldWritten] += w.heldWritten;
      row[Counter.outboxHeldConfirmed] += w.outboxHeldConfirmed;
      w.heldAcked = 0;
      w.heldWritten = 0;
      w.outboxHeldConfirmed = 0;
      row[Counter.storeWritesSkipped] += w.skipped;
      w.skipped = 0;
    }
  }

  /** Shutdown: everything pending committed (waits for the commit in flight first). */
  async flushAll(): Promise<void> {
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.holdTimer !== null) {
      clearTimeout(this.holdTimer);
      this.holdTimer = null;
    }
    for (let i = 0; i < 1000; i++) {
      if (this.current !== null) await this.current;
      else if (
        this.w.empty &&
        this.w.heldCount === 0 &&
        !this.w.batchesReady &&
        this.acks.length === 0 &&
        this.confirms.length === 0 &&
        this.after.length === 0
      )
        return;
      else this.flush(true);
    }
  }

  private committed(acks: HeldAck[], confirms: number[], after: (() => void)[], parts: HeldAck[]): void {
    for (let i = 0; i < after.length; i++) after[i]();
    for (let i = 0; i < parts.length; i++) parts[i].partDone();
    for (let i = 0; i < acks.length; i++) acks[i].partDone();
    for (let i = 0; i < confirms.length; i += 2) {
      this.confirmsHeld[confirms[i]]--;
      this.s.peers[confirms[i]]?.postMessage(peerBatchCommitted(confirms[i + 1]) satisfies ShardToShard);
    }
  }

  /** A failed commit is logged and counted; the broker keeps serving (acks go out). */
  private storeError(err: unknown): void {
    this.s.counters.row[Counter.storeErrors]++;
    this.s.log.error({ err }, 'durable store commit failed');
  }
}

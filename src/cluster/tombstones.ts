import { Counter } from '../metrics/counters.js';
import { topicMatches } from '../protocol/topic.js';
import type { ClusterToShard } from '../threads/messages.js';
import { entryEnd } from './codec.js';
import type { SessionDeliveries } from './gen/emqx_ts/cluster/v1/state_pb.js';
import { caller, callTimeout, type StateHost, shardPort, stateClient } from './state-host.js';

/** Most sessions a node forwards for at once (the oldest stops first) */
const MAX_TOMBSTONES = 10_000;
/** Longest a node holds incoming forward batches while it exports a session (test switch: 0 ends it at once) */
const MAX_HOLD_MS = process.env.EMQX_TS_TEST_HOLD_MS ? Number(process.env.EMQX_TS_TEST_HOLD_MS) : 1000;
/**
 * An export that outlives its hold (a loaded machine): the batches handed to the shards after
 * the hold are copied, at most this many bytes, and scanned for the session once it is shipped
 */
const MAX_LATE_BYTES = 64 << 20;
/** After the new node's routes are seen here: how long ours stay too (a publisher's node may
 *  get our removal before the new node's addition; both routes meanwhile make duplicates, not loss) */
const GRACE_MS = 100;
/** After our routes went: how long batches a peer sent before it heard are still forwarded */
const DRAIN_MS = 300;
const TICK_MS = 50;
/** Shipped sessions kept until the new node confirms it stored them (oldest forgotten first) */
const MAX_SHIPPED = 10_000;
/** A new node that neither confirms nor dies within this long: the copy is forgotten */
const SHIPPED_MS = 60_000;

interface Tombstone {
  clientId: string;
  /** The node the session moved to */
  to: string;
  filters: string[];
  installedAt: number;
  /** When the new node's routes for every filter were first seen here (0: not yet) */
  routedAt: number;
  pinned: boolean;
  /** Ours withdrawn at: forwarding ends DRAIN_MS later */
  unpinnedAt: number;
}

/**
 * The old node's side of a session that moved to another node (issue #11, the takeover gap).
 * Publishers' nodes keep sending to the old node until their route view moves to the new one,
 * and batches can already be in flight on the link; those messages were acked to their senders
 * and would be lost once the session is gone here. So, for a bounded time per moved session:
 * - **hold**: while an export is running here, incoming forward batches wait (≤ MAX_HOLD_MS),
 *   so each one is either routed into the session before it is shipped or seen by the tombstone
 *   after — none is both or neither. An export that outlives the hold (a loaded machine): the
 *   batches flow again and are copied (≤ MAX_LATE_BYTES) until it ends, then scanned for the
 *   session — some are both (duplicates), none is neither;
 * - **routes stay**: the session's filters are pinned in our route slice until the new node's
 *   routes for them are known here (+ GRACE_MS), so no publisher's node sees neither route;
 * - **forward**: entries of incoming batches that match the session's subscriptions are sent to
 *   the new node for that session only (DeliverToSession; it queues them into the imported
 *   session), until DRAIN_MS after the routes went; then a last call with `done` tells the new
 *   node it has everything (it holds the session's other deliveries until then, so the merged
 *   stream keeps each publisher's order: session/merge in shard-state.ts).
 * Bounded by MAX_TOMBSTONES and by the lifetime (the new node down: dropped at once).
 */
export class Tombstones {
  private readonly byClient = new Map<string, Tombstone>();
  private exporting = 0;
  private held: { buf: Buffer; off: number; len: number; run: () => void }[] = [];
  private holdTimer: NodeJS.Timeout | null = null;
  /** The hold ended by its bound while exports still run: batches are copied into `late` */
  private holdExpired = false;
  /** Copies of the entries of batches admitted since the hold expired, oldest first */
  private late: Buffer[] = [];
  private lateBytes = 0;
  /** Copies ever made: `late[i]` is copy number `lateSeq - late.length + i` */
  private lateSeq = 0;
  private tick: NodeJS.Timeout | null = null;
  /** Per destination node: entries per client id to send, and whether its done goes with them */
  private readonly out = new Map<
    string,
    Map<string, { parts: Buffer[]; count: number; done: boolean; committed: boolean }>
  >();
  /**
   * Two-phase hand-over: sessions shipped from here, kept until their new node says they are in
   * its store; restored here if it dies first (docs/DURABILITY.md)
   */
  private readonly shipped = new Map<string, { to: string; blob: Uint8Array; at: number }>();
  /** Sessions restored here, in case their new node was only frozen and confirms after all */
  private readonly restored = new Map<string, { to: string; at: number }>();
  private flushScheduled = false;
  /** One call at a time per node: the done of a client id never overtakes its entries */
  private readonly chains = new Map<string, Promise<void>>();

  constructor(
    private readonly host: StateHost,
    private readonly pin: (filters: string[]) => void,
    private readonly unpin: (filters: string[]) => void,
  ) {}

  get size(): number {
    return this.byClient.size;
  }

  /**
   * An export starts here: incoming batches wait until it ends (bounded); the token goes to
   * its `end`.
   */
  begin(): number {
    this.exporting++;
    if (this.holdTimer === null && !this.holdExpired)
      this.holdTimer = setTimeout(() => {
        this.holdTimer = null;
        this.host.counters.row[Counter.takeoverHoldTimeouts]++;
        this.host.log.warn(
          { exports: this.exporting },
          'session export outlived its hold: forward batches are copied until it ends',
        );
        // Batches flow again, but a batch handed to the shard after the session was taken out
        // would be lost to it: copies are scanned for each session when its export ends.
        this.holdExpired = true;
        this.runHeld();
      }, MAX_HOLD_MS);
    return this.lateSeq;
  }

  /**
   * The export ended: with the session's subscriptions, a tombstone forwards for it to `to`;
   * the shipped session (`blob`) is kept until `to` has stored it.
   */
  end(clientId: string, to: string, filters: string[] | null, blob: Uint8Array | null, token: number): void {
    if (blob !== null) {
      this.shipped.delete(clientId);
      this.shipped.set(clientId, { to, blob, at: Date.now() });
      if (this.shipped.size > MAX_SHIPPED) this.shipped.delete(this.shipped.keys().next().value as string);
      this.startTick();
    }
    if (filters !== null && filters.length > 0) {
      const t = this.install(clientId, to, filters);
      // Copies of batches since this export began that the shard may have seen too late.
      const first = this.lateSeq - this.late.length;
      for (let i = Math.max(0, token - first); i < this.late.length; i++)
        this.scan(this.late[i], 0, this.late[i].length, t);
    }
    if (this.exporting > 0) this.exporting--;
    if (this.exporting === 0) {
      if (this.holdTimer !== null) clearTimeout(this.holdTimer);
      this.holdTimer = null;
      this.holdExpired = false;
      this.late = [];
      this.lateBytes = 0;
      this.runHeld();
    }
  }

  private runHeld(): void {
    const held = this.held;
    this.held = [];
    for (const h of held) this.pass(h.buf, h.off, h.len, h.run);
  }

  /** A batch goes to the shard: scanned by the tombstones first, copied while an export outlives its hold. */
  private pass(buf: Buffer, off: number, len: number, run: () => void): void {
    if (this.holdExpired && this.exporting > 0 && len > 0) {
      if (this.lateBytes + len <= MAX_LATE_BYTES) {
        this.late.push(Buffer.from(buf.subarray(off, off + len)));
        this.lateBytes += len;
        this.lateSeq++;
      } else this.host.counters.row[Counter.takeoverLateUncopied]++;
    }
    if (this.byClient.size > 0) this.scan(buf, off, len);
    run();
  }

  /**
   * An incoming forward batch (its entries in `buf`): `run` hands it to the shard and acks it. Held while an
   * export runs; entries matching a tombstone are copied for the session's new node first.
   */
  admit(buf: Buffer, off: number, len: number, run: () => void): void {
    if (this.exporting > 0 && !this.holdExpired) {
      this.host.counters.row[Counter.takeoverBatchesHeld]++;
      this.held.push({ buf, off, len, run });
      return;
    }
    this.pass(buf, off, len, run);
  }

  /**
   * Entries of a batch (already checked by the data plane) that a moved session subscribed to
   * (every tombstone's, or only `only`'s).
   */
  scan(buf: Buffer, off: number, len: number, only?: Tombstone): void {
    if (this.byClient.size === 0) return;
    const list: Tombstone[] = only ? [only] : [...this.byClient.values()]; // once per batch, not per entry
    const end = off + len;
    let p = off;
    while (p < end) {
      const next = entryEnd(buf, p, end);
      const topicLen = buf.readUInt32LE(p + 1);
      const topic = buf.toString('utf8', p + 5, p + 5 + topicLen);
      for (const t of list) {
        if (!t.filters.some((f) => topicMatches(f, topic))) continue;
        this.queue(t.to, t.clientId, Buffer.from(buf.subarray(p, next)), false, false);
        this.host.counters.row[Counter.tombstoneForwarded]++;
      }
      p = next;
    }
  }

  private install(clientId: string, to: string, filters: string[]): Tombstone {
    const old = this.byClient.get(clientId);
    if (old) this.finish(old, false);
    if (this.byClient.size >= MAX_TOMBSTONES) {
      const oldest = this.byClient.values().next().value as Tombstone;
      this.host.counters.row[Counter.tombstonesDropped]++;
      this.finish(oldest, true);
    }
    const t: Tombstone = {
      clientId,
      to,
      filters,
      installedAt: Date.now(),
      routedAt: 0,
      pinned: true,
      unpinnedAt: 0,
    };
    this.byClient.set(clientId, t);
    this.host.counters.row[Counter.tombstones]++;
    this.pin(filters);
    this.startTick();
    return t;
  }

  private startTick(): void {
    if (this.tick === null) this.tick = setInterval(() => this.onTick(Date.now()), TICK_MS);
  }

  /** We stored a session `from` shipped to us: it may forget its copy. */
  confirm(from: string, clientId: string): void {
    this.queue(from, clientId, null, false, true);
  }

  /**
   * A node was declared down (missed heartbeats): sessions shipped to it that it had not
   * confirmed stored come back here, offline; the client's next claim finds them (registry.ts
   * forgets the dead node's owners, so that claim asks every node). Not on a restart (a new
   * incarnation): that node may have stored it just before it died and restored it from its
   * store, and a stale copy here would then compete with it.
   */
  gone(name: string): void {
    for (const [clientId, s] of [...this.shipped]) {
      if (s.to !== name) continue;
      this.shipped.delete(clientId);
      const port = shardPort(this.host, clientId);
      if (!port) continue;
      this.restored.delete(clientId);
      this.restored.set(clientId, { to: name, at: Date.now() });
      if (this.restored.size > MAX_SHIPPED) this.restored.delete(this.restored.keys().next().value as string);
      this.host.counters.row[Counter.shippedRestored]++;
      this.host.log.warn(
        { clientId, to: name },
        'session shipped to a node that died before storing it: restored here',
      );
      port.postMessage({ t: 'restore', clientId, session: s.blob } satisfies ClusterToShard);
    }
  }

  /** Forwarding for `t` ends; `done` tells the new node (its held deliveries go then). */
  private finish(t: Tombstone, done: boolean): void {
    if (this.byClient.get(t.clientId) === t) this.byClient.delete(t.clientId);
    if (t.pinned) this.unpin(t.filters);
    t.pinned = false;
    if (done) this.queue(t.to, t.clientId, null, true, false);
    if (this.byClient.size === 0 && this.shipped.size === 0 && this.tick !== null) {
      clearInterval(this.tick);
      this.tick = null;
    }
  }

  private onTick(now: number): void {
    for (const [clientId, s] of this.shipped) {
      if (now - s.at < SHIPPED_MS) break;
      this.shipped.delete(clientId);
    }
    for (const [clientId, s] of this.restored) {
      if (now - s.at < SHIPPED_MS) break;
      this.restored.delete(clientId);
    }
    if (
      this.byClient.size === 0 &&
      this.shipped.size === 0 &&
      this.restored.size === 0 &&
      this.tick !== null
    ) {
      clearInterval(this.tick);
      this.tick = null;
    }
    // A lifetime bound whatever happens: long enough for a route push and its retries.
    const maxAge = 4 * callTimeout(this.host.config);
    for (const t of [...this.byClient.values()]) {
      const peer = this.host.peers.byName.get(t.to);
      if (peer?.status !== 'running') {
        this.host.counters.row[Counter.tombstonesDropped]++;
        this.finish(t, false); // the session died with it
        continue;
      }
      if (t.pinned) {
        if (t.routedAt === 0 && t.filters.every((f) => peer.routes.has(f))) t.routedAt = now;
        if ((t.routedAt > 0 && now - t.routedAt >= GRACE_MS) || now - t.installedAt >= maxAge) {
          t.pinned = false;
          t.unpinnedAt = now;
          this.unpin(t.filters);
        }
      } else if (now - t.unpinnedAt >= DRAIN_MS) this.finish(t, true);
    }
  }

  private queue(to: string, clientId: string, entry: Buffer | null, done: boolean, committed: boolean): void {
    let m = this.out.get(to);
    if (!m) this.out.set(to, (m = new Map()));
    let e = m.get(clientId);
    if (!e) m.set(clientId, (e = { parts: [], count: 0, done: false, committed: false }));
    if (entry) {
      e.parts.push(entry);
      e.count++;
    }
    if (done) e.done = true;
    if (committed) e.committed = true;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    for (const [to, m] of this.out) {
      const items = [...m].map(([clientId, e]) => ({
        clientId,
        entries: Buffer.concat(e.parts),
        count: e.count,
        done: e.done,
        committed: e.committed,
      }));
      const peer = this.host.peers.byName.get(to);
      if (peer?.status !== 'running' || !peer.address) continue;
      const address = peer.address;
      const prev = this.chains.get(to) ?? Promise.resolve();
      const next = prev.then(() =>
        stateClient(address)
          .deliverToSession(
            { from: this.host.name, incarnation: this.host.incarnation, items },
            { timeoutMs: callTimeout(this.host.config) },
          )
          .then(
            () => {},
            (err) => {
              this.host.counters.row[Counter.tombstonesDropped]++;
              this.host.log.warn({ peer: to, err: String(err) }, 'forwarding to a moved session failed');
            },
          ),
      );
      this.chains.set(to, next);
      void next.finally(() => {
        if (this.chains.get(to) === next) this.chains.delete(to);
      });
    }
    this.out.clear();
  };

  /**
   * The new node stored a session we shipped: our copy goes. If we had restored it (the node was
   * declared down, but was only frozen and went on), the restored copy goes too while it is
   * offline: the new node's copy got every message it did, and is the one the client uses.
   */
  private committed(clientId: string, from: string): void {
    if (this.shipped.get(clientId)?.to === from) this.shipped.delete(clientId);
    else if (this.restored.get(clientId)?.to === from) {
      this.restored.delete(clientId);
      shardPort(this.host, clientId)?.postMessage({ t: 'dropRestored', clientId } satisfies ClusterToShard);
    }
  }

  /** Server side: the old node of sessions that moved here forwards what reached it late. */
  onDeliveries(req: SessionDeliveries): { applied: boolean } {
    if (!caller(this.host.peers, req.from, req.incarnation)) return { applied: false };
    for (const it of req.items) {
      if (it.committed) this.committed(it.clientId, req.from);
      if (it.count === 0 && !it.done) continue;
      const port = shardPort(this.host, it.clientId);
      if (!port) continue;
      const ab = new ArrayBuffer(it.entries.length);
      new Uint8Array(ab).set(it.entries);
      port.postMessage(
        {
          t: 'sessionIn',
          clientId: it.clientId,
          buf: ab,
          count: it.count,
          done: it.done,
        } satisfies ClusterToShard,
        [ab],
      );
    }
    return { applied: true };
  }
}

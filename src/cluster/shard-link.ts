import type { MessagePort } from 'node:worker_threads';
import { Counter, type Counters } from '../metrics/counters.js';
import { PacketType } from '../protocol/constants.js';
import { encodeAckV5 } from '../protocol/v5-control.js';
import { LastTopic } from '../routing/last-topic.js';
import { MatchResult, TopicIndex } from '../routing/topic-index.js';
import type { Message } from '../session/message.js';
import type { ClusterToShard, ForwardPart, ShardInit, ShardToCluster } from '../threads/messages.js';
import { EntryWriter, readEntries } from './codec.js';
import { LOST } from './forward.js';
import type { ClusterStateToShard, ShardToClusterState } from './state-messages.js';

/** A connection whose acks can be held (shard/connection.ts), as the link needs it. */
export interface AckHolder {
  readonly v5: boolean;
  /** Its session's QoS 2 ids awaiting PUBREL: a failed PUBREC releases the id (MQTT 5 §4.3.3) */
  readonly session: { readonly awaitingRel: Map<number, number> };
}

/** A held ack (shard/held-ack.ts): the peers it was forwarded to are one of its parts. */
interface Held {
  frame: Buffer;
  conn: unknown;
  parts: number;
  partDone(): void;
}

/**
 * A held PUBACK/PUBREC whose message may not have reached every node: an MQTT 5 publisher gets
 * `code` (≥ 0x80) as its reason code and may publish again (MQTT 5 §3.4.2.1, §3.5.2.1); a
 * failed PUBREC ends the QoS 2 flow, so its packet id no longer awaits PUBREL. MQTT 3.1.1 acks
 * have no reason code and stay as they are.
 */
export function failHeldAck(h: { frame: Buffer; conn: unknown }, code: number): void {
  const conn = h.conn as AckHolder | null;
  if (conn === null || !conn.v5) return;
  const f = h.frame;
  const type = f[0] >> 4;
  const id = f.readUInt16BE(2);
  h.frame = encodeAckV5(type, id, code);
  if (type === PacketType.PUBREC) conn.session.awaitingRel.delete(id);
}

/** What the link needs from its shard (kept small so the shard's layout may change). */
export interface ShardSide {
  readonly counters: Counters;
  /** Routes a message to this node's subscribers (the link makes sure it is not forwarded again). */
  publish(msg: Message, conn: null): boolean;
  /** Logs and counts a handler that threw on an inter-thread message. */
  onLinkError(err: unknown, msg: unknown): void;
}

/**
 * A shard's side of the cluster (all cluster logic lives in src/cluster/; the shard calls
 * `route` from its routing step and `attach` when main sends a new port).
 *
 * Outgoing: a publish whose topic matches the remote-route index (shared memory written by the
 * cluster thread; bit = peer slot) is appended to the buffer of each destination peer; the
 * buffers are posted (transferred) to the cluster thread once per event-loop turn — never a
 * postMessage per message — and go on to the peers' streams as they are.
 * Incoming: batches forwarded by peers are routed to local subscribers only — a forwarded
 * message never leaves this node again, so routes that overlap cannot loop.
 */
export class ShardClusterLink {
  private readonly remote: TopicIndex;
  private readonly match = new MatchResult(8);
  /** The last topic routed and its peer mask */
  private readonly last = new LastTopic();
  private lastMask = 0;
  /** Entries for each peer slot collected this turn (a message for k peers is written k times) */
  private readonly outs: (EntryWriter | undefined)[] = [];
  private readonly touched: number[] = [];
  private outCount = 0;
  private flushScheduled = false;
  /** True while routing a forwarded batch: those messages stay on this node (and a retained
   *  one is not stored again: the origin replicates its store, retained-sync.ts) */
  receiving = false;
  /** The message last passed to route() was forwarded at QoS 1/2 (its ack may be held) */
  private forwardedQos = false;
  /** Acks held until the batch they were forwarded in is accepted by every peer, by batch seq */
  private readonly held = new Map<number, Held[]>();
  private batchSeq = 0;
  private heldThisBatch: Held[] | null = null;
  /** Cluster II's shard side (shard-state.ts): its messages, and a new cluster thread's port */
  onState: ((m: ClusterStateToShard) => void) | null = null;
  onAttach: (() => void) | null = null;
  /** The cluster's word on this shard's restored wills (durable start; shard.ts) */
  onFiredWills: ((clientIds: string[]) => void) | null = null;

  private constructor(
    private readonly shard: ShardSide,
    remote: TopicIndex,
    private port: MessagePort | null,
  ) {
    this.remote = remote;
    if (port) this.listen(port);
  }

  /** Null when the broker runs without a cluster. */
  static create(init: ShardInit, shard: ShardSide): ShardClusterLink | null {
    if (!init.remoteIndex) return null;
    return new ShardClusterLink(shard, TopicIndex.attach(init.remoteIndex), init.cluster ?? null);
  }

  /** A (re)started cluster thread's port. */
  attach(port: MessagePort): void {
    // The old thread answers nothing more: what it held is lost (its streams died with it).
    for (const held of this.held.values()) this.release(held, LOST);
    this.held.clear();
    this.port?.close();
    this.port = port;
    this.listen(port);
    this.onAttach?.();
  }

  /** Posts a Cluster II message; false while no cluster thread runs. */
  postState(m: ShardToClusterState): boolean {
    if (!this.port) return false;
    this.port.postMessage(m);
    return true;
  }

  private listen(port: MessagePort): void {
    port.on('message', (m: ClusterToShard) => {
      try {
        if (m.t === 'forwarded') this.onForwarded(m);
        else if (m.t === 'forwardAcked') this.onAcked(m.seq, m.code);
        else if (m.t === 'firedWills') this.onFiredWills?.(m.clientIds);
        else this.onState?.(m);
      } catch (err) {
        this.shard.onLinkError(err, m);
      }
    });
  }

  /**
   * Called for every routed message: true when some remote node has a matching route (the
   * message then counts as matched). Cost when no peer has routes: one Atomics.load.
   */
  route(msg: Message): boolean {
    this.forwardedQos = false;
    if (this.receiving) return false;
    const remote = this.remote;
    if (remote.activeFilters() === 0) return false;
    const topic = msg.topicBytes;
    // A publisher mostly repeats a topic: the last topic's peer mask is reused until the remote
    // index changes (last-topic.ts).
    const changes = remote.changes();
    let mask: number;
    if (this.last.hit(topic, changes)) mask = this.lastMask;
    else {
      const m = this.match;
      mask = remote.match(topic, 0, topic.length, m) === 0 ? 0 : m.mask;
      this.last.store(topic, changes);
      this.lastMask = mask;
    }
    if (mask === 0) return false;
    let remaining = 0;
    if (msg.expiryAt > 0) {
      remaining = msg.expiryAt - Date.now();
      if (remaining <= 0) return true; // expired in flight: nobody may get it [MQTT-3.3.2-5]
      remaining = Math.min(Math.ceil(remaining), 0xffffffff);
    }
    this.forwardedQos = msg.qos > 0;
    const row = this.shard.counters.row;
    while (mask !== 0) {
      const slot = 31 - Math.clz32(mask & -mask);
      mask &= mask - 1;
      let w = this.outs[slot];
      if (w === undefined) w = this.outs[slot] = new EntryWriter(16 * 1024);
      if (w.count === 0) this.touched.push(slot);
      w.add(msg, remaining);
      this.outCount++;
      row[Counter.messagesForward]++;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
    return true;
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.outCount === 0) return;
    const count = this.outCount;
    this.outCount = 0;
    const parts: ForwardPart[] = [];
    const transfer: ArrayBuffer[] = [];
    for (const slot of this.touched) {
      const { buf, count } = this.outs[slot]!.take();
      const ab = buf.buffer as ArrayBuffer;
      parts.push({ slot, buf: ab, len: buf.length, count });
      transfer.push(ab);
    }
    this.touched.length = 0;
    const row = this.shard.counters.row;
    const held = this.heldThisBatch;
    this.heldThisBatch = null;
    if (!this.port) {
      row[Counter.forwardDropped] += count; // cluster thread restarting
      if (held) this.release(held, LOST);
      return;
    }
    row[Counter.forwardBatches]++;
    let seq = 0;
    if (held) this.held.set((seq = ++this.batchSeq), held);
    const m: ShardToCluster = { t: 'forward', parts, seq };
    this.port.postMessage(m, transfer);
  };

  /**
   * After route(): holds the PUBACK/PUBREC of a QoS 1/2 message just forwarded until every
   * node it went to has accepted it (or is known down). False: not forwarded, send it now.
   * Acks stay in PUBLISH order on the connection (held acks queue behind each other).
   */
  holdAck(held: Held): boolean {
    if (!this.forwardedQos) return false;
    this.forwardedQos = false;
    held.parts++;
    this.heldThisBatch ??= [];
    this.heldThisBatch.push(held);
    return true;
  }

  private onAcked(seq: number, code: number): void {
    const held = this.held.get(seq);
    if (!held) return;
    this.held.delete(seq);
    this.release(held, code);
  }

  /**
   * Lets held acks go. A failed forward (`code` ≥ 0x80: lost in a broken or stalled stream, or
   * refused by a full peer queue) is told to an MQTT 5 publisher as that reason code in its
   * PUBACK/PUBREC, so it may publish again (MQTT 5 §3.4.2.1, §3.5.2.1); a failed PUBREC ends
   * the QoS 2 flow, so its packet id no longer awaits PUBREL. MQTT 3.1.1 acks have no reason
   * code: they go as they are (the failure is counted and logged by the cluster thread).
   */
  private release(list: Held[], code: number): void {
    if (code >= 0x80) this.shard.counters.row[Counter.clusterHeldAcksFailed] += list.length;
    for (let i = 0; i < list.length; i++) {
      const h = list[i];
      if (code >= 0x80) failHeldAck(h, code);
      h.partDone();
    }
  }

  private onForwarded(m: Extract<ClusterToShard, { t: 'forwarded' }>): void {
    const b = Buffer.from(m.buf, m.off, m.len);
    this.shard.counters.row[Counter.messagesForwardReceived] += m.count;
    this.receiving = true;
    try {
      readEntries(b, m.len, Date.now(), (msg) => {
        this.shard.publish(msg, null);
      });
    } finally {
      this.receiving = false;
    }
  }
}

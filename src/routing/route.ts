import type { ShardClusterLink } from '../cluster/shard-link.js';
import type { Delivery } from '../delivery/deliver.js';
import { Counter } from '../metrics/counters.js';
import { encodeAck } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import { encodeAckV5 } from '../protocol/v5-control.js';
import type { Message } from '../session/message.js';
import type { Session } from '../session/session.js';
import type { Connection } from '../shard/connection.js';
import { acquireHeldAck, releaseHeldAck } from '../shard/held-ack.js';
import type { RetainedRelay } from '../shard/retained-relay.js';
import type { ShardState } from '../shard/state.js';
import type { ShardToShard } from '../threads/messages.js';
import { BatchWriter } from './batch.js';
import { LastTopic } from './last-topic.js';
import { PeerWindows } from './peer-window.js';
import { MatchResult } from './topic-index.js';

/** Where a message matching shared-subscription filters owned here goes (routing/shared-groups.ts). */
export interface SharedDispatch {
  onSharedMessage(msg: Message, nodeIds: Int32Array, n: number): void;
}

/**
 * Routes each PUBLISH by matching the shared topic index once: this shard's subscribers get it
 * directly (deliverLocal), every other shard with a match gets it in one batch per shard per
 * event-loop turn, and shared-group owners pick a member.
 */
export class Router {
  private readonly batches: (BatchWriter | null)[];
  /** Some batch has messages: flush at the end of the turn */
  batchesPending = false;
  private readonly match = new MatchResult();
  /** The topic whose local match `match` holds (matchLocal), and its count of matched nodes */
  private readonly last = new LastTopic();
  private lastCount = 0;
  private readonly sharedMatch = new MatchResult(8);
  private readonly targets: Session[] = [];
  private deliverySeq = 0;
  /** Batch bytes in flight per peer; publishers held past the window (peer-window.ts) */
  readonly windows: PeerWindows;

  constructor(
    private readonly s: ShardState,
    private readonly delivery: Delivery,
    private readonly relay: RetainedRelay,
    private readonly shared: SharedDispatch,
    private readonly scheduleTurnEnd: () => void,
    /** Publishes to and from other nodes (src/cluster/shard-link.ts); null on a single node */
    private readonly cluster: ShardClusterLink | null = null,
  ) {
    this.batches = s.peers.map((_, i) => (i === s.id ? null : new BatchWriter()));
    this.windows = new PeerWindows(s.peers.length, s.counters);
  }

  /**
   * Routes a message published by a client (or a will, or the broker). For a client's QoS 1/2
   * PUBLISH, `ackType` is PUBACK/PUBREC: MQTT 5 gets reason 0x10 when no subscriber matched.
   * For a retained message the ack is held until main has stored it, so that a client that saw
   * the ack and then subscribes is sure to get it. Returns whether any subscriber matched.
   */
  publish(msg: Message, conn: Connection | null, ackType = 0, packetId = 0): boolean {
    // A congested subscriber of this message holds its publisher (delivery/flow-control.ts).
    const flow = this.delivery.flow;
    flow.sourceConn = conn;
    // A client's QoS 1/2 PUBLISH: its ack, with one count of what it waits for (held-ack.ts).
    // Part 1 is the routing itself, so that nothing done while routing lets it go early.
    const held = conn && ackType ? acquireHeldAck(conn, 1) : null;
    // sync: each record routing writes for it is a part, done once committed (or not needed)
    const durable = held && this.s.durable?.sync ? this.s.durable : null;
    if (durable) durable.beginAck(held!);
    const matched = this.route(msg);
    const durableParts = durable ? durable.endAck() : 0;
    flow.sourceConn = null;
    if (held === null) {
      if (msg.retain && !this.cluster?.receiving) this.relay.storeRetained(msg, null);
      return matched;
    }
    const ack = conn!.v5 && !matched ? encodeAckV5(ackType, packetId, 0x10) : encodeAck(ackType, packetId);
    // A retained message: also until main has stored it, so that a client that saw the ack and
    // then subscribes is sure to get it.
    if (msg.retain && !this.cluster?.receiving) this.relay.storeRetained(msg, held);
    // cluster: a QoS 1/2 message forwarded to other nodes, until they have accepted it
    else this.cluster?.holdAck(held);
    if (held.parts === 1) {
      // Waits for nothing: written now (behind earlier held acks).
      releaseHeldAck(held);
      conn!.writeAck(ack);
      return matched;
    }
    held.parts--; // routing done
    if (durableParts > 0) this.s.counters.row[Counter.storeAcksHeld]++;
    conn!.queueHeld(held, ack);
    return matched;
  }

  /** The batch to a peer shard (flushed at the end of this turn). */
  batchFor(shard: number, viaOwner = false): BatchWriter | null {
    this.batchesPending = true;
    this.scheduleTurnEnd();
    // sync: the PUBLISH being routed (if any) is acked once this batch's outbox entry is committed
    // (a shared-group owner passes it on to members on any shard: stored whatever `shard` holds)
    this.s.durable?.routedTo(shard, viaOwner);
    return this.batches[shard];
  }

  private route(msg: Message): boolean {
    const m = this.match;
    const topic = msg.topicBytes;
    const id = this.s.id;
    const n = this.matchLocal(topic, m);
    let matched = n > 0;
    if (n > 0) {
      const mask = m.mask;
      if (mask & (1 << id)) this.deliverLocal(msg, m.nodeIds, n);
      if ((mask & ~(1 << id)) !== 0) {
        for (let s = 0; s < this.batches.length; s++) {
          if (s !== id && mask & (1 << s)) {
            this.batchFor(s)!.add(msg, m.nodeIds, n);
            this.windows.note(s, this.delivery.flow.sourceConn);
          }
        }
      }
    }
    const sharedIndex = this.s.sharedIndex;
    if (sharedIndex.activeFilters() > 0) {
      const sm = this.sharedMatch;
      const k = sharedIndex.match(topic, 0, topic.length, sm);
      if (k > 0) {
        matched = true;
        const mask = sm.mask;
        for (let s = 0; s < this.s.shardCount; s++) {
          if (!(mask & (1 << s))) continue;
          if (s === id) this.shared.onSharedMessage(msg, sm.nodeIds, k);
          else {
            this.batchFor(s, true)!.add(msg, sm.nodeIds, k, 1);
            this.windows.note(s, this.delivery.flow.sourceConn);
          }
        }
      }
    }
    if (this.cluster?.route(msg)) matched = true; // cluster: matching routes of other nodes
    // As EMQX: the broker's own $SYS messages (from '') are not counted as dropped.
    if (!matched && msg.from !== '') {
      this.s.counters.row[Counter.messagesDroppedNoSubscribers]++;
      const hooks = this.s.security.hooks;
      if (hooks.dropped.length > 0) hooks.messageDropped(msg.from, msg.topic, 'no_subscribers');
    }
    return matched;
  }

  /**
   * Matches the topic against the local index into `m` (its node ids and mask). No local filter
   * at all (a node whose subscribers are all elsewhere): no walk. A publisher, or a batch
   * forwarded from another node, mostly repeats a topic: `m` still holds the last topic's
   * result, reused while the index has not changed (last-topic.ts). Subscriber lists are read
   * afresh by node id (deliverLocal), so only index writes can make it stale.
   */
  private matchLocal(topic: Buffer, m: MatchResult): number {
    const index = this.s.index;
    if (index.activeFilters() === 0) return 0;
    const changes = index.changes();
    if (this.last.hit(topic, changes)) return this.lastCount;
    const n = index.match(topic, 0, topic.length, m);
    this.last.store(topic, changes);
    this.lastCount = n;
    return n;
  }

  /** Posts this turn's batches, one message per peer shard. */
  flushBatches(): void {
    this.batchesPending = false;
    const row = this.s.counters.row;
    for (let s = 0; s < this.batches.length; s++) {
      const b = this.batches[s];
      if (!b || b.count === 0) continue;
      const batch = b.take();
      // Durable: QoS 1/2 batches wait in the outbox until the peer has committed them (and are
      // re-sent to it after a restart), so a peer that is down now still gets them.
      const durable = this.s.durable;
      const seq = durable && batch.qosCount > 0 ? durable.outboxAdd(s, batch.buf, batch.len) : 0;
      const port = this.s.peers[s];
      if (!port) {
        this.windows.reset(s); // peer restarting: its clients are gone anyway
        continue;
      }
      row[Counter.crossShardMessages] += batch.count;
      row[Counter.crossShardBatches]++;
      port.postMessage(
        {
          t: 'batch',
          buf: batch.buf,
          len: batch.len,
          count: batch.count,
          seq: seq > 0 ? seq : undefined,
        } satisfies ShardToShard,
        [batch.buf],
      );
      this.windows.sent(s, batch.len);
    }
  }

  /**
   * Delivers to this shard's subscribers at the matched nodes: once per session, at the highest
   * granted QoS of its overlapping subscriptions [MQTT-3.3.5-1], capped by the message's QoS,
   * with every matching Subscription Identifier [MQTT-3.3.4-3]; No Local subscriptions skip the
   * publisher's own messages [MQTT-3.8.3-3]. Also for a batch from a peer shard.
   */
  deliverLocal(msg: Message, nodeIds: Int32Array, n: number): void {
    const seq = ++this.deliverySeq;
    const targets = this.targets;
    const from = msg.from;
    const subscribers = this.s.subscribers;
    for (let i = 0; i < n; i++) {
      const list = subscribers.get(nodeIds[i]);
      if (!list) continue;
      for (let j = 0; j < list.length; j++) {
        const { session: s, sub } = list[j];
        if (sub.noLocal && s.clientId === from) {
          this.s.counters.row[Counter.deliveryDroppedNoLocal]++;
          continue;
        }
        const rap = sub.retainAsPublished && msg.retain;
        if (s.mark !== seq) {
          s.mark = seq;
          s.markQos = sub.qos;
          s.markRetain = rap;
          s.markSubIds = sub.subId ? [sub.subId] : null;
          targets.push(s);
        } else {
          if (sub.qos > s.markQos) s.markQos = sub.qos;
          if (rap) s.markRetain = true;
          if (sub.subId) {
            if (s.markSubIds === null) s.markSubIds = [sub.subId];
            else s.markSubIds.push(sub.subId);
          }
        }
      }
    }
    for (let i = 0; i < targets.length; i++) {
      const s = targets[i];
      this.delivery.deliver(s, msg, Math.min(msg.qos, s.markQos) as QoS, s.markRetain, s.markSubIds, null);
      s.markSubIds = null;
    }
    targets.length = 0;
  }
}

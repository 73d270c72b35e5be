import type { Delivery } from '../delivery/deliver.js';
import { Counter } from '../metrics/counters.js';
import type { QoS } from '../protocol/constants.js';
import type { Message } from '../session/message.js';
import type { Session, Subscription } from '../session/session.js';
import type { ShardState } from '../shard/state.js';
import type { ShardToShard } from '../threads/messages.js';
import type { BatchWriter } from './batch.js';
import { candidateSlot, ownerShard, type SharedStrategy, sharedKey } from './shared.js';
import type { PendingJoin } from './subscriptions.js';

/** A session's subscription through the shared group with this key (`group\0filter`), if any. */
function sharedSubscriptionOf(session: Session, groupKey: string): Subscription | undefined {
  const cut = groupKey.indexOf('\u0000');
  const group = groupKey.slice(0, cut);
  const filter = groupKey.slice(cut + 1);
  const sub = session.subscriptions.get(`$share/${group}/${filter}`);
  if (sub?.shared) return sub;
  // EMQX's $queue/{filter} is group '$queue'.
  const queued = group === '$queue' ? session.subscriptions.get(`$queue/${filter}`) : undefined;
  return queued?.shared ? queued : undefined;
}

/**
 * Shared subscriptions across shards: members join and leave the group at its owner shard
 * (routing/shared.ts picks it); the owner picks one member per message and sends it to the
 * member's shard; what a departing member had not acknowledged is redispatched to another.
 */
export class SharedGroupRouting {
  private reqSeq = 0;
  /** Remote shared-group joins of the SUBSCRIBE being handled (see beginSubscribe) */
  private joinCollector: PendingJoin[] | null = null;
  /**
   * Cluster (src/cluster/shard-state.ts): told when a group owned here gets its first local
   * member or loses its last, and given the messages picked for a member on another node.
   */
  cluster: {
    localMembers(group: string, filter: string, present: boolean): void;
    toNode(msg: Message, slot: number, groupKey: string): void;
  } | null = null;

  constructor(
    private readonly s: ShardState,
    private readonly delivery: Delivery,
    /** The batch to a peer shard, flushed at the end of the turn (routing/route.ts) */
    private readonly batchFor: (shard: number, viaOwner?: boolean) => BatchWriter | null,
  ) {}

  /**
   * Starts a SUBSCRIBE: joins of shared groups owned by other shards are collected, so that its
   * SUBACK waits for the owners to confirm them. A message published after the client saw the
   * SUBACK then finds the member in its group, as it finds a plain subscription in the index.
   */
  beginSubscribe(): PendingJoin[] {
    this.joinCollector = [];
    return this.joinCollector;
  }

  /** Ends a SUBSCRIBE's collection of joins (also when it failed) and returns them. */
  endSubscribe(): PendingJoin[] {
    const joins = this.joinCollector ?? [];
    this.joinCollector = null;
    return joins;
  }

  /**
   * Tells the group's owner shard (maybe this one) that a session joins or leaves; false when
   * this shard is the owner and could not add the member (its index is full).
   */
  sendMembership(t: 'sharedJoin' | 'sharedLeave', session: Session, sub: Subscription): boolean {
    const sf = sub.shared!;
    const owner = ownerShard(sf.group, sf.filter, this.s.shardCount);
    if (owner === this.s.id) {
      if (t === 'sharedJoin')
        return this.sharedJoin(sf.group, sf.filter, session.clientId, this.s.id, sub.qos, sub.subId);
      this.sharedLeave(sf.group, sf.filter, session.clientId);
      return true;
    }
    const port = this.s.peers[owner];
    if (!port) return true;
    // Inside a SUBSCRIBE, its SUBACK waits for the owner to confirm the join.
    let reqId = 0;
    if (t === 'sharedJoin' && this.joinCollector) {
      reqId = ++this.reqSeq;
      this.joinCollector.push({ owner, reqId, sub });
    }
    port.postMessage({
      t,
      group: sf.group,
      filter: sf.filter,
      clientId: session.clientId,
      shard: this.s.id,
      qos: sub.qos,
      subId: sub.subId,
      reqId,
    } satisfies ShardToShard);
    return true;
  }

  /** Owner side: a member joins (`reqId` > 0: its shard waits for the answer). */
  sharedJoin(
    group: string,
    filter: string,
    clientId: string,
    shard: number,
    qos: QoS,
    subId: number,
    reqId = 0,
  ): boolean {
    const nodeId = this.s.sharedIndex.acquire(filter, this.s.id);
    const ok = nodeId > 0;
    const had = this.localCount(group, filter);
    if (ok) this.s.sharedGroups.join(group, filter, nodeId, { clientId, shard, qos, subId });
    if (ok && had === 0) this.cluster?.localMembers(group, filter, true);
    else {
      this.s.counters.row[Counter.subscriptionsIndexFull]++;
      this.s.log.warn({ group, filter, clientId }, 'shared-subscription index full; member not added');
    }
    // The member's SUBACK waits for this (answered also when full: 0x97 / 0x80, never held forever).
    if (reqId > 0) this.s.peers[shard]?.postMessage({ t: 'sharedJoined', reqId, ok } satisfies ShardToShard);
    return ok;
  }

  sharedLeave(group: string, filter: string, clientId: string): void {
    const g = this.s.sharedGroups.get(`${group}\u0000${filter}`);
    if (!g) return;
    const had = g.members.length;
    if (this.s.sharedGroups.leave(group, filter, clientId))
      this.s.sharedIndex.clearShard(g.nodeId, this.s.id);
    if (had > 0 && g.members.length === 0) this.cluster?.localMembers(group, filter, false);
  }

  private localCount(group: string, filter: string): number {
    return this.s.sharedGroups.get(sharedKey(group, filter))?.members.length ?? 0;
  }

  /** Cluster: peer `slot` has (or no longer has) members of a group owned here. */
  setRemote(group: string, filter: string, slot: number, present: boolean): void {
    if (present) {
      const nodeId = this.s.sharedIndex.acquire(filter, this.s.id);
      if (nodeId > 0) this.s.sharedGroups.addRemote(group, filter, nodeId, slot);
      else this.s.counters.row[Counter.subscriptionsIndexFull]++;
      return;
    }
    const g = this.s.sharedGroups.get(sharedKey(group, filter));
    if (g && this.s.sharedGroups.removeRemote(group, filter, slot))
      this.s.sharedIndex.clearShard(g.nodeId, this.s.id);
  }

  /** Cluster: a peer is gone (or every peer, slot -1: a new cluster thread) from the groups owned here. */
  dropRemote(slot: number): void {
    for (const g of [...this.s.sharedGroups.all()]) {
      for (const r of [...g.remote]) {
        const sl = candidateSlot(r);
        if ((slot < 0 || sl === slot) && this.s.sharedGroups.removeRemote(g.group, g.filter, sl))
          this.s.sharedIndex.clearShard(g.nodeId, this.s.id);
      }
    }
  }

  /**
   * Cluster: a message another node's owner picked this node for: one local member gets it.
   * False when the group has no member here (the caller reports it done, dropped).
   */
  onRemoteShared(msg: Message, groupKey: string): boolean {
    const g = this.s.sharedGroups.get(groupKey);
    const strategy = this.s.config['mqtt.shared_subscription_strategy'] as SharedStrategy;
    const m = g?.pick(strategy, msg.from, msg.topic, null, true);
    if (!g || !m) return false;
    this.toMember(msg, m.clientId, m.shard, Math.min(msg.qos, m.qos) as QoS, m.subId, g.key);
    return true;
  }

  /** Owner side: a dead shard's members leave every group owned here. */
  dropShard(shard: number): void {
    const before = this.cluster ? [...this.s.sharedGroups.all()].filter((g) => g.members.length > 0) : [];
    for (const nodeId of this.s.sharedGroups.dropShard(shard))
      this.s.sharedIndex.clearShard(nodeId, this.s.id);
    for (const g of before) if (g.members.length === 0) this.cluster?.localMembers(g.group, g.filter, false);
  }

  /**
   * A session went offline or ended: it leaves its groups; its unacknowledged and queued
   * shared-group messages go back to the groups' owners for another member.
   */
  leaveSharedGroups(session: Session, redispatch: boolean): void {
    if (session.subscriptionCount === 0) return;
    let any = false;
    for (const sub of session.subscriptions.values()) {
      if (!sub.shared) continue;
      any = true;
      this.sendMembership('sharedLeave', session, sub);
    }
    if (!any || !redispatch) return;
    // Their records here are removed in the same flush as their new ones are written (not held).
    const durable = this.s.durable;
    if (durable) durable.holdOff = true;
    try {
      this.redispatchAll(session);
    } finally {
      if (durable) durable.holdOff = false;
    }
  }

  private redispatchAll(session: Session): void {
    for (const [id, e] of session.inflight) {
      // QoS 2 stays with this member: its delivery completes if it resumes the session
      // [MQTT-4.8.2-4], and must not go to another member if the session ends [MQTT-4.8.2-5].
      if (e.group === null || e.qos === 2) continue;
      session.inflight.delete(id);
      this.s.durable?.done(session, e);
      this.redispatch(e.msg, e.group, session.clientId);
    }
    if (session.queue.some((d) => d.group !== null)) {
      const keep = [];
      for (const d of session.queue) {
        if (d.group === null) keep.push(d);
        else {
          this.s.durable?.done(session, d);
          this.redispatch(d.msg, d.group, session.clientId);
        }
      }
      session.queue.replace(keep);
    }
  }

  private redispatch(msg: Message, groupKey: string, exclude: string): void {
    const [group, filter] = groupKey.split('\u0000');
    const owner = ownerShard(group, filter, this.s.shardCount);
    if (owner === this.s.id) this.onRedispatch(msg, groupKey, exclude);
    else this.batchFor(owner, true)?.addRedispatch(msg, groupKey, exclude);
  }

  /**
   * Members here join the groups a restarted shard owns again; then `sharedRejoined` says that
   * every join (and the outbox replay posted before it) is ahead in the port.
   */
  rejoinSharedGroupsOwnedBy(shard: number): void {
    for (const session of this.s.sessions.values()) {
      if (!session.conn || session.subscriptionCount === 0) continue;
      for (const sub of session.subscriptions.values()) {
        if (sub.shared && ownerShard(sub.shared.group, sub.shared.filter, this.s.shardCount) === shard) {
          this.sendMembership('sharedJoin', session, sub);
        }
      }
    }
  }

  /** Peers whose `sharedRejoined` a restarted owner (durable modes) still waits for */
  private awaitingRejoins: Set<number> | null = null;
  private rejoinsDone: (() => void) | null = null;

  /**
   * A restarted owner, durable modes: main left its predecessor's bits in the shared index
   * (supervisor.ts), so that peers go on routing the groups' messages to it — into their outbox
   * while it was down, re-sent to it now. Once every live peer's members have rejoined
   * (`sharedRejoined`, or the peer died) the bits no group needs are cleared — cleared earlier,
   * a message published in between would match no group while its members are back in it —
   * and `done` runs (the shard reads the batches it held meanwhile).
   */
  awaitRejoins(peers: number[], done: () => void): void {
    this.awaitingRejoins = new Set(peers);
    this.rejoinsDone = done;
    this.onRejoined(-1);
  }

  /** Peer `shard` has posted its rejoins (or died: it has none). */
  onRejoined(shard: number): void {
    const waiting = this.awaitingRejoins;
    if (waiting === null) return;
    waiting.delete(shard);
    if (waiting.size > 0) return;
    this.awaitingRejoins = null;
    const groups = this.s.sharedGroups;
    this.s.sharedIndex.clearShardUnless(this.s.id, (ref) => groups.groupsAt(ref) !== undefined);
    const done = this.rejoinsDone;
    this.rejoinsDone = null;
    done?.();
  }

  /** Owner side: one member of each matching group gets the message. */
  onSharedMessage(msg: Message, nodeIds: Int32Array, n: number): void {
    const strategy = this.s.config['mqtt.shared_subscription_strategy'] as SharedStrategy;
    for (let i = 0; i < n; i++) {
      const groups = this.s.sharedGroups.groupsAt(nodeIds[i]);
      if (!groups) continue;
      for (const g of groups) {
        const m = g.pick(strategy, msg.from, msg.topic, null);
        if (m) this.toMember(msg, m.clientId, m.shard, Math.min(msg.qos, m.qos) as QoS, m.subId, g.key);
      }
    }
  }

  onRedispatch(msg: Message, groupKey: string, exclude: string): void {
    const g = this.s.sharedGroups.get(groupKey);
    // A message another node picked this node for stays here (that node tracks it).
    const m = g?.pick(
      this.s.config['mqtt.shared_subscription_strategy'] as SharedStrategy,
      msg.from,
      msg.topic,
      exclude,
      msg.onAcked !== null,
    );
    if (!g || !m) {
      this.s.counters.row[Counter.messagesDropped]++;
      msg.onAcked?.(); // done at the origin: dropped here
      return;
    }
    this.toMember(msg, m.clientId, m.shard, Math.min(msg.qos, m.qos) as QoS, m.subId, g.key);
  }

  private toMember(
    msg: Message,
    clientId: string,
    shard: number,
    qos: QoS,
    subId: number,
    group: string,
  ): void {
    if (shard < 0) this.cluster?.toNode(msg, -1 - shard, group);
    else if (shard === this.s.id) this.onDirectMessage(msg, clientId, qos, subId, group);
    else this.batchFor(shard)?.addDirect(msg, clientId, qos, subId, group);
  }

  /**
   * Member side: a message its group's owner picked this session for. The session's own
   * subscription decides the options: granted QoS, Retain As Published [MQTT-3.3.1-12]
   * [MQTT-3.3.1-13], Subscription Identifier.
   */
  onDirectMessage(msg: Message, clientId: string, _qos: QoS, _subId: number, group: string): void {
    const session = this.s.sessions.get(clientId);
    const sub = session?.conn ? sharedSubscriptionOf(session, group) : undefined;
    if (!session || !sub) {
      // Offline, or unsubscribed meanwhile [MQTT-3.10.4-2]: back to the owner for someone else.
      this.redispatch(msg, group, clientId);
      return;
    }
    const qos = Math.min(msg.qos, sub.qos) as QoS;
    this.delivery.deliver(
      session,
      msg,
      qos,
      sub.retainAsPublished && msg.retain,
      sub.subId ? [sub.subId] : null,
      group,
    );
  }
}

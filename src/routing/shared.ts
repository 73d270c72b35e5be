/**
 * Shared subscriptions (`$share/{group}/{filter}`, and EMQX's `$queue/{filter}` = group `$queue`).
 *
 * Members of one group can sit on any shard, and each message must reach exactly one member.
 * So every group has an **owner shard** (a stable hash of group and filter): members join and
 * leave through it, only the owner sets its bit on the filter's node in the shared-subscription
 * topic index, and the publisher's shard sends matching messages to the owner, which picks a
 * member and delivers locally or forwards to the member's shard. One extra hop for members on
 * other shards, no cross-thread consensus.
 */
import type { QoS } from '../protocol/constants.js';
import { topicFilterError } from '../protocol/topic.js';

export const SHARED_STRATEGIES = ['round_robin', 'random', 'sticky', 'hash_clientid', 'hash_topic'] as const;
export type SharedStrategy = (typeof SHARED_STRATEGIES)[number];

export interface SharedFilter {
  group: string;
  /** The topic filter the group subscribes to */
  filter: string;
}

/**
 * Splits a shared subscription filter; null when `filter` is not shared. Throws a message when
 * it is shared but malformed: the group name must be non-empty without '/', '+', '#'
 * [MQTT-4.8.2-1], followed by a valid non-empty filter [MQTT-4.8.2-2].
 */
export function parseSharedFilter(filter: string): SharedFilter | null | string {
  if (filter.startsWith('$queue/')) {
    const f = filter.slice(7);
    const err = topicFilterError(f);
    return err ? `invalid filter in $queue subscription: ${err}` : { group: '$queue', filter: f };
  }
  if (!filter.startsWith('$share/')) return null;
  const rest = filter.slice(7);
  const slash = rest.indexOf('/');
  if (slash <= 0) return 'shared subscription without group name or filter [MQTT-4.8.2-2]';
  const group = rest.slice(0, slash);
  if (group.includes('+') || group.includes('#')) return 'wildcard in share name [MQTT-4.8.2-1]';
  const f = rest.slice(slash + 1);
  const err = topicFilterError(f);
  if (err) return `invalid filter in shared subscription: ${err}`;
  return { group, filter: f };
}

export function sharedKey(group: string, filter: string): string {
  return `${group}\u0000${filter}`;
}

function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** The shard that owns a group: stable, so every shard computes the same owner. */
export function ownerShard(group: string, filter: string, shards: number): number {
  return fnv(sharedKey(group, filter)) % shards;
}

export interface SharedMember {
  clientId: string;
  shard: number;
  qos: QoS;
  subId: number;
}

/** Cluster: a candidate that is another node (peer slot) with members of the group. */
export function remoteCandidate(slot: number): SharedMember {
  return { clientId: `\u0000node/${slot}`, shard: -1 - slot, qos: 2, subId: 0 };
}

/** The peer slot of a remote candidate; -1 for a member on this node. */
export function candidateSlot(m: SharedMember): number {
  return m.shard < 0 ? -1 - m.shard : -1;
}

/** A group's members and remote candidates while one is picked (shards are single-threaded) */
const candidates: SharedMember[] = [];

export class SharedGroup {
  readonly members: SharedMember[] = [];
  /** Cluster: other nodes (candidates, see remoteCandidate) that have members of this group */
  readonly remote: SharedMember[] = [];
  private rr = 0;
  /** Client id of the sticky strategy's current member */
  private sticky: string | null = null;

  constructor(
    readonly key: string,
    readonly group: string,
    readonly filter: string,
    readonly nodeId: number,
  ) {}

  /** Adds or updates a member (re-subscribe replaces the options). */
  join(m: SharedMember): void {
    const i = this.members.findIndex((x) => x.clientId === m.clientId);
    if (i >= 0) this.members[i] = m;
    else this.members.push(m);
  }

  leave(clientId: string): void {
    const i = this.members.findIndex((x) => x.clientId === clientId);
    if (i < 0) return;
    if (this.sticky === clientId) this.sticky = null;
    this.members.splice(i, 1);
  }

  /**
   * Picks the member to receive a message; `exclude` skips a member (redispatch after it left).
   */
  pick(
    strategy: SharedStrategy,
    publisher: string,
    topic: string,
    exclude: string | null,
    localOnly = false,
  ): SharedMember | null {
    // Cluster: the other nodes with members are candidates too (each message to one node; that
    // node picks one of its members), unless this node was picked by another one (localOnly).
    if (localOnly || this.remote.length === 0)
      return this.pickFrom(this.members, strategy, publisher, topic, exclude);
    // Both lists in one reused array (as Router.targets): no allocation per message.
    const ms = candidates;
    for (let i = 0; i < this.members.length; i++) ms.push(this.members[i]);
    for (let i = 0; i < this.remote.length; i++) ms.push(this.remote[i]);
    const m = this.pickFrom(ms, strategy, publisher, topic, exclude);
    ms.length = 0;
    return m;
  }

  private pickFrom(
    ms: SharedMember[],
    strategy: SharedStrategy,
    publisher: string,
    topic: string,
    exclude: string | null,
  ): SharedMember | null {
    const n = ms.length;
    if (n === 0) return null;
    if (n === 1) {
      const only = ms[0];
      if (only.clientId === exclude) return null;
      // A lone member is the sticky one too: it keeps the messages when others join.
      if (strategy === 'sticky') this.sticky = only.clientId;
      return only;
    }
    let i: number;
    switch (strategy) {
      case 'random':
        i = Math.floor(Math.random() * n);
        break;
      case 'sticky':
        if (this.sticky !== null && this.sticky !== exclude) {
          // By client id: a re-subscribe replaces the member's entry but keeps it sticky.
          const s = ms.find((x) => x.clientId === this.sticky);
          if (s) return s;
        }
        i = Math.floor(Math.random() * n);
        break;
      case 'hash_clientid':
        i = fnv(publisher) % n;
        break;
      case 'hash_topic':
        i = fnv(topic) % n;
        break;
      default:
        i = this.rr++ % n;
        if (this.rr > 1e9) this.rr = 0;
    }
    let m = ms[i];
    if (m.clientId === exclude) m = ms[(i + 1) % n];
    if (strategy === 'sticky') this.sticky = m.clientId;
    return m;
  }
}

/** Groups owned by one shard, by index node and by key. */
export class SharedGroups {
  private readonly byNode = new Map<number, SharedGroup[]>();
  private readonly byKey = new Map<string, SharedGroup>();

  get size(): number {
    return this.byKey.size;
  }

  groupsAt(nodeId: number): SharedGroup[] | undefined {
    return this.byNode.get(nodeId);
  }

  get(key: string): SharedGroup | undefined {
    return this.byKey.get(key);
  }

  /** Returns true when this node had no group here before (the owner must set its index bit). */
  join(group: string, filter: string, nodeId: number, m: SharedMember): boolean {
    const { g, first } = this.ensure(group, filter, nodeId);
    g.join(m);
    return first;
  }

  private ensure(group: string, filter: string, nodeId: number): { g: SharedGroup; first: boolean } {
    const key = sharedKey(group, filter);
    let g = this.byKey.get(key);
    let first = false;
    if (!g) {
      g = new SharedGroup(key, group, filter, nodeId);
      this.byKey.set(key, g);
      let list = this.byNode.get(nodeId);
      if (!list) {
        list = [];
        this.byNode.set(nodeId, list);
        first = true;
      }
      list.push(g);
    }
    return { g, first };
  }

  /** Cluster: peer `slot` has members of the group; true when the node had no group here before. */
  addRemote(group: string, filter: string, nodeId: number, slot: number): boolean {
    const { g, first } = this.ensure(group, filter, nodeId);
    if (!g.remote.some((r) => candidateSlot(r) === slot)) g.remote.push(remoteCandidate(slot));
    return first;
  }

  /** Cluster: peer `slot` has no members left; true when the node has no groups left here. */
  removeRemote(group: string, filter: string, slot: number): boolean {
    const g = this.byKey.get(sharedKey(group, filter));
    if (!g) return false;
    const i = g.remote.findIndex((r) => candidateSlot(r) === slot);
    if (i >= 0) g.remote.splice(i, 1);
    return this.prune(g);
  }

  /** Cluster: a peer is gone from every group; returns the nodes left with no groups. */
  dropRemote(slot: number): number[] {
    const emptied: number[] = [];
    for (const g of [...this.byKey.values()]) {
      if (g.remote.length > 0 && this.removeRemote(g.group, g.filter, slot)) emptied.push(g.nodeId);
    }
    return emptied;
  }

  /** Returns true when the node has no groups left here (the owner must clear its index bit). */
  leave(group: string, filter: string, clientId: string): boolean {
    const key = sharedKey(group, filter);
    const g = this.byKey.get(key);
    if (!g) return false;
    g.leave(clientId);
    return this.prune(g);
  }

  /** Removes a group with no members here and no remote ones; true when its node has none left. */
  private prune(g: SharedGroup): boolean {
    if (g.members.length > 0 || g.remote.length > 0) return false;
    this.byKey.delete(g.key);
    const list = this.byNode.get(g.nodeId)!;
    list.splice(list.indexOf(g), 1);
    if (list.length > 0) return false;
    this.byNode.delete(g.nodeId);
    return true;
  }

  /** Drops every member that lived on `shard` (it crashed). */
  dropShard(shard: number): number[] {
    const emptied: number[] = [];
    for (const g of [...this.byKey.values()]) {
      for (const m of [...g.members]) {
        if (m.shard === shard && this.leave(g.group, g.filter, m.clientId)) emptied.push(g.nodeId);
      }
    }
    return emptied;
  }

  all(): IterableIterator<SharedGroup> {
    return this.byKey.values();
  }
}

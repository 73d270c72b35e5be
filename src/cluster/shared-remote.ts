import { Counter } from '../metrics/counters.js';
import { topicFilterError } from '../protocol/topic.js';
import { ownerShard, sharedKey } from '../routing/shared.js';
import { entryEnd } from './codec.js';
import type { SharedDeliveries, SharedDelivery, SharedDelta } from './gen/emqx_ts/cluster/v1/state_pb.js';
import type { Peer } from './peers.js';
import type { PeerGone } from './state.js';
import { caller, callTimeout, postShard, runningPeers, type StateHost, stateClient } from './state-host.js';
import type { SharedOut } from './state-messages.js';

type Ref = { group: string; filter: string };

/**
 * Shared subscriptions across nodes, in the cluster thread. Like EMQX's `{group, node}` routes:
 * each node tells its peers which groups have members on it (deltas, full slice on join), and
 * the group's owner shard on every node holds the other nodes with members as candidates
 * beside its local members. A publisher's node picks one candidate per message and group: a
 * local member, or another node, which then delivers to one of its own members (never on to a
 * third node), so each message reaches exactly one member cluster-wide. QoS 1/2 messages sent
 * to another node are kept by the sending owner shard until the member acknowledged them; when
 * that node goes down they go to another member (redispatch).
 */
export class SharedRemote {
  private readonly local = new Map<string, Ref>();
  private readonly remote = new Map<string, Map<string, Ref>>();
  private add: Ref[] = [];
  private del: Ref[] = [];
  /** Per peer slot: deliveries and done ids to send this turn */
  private readonly out = new Map<number, { deliveries: Partial<SharedDelivery>[]; done: bigint[] }>();
  private scheduled = false;

  constructor(private readonly host: StateHost) {
    host.counters.row[Counter.sharedRemoteGroups] = 0; // a restarted thread starts without them
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.flush);
  }

  onGroups(add: [string, string][], del: [string, string][]): void {
    for (const [group, filter] of add) {
      this.local.set(sharedKey(group, filter), { group, filter });
      this.add.push({ group, filter });
    }
    for (const [group, filter] of del) {
      this.local.delete(sharedKey(group, filter));
      this.del.push({ group, filter });
    }
    this.schedule();
  }

  onOut(items: SharedOut[], shard: number): void {
    for (const it of items) {
      const p = this.host.peers.bySlot[it.slot];
      if (p?.status !== 'running' || !p.synced) {
        // Gone already: the owner moves its messages for that slot to another member.
        postShard(this.host, shard, { t: 'sharedPeerGone', slot: it.slot });
        continue;
      }
      this.slotOut(it.slot).deliveries.push({
        group: it.group,
        filter: it.filter,
        entry: it.entry,
        id: BigInt(it.id),
      });
    }
    this.schedule();
  }

  onDone(items: { peer: number; id: number }[]): void {
    for (const it of items) this.slotOut(it.peer).done.push(BigInt(it.id));
    this.schedule();
  }

  private slotOut(slot: number): { deliveries: Partial<SharedDelivery>[]; done: bigint[] } {
    let o = this.out.get(slot);
    if (!o) {
      o = { deliveries: [], done: [] };
      this.out.set(slot, o);
    }
    return o;
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const add = this.add;
    const del = this.del;
    this.add = [];
    this.del = [];
    if (add.length > 0 || del.length > 0)
      for (const p of runningPeers(this.host.peers)) this.push(p, false, add, del);
    for (const [slot, o] of this.out) {
      const p = this.host.peers.bySlot[slot];
      if (!p?.synced) continue;
      stateClient(p.address)
        .deliverShared(
          {
            from: this.host.name,
            incarnation: this.host.incarnation,
            deliveries: o.deliveries as SharedDelivery[],
            done: o.done,
          },
          { timeoutMs: callTimeout(this.host.config) },
        )
        .catch((err) => this.host.log.debug({ peer: p.name, err: String(err) }, 'shared delivery failed'));
    }
    this.out.clear();
  };

  private push(p: Peer, full: boolean, add: Ref[], del: Ref[]): void {
    stateClient(p.address)
      .pushShared(
        { from: this.host.name, incarnation: this.host.incarnation, full, add, delete: del },
        { timeoutMs: callTimeout(this.host.config) },
      )
      .catch((err) => this.host.log.debug({ peer: p.name, err: String(err) }, 'shared push failed'));
  }

  synced(p: Peer): void {
    this.push(p, true, [...this.local.values()], []);
  }

  private tell(p: Peer, r: Ref, add: boolean): void {
    this.host.counters.row[Counter.sharedRemoteGroups] += add ? 1 : -1;
    const shard = ownerShard(r.group, r.filter, this.host.shards.length);
    postShard(this.host, shard, { t: 'sharedRemote', slot: p.slot, group: r.group, filter: r.filter, add });
  }

  onDelta(req: SharedDelta): { applied: boolean } {
    const p = caller(this.host.peers, req.from, req.incarnation);
    if (!p || p.slot < 0) return { applied: false };
    let slice = this.remote.get(p.name);
    if (!slice) {
      slice = new Map();
      this.remote.set(p.name, slice);
    }
    const valid = (r: Ref) => {
      if (r.group && !r.group.includes('/') && topicFilterError(r.filter) === null) return true;
      this.host.counters.row[Counter.clusterErrors]++;
      return false;
    };
    if (req.full) {
      const keep = new Set(req.add.map((r) => sharedKey(r.group, r.filter)));
      for (const [k, r] of slice) {
        if (keep.has(k)) continue;
        slice.delete(k);
        this.tell(p, r, false);
      }
    }
    for (const r of req.add) {
      const k = sharedKey(r.group, r.filter);
      if (slice.has(k) || !valid(r)) continue;
      slice.set(k, { group: r.group, filter: r.filter });
      this.tell(p, r, true);
    }
    for (const r of req.delete) {
      const k = sharedKey(r.group, r.filter);
      if (!slice.delete(k)) continue;
      this.tell(p, r, false);
    }
    return { applied: true };
  }

  onDeliveries(req: SharedDeliveries): { applied: boolean } {
    const p = caller(this.host.peers, req.from, req.incarnation);
    if (!p || p.slot < 0) return { applied: false };
    const shards = this.host.shards.length;
    for (const d of req.deliveries) {
      const e = d.entry;
      try {
        if (entryEnd(Buffer.from(e.buffer, e.byteOffset, e.length), 0, e.length) !== e.length)
          throw new RangeError('trailing bytes');
      } catch {
        this.host.counters.row[Counter.clusterErrors]++;
        continue;
      }
      postShard(this.host, ownerShard(d.group, d.filter, shards), {
        t: 'sharedIn',
        from: p.slot,
        group: d.group,
        filter: d.filter,
        entry: e,
        id: Number(d.id),
      });
    }
    // Done ids name the shard that sent them (id % 32).
    const byShard = new Map<number, number[]>();
    for (const id of req.done) {
      const n = Number(id);
      const s = n % 32;
      let list = byShard.get(s);
      if (!list) byShard.set(s, (list = []));
      list.push(n);
    }
    for (const [s, ids] of byShard) postShard(this.host, s, { t: 'sharedAcked', slot: p.slot, ids });
    return { applied: true };
  }

  gone(p: Peer, _why: PeerGone): void {
    this.host.counters.row[Counter.sharedRemoteGroups] -= this.remote.get(p.name)?.size ?? 0;
    this.remote.delete(p.name);
    if (p.slot < 0) return;
    this.out.delete(p.slot);
    for (let s = 0; s < this.host.shards.length; s++)
      postShard(this.host, s, { t: 'sharedPeerGone', slot: p.slot });
  }
}

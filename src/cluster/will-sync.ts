import { create } from '@bufbuild/protobuf';
import { shardOf } from '../listener/client-id.js';
import { Counter } from '../metrics/counters.js';
import type { WillMessage } from '../protocol/codec.js';
import { topicNameError } from '../protocol/topic.js';
import { type WillDelta, type WillEntry, WillEntrySchema } from './gen/emqx_ts/cluster/v1/state_pb.js';
import type { Peer } from './peers.js';
import type { PeerGone } from './state.js';
import { caller, callTimeout, postShard, runningPeers, type StateHost, stateClient } from './state-host.js';
import type { ClusterWill } from './state-messages.js';

/**
 * Wills of clients whose node dies. Every node sends its clients' wills (set when a client with
 * a will connects, cleared when it can no longer be published there) to every peer: deltas per
 * turn, the full table on join. When a peer is marked down (missed heartbeats) or comes back
 * with a new incarnation (it crashed and restarted), its wills are published by exactly one
 * survivor: the running node with the smallest name in that survivor's view, after the Will
 * Delay Interval capped by the session expiry at the origin (for a client whose connection had
 * ended already, what was left of both when the entry arrived), unless the client connects
 * again somewhere first. A peer that left (graceful stop) drains its clients without wills,
 * as a single node's shutdown does. A netsplit looks like a death to both sides: wills of
 * clients still connected on the other side fire too (documented in ARCHITECTURE.md).
 *
 * Durable nodes restore their sessions, with the wills that were pending, from their data dir:
 * a restarted node must not publish those the cluster published for its previous incarnation.
 * Every node that held a dead peer's wills remembers whose they were (`fired`); the restarted
 * node asks in its first join round (JoinRequest.want_fired_wills) and publishes only the others
 * (`verdict`, src/shard/shard.ts releaseRestoredWills).
 */
/** How long a node remembers the wills of a dead peer's incarnation for its restart (7 days) */
const FIRED_KEEP_MS = 7 * 24 * 3600 * 1000;

export class WillSync {
  private readonly local = new Map<string, WillEntry>();
  /** Peers' wills by peer name and client id, with when each arrived */
  private readonly remote = new Map<string, Map<string, { e: WillEntry; at: number }>>();
  /** Wills of dead peers' clients waiting for their delay, by client id */
  private readonly delayed = new Map<string, NodeJS.Timeout>();
  private set: WillEntry[] = [];
  private clear: string[] = [];
  private scheduled = false;
  /**
   * By peer name: the client ids of wills we held when an incarnation of that peer died (down
   * or restarted), and when. Kept until that client has a will there again (a new will is
   * another matter) or FIRED_KEEP_MS; a restarted peer asks for them in its first join round.
   */
  private readonly fired = new Map<string, Map<string, number>>();

  constructor(private readonly host: StateHost) {}

  /** A shard's changes this turn. */
  onShard(set: ClusterWill[], clear: string[]): void {
    for (const w of set) {
      const e = toEntry(w);
      this.local.set(w.clientId, e);
      this.set.push(e);
    }
    for (const id of clear) {
      this.local.delete(id);
      this.clear.push(id);
    }
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    const set = this.set;
    const clear = this.clear;
    this.set = [];
    this.clear = [];
    for (const p of runningPeers(this.host.peers)) this.push(p, false, set, clear);
  };

  private push(p: Peer, full: boolean, set: WillEntry[], clear: string[]): void {
    stateClient(p.address)
      .pushWills(
        { from: this.host.name, incarnation: this.host.incarnation, full, set, clear },
        { timeoutMs: callTimeout(this.host.config) },
      )
      .catch((err) => this.host.log.debug({ peer: p.name, err: String(err) }, 'will push failed'));
  }

  synced(p: Peer): void {
    this.push(p, true, [...this.local.values()], []);
  }

  onDelta(req: WillDelta): { applied: boolean } {
    const p = caller(this.host.peers, req.from, req.incarnation);
    if (!p) return { applied: false };
    let table = this.remote.get(p.name);
    if (!table || req.full) {
      table = new Map();
      this.remote.set(p.name, table);
    }
    const fired = this.fired.get(p.name);
    const now = Date.now();
    for (const e of req.set) {
      fired?.delete(e.clientId); // a new will: the one that fired is history
      if (topicNameError(e.topic) !== null || e.qos > 2) {
        this.host.counters.row[Counter.clusterErrors]++;
        continue;
      }
      table.set(e.clientId, { e, at: now });
      this.host.counters.row[Counter.willsReceived]++;
      this.cancel(e.clientId); // it connected again on that node
    }
    for (const id of req.clear) table.delete(id);
    return { applied: true };
  }

  /** The client connected again somewhere: a will still waiting for its delay is not sent [MQTT-3.1.3-9]. */
  cancel(clientId: string): void {
    const t = this.delayed.get(clientId);
    if (!t) return;
    clearTimeout(t);
    this.delayed.delete(clientId);
  }

  gone(p: Peer, why: PeerGone): void {
    const table = this.remote.get(p.name);
    this.remote.delete(p.name);
    // Left: drained without wills. Only its cluster thread restarted: its clients are still
    // connected there, and the new thread sends their wills again when it syncs.
    if (!table || table.size === 0 || why === 'left' || why === 'threadRestarted') return;
    this.remember(p.name, table.keys());
    if (!this.publisherFor(p)) return;
    this.host.log.info({ peer: p.name, wills: table.size, why }, 'publishing the wills of a dead node');
    const now = Date.now();
    for (const { e, at } of table.values()) {
      // A connection's will waits its delay from now (the node's death ended the connection);
      // one already waiting there (`pending`) what was left of it when it arrived.
      const ms = e.pending ? at + e.delay * 1000 - now : e.delay * 1000;
      if (ms <= 0) this.publish(e);
      else {
        this.cancel(e.clientId);
        const t = setTimeout(() => {
          this.delayed.delete(e.clientId);
          this.publish(e);
        }, ms);
        t.unref();
        this.delayed.set(e.clientId, t);
      }
    }
  }

  /** The wills of a dead incarnation of `peer` that the cluster publishes (this node, or the publisher). */
  private remember(peer: string, ids: Iterable<string>): void {
    const now = Date.now();
    let m = this.fired.get(peer);
    if (!m) {
      m = new Map();
      this.fired.set(peer, m);
    }
    for (const id of ids) m.set(id, now);
    for (const [name, table] of this.fired) {
      for (const [id, at] of table) if (now - at > FIRED_KEEP_MS) table.delete(id);
      if (table.size === 0) this.fired.delete(name);
    }
  }

  /** For a restarted `peer`'s join (want_fired_wills): its wills the cluster published or will publish. */
  firedFor(peer: string): string[] {
    const m = this.fired.get(peer);
    return m ? [...m.keys()] : [];
  }

  /**
   * Our first join round is over (durable start): to each shard, the ids of its clients whose
   * restored wills the cluster published for this node's previous incarnation.
   */
  verdict(fired: Set<string>): void {
    const shards = this.host.shards.length;
    const by: string[][] = Array.from({ length: shards }, () => []);
    for (const id of fired) by[shardOf(id, shards)].push(id);
    for (let i = 0; i < shards; i++) postShard(this.host, i, { t: 'firedWills', clientIds: by[i] });
    this.host.log.info(
      { fired: fired.size },
      'first join round over: wills the cluster published for our previous incarnation',
    );
  }

  /** One survivor publishes: the smallest running name other than the dead one, as we see it. */
  private publisherFor(dead: Peer): boolean {
    for (const q of this.host.peers.byName.values()) {
      if (q !== dead && q.status === 'running' && q.name < this.host.name) return false;
    }
    return true;
  }

  private publish(e: WillEntry): void {
    const shards = this.host.shards.length;
    const will: WillMessage = {
      topic: e.topic,
      payload: Buffer.from(e.payload),
      qos: e.qos as 0 | 1 | 2,
      retain: e.retain,
      props: e.props.length > 0 ? Buffer.from(e.props) : null,
      expiry: e.expiry >= 0n ? Number(e.expiry) : undefined,
    };
    if (postShard(this.host, shardOf(e.clientId, shards), { t: 'publishWill', clientId: e.clientId, will }))
      this.host.counters.row[Counter.clusterWillsPublished]++;
  }
}

function toEntry(w: ClusterWill): WillEntry {
  const m = w.will;
  return create(WillEntrySchema, {
    clientId: w.clientId,
    topic: m.topic,
    payload: m.payload,
    qos: m.qos,
    retain: m.retain,
    props: m.props ?? new Uint8Array(0),
    expiry: BigInt(m.expiry ?? -1),
    delay: m.delay ?? 0,
    pending: w.pending === true,
  });
}

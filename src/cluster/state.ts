import type { MessagePort } from 'node:worker_threads';
import type { ServiceImpl } from '@connectrpc/connect';
import type { ClusterStateService } from './gen/emqx_ts/cluster/v1/state_pb.js';
import type { Peer } from './peers.js';
import { Registry } from './registry.js';
import { RetainedSync } from './retained-sync.js';
import { SharedRemote } from './shared-remote.js';
import type { StateHost } from './state-host.js';
import type { MainToClusterState, ShardToClusterState } from './state-messages.js';
import { Tombstones } from './tombstones.js';
import { WillSync } from './will-sync.js';

/** Why a peer's state on this node ends. */
/**
 * Why a running peer's state here ends: missed heartbeats, Leave, a new process, or a new
 * cluster thread in the same process (its clients are still connected).
 */
export type PeerGone = 'down' | 'left' | 'restarted' | 'threadRestarted';

/**
 * Cluster II in the cluster thread: the state that lives on every node or moves between nodes.
 * node.ts calls `synced` when our join to a peer succeeded (full syncs go then), `gone` when a
 * peer is down, left or restarted, and hands over the messages of main and the shards that are
 * not Cluster I's.
 */
export class ClusterState {
  readonly retained: RetainedSync;
  readonly wills: WillSync;
  readonly shared: SharedRemote;
  readonly registry: Registry;
  readonly tombstones: Tombstones;

  constructor(readonly host: StateHost) {
    this.retained = new RetainedSync(host);
    this.wills = new WillSync(host);
    this.shared = new SharedRemote(host);
    this.tombstones = new Tombstones(
      host,
      (f) => host.pinRoutes(f),
      (f) => host.unpinRoutes(f),
    );
    this.registry = new Registry(host, this.wills, this.tombstones);
  }

  service(): ServiceImpl<typeof ClusterStateService> {
    return {
      replicateRetained: (req) => this.retained.onBatch(req),
      pushWills: (req) => this.wills.onDelta(req),
      pushShared: (req) => this.shared.onDelta(req),
      deliverShared: (req) => this.shared.onDeliveries(req),
      claim: (req) => this.registry.claim(req),
      takeover: (req) => this.registry.takeover(req),
      deliverToSession: (req) => this.tombstones.onDeliveries(req),
    };
  }

  synced(p: Peer): void {
    this.retained.synced(p);
    this.wills.synced(p);
    this.shared.synced(p);
  }

  /** A peer declared down (not left) runs again, same incarnation: a netsplit healed (registry.ts). */
  healed(p: Peer, since: number): void {
    this.registry.healed(p.name, since);
  }

  gone(p: Peer, why: PeerGone): void {
    this.wills.gone(p, why);
    this.shared.gone(p, why);
    this.registry.gone(p.name);
    if (why === 'down') this.tombstones.gone(p.name);
  }

  onMain(m: MainToClusterState): void {
    if (m.t === 'retainedOut') this.retained.onOut(m.id, m.entries);
    else if (m.t === 'retainedSnapshot') this.retained.onSnapshot(m.peer, m.entries);
    else if (m.t === 'retainedMerged') this.retained.onMerged(m.id);
  }

  onShard(m: ShardToClusterState, shard: number, _port: MessagePort): void {
    if (m.t === 'wills') this.wills.onShard(m.set, m.clear);
    else if (m.t === 'sharedGroups') this.shared.onGroups(m.add, m.del);
    else if (m.t === 'sharedOut') this.shared.onOut(m.items, shard);
    else if (m.t === 'sharedDone') this.shared.onDone(m.items);
    else if (m.t === 'claim') this.registry.onClaim(shard, m.reqId, m.clientId, m.clean);
    else if (m.t === 'exported') this.registry.onExported(m.reqId, m.session);
    else if (m.t === 'imported') this.registry.onImported(m.clientId);
    else if (m.t === 'holding') this.registry.onHolding(m.reqId, m.clientIds);
  }
}

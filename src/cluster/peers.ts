import { type Client, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import type { TopicIndex } from '../routing/topic-index.js';
import { type ForwardStream, H2_FRAME, H2_WINDOW } from './forward.js';
import { ClusterService } from './gen/emqx_ts/cluster/v1/cluster_pb.js';
import { partitionInterceptors } from './partition.js';

/** Most peers a node routes to: one bit of the remote-route index per peer. */
export const MAX_PEERS = 32;

/**
 * Traffic from `p` that says it comes from (or, for an ack of our stream, goes to) `incarnation`:
 * proof of life when that is the running incarnation we know — the one place `lastSeen` moves
 * after the join. Any traffic counts (forward batches on either receive path, acks of our
 * stream, heartbeats both ways, route pushes), not only heartbeats: under load a heartbeat may
 * wait behind batches past down_after while the stream keeps moving. Returns whether it is that
 * running peer (its traffic is to be taken).
 */
export function touch(p: Peer | undefined, incarnation: bigint): p is Peer {
  if (p === undefined || p.status !== 'running' || p.incarnation !== incarnation) return false;
  p.lastSeen = Date.now();
  return true;
}

/** Another node, as this node sees it. */
export class Peer {
  address = '';
  incarnation = 0n;
  /** Its process's start id (NodeInfo.boot; 0: unknown) */
  boot = 0n;
  version = '';
  status: 'running' | 'stopped' = 'stopped';
  /** Stopped by its Leave (known down), until it runs again */
  left = false;
  /**
   * Declared down by missed heartbeats: its last traffic before that (ms), until it runs again
   * with the same incarnation (a heal: node.ts `maybeHealed`); 0 otherwise
   */
  downAt = 0;
  /** Last traffic seen from it: heartbeat (either direction), join, route push, forward batch or ack */
  lastSeen = 0;
  /** Its route slice as it last sent it, and that slice's version */
  readonly routes = new Set<string>();
  routeVersion = 0n;
  /** Bit in the remote-route index while it is running; -1 otherwise */
  slot = -1;

  // Our side towards it
  client: Client<typeof ClusterService> | null = null;
  /** The address `client` calls (the forward stream's HTTP/2 connection goes there too) */
  clientAddress = '';
  /** It holds our slice (our Join succeeded since it last lost us) */
  synced = false;
  joining = false;
  /** Version of our slice it holds, and changes made since then (filter → present) */
  ackedVersion = 0;
  pending = new Map<string, boolean>();
  pushing = false;
  stream: ForwardStream | null = null;
  /** Entry buffers for it that shards handed over this turn, and how many publishes they hold */
  outParts: Buffer[] = [];
  outCount = 0;
  /** Held-ack callbacks of the shard batches that have entries in `outParts` */
  outDone: ((code: number) => void)[] = [];

  constructor(readonly name: string) {}
}

/** A gRPC (HTTP/2, cleartext) client of a node's cluster service. */
export function clientTo(address: string): Client<typeof ClusterService> {
  return createClient(
    ClusterService,
    createGrpcTransport({
      baseUrl: `http://${address}`,
      interceptors: partitionInterceptors(address),
      // Wide windows for acks too (see the server in node.ts).
      nodeOptions: { settings: { initialWindowSize: H2_WINDOW, maxFrameSize: H2_FRAME } },
    }),
  );
}

/**
 * Peers by name, their slots in the remote-route index and their route slices. Only the
 * cluster thread writes the remote index: a filter is added under the peer's bit, deleted by
 * clearing it, and a peer that goes down has its bit cleared everywhere (EMQX drops a down
 * node's whole slice the same way).
 */
export class PeerTable {
  readonly byName = new Map<string, Peer>();
  readonly bySlot: (Peer | null)[] = new Array(MAX_PEERS).fill(null);

  constructor(private readonly remote: TopicIndex) {}

  get(name: string): Peer {
    let p = this.byName.get(name);
    if (!p) {
      p = new Peer(name);
      this.byName.set(name, p);
    }
    return p;
  }

  /** Replaces a peer's whole slice (join: full sync) and makes it routable. False: no free slot. */
  replaceRoutes(p: Peer, filters: readonly string[], version: bigint): boolean {
    if (p.slot < 0) {
      const slot = this.bySlot.indexOf(null);
      if (slot < 0) return false;
      p.slot = slot;
      this.bySlot[slot] = p;
    }
    this.remote.clearShardEverywhere(p.slot);
    p.routes.clear();
    for (const f of filters) this.addRoute(p, f);
    p.routeVersion = version;
    return true;
  }

  addRoute(p: Peer, filter: string): void {
    if (p.routes.has(filter)) return;
    // acquire sets the peer's bit under the index lock, so the node cannot be reclaimed between.
    const id = this.remote.acquire(filter, p.slot);
    if (id < 0) return; // remote index full: this route is not matched (logged by the caller's counters)
    p.routes.add(filter);
  }

  deleteRoute(p: Peer, filter: string): void {
    if (!p.routes.delete(filter)) return;
    const id = this.remote.find(filter);
    if (id > 0) this.remote.clearShard(id, p.slot);
  }

  /** The peer is down: its slice goes, its slot is free. */
  dropRoutes(p: Peer): void {
    if (p.slot >= 0) {
      this.remote.clearShardEverywhere(p.slot);
      this.bySlot[p.slot] = null;
      p.slot = -1;
    }
    p.routes.clear();
    p.routeVersion = 0n;
  }
}

import type { MessagePort } from 'node:worker_threads';
import { type Client, createClient } from '@connectrpc/connect';
import { createGrpcTransport } from '@connectrpc/connect-node';
import type { Config } from '../config/schema.js';
import { shardOf } from '../listener/client-id.js';
import type { Logger } from '../log.js';
import type { Counters } from '../metrics/counters.js';
import type { ClusterToShard } from '../threads/messages.js';
import { ClusterStateService } from './gen/emqx_ts/cluster/v1/state_pb.js';
import { partitionInterceptors } from './partition.js';
import { type Peer, type PeerTable, touch } from './peers.js';
import type { ClusterStateToMain } from './state-messages.js';

export type StateClient = Client<typeof ClusterStateService>;

/** What the Cluster II modules (retained, wills, shared groups, registry) see of the cluster thread. */
export interface StateHost {
  readonly name: string;
  readonly incarnation: bigint;
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly peers: PeerTable;
  readonly shards: (MessagePort | null)[];
  postMain(m: ClusterStateToMain): void;
  /** Keeps filters in this node's route slice without a local subscriber (local-routes.ts) */
  pinRoutes(filters: string[]): void;
  unpinRoutes(filters: string[]): void;
}

const clients = new Map<string, StateClient>();

/** A client of a peer's ClusterStateService (its own HTTP/2 session, apart from the forward stream). */
export function stateClient(address: string): StateClient {
  let c = clients.get(address);
  if (!c) {
    c = createClient(
      ClusterStateService,
      createGrpcTransport({ baseUrl: `http://${address}`, interceptors: partitionInterceptors(address) }),
    );
    clients.set(address, c);
  }
  return c;
}

/** Peers we can call: running and holding our slice (our join succeeded). */
export function runningPeers(peers: PeerTable): Peer[] {
  const out: Peer[] = [];
  for (const p of peers.byName.values()) if (p.status === 'running' && p.synced && p.address) out.push(p);
  return out;
}

/** A call's timeout: bounded by down_after, so that a dead peer never holds anything longer. */
export function callTimeout(config: Config): number {
  return Math.min(5000, Math.max(500, config['cluster.down_after'] * 1000));
}

/**
 * The caller of a state RPC, if it is a running peer of this incarnation: its call proves it
 * alive (`touch`), as a heartbeat or a forward batch does — under load a heartbeat can wait
 * behind other traffic past down_after while claims, wills and retained updates keep flowing.
 */
export function caller(peers: PeerTable, from: string, incarnation: bigint): Peer | null {
  const p = peers.byName.get(from);
  return touch(p, incarnation) ? p : null;
}

/** The port of the shard that owns `clientId` (null while it restarts). */
export function shardPort(host: StateHost, clientId: string): MessagePort | null {
  return host.shards[shardOf(clientId, host.shards.length)] ?? null;
}

export function postShard(host: StateHost, shard: number, m: ClusterToShard): boolean {
  const port = host.shards[shard];
  if (!port) return false;
  port.postMessage(m);
  return true;
}

/** fnv1a of a string (same as routing/shared.ts and the client-id → shard hash). */
export function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

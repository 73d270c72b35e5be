/**
 * Messages of Cluster II (retained replication, wills, cross-node shared groups, session
 * takeover) between main, the shards and the cluster thread. Kept apart from Cluster I's
 * forwarding messages; src/threads/messages.ts unions them in.
 */
import type { WillMessage } from '../protocol/codec.js';
import type { RetainedRecord } from '../threads/messages.js';

// --- main ↔ cluster thread: retained store replication (main owns the store) -------------------

export type MainToClusterState =
  /** Stored locally: replicate to every running peer; answered with `retainedReplicated` */
  | { t: 'retainedOut'; id: number; entries: RetainedRecord[] }
  /** The whole store (and its tombstones), for a peer we just joined */
  | { t: 'retainedSnapshot'; peer: string; entries: RetainedRecord[] }
  /** The `retainedIn` with this id is in the store */
  | { t: 'retainedMerged'; id: number };

export type ClusterStateToMain =
  /**
   * Every running peer has stored (or failed to take) these `retainedOut`s; `code` ≥ 0x80: one
   * that is not known down did not confirm
   */
  | { t: 'retainedReplicated'; ids: number[]; code: number }
  /** From a peer: merge into the store (last writer wins), do not replicate again; id > 0: answer `retainedMerged` */
  | { t: 'retainedIn'; entries: RetainedRecord[]; id: number }
  | { t: 'retainedSnapshotReq'; peer: string };

// --- shard ↔ cluster thread -------------------------------------------------------------------

/** A will as the cluster keeps it for a client of this node (published by others if we die). */
export interface ClusterWill {
  clientId: string;
  will: WillMessage;
  /** Its connection has ended: `will.delay` (what is left) already runs */
  pending?: boolean;
}

/** A session as shipped between nodes on takeover (src/cluster/session-codec.ts encodes it). */
export type SessionBlob = Uint8Array;

export type ShardToClusterState =
  /** Wills of this shard's clients set and cleared this turn */
  | { t: 'wills'; set: ClusterWill[]; clear: string[] }
  /** Shared groups with local members: first member joined (add) / last left (del) */
  | { t: 'sharedGroups'; add: [string, string][]; del: [string, string][] }
  /** Owner shard: messages of shared groups it picked another node for (codec entries) */
  | { t: 'sharedOut'; items: SharedOut[] }
  /** Member side: remote shared deliveries done (acked by the member, or dropped) */
  | { t: 'sharedDone'; items: { peer: number; id: number }[] }
  /** A CONNECT: become the client's owner cluster-wide (answered with `claimed`) */
  | { t: 'claim'; reqId: number; clientId: string; clean: boolean }
  /** Answer to `takeover` */
  | { t: 'exported'; reqId: number; session: SessionBlob | null }
  /** A session shipped from another node is in this node's store (its old node may forget it) */
  | { t: 'imported'; clientId: string }
  /** Answer to `holds`: those of its client ids this shard has a session or a CONNECT for */
  | { t: 'holding'; reqId: number; clientIds: string[] };

export interface SharedOut {
  /** Peer slot the owner picked */
  slot: number;
  group: string;
  filter: string;
  entry: Uint8Array;
  /** > 0 for QoS 1/2: kept by the owner until `sharedAcked` */
  id: number;
}

export type ClusterStateToShard =
  /** Publish a will (of a client of a dead node) as a message published on this node */
  | { t: 'publishWill'; clientId: string; will: WillMessage }
  /** A peer has (add) / no longer has (del) members of this group; for the group's owner shard */
  | { t: 'sharedRemote'; slot: number; group: string; filter: string; add: boolean }
  /** A peer is gone: every group drops it, its unacked deliveries go to another member */
  | { t: 'sharedPeerGone'; slot: number }
  /** A remote owner picked this node: deliver to one local member of the group */
  | { t: 'sharedIn'; from: number; group: string; filter: string; entry: Uint8Array; id: number }
  /** The member on `slot` acknowledged shared deliveries `ids` this shard sent */
  | { t: 'sharedAcked'; slot: number; ids: number[] }
  /**
   * Answer to `claim`: the session the previous owner shipped, if any; `refused`: no quorum
   * (cluster.claim_quorum = majority), the CONNECT is refused with Server unavailable
   */
  | { t: 'claimed'; reqId: number; session: SessionBlob | null; refused?: boolean }
  /** Netsplit heal (registry.ts): which of these client ids still have a session here? (`holding`) */
  | { t: 'holds'; reqId: number; clientIds: string[] }
  /**
   * Another node takes the client over: close it (0x8E), ship (or discard) its session — once
   * `drains` other shards have sent their `drained` (what they were routing reached it first)
   */
  | { t: 'takeover'; reqId: number; clientId: string; clean: boolean; afterClaim: number; drains: number }
  /**
   * Before a takeover of a client of shard `to`: route what this shard was handed until now
   * (forwarded batches), post its batches, then `drained` to `to` behind them (same port, in order)
   */
  | { t: 'takeoverDrain'; reqId: number; to: number }
  /**
   * Messages that reached the session's old node after it shipped the session (codec entries),
   * for this client's session only; `done`: the old node forwards no more
   */
  | { t: 'sessionIn'; clientId: string; buf: ArrayBuffer; count: number; done: boolean }
  /**
   * A session this node shipped to a node that died before storing it: back here, offline
   * (unless the client has a session or a claim here meanwhile)
   */
  | { t: 'restore'; clientId: string; session: SessionBlob }
  /** Its new node stored it after all: the restored copy goes, if it is still offline */
  | { t: 'dropRestored'; clientId: string };

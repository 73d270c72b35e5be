import { Counter, type Counters } from '../metrics/counters.js';
import type { Connection } from '../shard/connection.js';

/**
 * Batch bytes a shard may have posted to one peer and not yet seen processed (batchAck). Past
 * it, the connections whose messages were in the last batch are not read until the peer has
 * caught up to half of it. Without this, a publisher read at full speed by one shard queued
 * batches without bound in the port of a busier peer, and a congested subscriber there learnt
 * of the flood (and held its publisher, delivery/flow-control.ts) only after megabytes more.
 */
export const PEER_WINDOW_BYTES = 1 << 20;

/**
 * Per-peer flow control of cross-shard batches (issue #9 item 10): bounded memory in the peer
 * ports, TCP back-pressure on the publishers that fill them. The normal path pays one compare
 * per cross-shard message (`note`) and one add per batch.
 */
export class PeerWindows {
  private readonly inflight: number[];
  /** Connections whose messages are in this turn's batch to each peer */
  private readonly contributors: Connection[][];
  private readonly last: (Connection | null)[];
  /** Connections held because a peer's window was full */
  private readonly held: Set<Connection>[];

  constructor(
    peers: number,
    private readonly counters: Counters,
  ) {
    this.inflight = new Array(peers).fill(0);
    this.contributors = Array.from({ length: peers }, () => []);
    this.last = new Array(peers).fill(null);
    this.held = Array.from({ length: peers }, () => new Set());
  }

  /** A message of `conn` (null: not a client's) goes into this turn's batch to `peer`. */
  note(peer: number, conn: Connection | null): void {
    if (conn === null || this.last[peer] === conn) return;
    this.last[peer] = conn;
    this.contributors[peer].push(conn);
  }

  /** This turn's batch to `peer` was posted. */
  sent(peer: number, bytes: number): void {
    const list = this.contributors[peer];
    this.inflight[peer] += bytes;
    if (this.inflight[peer] > PEER_WINDOW_BYTES) {
      const held = this.held[peer];
      for (let i = 0; i < list.length; i++) {
        const c = list[i];
        if (held.has(c) || c.closed) continue;
        held.add(c);
        this.counters.row[Counter.peerWindowHolds]++;
        c.holdRead();
      }
    }
    list.length = 0;
    this.last[peer] = null;
  }

  /** The peer processed a batch of ours. */
  acked(peer: number, bytes: number): void {
    this.inflight[peer] = Math.max(0, this.inflight[peer] - bytes);
    if (this.inflight[peer] <= PEER_WINDOW_BYTES / 2) this.releaseAll(peer);
  }

  /** The peer died or restarted: nothing of ours is in its port any more. */
  reset(peer: number): void {
    this.inflight[peer] = 0;
    this.contributors[peer].length = 0;
    this.last[peer] = null;
    this.releaseAll(peer);
  }

  private releaseAll(peer: number): void {
    const held = this.held[peer];
    if (held.size === 0) return;
    for (const c of held) c.releaseRead();
    held.clear();
  }
}

import type { HeldAck } from '../shard/connection.js';

/** What an ack waits on: the connection to release it on, once written. */
export interface AckConnection {
  readonly closed: boolean;
  releaseAcks(): void;
}

/**
 * Sync mode: what one client QoS 1/2 PUBLISH's ack waits for — each of its deliveries to a
 * persistent session of this shard, each outbox entry of a batch carrying it to another shard,
 * its QoS 2 awaiting-PUBREL id. Each is settled when the commit holding its record is done, or
 * earlier when it is no longer needed: a delivery acknowledged by the subscriber (or dropped by
 * policy: queue full, expired, session discarded) before its record was ever flushed, an outbox
 * entry confirmed by the receiving shard before its flush. The ack goes out when all are
 * settled (after the earlier acks of its connection: releaseAcks keeps PUBLISH order).
 */
export class Ticket {
  /** Unsettled dependencies */
  n = 0;
  conn: AckConnection | null = null;
  held: HeldAck | null = null;

  settle(): void {
    if (--this.n > 0 || this.held === null) return;
    const held = this.held;
    this.held = null;
    if (held.waits !== undefined && --held.waits > 0) return; // main's retained store too
    held.ready = true;
    if (!this.conn!.closed) this.conn!.releaseAcks();
  }
}

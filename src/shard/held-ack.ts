/** The connection a held ack goes out on, once it is ready and every earlier ack has gone. */
export interface AckConnection {
  readonly closed: boolean;
  releaseAcks(): void;
}

const NO_FRAME = Buffer.alloc(0);

/**
 * An acknowledgement (PUBACK/PUBREC/SUBACK…) that must wait, with one count of the parts still
 * outstanding. For a client's QoS 1/2 PUBLISH each part is one thing its ack waits for, and
 * whoever owns the part calls `partDone()` once: each store record of it in this shard (a
 * delivery to a persistent session, the outbox entry of a batch carrying it to another shard,
 * its QoS 2 awaiting-PUBREL id — durable sync mode, storage/shard-durability.ts), main's
 * retained store (shard/retained-relay.ts), the cluster peers it was forwarded to
 * (cluster/shard-link.ts). At 0 the ack is ready and leaves after the earlier acks of its
 * connection (Connection.releaseAcks keeps PUBLISH order [MQTT-4.6.0-2]).
 *
 * Pooled per thread (`acquireHeldAck`): a PUBLISH allocates none. An ack is given back to the
 * pool only when its connection writes it (releaseAcks), which is after its count reached 0,
 * i.e. after every part owner has called partDone() — owners drop their reference when they do,
 * so a pooled object is never decremented for an ack it no longer is. A closed connection's held
 * acks are never written and never pooled (late partDone() calls on them are harmless).
 */
export class HeldAck {
  frame: Buffer = NO_FRAME;
  conn: AckConnection | null = null;
  /** Parts still outstanding; the ack is ready at 0 */
  parts = 0;
  ready = false;
  /** In a connection's ack queue (else being routed, or free) */
  queued = false;

  /** One part this ack waited for is done; the last one lets it (and acks behind it) go. */
  partDone(): void {
    if (--this.parts > 0) return;
    this.ready = true;
    const c = this.conn;
    if (this.queued && c !== null && !c.closed) c.releaseAcks();
  }
}

const FREE: HeldAck[] = [];
const POOL_MAX = 4096;

/** A held ack for `conn` with `parts` outstanding (from the pool when one is free). */
export function acquireHeldAck(conn: AckConnection, parts: number): HeldAck {
  const h = FREE.length > 0 ? FREE.pop()! : new HeldAck();
  h.conn = conn;
  h.parts = parts;
  h.ready = parts <= 0;
  h.queued = false;
  return h;
}

/** Back to the pool: written out (or never queued, with no part left). */
export function releaseHeldAck(h: HeldAck): void {
  h.frame = NO_FRAME;
  h.conn = null;
  h.parts = 0;
  h.ready = false;
  h.queued = false;
  if (FREE.length < POOL_MAX) FREE.push(h);
}

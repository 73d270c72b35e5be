import type { Logger } from '../log.js';
import type { WillMessage } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import type { SharedFilter } from '../routing/shared.js';
import { InflightTable } from './inflight.js';
import type { Message } from './message.js';
import { DeliveryQueue } from './queue.js';

/**
 * What the session layer (lifecycle, delivery, queries) asks of the connection that currently
 * uses a session; shard/connection.ts implements it. An interface here, so that sessions do not
 * import connections (which import the packet handlers, which use sessions).
 */
export interface SessionConnection {
  readonly clientId: string;
  readonly closed: boolean;
  readonly congested: boolean;
  readonly inflightLimit: number;
  readonly keepalive: number;
  readonly keepaliveMs: number;
  readonly lastReceivedAt: number;
  readonly log: Logger;
  readonly username: string | null;
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** `tcp:default`, `ssl:default`…: the listener the client came in on */
  readonly listener: string;
  readonly protocolName: string;
  readonly protocolVersion: number;
  readonly connectedAt: number;
  sendPublish(
    msg: Message,
    qos: QoS,
    packetId: number,
    dup: boolean,
    retainFlag: boolean,
    subIds: number[] | null,
  ): boolean;
  write(frame: Buffer): void;
  disconnect(reasonCode: number, reason: string): void;
  setLogLevel(level: string): void;
}

export interface Subscription {
  qos: QoS;
  /** Node of the filter in the topic index (-1 for a shared subscription: its owner shard indexes it) */
  nodeId: number;
  /** MQTT 5 subscription options [MQTT-3.8.3.1] */
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: number;
  /** Subscription Identifier, 0 = none */
  subId: number;
  /** Set for `$share/{group}/{filter}` and `$queue/{filter}` */
  shared: SharedFilter | null;
}

/** A delivery held while an imported session merges its old node's late messages. */
export interface MergingDelivery {
  msg: Message;
  qos: QoS;
  retainFlag: boolean;
  subIds: number[] | null;
  group: string | null;
}

/** What a delivery carries besides the message: how it is encoded for this subscriber. */
export interface DeliveryOptions {
  qos: QoS;
  /** RETAIN flag on the wire (Retain As Published, or a retained message sent on subscribe) */
  retainFlag: boolean;
  /** Subscription identifiers of the matching subscriptions, or null */
  subIds: number[] | null;
  /** Shared group key when delivered through a shared subscription (for redispatch) */
  group: string | null;
}

/**
 * One delivery of a message to a session: queued (waiting for an inflight slot or for the
 * client to come back), then, the same object, inflight once sent. Made by `newDelivery` only,
 * so that every delivery has one shape.
 */
export interface QueuedDelivery extends DeliveryOptions {
  msg: Message;
  /** The delivery's key in the durable store (session-wide, increasing) */
  seq: number;
  /** Inflight QoS 2: false waiting for PUBREC; true PUBREL sent, waiting for PUBCOMP */
  released: boolean;
  /**
   * Durable store (storage/pending-writes.ts): its write not flushed yet (held for the PUBACK,
   * or pending), null when none. Opaque here.
   */
  w: object | null;
  /** Durable store: its record is written (by a flush) and not removed since */
  stored: boolean;
}

/** A QoS 1/2 message sent to the client and not yet fully acknowledged. */
export interface InflightEntry extends QueuedDelivery {
  qos: 1 | 2;
}

/** A delivery, queued or inflight (the one place that makes them: one object shape). */
export function newDelivery(
  msg: Message,
  qos: QoS,
  retainFlag: boolean,
  subIds: number[] | null,
  group: string | null,
  seq: number,
  released = false,
  stored = false,
): QueuedDelivery {
  return { msg, qos, retainFlag, subIds, group, seq, released, w: null, stored };
}

/** Session Expiry Interval meaning "never" [MQTT-3.1.2-?] */
export const NEVER_EXPIRES = 0xffffffff;

/**
 * Session state [MQTT-3.1.2-4]: plain data, so that a durable store and cross-node takeover can
 * serialise it. The connection that currently uses it is tracked by the shard, not here.
 */
export class Session {
  // The maps are made on first use: an empty Map costs ~200 bytes, and most of a broker's
  // connections are idle ones that never need some (or any) of them.
  private subs: Map<string, Subscription> | null = null;
  private inflightMap: InflightTable<InflightEntry> | null = null;
  private rel: Map<number, number> | null = null;
  /** Deliveries waiting for an inflight slot or for the client to come back, oldest first */
  readonly queue = new DeliveryQueue<QueuedDelivery>();
  nextPacketId = 1;
  will: WillMessage | null = null;
  /** A will waiting for its Will Delay Interval (MQTT 5), published at `willAt` unless resumed */
  pendingWill: WillMessage | null = null;
  willAt = 0;
  /**
   * Seconds the session outlives its connection: 0 = ends with it (clean session 1, or MQTT 5
   * without Session Expiry Interval), NEVER_EXPIRES = never.
   */
  expiryInterval = 0;
  /** ms since epoch when an offline session expires; 0 while connected or never */
  expiresAt = 0;
  createdAt = Date.now();
  /**
   * Next delivery sequence number: starts from the clock (µs), so that a new session of the
   * same client id never reuses the key of a stale stored delivery.
   */
  deliverySeq = this.createdAt * 1000;

  /** Transient, not session state: the connection using the session, if any */
  conn: SessionConnection | null = null;
  /**
   * Transient: imported from another node that still forwards what reached it late
   * (cluster/tombstones.ts); deliveries wait here until it is done, then follow its messages
   */
  merging: MergingDelivery[] | null = null;

  // Scratch for de-duplicating overlapping subscriptions during one delivery (no allocation
  // unless subscription identifiers are in use).
  mark = 0;
  markQos: QoS = 0;
  markRetain = false;
  markSubIds: number[] | null = null;

  constructor(
    readonly clientId: string,
    /** Clean Session / Clean Start of the connection that created or last resumed it */
    public clean: boolean,
  ) {}

  /** Subscriptions by filter as the client wrote it */
  get subscriptions(): Map<string, Subscription> {
    if (this.subs === null) this.subs = new Map();
    return this.subs;
  }

  get subscriptionCount(): number {
    return this.subs === null ? 0 : this.subs.size;
  }

  /** QoS 1/2 deliveries by packet id. Insertion order is send order, the order to resend in [MQTT-4.6.0-1] */
  get inflight(): InflightTable<InflightEntry> {
    if (this.inflightMap === null) this.inflightMap = new InflightTable();
    return this.inflightMap;
  }

  get inflightCount(): number {
    return this.inflightMap === null ? 0 : this.inflightMap.size;
  }

  /**
   * Inbound QoS 2 packet ids received (PUBREC sent) and not yet released, with the time (ms)
   * each arrived, for mqtt.await_rel_timeout (swept once a second; insertion = arrival order).
   */
  get awaitingRel(): Map<number, number> {
    if (this.rel === null) this.rel = new Map();
    return this.rel;
  }

  get awaitingRelCount(): number {
    return this.rel === null ? 0 : this.rel.size;
  }

  /** Next free packet id (1..65535), skipping ids still inflight [MQTT-2.3.1-2]. */
  allocatePacketId(): number {
    for (;;) {
      const id = this.nextPacketId;
      this.nextPacketId = id === 65535 ? 1 : id + 1;
      if (this.inflightMap === null || !this.inflightMap.has(id)) return id;
    }
  }
}

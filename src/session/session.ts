import type { WillMessage } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import type { Connection } from '../shard/connection.js';
import type { Message } from './message.js';

export interface Subscription {
  qos: QoS;
  /** Node of the filter in the shared topic index */
  nodeId: number;
}

/** A QoS 1/2 message sent to the client and not yet fully acknowledged. */
export interface InflightEntry {
  msg: Message;
  qos: 1 | 2;
  /** false: waiting for PUBACK/PUBREC; true: PUBREL sent, waiting for PUBCOMP */
  released: boolean;
}

/** A message waiting for an inflight slot or for the client to come back. */
export interface QueuedDelivery {
  msg: Message;
  qos: QoS;
}

/**
 * Session state [MQTT-3.1.2-4]: plain data, so that a durable store and cross-node takeover can
 * serialise it. The connection that currently uses it is tracked by the shard, not here.
 */
export class Session {
  readonly subscriptions = new Map<string, Subscription>();
  /** Insertion order is send order, which is the order to resend in [MQTT-4.6.0-1] */
  readonly inflight = new Map<number, InflightEntry>();
  queue: QueuedDelivery[] = [];
  /** Inbound QoS 2 packet ids received (PUBREC sent) and not yet released */
  readonly awaitingRel = new Set<number>();
  /** When each awaitingRel id arrived (ms), for mqtt.await_rel_timeout (swept once a second) */
  readonly awaitingRelAt = new Map<number, number>();
  nextPacketId = 1;
  will: WillMessage | null = null;
  /** ms since epoch when an offline session expires; 0 while connected */
  expiresAt = 0;
  createdAt = Date.now();

  /** Transient, not session state: the connection using the session, if any */
  conn: Connection | null = null;

  // Scratch for de-duplicating overlapping subscriptions during one delivery (no allocation).
  mark = 0;
  markQos: QoS = 0;

  constructor(
    readonly clientId: string,
    public clean: boolean,
  ) {}

  /** Next free packet id (1..65535), skipping ids still inflight [MQTT-2.3.1-2]. */
  allocatePacketId(): number {
    for (;;) {
      const id = this.nextPacketId;
      this.nextPacketId = id === 65535 ? 1 : id + 1;
      if (!this.inflight.has(id)) return id;
    }
  }
}

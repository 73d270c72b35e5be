import { encodePublish, publishPacketIdOffset } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import { type DeliveryProps, encodePublishV5 } from '../protocol/v5.js';

/**
 * An application message being routed. Topic and payload are usually zero-copy views into the
 * frame it arrived in. The encoded PUBLISH is built at most once per message, protocol version
 * and shard, and shared by every subscriber: QoS 0 subscribers get the same Buffer, QoS 1/2
 * subscribers a copy with header byte and packet id patched (design notes: 0.2-0.9 µs vs 2-5 µs
 * to re-encode). Only MQTT 5 deliveries that carry per-subscriber properties (subscription
 * identifiers, topic alias, remaining expiry) are encoded per subscriber.
 */
export class Message {
  private topicStr: string | null = null;
  private frame0: Buffer | null = null;
  private frameQ: Buffer | null = null;
  private pidOffset = 0;
  private frame0v5: Buffer | null = null;
  private frameQv5: Buffer | null = null;
  private pidOffsetV5 = 0;
  /** MQTT 5 properties to forward to v5 subscribers (raw, see protocol/v5.ts); null when none */
  props: Buffer | null = null;
  /** ms since epoch after which the message must not be delivered [MQTT-3.3.2-5]; 0 = never */
  expiryAt = 0;

  constructor(
    readonly topicBytes: Buffer,
    readonly payload: Buffer,
    readonly qos: QoS,
    /** RETAIN flag as published */
    readonly retain: boolean,
    /** Client id of the publisher ('' for the broker itself) */
    readonly from: string,
    /** Set the RETAIN flag on delivery: true only for retained messages sent because of a subscription [MQTT-3.3.1-8], [MQTT-3.3.1-9] */
    readonly deliverRetained = false,
  ) {}

  static fromStrings(
    topic: string,
    payload: Buffer,
    qos: QoS,
    retain: boolean,
    from: string,
    deliverRetained = false,
  ): Message {
    const m = new Message(Buffer.from(topic, 'utf8'), payload, qos, retain, from, deliverRetained);
    m.topicStr = topic;
    return m;
  }

  get topic(): string {
    if (this.topicStr === null) this.topicStr = this.topicBytes.toString('utf8');
    return this.topicStr;
  }

  /** The QoS 0 PUBLISH frame, shared by all QoS 0 deliveries. Do not mutate. */
  qos0Frame(): Buffer {
    if (this.frame0 === null) {
      this.frame0 = encodePublish(this.topicBytes, this.payload, 0, this.deliverRetained, false, 0);
    }
    return this.frame0;
  }

  /** A fresh QoS 1/2 PUBLISH frame with the given packet id (the caller may keep it). */
  qosFrame(qos: 1 | 2, packetId: number, dup: boolean): Buffer {
    if (this.frameQ === null) {
      this.frameQ = encodePublish(this.topicBytes, this.payload, 1, this.deliverRetained, false, 0);
      this.pidOffset = this.frameQ.length - this.payload.length - 2;
    }
    return patch(this.frameQ, this.pidOffset, qos, packetId, dup, this.deliverRetained);
  }

  /**
   * A PUBLISH frame for one delivery. `retainFlag` differs from `deliverRetained` only for
   * Retain As Published; `d` carries per-delivery MQTT 5 properties (null: none).
   */
  frame(
    v5: boolean,
    qos: QoS,
    packetId: number,
    dup: boolean,
    retainFlag: boolean,
    d: DeliveryProps | null,
  ): Buffer {
    if (retainFlag === this.deliverRetained && d === null) {
      if (!v5) return qos === 0 ? this.qos0Frame() : this.qosFrame(qos, packetId, dup);
      if (qos === 0) {
        if (this.frame0v5 === null) {
          this.frame0v5 = encodePublishV5(
            this.topicBytes,
            this.payload,
            0,
            retainFlag,
            false,
            0,
            this.props,
            null,
          );
        }
        return this.frame0v5;
      }
      if (this.frameQv5 === null) {
        this.frameQv5 = encodePublishV5(
          this.topicBytes,
          this.payload,
          1,
          retainFlag,
          false,
          0,
          this.props,
          null,
        );
        this.pidOffsetV5 = publishPacketIdOffset(this.frameQv5);
      }
      return patch(this.frameQv5, this.pidOffsetV5, qos, packetId, dup, retainFlag);
    }
    if (!v5) return encodePublish(this.topicBytes, this.payload, qos, retainFlag, dup, packetId);
    return encodePublishV5(this.topicBytes, this.payload, qos, retainFlag, dup, packetId, this.props, d);
  }
}

function patch(
  template: Buffer,
  offset: number,
  qos: number,
  packetId: number,
  dup: boolean,
  retain: boolean,
): Buffer {
  const out = Buffer.allocUnsafe(template.length);
  template.copy(out);
  out[0] = 0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0);
  out[offset] = packetId >> 8;
  out[offset + 1] = packetId & 0xff;
  return out;
}

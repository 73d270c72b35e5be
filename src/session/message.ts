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

  /**
   * Cluster: a shared-group message another node picked this node for; called once when the
   * member has acknowledged it (PUBACK / PUBREC) or it was dropped here, so that node forgets it.
   */
  onAcked: (() => void) | null = null;

  /** Topic, payload and properties are in storage of their own (see own()) */
  private owned = false;

  constructor(
    /** Replaced only by own(), with a copy of the same bytes */
    public topicBytes: Buffer,
    public payload: Buffer,
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

  /**
   * Copies topic, payload and properties into one exact-size allocation when they are small
   * views into a much larger buffer (the 64 KiB socket read, a cross-shard batch): a message
   * that waits in a queue or an inflight window would otherwise pin that whole buffer. Called
   * when a message is held, once per message, never on the QoS 0 live path. Cached frames are
   * dropped too: small ones are slices of Node's shared 8 KiB pool.
   */
  own(): void {
    if (this.owned) return;
    this.owned = true;
    const t = this.topicBytes;
    const p = this.payload;
    const pr = this.props;
    const ct = pins(t);
    const cp = pins(p);
    const cr = pr !== null && pins(pr);
    if (!ct && !cp && !cr) return;
    // One ArrayBuffer, views made on it directly and filled with TypedArray set (≈ 300 ns for
    // a 64 B message against ≈ 430 for Buffer.from(ab) + copy() + subarray()).
    const ab = new ArrayBuffer((ct ? t.length : 0) + (cp ? p.length : 0) + (cr ? pr.length : 0));
    let o = 0;
    if (ct) {
      const b = Buffer.from(ab, o, t.length);
      b.set(t);
      this.topicBytes = b;
      o += t.length;
    }
    if (cp) {
      const b = Buffer.from(ab, o, p.length);
      b.set(p);
      this.payload = b;
      o += p.length;
    }
    if (cr) {
      const b = Buffer.from(ab, o, pr.length);
      b.set(pr);
      this.props = b;
    }
    this.frame0 = null;
    this.frameQ = null;
    this.frame0v5 = null;
    this.frameQv5 = null;
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
      // The first QoS 1/2 delivery: encoded with its own flags and packet id and kept as the
      // template that later ones copy and patch (patch sets every flag and the id), so a message
      // with one QoS 1/2 subscriber on this shard — the usual case — is encoded once, not
      // encoded and then copied.
      const f = encodePublish(this.topicBytes, this.payload, qos, this.deliverRetained, dup, packetId);
      this.frameQ = f;
      this.pidOffset = f.length - this.payload.length - 2;
      return f;
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
        // As in qosFrame: the first one is the template.
        const f = encodePublishV5(
          this.topicBytes,
          this.payload,
          qos,
          retainFlag,
          dup,
          packetId,
          this.props,
          null,
        );
        this.frameQv5 = f;
        this.pidOffsetV5 = publishPacketIdOffset(f);
        return f;
      }
      return patch(this.frameQv5, this.pidOffsetV5, qos, packetId, dup, retainFlag);
    }
    if (!v5) return encodePublish(this.topicBytes, this.payload, qos, retainFlag, dup, packetId);
    return encodePublishV5(this.topicBytes, this.payload, qos, retainFlag, dup, packetId, this.props, d);
  }
}

/** A view that keeps alive a buffer much larger than itself. */
function pins(b: Buffer): boolean {
  return b.buffer.byteLength > 2 * b.length + 256;
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
  out.set(template);
  out[0] = 0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0);
  out[offset] = packetId >> 8;
  out[offset + 1] = packetId & 0xff;
  return out;
}

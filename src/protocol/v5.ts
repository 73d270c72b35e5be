/**
 * MQTT 5.0 additions to the hand-written codec: PUBLISH properties on the hot path. Control
 * packets with properties (CONNECT, SUBSCRIBE, acks with reason codes, DISCONNECT, AUTH) go
 * through mqtt-packet (see v5-control.ts): they are not per-message.
 *
 * A PUBLISH's properties are kept as raw bytes and forwarded verbatim (so user properties keep
 * their order and cost nothing to re-encode), minus the ones that are per-hop: Topic Alias
 * (per connection) and Message Expiry Interval (rewritten with the remaining time) [MQTT-3.3.2-6].
 */
import { isUtf8 } from 'node:buffer';
import { lengthBytes, ProtocolError, writeLength } from './codec.js';

export const Prop = {
  PAYLOAD_FORMAT: 0x01,
  MESSAGE_EXPIRY: 0x02,
  CONTENT_TYPE: 0x03,
  RESPONSE_TOPIC: 0x08,
  CORRELATION_DATA: 0x09,
  SUBSCRIPTION_ID: 0x0b,
  TOPIC_ALIAS: 0x23,
  USER_PROPERTY: 0x26,
} as const;

/** Reads a Variable Byte Integer; returns [value, next position]. Throws if malformed [MQTT-1.5.5-1]. */
export function readVarInt(buf: Buffer, pos: number, end: number): [number, number] {
  let value = 0;
  let mul = 1;
  for (let k = 0; k < 4; k++) {
    if (pos >= end) throw new ProtocolError('truncated variable byte integer');
    const b = buf[pos++];
    value += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) return [value, pos];
    mul *= 128;
  }
  throw new ProtocolError('malformed variable byte integer');
}

/** Publish properties that the broker acts on, parsed without allocation into a reused object. */
export interface PublishProps {
  /** 0/1, or -1 when absent */
  payloadFormat: number;
  /** seconds, or -1 when absent */
  messageExpiry: number;
  /** 0 when absent */
  topicAlias: number;
  /** Properties to forward (all but topic alias and message expiry); null when none */
  forward: Buffer | null;
}

export function newPublishProps(): PublishProps {
  return { payloadFormat: -1, messageExpiry: -1, topicAlias: 0, forward: null };
}

function checkString(buf: Buffer, pos: number, end: number, what: string): number {
  if (pos + 2 > end) throw new ProtocolError(`truncated ${what}`);
  const len = (buf[pos] << 8) | buf[pos + 1];
  const s = pos + 2;
  if (s + len > end) throw new ProtocolError(`truncated ${what}`);
  const bytes = buf.subarray(s, s + len);
  if (bytes.indexOf(0) !== -1 || !isUtf8(bytes)) throw new ProtocolError(`invalid UTF-8 in ${what}`);
  return s + len;
}

function skipBinary(buf: Buffer, pos: number, end: number, what: string): number {
  if (pos + 2 > end) throw new ProtocolError(`truncated ${what}`);
  const e = pos + 2 + ((buf[pos] << 8) | buf[pos + 1]);
  if (e > end) throw new ProtocolError(`truncated ${what}`);
  return e;
}

/**
 * Parses the properties of a client's PUBLISH starting at `pos` (the property length). Returns
 * the payload start. Rejects properties a client must not send in PUBLISH (Subscription
 * Identifier [MQTT-3.3.4-6]) and duplicates of single-valued ones [MQTT-2.2.2-?].
 */
export function parsePublishProps(buf: Buffer, pos: number, end: number, out: PublishProps): number {
  out.payloadFormat = -1;
  out.messageExpiry = -1;
  out.topicAlias = 0;
  out.forward = null;
  const [len, start] = readVarInt(buf, pos, end);
  const propsEnd = start + len;
  if (propsEnd > end) throw new ProtocolError('PUBLISH properties overrun the packet');
  if (len === 0) return propsEnd;
  let p = start;
  // Segments of forwardable properties: contiguous unless alias/expiry sit between them.
  let fwdStart = start;
  let cut = false;
  let pieces: Buffer[] | null = null;
  let seenContentType = false;
  let seenResponseTopic = false;
  let seenCorrelation = false;
  while (p < propsEnd) {
    const id = buf[p];
    const propStart = p;
    p++;
    switch (id) {
      case Prop.PAYLOAD_FORMAT:
        if (out.payloadFormat !== -1)
          throw new ProtocolError('duplicate Payload Format Indicator', undefined, 0x82);
        if (p >= propsEnd) throw new ProtocolError('truncated property');
        out.payloadFormat = buf[p++];
        if (out.payloadFormat > 1)
          throw new ProtocolError('invalid Payload Format Indicator', undefined, 0x82);
        break;
      case Prop.MESSAGE_EXPIRY:
        if (out.messageExpiry !== -1)
          throw new ProtocolError('duplicate Message Expiry Interval', undefined, 0x82);
        if (p + 4 > propsEnd) throw new ProtocolError('truncated property');
        out.messageExpiry = buf.readUInt32BE(p);
        p += 4;
        cut = true;
        break;
      case Prop.TOPIC_ALIAS:
        if (out.topicAlias !== 0) throw new ProtocolError('duplicate Topic Alias', undefined, 0x82);
        if (p + 2 > propsEnd) throw new ProtocolError('truncated property');
        out.topicAlias = (buf[p] << 8) | buf[p + 1];
        if (out.topicAlias === 0) throw new ProtocolError('Topic Alias 0 [MQTT-3.3.2-8]', undefined, 0x94);
        p += 2;
        cut = true;
        break;
      case Prop.CONTENT_TYPE:
        if (seenContentType) throw new ProtocolError('duplicate Content Type', undefined, 0x82);
        seenContentType = true;
        p = checkString(buf, p, propsEnd, 'Content Type');
        break;
      case Prop.RESPONSE_TOPIC: {
        if (seenResponseTopic) throw new ProtocolError('duplicate Response Topic', undefined, 0x82);
        seenResponseTopic = true;
        const s = p + 2;
        p = checkString(buf, p, propsEnd, 'Response Topic');
        for (let i = s; i < p; i++) {
          if (buf[i] === 0x2b || buf[i] === 0x23) {
            throw new ProtocolError('wildcard in Response Topic [MQTT-3.3.2-14]', undefined, 0x82);
          }
        }
        break;
      }
      case Prop.CORRELATION_DATA:
        if (seenCorrelation) throw new ProtocolError('duplicate Correlation Data', undefined, 0x82);
        seenCorrelation = true;
        p = skipBinary(buf, p, propsEnd, 'Correlation Data');
        break;
      case Prop.USER_PROPERTY:
        p = checkString(buf, p, propsEnd, 'User Property name');
        p = checkString(buf, p, propsEnd, 'User Property value');
        break;
      case Prop.SUBSCRIPTION_ID:
        throw new ProtocolError(
          'Subscription Identifier in PUBLISH from a client [MQTT-3.3.4-6]',
          undefined,
          0x82,
        );
      default:
        // An identifier not valid for PUBLISH is a Malformed Packet (§2.2.2.2).
        throw new ProtocolError(`property 0x${id.toString(16)} not allowed in PUBLISH`, undefined, 0x81);
    }
    if (cut) {
      // Drop this property from the forwarded bytes.
      if (propStart > fwdStart) {
        if (!pieces) pieces = [];
        pieces.push(buf.subarray(fwdStart, propStart));
      }
      fwdStart = p;
      cut = false;
    }
  }
  if (p !== propsEnd) throw new ProtocolError('PUBLISH properties overrun');
  if (pieces === null) {
    if (propsEnd > fwdStart) out.forward = buf.subarray(fwdStart, propsEnd);
  } else {
    if (propsEnd > fwdStart) pieces.push(buf.subarray(fwdStart, propsEnd));
    out.forward = pieces.length > 0 ? Buffer.concat(pieces) : null;
  }
  return propsEnd;
}

/** Per-delivery PUBLISH properties added by the broker in front of the forwarded ones. */
export interface DeliveryProps {
  /** Remaining message expiry in seconds, or -1 */
  expiry: number;
  /** Subscription identifiers of the matching subscriptions (may be empty) */
  subIds: readonly number[];
  /** Outbound topic alias or 0 */
  topicAlias: number;
  /** Send an empty topic name (alias already known by the client) */
  omitTopic: boolean;
}

/**
 * Encodes a v5 PUBLISH. `forward` are the publisher's properties to pass on unchanged.
 */
export function encodePublishV5(
  topic: Buffer,
  payload: Buffer,
  qos: number,
  retain: boolean,
  dup: boolean,
  packetId: number,
  forward: Buffer | null,
  d: DeliveryProps | null,
): Buffer {
  let propsLen = forward ? forward.length : 0;
  if (d) {
    if (d.expiry >= 0) propsLen += 5;
    if (d.topicAlias > 0) propsLen += 3;
    for (const id of d.subIds) propsLen += 1 + lengthBytes(id);
  }
  const topicLen = d?.omitTopic ? 0 : topic.length;
  const rem = 2 + topicLen + (qos > 0 ? 2 : 0) + lengthBytes(propsLen) + propsLen + payload.length;
  const out = Buffer.allocUnsafe(1 + lengthBytes(rem) + rem);
  out[0] = 0x30 | (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0);
  let pos = writeLength(out, 1, rem);
  out[pos++] = topicLen >> 8;
  out[pos++] = topicLen & 0xff;
  if (topicLen > 0) pos += topic.copy(out, pos);
  if (qos > 0) {
    out[pos++] = packetId >> 8;
    out[pos++] = packetId & 0xff;
  }
  pos = writeLength(out, pos, propsLen);
  if (d) {
    if (d.expiry >= 0) {
      out[pos++] = Prop.MESSAGE_EXPIRY;
      out.writeUInt32BE(d.expiry, pos);
      pos += 4;
    }
    if (d.topicAlias > 0) {
      out[pos++] = Prop.TOPIC_ALIAS;
      out[pos++] = d.topicAlias >> 8;
      out[pos++] = d.topicAlias & 0xff;
    }
    for (const id of d.subIds) {
      out[pos++] = Prop.SUBSCRIPTION_ID;
      pos = writeLength(out, pos, id);
    }
  }
  if (forward) pos += forward.copy(out, pos);
  payload.copy(out, pos);
  return out;
}

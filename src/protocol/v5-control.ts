/**
 * MQTT 5.0 control packets. Parsing is hand-written so that every violation maps to the reason
 * code the spec names; encoding of the (rare, property-carrying) packets the broker sends uses
 * mqtt-packet's generator.
 */
import mqttPacket from 'mqtt-packet';
import { ownBytes, ProtocolError } from './codec.js';
import { PacketType } from './constants.js';
import { validUtf8 } from './topic.js';
import { readVarInt } from './v5.js';

type PropType = 'byte' | 'u16' | 'u32' | 'varint' | 'string' | 'binary' | 'pair';

/** Property id → [name as mqtt-packet spells it, type] */
const PROPS: Record<number, [string, PropType]> = {
  1: ['payloadFormatIndicator', 'byte'],
  2: ['messageExpiryInterval', 'u32'],
  3: ['contentType', 'string'],
  8: ['responseTopic', 'string'],
  9: ['correlationData', 'binary'],
  11: ['subscriptionIdentifier', 'varint'],
  17: ['sessionExpiryInterval', 'u32'],
  18: ['assignedClientIdentifier', 'string'],
  19: ['serverKeepAlive', 'u16'],
  21: ['authenticationMethod', 'string'],
  22: ['authenticationData', 'binary'],
  23: ['requestProblemInformation', 'byte'],
  24: ['willDelayInterval', 'u32'],
  25: ['requestResponseInformation', 'byte'],
  26: ['responseInformation', 'string'],
  28: ['serverReference', 'string'],
  31: ['reasonString', 'string'],
  33: ['receiveMaximum', 'u16'],
  34: ['topicAliasMaximum', 'u16'],
  35: ['topicAlias', 'u16'],
  36: ['maximumQoS', 'byte'],
  37: ['retainAvailable', 'byte'],
  38: ['userProperties', 'pair'],
  39: ['maximumPacketSize', 'u32'],
  40: ['wildcardSubscriptionAvailable', 'byte'],
  41: ['subscriptionIdentifiersAvailable', 'byte'],
  42: ['sharedSubscriptionAvailable', 'byte'],
};

/** Properties by name; user properties as an ordered list of pairs. */
export interface Properties {
  payloadFormatIndicator?: number;
  messageExpiryInterval?: number;
  contentType?: string;
  responseTopic?: string;
  correlationData?: Buffer;
  subscriptionIdentifier?: number;
  sessionExpiryInterval?: number;
  authenticationMethod?: string;
  authenticationData?: Buffer;
  requestProblemInformation?: number;
  willDelayInterval?: number;
  requestResponseInformation?: number;
  reasonString?: string;
  receiveMaximum?: number;
  topicAliasMaximum?: number;
  maximumPacketSize?: number;
  serverReference?: string;
  userProperties?: [string, string][];
}

const ALLOWED = {
  connect: new Set([0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]),
  will: new Set([0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]),
  subscribe: new Set([0x0b, 0x26]),
  unsubscribe: new Set([0x26]),
  ack: new Set([0x1f, 0x26]),
  disconnect: new Set([0x11, 0x1c, 0x1f, 0x26]),
  auth: new Set([0x15, 0x16, 0x1f, 0x26]),
};

/**
 * Parses a property list at `pos` (starting with its length). Unknown or misplaced properties
 * are malformed (0x81, §2.2.2.2), repeated single-valued ones protocol errors (0x82).
 * Returns the properties, the position after them, and their raw bytes.
 */
export function parseProperties(
  buf: Buffer,
  pos: number,
  end: number,
  allowed: Set<number>,
  what: string,
): { props: Properties; next: number; raw: Buffer } {
  const [len, start] = readVarInt(buf, pos, end);
  const stop = start + len;
  if (stop > end) throw new ProtocolError(`${what} properties overrun the packet`);
  const props: Record<string, unknown> = {};
  let p = start;
  while (p < stop) {
    const [id, q] = readVarInt(buf, p, stop);
    p = q;
    const spec = PROPS[id];
    if (!spec || !allowed.has(id)) {
      // An identifier not valid for the packet type is a Malformed Packet (§2.2.2.2).
      throw new ProtocolError(`property 0x${id.toString(16)} not allowed in ${what}`, undefined, 0x81);
    }
    const [name, type] = spec;
    if (type !== 'pair' && name in props)
      throw new ProtocolError(`duplicate ${name} in ${what}`, undefined, 0x82);
    let value: unknown;
    switch (type) {
      case 'byte':
        if (p + 1 > stop) throw new ProtocolError('truncated property');
        value = buf[p++];
        break;
      case 'u16':
        if (p + 2 > stop) throw new ProtocolError('truncated property');
        value = buf.readUInt16BE(p);
        p += 2;
        break;
      case 'u32':
        if (p + 4 > stop) throw new ProtocolError('truncated property');
        value = buf.readUInt32BE(p);
        p += 4;
        break;
      case 'varint':
        [value, p] = readVarInt(buf, p, stop);
        break;
      case 'string':
      case 'binary':
      case 'pair': {
        const read = (): Buffer => {
          if (p + 2 > stop) throw new ProtocolError('truncated property');
          const l = buf.readUInt16BE(p);
          if (p + 2 + l > stop) throw new ProtocolError('truncated property');
          const b = buf.subarray(p + 2, p + 2 + l);
          p += 2 + l;
          return b;
        };
        const text = (b: Buffer): string => {
          if (!validUtf8(b)) throw new ProtocolError(`invalid UTF-8 in ${name}`);
          return b.toString('utf8');
        };
        if (type === 'binary') value = ownBytes(read());
        else if (type === 'string') value = text(read());
        else {
          const k = text(read());
          const v = text(read());
          const list = (props.userProperties as [string, string][] | undefined) ?? [];
          list.push([k, v]);
          value = list;
        }
        break;
      }
    }
    props[name] = value;
  }
  return { props: props as Properties, next: stop, raw: buf.subarray(start, stop) };
}

/** Checks value ranges the spec fixes for CONNECT properties. */
function checkConnectProps(p: Properties): void {
  if (p.receiveMaximum === 0) throw new ProtocolError('Receive Maximum 0 [MQTT-3.1.2-?]', undefined, 0x82);
  if (p.maximumPacketSize === 0) throw new ProtocolError('Maximum Packet Size 0', undefined, 0x82);
  if (p.requestProblemInformation !== undefined && p.requestProblemInformation > 1) {
    throw new ProtocolError('Request Problem Information not 0/1', undefined, 0x82);
  }
  if (p.requestResponseInformation !== undefined && p.requestResponseInformation > 1) {
    throw new ProtocolError('Request Response Information not 0/1', undefined, 0x82);
  }
}

export interface ConnectV5Extras {
  properties: Properties;
  /** Will properties to forward with the will message (raw, without Will Delay Interval) */
  willProps: Buffer | null;
  willDelay: number;
  willMessageExpiry: number;
  willPayloadFormat: number;
}

/**
 * The v5 parts of CONNECT after the keep-alive field: properties, then the payload. Returns
 * the extras and the position of the client id.
 */
export function parseConnectProps(
  buf: Buffer,
  pos: number,
  end: number,
): { props: Properties; next: number } {
  const { props, next } = parseProperties(buf, pos, end, ALLOWED.connect, 'CONNECT');
  checkConnectProps(props);
  return { props, next };
}

/** Will properties: returns what to forward and the ones the broker acts on. */
export function parseWillProps(
  buf: Buffer,
  pos: number,
  end: number,
): { next: number; forward: Buffer | null; delay: number; expiry: number; payloadFormat: number } {
  const { props, next } = parseProperties(buf, pos, end, ALLOWED.will, 'will');
  // Re-encode what is forwarded (will properties are once per connection, not hot).
  const fwd: Buffer[] = [];
  if (props.payloadFormatIndicator !== undefined) fwd.push(Buffer.from([0x01, props.payloadFormatIndicator]));
  if (props.contentType !== undefined) fwd.push(strProp(0x03, props.contentType));
  if (props.responseTopic !== undefined) fwd.push(strProp(0x08, props.responseTopic));
  if (props.correlationData !== undefined) fwd.push(binProp(0x09, props.correlationData));
  for (const [k, v] of props.userProperties ?? []) fwd.push(Buffer.concat([strProp(0x26, k), str(v)]));
  return {
    next,
    forward: fwd.length > 0 ? ownBytes(Buffer.concat(fwd)) : null,
    delay: props.willDelayInterval ?? 0,
    expiry: props.messageExpiryInterval ?? -1,
    payloadFormat: props.payloadFormatIndicator ?? -1,
  };
}

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
}

function strProp(id: number, s: string): Buffer {
  return Buffer.concat([Buffer.from([id]), str(s)]);
}

function binProp(id: number, b: Buffer): Buffer {
  return Buffer.concat([Buffer.from([id, b.length >> 8, b.length & 0xff]), b]);
}

/** Encodes a PUBLISH property list (for messages the broker itself builds, e.g. wills, REST). */
export function encodeForwardProps(p: Properties): Buffer | null {
  const fwd: Buffer[] = [];
  if (p.payloadFormatIndicator !== undefined) fwd.push(Buffer.from([0x01, p.payloadFormatIndicator]));
  if (p.contentType !== undefined) fwd.push(strProp(0x03, p.contentType));
  if (p.responseTopic !== undefined) fwd.push(strProp(0x08, p.responseTopic));
  if (p.correlationData !== undefined) fwd.push(binProp(0x09, p.correlationData));
  for (const [k, v] of p.userProperties ?? []) fwd.push(Buffer.concat([strProp(0x26, k), str(v)]));
  return fwd.length > 0 ? Buffer.concat(fwd) : null;
}

// ---------------------------------------------------------------------------------------------

export interface SubscriptionRequest {
  filter: string;
  qos: number;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: number;
}

export interface SubscribeV5 {
  packetId: number;
  subscriptionId: number;
  userProperties: [string, string][] | undefined;
  subscriptions: SubscriptionRequest[];
}

function readString(buf: Buffer, p: number, end: number, what: string): [string, number] {
  if (p + 2 > end) throw new ProtocolError(`truncated ${what}`);
  const l = buf.readUInt16BE(p);
  if (p + 2 + l > end) throw new ProtocolError(`truncated ${what}`);
  const b = buf.subarray(p + 2, p + 2 + l);
  if (!validUtf8(b)) throw new ProtocolError(`invalid UTF-8 in ${what}`);
  return [b.toString('utf8'), p + 2 + l];
}

/** v5 SUBSCRIBE: options byte with No Local, Retain As Published, Retain Handling [MQTT-3.8.3]. */
export function parseSubscribeV5(buf: Buffer, start: number, end: number): SubscribeV5 {
  if (end - start < 2) throw new ProtocolError('SUBSCRIBE too short');
  const packetId = buf.readUInt16BE(start);
  if (packetId === 0) throw new ProtocolError('packet identifier 0 [MQTT-2.2.1-3]', undefined, 0x82);
  const { props, next } = parseProperties(buf, start + 2, end, ALLOWED.subscribe, 'SUBSCRIBE');
  if (props.subscriptionIdentifier === 0)
    throw new ProtocolError('Subscription Identifier 0 [MQTT-3.8.2-?]', undefined, 0x82);
  const subscriptions: SubscriptionRequest[] = [];
  let p = next;
  while (p < end) {
    const [filter, q] = readString(buf, p, end, 'topic filter');
    if (q >= end) throw new ProtocolError('SUBSCRIBE options missing');
    const o = buf[q];
    p = q + 1;
    if (o & 0xc0)
      throw new ProtocolError('reserved subscription option bits set [MQTT-3.8.3-5]', undefined, 0x82);
    const qos = o & 3;
    const retainHandling = (o >> 4) & 3;
    if (qos === 3) throw new ProtocolError('QoS 3 in SUBSCRIBE', undefined, 0x82);
    if (retainHandling === 3) throw new ProtocolError('Retain Handling 3', undefined, 0x82);
    subscriptions.push({
      filter,
      qos,
      noLocal: (o & 4) !== 0,
      retainAsPublished: (o & 8) !== 0,
      retainHandling,
    });
  }
  if (subscriptions.length === 0)
    throw new ProtocolError('SUBSCRIBE without filters [MQTT-3.8.3-2]', undefined, 0x82);
  return {
    packetId,
    subscriptionId: props.subscriptionIdentifier ?? 0,
    userProperties: props.userProperties,
    subscriptions,
  };
}

export function parseUnsubscribeV5(
  buf: Buffer,
  start: number,
  end: number,
): { packetId: number; filters: string[] } {
  if (end - start < 2) throw new ProtocolError('UNSUBSCRIBE too short');
  const packetId = buf.readUInt16BE(start);
  if (packetId === 0) throw new ProtocolError('packet identifier 0', undefined, 0x82);
  const { next } = parseProperties(buf, start + 2, end, ALLOWED.unsubscribe, 'UNSUBSCRIBE');
  const filters: string[] = [];
  let p = next;
  while (p < end) {
    const [f, q] = readString(buf, p, end, 'topic filter');
    filters.push(f);
    p = q;
  }
  if (filters.length === 0)
    throw new ProtocolError('UNSUBSCRIBE without filters [MQTT-3.10.3-2]', undefined, 0x82);
  return { packetId, filters };
}

/** PUBACK/PUBREC/PUBREL/PUBCOMP v5: packet id, optional reason code and properties [MQTT-3.4.2-?]. */
export function parseAckV5(buf: Buffer, start: number, end: number): { packetId: number; reason: number } {
  if (end - start < 2) throw new ProtocolError('acknowledgement too short');
  const packetId = buf.readUInt16BE(start);
  if (end - start === 2) return { packetId, reason: 0 };
  const reason = buf[start + 2];
  if (end - start > 3) parseProperties(buf, start + 3, end, ALLOWED.ack, 'acknowledgement');
  return { packetId, reason };
}

export function parseDisconnectV5(
  buf: Buffer,
  start: number,
  end: number,
): { reason: number; props: Properties } {
  if (end === start) return { reason: 0, props: {} };
  const reason = buf[start];
  if (end - start === 1) return { reason, props: {} };
  const { props } = parseProperties(buf, start + 1, end, ALLOWED.disconnect, 'DISCONNECT');
  return { reason, props };
}

// ---------------------------------------------------------------------------------------------
// Encoders (mqtt-packet's generator; these packets are not per message)

type MqttUserProps = Record<string, string | string[]>;

export function toMqttUserProps(list: [string, string][] | undefined): MqttUserProps | undefined {
  if (!list || list.length === 0) return undefined;
  const out: MqttUserProps = {};
  for (const [k, v] of list) {
    const prev = out[k];
    if (prev === undefined) out[k] = v;
    else if (Array.isArray(prev)) prev.push(v);
    else out[k] = [prev, v];
  }
  return out;
}

const V5 = { protocolVersion: 5 } as const;

// biome-ignore lint/suspicious/noExplicitAny: mqtt-packet's property typings are narrower than the spec
type AnyProps = Record<string, any>;

function dropEmpty(p: AnyProps | undefined): AnyProps | undefined {
  if (!p) return undefined;
  const out: AnyProps = {};
  let n = 0;
  for (const [k, v] of Object.entries(p)) {
    if (v === undefined) continue;
    out[k] = v;
    n++;
  }
  return n > 0 ? out : undefined;
}

export function encodeConnackV5Full(
  sessionPresent: boolean,
  reasonCode: number,
  properties?: AnyProps,
): Buffer {
  return mqttPacket.generate(
    {
      cmd: 'connack',
      sessionPresent,
      reasonCode,
      properties: dropEmpty(properties),
    } as mqttPacket.IConnackPacket,
    V5,
  );
}

export function encodeSubackV5(packetId: number, codes: number[], reasonString?: string): Buffer {
  return mqttPacket.generate(
    {
      cmd: 'suback',
      messageId: packetId,
      granted: codes,
      properties: dropEmpty({ reasonString }),
    } as mqttPacket.ISubackPacket,
    V5,
  );
}

export function encodeUnsubackV5(packetId: number, codes: number[]): Buffer {
  return mqttPacket.generate(
    { cmd: 'unsuback', messageId: packetId, granted: codes } as mqttPacket.IUnsubackPacket,
    V5,
  );
}

export function encodeDisconnectV5(reasonCode: number, properties?: AnyProps): Buffer {
  return mqttPacket.generate(
    { cmd: 'disconnect', reasonCode, properties: dropEmpty(properties) } as mqttPacket.IDisconnectPacket,
    V5,
  );
}

/** PUBACK/PUBREC/PUBREL/PUBCOMP with a reason code; success without properties is the short 4-byte form. */
export function encodeAckV5(
  type: number,
  packetId: number,
  reasonCode: number,
  reasonString?: string,
): Buffer {
  if (reasonCode === 0 && !reasonString) {
    return Buffer.from([
      (type << 4) | (type === PacketType.PUBREL ? 2 : 0),
      2,
      packetId >> 8,
      packetId & 0xff,
    ]);
  }
  const cmd = (['', '', '', '', 'puback', 'pubrec', 'pubrel', 'pubcomp'] as const)[type];
  return mqttPacket.generate(
    {
      cmd,
      messageId: packetId,
      reasonCode,
      properties: dropEmpty({ reasonString }),
    } as mqttPacket.IPubackPacket,
    V5,
  );
}

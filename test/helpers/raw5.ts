import mqttPacket, { type IConnackPacket, type Packet } from 'mqtt-packet';
import type { Broker } from '../../src/broker/broker.js';
import type { Ctx } from './base.js';
import {
  type Bytes,
  type ConnectOptions,
  mqttString,
  PacketClient,
  RawClient,
  type RawFrame,
  rawFrame,
  readFrame,
  toBuf,
  varInt,
} from './raw.js';

/** One property as it is on the wire: [identifier, value]; a User Property's value is [name, value]. */
export type Prop5 = [number, number | string | Buffer | [string, string]];

export type Prop5Type = 'byte' | 'u16' | 'u32' | 'varint' | 'string' | 'binary' | 'pair';

/** The MQTT 5.0 property identifiers and their data types (§2.2.2.2). */
export const PROP5_TYPES: Readonly<Record<number, Prop5Type>> = {
  1: 'byte',
  2: 'u32',
  3: 'string',
  8: 'string',
  9: 'binary',
  11: 'varint',
  17: 'u32',
  18: 'string',
  19: 'u16',
  21: 'string',
  22: 'binary',
  23: 'byte',
  24: 'u32',
  25: 'byte',
  26: 'string',
  28: 'string',
  31: 'string',
  33: 'u16',
  34: 'u16',
  35: 'u16',
  36: 'byte',
  37: 'byte',
  38: 'pair',
  39: 'u32',
  40: 'byte',
  41: 'byte',
  42: 'byte',
};

/**
 * Encodes a property list with its length prefix, in the given order. `type` forces the data type
 * of an identifier (to send an unknown one); values are written as given, valid or not.
 */
export function props5(list: readonly Prop5[], type: Record<number, Prop5Type> = {}): Buffer {
  const parts: Buffer[] = [];
  for (const [id, v] of list) {
    parts.push(varInt(id));
    switch (type[id] ?? PROP5_TYPES[id]) {
      case 'byte':
        parts.push(Buffer.from([v as number]));
        break;
      case 'u16':
        parts.push(Buffer.from([(v as number) >> 8, (v as number) & 0xff]));
        break;
      case 'u32': {
        const b = Buffer.alloc(4);
        b.writeUInt32BE(v as number);
        parts.push(b);
        break;
      }
      case 'varint':
        parts.push(varInt(v as number));
        break;
      case 'string':
      case 'binary':
        parts.push(mqttString(v as Buffer | string));
        break;
      case 'pair':
        parts.push(mqttString((v as [string, string])[0]), mqttString((v as [string, string])[1]));
        break;
      default:
        throw new Error(`property 0x${id.toString(16)} has no known type`);
    }
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([varInt(body.length), body]);
}

/** Decodes a property list (length prefix at `pos`) in wire order; returns it and the position after it. */
export function parseProps5(buf: Buffer, pos: number): { props: Prop5[]; next: number } {
  const readVar = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      const b = buf[pos++];
      v += (b & 0x7f) * mul;
      mul *= 128;
      if ((b & 0x80) === 0) return v;
    }
  };
  const readBin = (): Buffer => {
    const l = buf.readUInt16BE(pos);
    const b = buf.subarray(pos + 2, pos + 2 + l);
    pos += 2 + l;
    return Buffer.from(b);
  };
  const len = readVar();
  const end = pos + len;
  const props: Prop5[] = [];
  while (pos < end) {
    const id = readVar();
    switch (PROP5_TYPES[id]) {
      case 'byte':
        props.push([id, buf[pos++]]);
        break;
      case 'u16':
        props.push([id, buf.readUInt16BE(pos)]);
        pos += 2;
        break;
      case 'u32':
        props.push([id, buf.readUInt32BE(pos)]);
        pos += 4;
        break;
      case 'varint':
        props.push([id, readVar()]);
        break;
      case 'string':
        props.push([id, readBin().toString('utf8')]);
        break;
      case 'binary':
        props.push([id, readBin()]);
        break;
      case 'pair':
        props.push([id, [readBin().toString('utf8'), readBin().toString('utf8')]]);
        break;
      default:
        throw new Error(`unknown property 0x${id.toString(16)}`);
    }
  }
  if (pos !== end) throw new Error('property list overruns its length');
  return { props, next: end };
}

export interface Connect5Spec {
  clientId?: Bytes;
  clean?: boolean;
  keepalive?: number;
  /** CONNECT properties in wire order, or the raw property block (length prefix included) */
  props?: readonly Prop5[] | Buffer;
  will?: { topic: Bytes; payload?: Bytes; qos?: number; retain?: boolean; props?: readonly Prop5[] };
  username?: Bytes;
  password?: Bytes;
}

/** Encodes an MQTT 5 CONNECT with properties exactly as given (may be invalid on purpose). */
export function connectFrame5(spec: Connect5Spec = {}): Buffer {
  let flags = (spec.clean ?? true) ? 0x02 : 0;
  if (spec.will) flags |= 0x04 | ((spec.will.qos ?? 0) << 3) | (spec.will.retain ? 0x20 : 0);
  if (spec.username !== undefined) flags |= 0x80;
  if (spec.password !== undefined) flags |= 0x40;
  const ka = spec.keepalive ?? 60;
  const parts: Bytes[] = [
    mqttString('MQTT'),
    [5, flags, ka >> 8, ka & 0xff],
    Buffer.isBuffer(spec.props) ? spec.props : props5(spec.props ?? []),
    mqttString(spec.clientId ?? ''),
  ];
  if (spec.will) {
    parts.push(
      props5(spec.will.props ?? []),
      mqttString(spec.will.topic),
      mqttString(spec.will.payload ?? ''),
    );
  }
  if (spec.username !== undefined) parts.push(mqttString(spec.username));
  if (spec.password !== undefined) parts.push(mqttString(spec.password));
  return rawFrame(0x10, ...parts);
}

/** Encodes an MQTT 5 PUBLISH with properties exactly as given (may be invalid on purpose). */
export function publishFrame5(spec: {
  topic: Bytes;
  payload?: Bytes;
  qos?: number;
  retain?: boolean;
  dup?: boolean;
  packetId?: number;
  props?: readonly Prop5[] | Buffer;
}): Buffer {
  const qos = spec.qos ?? 0;
  const b0 = 0x30 | (spec.dup ? 8 : 0) | (qos << 1) | (spec.retain ? 1 : 0);
  const id = spec.packetId ?? 1;
  return rawFrame(
    b0,
    mqttString(spec.topic),
    qos > 0 ? [id >> 8, id & 0xff] : [],
    Buffer.isBuffer(spec.props) ? spec.props : props5(spec.props ?? []),
    toBuf(spec.payload ?? ''),
  );
}

export interface Publish5 {
  qos: number;
  retain: boolean;
  dup: boolean;
  topic: string;
  packetId: number;
  props: Prop5[];
  payload: Buffer;
}

/** Decodes a raw MQTT 5 PUBLISH frame (from `readFrame`) with its properties in wire order. */
export function parsePublish5(f: RawFrame): Publish5 {
  if (f.type !== 3) throw new Error(`expected PUBLISH, got packet type ${f.type}`);
  const qos = (f.flags >> 1) & 3;
  const tl = f.body.readUInt16BE(0);
  const topic = f.body.subarray(2, 2 + tl).toString('utf8');
  let pos = 2 + tl;
  let packetId = 0;
  if (qos > 0) {
    packetId = f.body.readUInt16BE(pos);
    pos += 2;
  }
  const { props, next } = parseProps5(f.body, pos);
  return {
    qos,
    retain: (f.flags & 1) === 1,
    dup: (f.flags & 8) === 8,
    topic,
    packetId,
    props,
    payload: f.body.subarray(next),
  };
}

/** Opens a raw connection, sends an MQTT 5 CONNECT and returns it with its CONNACK (parsed by mqtt-packet). */
export async function rawConnect5(
  t: Ctx,
  broker: Broker,
  spec: Connect5Spec,
): Promise<{ raw: RawClient; connack: IConnackPacket; frame: RawFrame }> {
  const raw = await RawClient.connect(t, broker.port);
  raw.send(connectFrame5(spec));
  const frame = await readFrame(raw);
  const connack = parseFrame5(frame);
  if (connack.cmd !== 'connack') throw new Error(`expected CONNACK, got ${connack.cmd}`);
  return { raw, connack: connack as IConnackPacket, frame };
}

/** Re-encodes a raw frame and parses it with mqtt-packet as MQTT 5. */
export function parseFrame5(f: RawFrame): Packet {
  const bytes = Buffer.concat([Buffer.from([(f.type << 4) | f.flags]), varInt(f.body.length), f.body]);
  const parser = mqttPacket.parser({ protocolVersion: 5 });
  let out: Packet | null = null;
  let error: Error | null = null;
  parser.on('packet', (p: Packet) => {
    out ??= p;
  });
  parser.on('error', (e: Error) => {
    error = e;
  });
  parser.parse(bytes);
  if (error) throw error;
  if (!out) throw new Error(`could not parse frame of type ${f.type}`);
  return out;
}

/** A v5 SUBSCRIBE frame: one filter with options byte `opts` (QoS | NL<<2 | RAP<<3 | RH<<4). */
export function subscribeFrame5(packetId: number, filter: string, opts: number, subId = 0): Buffer {
  return rawFrame(
    0x82,
    [packetId >> 8, packetId & 0xff],
    props5(subId ? [[0x0b, subId]] : []),
    mqttString(filter),
    [opts],
  );
}

/** PacketClient.connect with an MQTT 5 CONNECT. */
export const PacketClient5 = {
  connect(
    t: Ctx,
    broker: Broker,
    clientId: string,
    opts: ConnectOptions = {},
  ): Promise<{ pc: PacketClient; connack: IConnackPacket }> {
    return PacketClient.connect(t, broker, clientId, { ...opts, protocolVersion: 5 });
  },
};

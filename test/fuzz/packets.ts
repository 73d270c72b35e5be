/**
 * Packet streams for the fuzzer: valid MQTT 3.1.1 / 5 streams (CONNECT, then PUBLISH, SUBSCRIBE,
 * UNSUBSCRIBE, acks, PINGREQ, AUTH, DISCONNECT), hand-built so that any field can be wrong on
 * purpose, and the mutations applied to them. Everything is drawn from one seeded PRNG, so a
 * seed replays the same bytes.
 */

import { mqttString, rawFrame, varInt } from '../helpers/raw.js';
import { PROP5_TYPES, type Prop5Type } from '../helpers/raw5.js';

/** sfc32: small, fast, good enough for fuzzing, and the same sequence for the same seed everywhere. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 4294967296) * n);
  }

  chance(p: number): boolean {
    return this.u32() / 4294967296 < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding (the raw-packet helpers of test/helpers, so the fuzzer and the tests agree on the wire format)

type Part = Buffer | number[];

/** Fixed header (first byte, remaining length) in front of the joined parts. */
export function frame(b0: number, parts: Part[]): Buffer {
  return rawFrame(b0, ...parts);
}

const u16 = (n: number): number[] => [(n >> 8) & 0xff, n & 0xff];
const u32 = (n: number): number[] => [(n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];

// ---------------------------------------------------------------------------------------------
// MQTT 5 properties

type PropType = Prop5Type;
/** Property id → wire type [MQTT-2.2.2.2]: the test helpers' table. */
const PROP_TYPE = PROP5_TYPES;
const PROP_IDS = Object.keys(PROP_TYPE).map(Number);
const TYPES: PropType[] = ['byte', 'u16', 'u32', 'varint', 'string', 'binary', 'pair'];

/** Properties that belong in each packet (the valid choice); others are soup. */
const PROPS_FOR = {
  connect: [0x11, 0x21, 0x22, 0x27, 0x17, 0x19, 0x26],
  will: [0x18, 0x01, 0x02, 0x03, 0x08, 0x09, 0x26],
  publish: [0x01, 0x02, 0x03, 0x08, 0x09, 0x23, 0x26],
  subscribe: [0x0b, 0x26],
  unsubscribe: [0x26],
  ack: [0x1f, 0x26],
  disconnect: [0x11, 0x1f, 0x26],
  auth: [0x15, 0x16, 0x1f, 0x26],
} as const;
type PropContext = keyof typeof PROPS_FOR;

const INTERESTING_U32 = [0, 1, 0x7f, 0x80, 0xffff, 0x10000, 0x7fffffff, 0xffffffff];

function propValue(rng: Rng, type: PropType, id: number): Part[] {
  switch (type) {
    case 'byte':
      return [[rng.chance(0.8) ? rng.int(2) : rng.int(256)]];
    case 'u16':
      // Topic aliases and maxima: mostly small, sometimes 0 or the top.
      return [u16(rng.chance(0.7) ? 1 + rng.int(20) : rng.pick([0, 0xffff, rng.int(65536)]))];
    case 'u32':
      return [u32(rng.chance(0.6) ? rng.int(3600) : rng.pick(INTERESTING_U32))];
    case 'varint':
      return [varInt(rng.chance(0.8) ? 1 + rng.int(1000) : rng.pick([0, 268435455, 16384]))];
    case 'string':
      return [mqttString(id === 0x08 ? `fz/resp/${rng.int(10)}` : randomText(rng, rng.int(16)))];
    case 'binary':
      return [mqttString(rng.bytes(rng.int(16)))];
    case 'pair':
      return [mqttString(randomText(rng, rng.int(8))), mqttString(randomText(rng, rng.int(8)))];
  }
}

/** A property block (length prefix included). `soup`: any ids, duplicates, wrong value types. */
export function props(rng: Rng, ctx: PropContext, soup: boolean, extra: Part[] = []): Buffer {
  const parts: Part[] = [...extra];
  const n = soup ? rng.int(8) : rng.int(3);
  for (let i = 0; i < n; i++) {
    let id: number = rng.pick(PROPS_FOR[ctx]);
    let type = PROP_TYPE[id];
    if (soup) {
      const r = rng.int(4);
      if (r === 0)
        id = rng.pick(PROP_IDS); // known, maybe not allowed here
      else if (r === 1)
        id = rng.int(0x80); // maybe unknown
      else if (r === 2) id = 0x80 + rng.int(0x4000); // two-byte id
      type = rng.chance(0.3) ? rng.pick(TYPES) : (PROP_TYPE[id] ?? rng.pick(TYPES));
      // Duplicates: a property allowed once, repeated.
      if (rng.chance(0.2)) {
        const v = propValue(rng, type, id);
        parts.push(varInt(id), ...v);
      }
    }
    parts.push(varInt(id), ...propValue(rng, type, id));
  }
  const body = Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
  // A property length that lies, now and then.
  const len = soup && rng.chance(0.2) ? Math.max(0, body.length + rng.int(9) - 4) : body.length;
  return Buffer.concat([varInt(len), body]);
}

// ---------------------------------------------------------------------------------------------
// Valid packets

const WORDS = ['fz', 'a', 'b', 'c', 'sensor', '1', '2', '$SYS', 'x', ''];

function randomText(rng: Rng, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += String.fromCharCode(0x61 + rng.int(26));
  return s;
}

/** A topic from a small vocabulary (bounded: the retained store and index must not grow with the run). */
function topic(rng: Rng): string {
  const levels = 1 + rng.int(4);
  const out = ['fz'];
  for (let i = 1; i < levels; i++) out.push(rng.pick(WORDS));
  return out.join('/');
}

function filter(rng: Rng): string {
  if (rng.chance(0.05)) return rng.pick(['#', '+/#', '$SYS/#', '+', 'fz/#', '$share/g/#']);
  const t = topic(rng).split('/');
  if (rng.chance(0.3)) t[rng.int(t.length)] = '+';
  if (rng.chance(0.2)) t.push('#');
  const f = t.join('/');
  if (rng.chance(0.1)) return `$share/g${rng.int(3)}/${f}`;
  return f;
}

export interface StreamSpec {
  v5: boolean;
  /** Bytes of each frame in order (CONNECT first) */
  frames: Buffer[];
}

export interface StreamOptions {
  /** Client ids are drawn from this many (persistent sessions stay bounded) */
  clientIds: number;
  /** Probability that a v5 property block is soup */
  soup: number;
}

function connect(rng: Rng, v5: boolean, o: StreamOptions): Buffer {
  const clean = rng.chance(0.7);
  const will = rng.chance(0.15);
  const user = rng.chance(0.1);
  let flags = clean ? 0x02 : 0;
  const willQos = rng.int(3);
  if (will) flags |= 0x04 | (willQos << 3) | (rng.chance(0.2) ? 0x20 : 0);
  if (user) flags |= 0xc0;
  // Empty ids (assigned by the broker, MQTT 3 only with clean session) now and then.
  const id = rng.chance(0.05) && (clean || v5) ? '' : `fz-${rng.int(o.clientIds)}`;
  const parts: Part[] = [mqttString('MQTT'), [v5 ? 5 : 4, flags], u16(rng.chance(0.9) ? 60 : rng.int(65536))];
  if (v5) parts.push(props(rng, 'connect', rng.chance(o.soup / 2)));
  parts.push(mqttString(id));
  if (will) {
    if (v5) parts.push(props(rng, 'will', rng.chance(o.soup / 2)));
    parts.push(mqttString(topic(rng)), mqttString(rng.bytes(rng.int(20))));
  }
  if (user) parts.push(mqttString('user'), mqttString('pass'));
  return frame(0x10, parts);
}

function publish(rng: Rng, v5: boolean, o: StreamOptions, pid: number): Buffer {
  const qos = rng.int(3);
  // Retained rarely: each retained topic is kept, and the vocabulary bounds them.
  const retain = rng.chance(0.05) ? 1 : 0;
  // MQTT 5 topic aliases: set one with a topic, or use one with an empty topic (maybe unset).
  const alias = v5 && rng.chance(0.25) ? 1 + rng.int(4) : 0;
  const parts: Part[] = [mqttString(alias > 0 && rng.chance(0.5) ? '' : topic(rng))];
  if (qos > 0) parts.push(u16(pid));
  if (alias > 0) {
    parts.push(props(rng, 'publish', rng.chance(o.soup), [[0x23, ...u16(alias)]]));
  } else if (v5) parts.push(props(rng, 'publish', rng.chance(o.soup)));
  parts.push(rng.bytes(rng.chance(0.9) ? rng.int(64) : rng.int(4096)));
  return frame(0x30 | (rng.chance(0.05) ? 8 : 0) | (qos << 1) | retain, parts);
}

function subscribe(rng: Rng, v5: boolean, o: StreamOptions, pid: number): Buffer {
  const parts: Part[] = [u16(pid)];
  if (v5) parts.push(props(rng, 'subscribe', rng.chance(o.soup)));
  const n = 1 + rng.int(3);
  for (let i = 0; i < n; i++) {
    parts.push(mqttString(filter(rng)));
    // v5 options: QoS, No Local, Retain As Published, Retain Handling; v3: QoS only.
    parts.push([v5 ? rng.int(3) | (rng.int(2) << 2) | (rng.int(2) << 3) | (rng.int(3) << 4) : rng.int(3)]);
  }
  return frame(0x82, parts);
}

function unsubscribe(rng: Rng, v5: boolean, o: StreamOptions, pid: number): Buffer {
  const parts: Part[] = [u16(pid)];
  if (v5) parts.push(props(rng, 'unsubscribe', rng.chance(o.soup)));
  const n = 1 + rng.int(3);
  for (let i = 0; i < n; i++) parts.push(mqttString(filter(rng)));
  return frame(0xa2, parts);
}

/** PUBACK / PUBREC / PUBREL / PUBCOMP for a packet id (maybe one never used). */
function ack(rng: Rng, v5: boolean, o: StreamOptions, pid: number): Buffer {
  const type = rng.pick([4, 5, 6, 7]);
  const parts: Part[] = [u16(rng.chance(0.7) ? pid : rng.int(65536))];
  if (v5 && rng.chance(0.5)) {
    parts.push([rng.pick([0, 0x10, 0x80, 0x92])]);
    if (rng.chance(0.5)) parts.push(props(rng, 'ack', rng.chance(o.soup)));
  }
  return frame((type << 4) | (type === 6 ? 2 : 0), parts);
}

function disconnect(rng: Rng, v5: boolean, o: StreamOptions): Buffer {
  if (!v5 || rng.chance(0.3)) return frame(0xe0, []);
  const parts: Part[] = [[rng.pick([0, 0x04, 0x80, 0x81])]];
  if (rng.chance(0.6)) parts.push(props(rng, 'disconnect', rng.chance(o.soup)));
  return frame(0xe0, parts);
}

function auth(rng: Rng, o: StreamOptions): Buffer {
  return frame(0xf0, [[rng.pick([0, 0x18, 0x19])], props(rng, 'auth', rng.chance(o.soup))]);
}

/** A valid stream: CONNECT, then `n` packets, maybe a DISCONNECT at the end. */
export function validStream(rng: Rng, n: number, o: StreamOptions): StreamSpec {
  const v5 = rng.chance(0.5);
  const frames = [connect(rng, v5, o)];
  let pid = 1 + rng.int(65535);
  for (let i = 0; i < n; i++) {
    pid = (pid % 65535) + 1;
    const r = rng.int(100);
    if (r < 45) frames.push(publish(rng, v5, o, pid));
    else if (r < 60) frames.push(subscribe(rng, v5, o, pid));
    else if (r < 68) frames.push(unsubscribe(rng, v5, o, pid));
    else if (r < 85) frames.push(ack(rng, v5, o, pid));
    else if (r < 95) frames.push(frame(0xc0, []));
    else if (v5) frames.push(auth(rng, o));
    else frames.push(publish(rng, v5, o, pid));
  }
  if (rng.chance(0.3)) frames.push(disconnect(rng, v5, o));
  return { v5, frames };
}

// ---------------------------------------------------------------------------------------------
// Mutations

export const MUTATIONS = [
  'bitflip',
  'truncate',
  'splice-length',
  'huge-length',
  'inner-length',
  'header-byte',
  'interesting-byte',
  'insert-random',
  'duplicate',
  'random-frame',
] as const;
export type Mutation = (typeof MUTATIONS)[number];

/** Remaining lengths that stress the header reader: the 4-byte maximum, overlong, beyond limits. */
const HUGE_LENGTHS: number[][] = [
  [0xff, 0xff, 0xff, 0x7f], // 268,435,455: the largest remaining length
  [0xff, 0xff, 0xff, 0xff, 0x01], // five bytes: malformed
  [0x80, 0x80, 0x80, 0x80], // never terminated
  [0x80, 0x80, 0x80, 0x00], // overlong encoding of 0
  [...varInt(1048570)], // just under the default max_packet_size
  [...varInt(1048577)], // just over it
  [...varInt(65536)],
];

/** Applies one mutation to frame `f` (a copy); may return more or fewer bytes. */
export function mutate(rng: Rng, f: Buffer, m: Mutation): Buffer {
  const b = Buffer.from(f);
  switch (m) {
    case 'bitflip': {
      const n = 1 + rng.int(8);
      for (let i = 0; i < n; i++) b[rng.int(b.length)] ^= 1 << rng.int(8);
      return b;
    }
    case 'truncate':
      return b.subarray(0, rng.int(b.length));
    case 'splice-length': {
      // A remaining length that disagrees with the body: the parser desynchronises.
      const hdr = headerLength(b);
      const body = b.subarray(hdr);
      const len = Math.max(0, body.length + rng.int(17) - 8);
      return Buffer.concat([Buffer.from([b[0], ...varInt(rng.chance(0.2) ? rng.int(200) : len)]), body]);
    }
    case 'huge-length': {
      const hdr = headerLength(b);
      return Buffer.concat([Buffer.from([b[0], ...rng.pick(HUGE_LENGTHS)]), b.subarray(hdr)]);
    }
    case 'inner-length': {
      // An inner u16 length (topic, string, property) set to a random value.
      if (b.length < 4) return b;
      const at = headerLength(b) + rng.int(Math.max(1, b.length - headerLength(b) - 1));
      const v = rng.pick([0, 1, 0x7fff, 0xffff, rng.int(65536), rng.int(b.length)]);
      if (at + 1 < b.length) b.writeUInt16BE(v, at);
      return b;
    }
    case 'header-byte':
      b[0] = rng.chance(0.5) ? rng.int(256) : (rng.int(16) << 4) | (b[0] & 0x0f);
      return b;
    case 'interesting-byte':
      b[rng.int(b.length)] = rng.pick([0, 0xff, 0x7f, 0x80, 0xc0, 0xfe]);
      return b;
    case 'insert-random': {
      const at = rng.int(b.length + 1);
      return Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(32)), b.subarray(at)]);
    }
    case 'duplicate':
      return Buffer.concat([b, b]);
    case 'random-frame': {
      // A well-framed packet of any type and flags with a random body.
      return frame(rng.int(256), [rng.bytes(rng.int(64))]);
    }
  }
}

function headerLength(b: Buffer): number {
  let i = 1;
  while (i < b.length && i < 5 && b[i] & 0x80) i++;
  return Math.min(b.length, i + 1);
}

export interface FuzzStream {
  v5: boolean;
  /** Frames in write order (mutated ones included) */
  frames: Buffer[];
  /** Mutations applied, in order (for the report of a failing seed) */
  mutations: Mutation[];
}

/**
 * A stream to send on one connection: a valid stream with each frame mutated with probability
 * `rate` (the CONNECT less often, so that most streams reach a session).
 */
export function fuzzStream(rng: Rng, o: StreamOptions & { rate: number; maxFrames: number }): FuzzStream {
  const s = validStream(rng, rng.int(o.maxFrames), o);
  const mutations: Mutation[] = [];
  const frames = s.frames.map((f, i) => {
    if (!rng.chance(i === 0 ? o.rate / 3 : o.rate)) return f;
    const m = rng.pick(MUTATIONS);
    mutations.push(m);
    return mutate(rng, f, m);
  });
  return { v5: s.v5, frames, mutations };
}

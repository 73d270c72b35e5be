// Minimal MQTT 3.1.1 client-side codec for the load generator.
// Hand-rolled on purpose: mqtt-packet costs 2-9 µs per PUBLISH (see design notes), which would make the
// generator as expensive as the broker it is measuring.

export const CONNACK = 2;
export const PUBLISH = 3;
export const PUBACK = 4;
export const PUBREC = 5;
export const PUBREL = 6;
export const PUBCOMP = 7;
export const SUBACK = 9;
export const PINGRESP = 13;

export const PINGREQ_FRAME = Buffer.from([0xc0, 0x00]);
export const DISCONNECT_FRAME = Buffer.from([0xe0, 0x00]);

/** Payload header written into every bench message (little endian). Payload must be >= this. */
export const PAYLOAD_HEADER = 24;
// [0..4) run id, [4..8) publisher index, [8..12) sequence, [12..16) reserved, [16..24) send time (ns, f64)
export const OFF_RUN = 0;
export const OFF_PUB = 4;
export const OFF_SEQ = 8;
export const OFF_TS = 16;

function varintLength(n: number): number {
  return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

function writeVarint(buf: Buffer, off: number, n: number): number {
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 128;
    buf[off++] = b;
  } while (n > 0);
  return off;
}

function frame(first: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(1 + varintLength(body.length) + body.length);
  out[0] = first;
  const off = writeVarint(out, 1, body.length);
  body.copy(out, off);
  return out;
}

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const out = Buffer.allocUnsafe(2 + b.length);
  out.writeUInt16BE(b.length, 0);
  b.copy(out, 2);
  return out;
}

export function encodeConnect(clientId: string, keepaliveS: number, clean = true): Buffer {
  // "MQTT", v4, clean session (0: a persistent session, for the durability bench)
  const head = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, clean ? 0x02 : 0x00, 0, 0]);
  head.writeUInt16BE(keepaliveS, 8);
  return frame(0x10, Buffer.concat([head, str(clientId)]));
}

export function encodeSubscribe(packetId: number, filter: string, qos: number): Buffer {
  const pid = Buffer.allocUnsafe(2);
  pid.writeUInt16BE(packetId, 0);
  return frame(0x82, Buffer.concat([pid, str(filter), Buffer.from([qos])]));
}

/** A PUBLISH encoded once; per message only the packet id and the payload header are patched into a copy. */
export interface PublishTemplate {
  frame: Buffer;
  /** Offset of the packet id, or -1 at QoS 0. */
  pidOffset: number;
  payloadOffset: number;
}

export function encodePublishTemplate(
  topic: string,
  qos: number,
  payloadSize: number,
  runId: number,
  pubIdx: number,
): PublishTemplate {
  const t = str(topic);
  const pidLen = qos > 0 ? 2 : 0;
  const remaining = t.length + pidLen + payloadSize;
  const hdrLen = 1 + varintLength(remaining);
  const out = Buffer.alloc(hdrLen + remaining, 0x61); // filler 'a'
  out[0] = 0x30 | (qos << 1);
  writeVarint(out, 1, remaining);
  t.copy(out, hdrLen);
  const pidOffset = qos > 0 ? hdrLen + t.length : -1;
  if (pidOffset >= 0) out.writeUInt16BE(1, pidOffset);
  const payloadOffset = hdrLen + t.length + pidLen;
  out.writeUInt32LE(runId, payloadOffset + OFF_RUN);
  out.writeUInt32LE(pubIdx, payloadOffset + OFF_PUB);
  out.writeUInt32LE(0, payloadOffset + OFF_SEQ);
  out.writeUInt32LE(0, payloadOffset + 12);
  out.writeDoubleLE(0, payloadOffset + OFF_TS);
  return { frame: out, pidOffset, payloadOffset };
}

export interface FrameSink {
  /** `first` is the fixed-header byte; the body is buf[start, end). */
  onFrame(first: number, buf: Buffer, start: number, end: number): void;
}

/** Splits a TCP byte stream into MQTT frames without copying (except a partial frame at a chunk's end). */
export class FrameSplitter {
  private rest: Buffer | null = null;

  push(chunk: Buffer, sink: FrameSink): void {
    let buf = chunk;
    if (this.rest !== null) {
      buf = Buffer.concat([this.rest, chunk]);
      this.rest = null;
    }
    const n = buf.length;
    let off = 0;
    while (n - off >= 2) {
      let i = off + 1;
      let len = 0;
      let mult = 1;
      let b = 0;
      let complete = true;
      do {
        if (i >= n) {
          complete = false;
          break;
        }
        if (i - off > 4) throw new Error('malformed remaining length');
        b = buf[i++]!;
        len += (b & 127) * mult;
        mult *= 128;
      } while (b & 128);
      if (!complete || i + len > n) break;
      sink.onFrame(buf[off]!, buf, i, i + len);
      off = i + len;
    }
    // Copy: the chunk may be a reused read buffer (net `onread`).
    if (off < n) this.rest = Buffer.from(buf.subarray(off));
  }
}

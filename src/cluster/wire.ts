/**
 * The gRPC framing of the Forward stream, by hand (the data plane; the control plane stays on
 * Connect). A ForwardBatch is a few small fields and one big `entries` bytes field that is
 * already encoded (codec.ts), so the generic path — protobuf-es building the message in a
 * growing writer, Connect enveloping it into a third buffer, and on the receiving side
 * concatenating the HTTP/2 chunks into a zero-filled array that is then copied once more for
 * the shard — cost more CPU than the messages it carried. Here the sender writes a ~30-byte
 * header (gRPC envelope prefix + the protobuf fields before `entries`) and the entries buffer
 * as they are (no copy), and the receiver reassembles each gRPC message once, into a buffer
 * it transfers to the shard as it is. The bytes are exactly what protobuf-es would produce
 * (test/cluster-wire.test.ts checks both directions against cluster_pb.ts), so any gRPC or
 * Connect peer (a @grpc/grpc-js client, test/cluster-grpc.test.ts) still talks to it.
 */

export const FORWARD_PATH = '/emqx_ts.cluster.v1.ClusterService/Forward';

/** gRPC over HTTP/2 (not the Connect or gRPC-Web protocols: those go to connect-node). */
export function isGrpc(contentType: string | undefined): boolean {
  return contentType === 'application/grpc' || contentType === 'application/grpc+proto';
}

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

/** Writes an unsigned varint of a safe integer (< 2^53) at `p`; returns the new position. */
function putVarint(b: Buffer, p: number, v: number): number {
  while (v >= 0x80) {
    b[p++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  b[p++] = v;
  return p;
}

/** Bytes of a varint field (tag + value); 0 at its proto3 default, which is left out. */
function fieldSize(v: number): number {
  return v > 0 ? 1 + varintSize(v) : 0;
}

/** Writes a varint field unless it is 0 (left out, as protobuf-es does); returns the new position. */
function putField(b: Buffer, p: number, tag: number, v: number): number {
  if (v === 0) return p;
  b[p++] = tag;
  return putVarint(b, p, v);
}

/**
 * Encodes the gRPC envelope prefix and the ForwardBatch fields that precede `entries` (field 5):
 * sending this then the entries bytes is one ForwardBatch message. `fromBytes` is sent on the
 * stream's first batch only (empty afterwards). Fields at their proto3 default are left out,
 * as protobuf-es does.
 */
export function forwardHeader(
  fromBytes: Buffer,
  incarnation: bigint,
  seq: number,
  count: number,
  entriesLen: number,
): Buffer {
  const inc = Number(incarnation);
  if (!Number.isSafeInteger(inc) || inc < 0 || !Number.isSafeInteger(seq))
    throw new RangeError('forward header out of range');
  // Once per batch: no array of fields (the four are written in turn).
  let body = fieldSize(inc) + fieldSize(seq) + fieldSize(count) + fieldSize(entriesLen);
  if (fromBytes.length > 0) body += 1 + varintSize(fromBytes.length) + fromBytes.length;
  const h = Buffer.allocUnsafe(5 + body);
  h[0] = 0; // not compressed
  h.writeUInt32BE(body + entriesLen, 1);
  let p = 5;
  if (fromBytes.length > 0) {
    h[p++] = 0x0a;
    p = putVarint(h, p, fromBytes.length);
    p += fromBytes.copy(h, p);
  }
  // Fields 2, 3, 4 (varints) and 5 (bytes: its length here, the entries follow)
  p = putField(h, p, 0x10, inc);
  p = putField(h, p, 0x18, seq);
  p = putField(h, p, 0x20, count);
  putField(h, p, 0x2a, entriesLen);
  return h;
}

/** One ForwardAck as a complete gRPC message (envelope included). */
export function forwardAck(seq: number): Buffer {
  const body = fieldSize(seq);
  const b = Buffer.allocUnsafe(5 + body);
  b[0] = 0;
  b.writeUInt32BE(body, 1);
  putField(b, 5, 0x08, seq);
  return b;
}

/** A protobuf reader over one message: just what ForwardBatch and ForwardAck need. */
class FieldReader {
  p: number;
  constructor(
    readonly b: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.p = start;
  }

  /** An unsigned varint up to 64 bits, as a bigint only when it does not fit 2^53. */
  varint(): number | bigint {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 10; i++) {
      if (this.p >= this.end) throw new RangeError('truncated varint');
      const byte = this.b[this.p++];
      v += (byte & 0x7f) * mul;
      if (byte < 0x80) return Number.isSafeInteger(v) ? v : this.big(i + 1);
      mul *= 128;
    }
    throw new RangeError('varint too long');
  }

  /** Re-reads the last `n`-byte varint exactly. */
  private big(n: number): bigint {
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 7n) | BigInt(this.b[this.p - n + i] & 0x7f);
    return v & 0xffffffffffffffffn;
  }

  /** Skips a field of wire type `wt` (unknown fields are allowed, as protobuf requires). */
  skip(wt: number): void {
    if (wt === 0) this.varint();
    else if (wt === 1) this.p += 8;
    else if (wt === 2) {
      const n = Number(this.varint()); // read first: `this.p += varint()` would add to the old p
      this.p += n;
    } else if (wt === 5) this.p += 4;
    else throw new RangeError(`wire type ${wt}`);
    if (this.p > this.end) throw new RangeError('truncated field');
  }
}

export interface ForwardBatchView {
  from: string;
  incarnation: bigint;
  seq: bigint;
  count: number;
  /** `entries` as offsets into the message's buffer */
  entriesAt: number;
  entriesLen: number;
}

/** Decodes a ForwardBatch in `b[start, end)`; `entries` stays where it is (offsets). */
export function readForwardBatch(b: Buffer, start: number, end: number): ForwardBatchView {
  const r = new FieldReader(b, start, end);
  const out: ForwardBatchView = {
    from: '',
    incarnation: 0n,
    seq: 0n,
    count: 0,
    entriesAt: start,
    entriesLen: 0,
  };
  while (r.p < end) {
    const tag = Number(r.varint());
    const field = tag >>> 3;
    const wt = tag & 7;
    if (field === 1 && wt === 2) {
      const n = Number(r.varint());
      if (r.p + n > end) throw new RangeError('truncated from');
      out.from = b.toString('utf8', r.p, r.p + n);
      r.p += n;
    } else if (field === 2 && wt === 0) out.incarnation = BigInt(r.varint());
    else if (field === 3 && wt === 0) out.seq = BigInt(r.varint());
    else if (field === 4 && wt === 0) out.count = Number(BigInt.asUintN(32, BigInt(r.varint())));
    else if (field === 5 && wt === 2) {
      const n = Number(r.varint());
      if (r.p + n > end) throw new RangeError('truncated entries');
      out.entriesAt = r.p;
      out.entriesLen = n;
      r.p += n;
    } else r.skip(wt);
  }
  return out;
}

/** Decodes a ForwardAck's seq. */
export function readForwardAck(b: Buffer, start: number, end: number): number {
  const r = new FieldReader(b, start, end);
  let seq = 0;
  while (r.p < end) {
    const tag = Number(r.varint());
    if (tag === 0x08) seq = Number(r.varint());
    else r.skip(tag & 7);
  }
  return seq;
}

/**
 * Splits an HTTP/2 byte stream into gRPC messages. Each message is copied once, into a buffer
 * of its own (its ArrayBuffer holds nothing else, so it can be transferred to a shard).
 */
export class EnvelopeReader {
  private readonly head = Buffer.alloc(5);
  private headLen = 0;
  private msg: Buffer | null = null;
  private msgLen = 0;
  private filled = 0;

  constructor(
    private readonly maxBytes: number,
    /** A complete message: `buf` holds exactly its bytes */
    private readonly onMessage: (buf: Buffer) => void,
  ) {}

  /** True while a message is partly read (the stream must not end here). */
  get partial(): boolean {
    return this.headLen > 0 || this.msg !== null;
  }

  /** Throws on a compressed or oversized message. */
  push(chunk: Buffer): void {
    let p = 0;
    const n = chunk.length;
    while (p < n) {
      if (this.msg === null) {
        const take = Math.min(5 - this.headLen, n - p);
        chunk.copy(this.head, this.headLen, p, p + take);
        this.headLen += take;
        p += take;
        if (this.headLen < 5) return;
        this.headLen = 0;
        if (this.head[0] !== 0) throw new RangeError('compressed gRPC message (no encoding negotiated)');
        const len = this.head.readUInt32BE(1);
        if (len > this.maxBytes) throw new RangeError(`gRPC message of ${len} bytes over ${this.maxBytes}`);
        this.msgLen = len;
        this.filled = 0;
        this.msg = Buffer.allocUnsafeSlow(len);
        if (len === 0) {
          this.msg = null;
          this.onMessage(Buffer.alloc(0));
          continue;
        }
      }
      const take = Math.min(this.msgLen - this.filled, n - p);
      chunk.copy(this.msg, this.filled, p, p + take);
      this.filled += take;
      p += take;
      if (this.filled === this.msgLen) {
        const m = this.msg;
        this.msg = null;
        this.onMessage(m);
      }
    }
  }
}

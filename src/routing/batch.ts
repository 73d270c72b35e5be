import type { QoS } from '../protocol/constants.js';
import { Message } from '../session/message.js';

/**
 * Cross-shard batches. Messages for one peer shard are appended to one ArrayBuffer and posted
 * (transferred, not copied) once per event-loop turn: a postMessage per message costs 11-33 µs,
 * a 64-message batch 0.7-2 µs per message (design notes). Layout per entry:
 *   u8 flags (qos | retain<<2 | kind<<3) · u32 topic length · topic · u32 payload length ·
 *   payload · u32 publisher id length · publisher id · f64 expiryAt · u32 props length · props ·
 *   then by kind:
 *   ROUTED / SHARED: u32 node count · (pad to 4) · i32 node ids   — nodes the publisher matched
 *                    (in the topic index / the shared-subscription index), so the receiver
 *                    does not match again;
 *   DIRECT:          u32 len · client id · u8 qos · u32 subscription id · u32 len · group key
 *                    — one shared-group member picked by the group's owner shard;
 *   REDISPATCH:      u32 len · group key · u32 len · client id to exclude
 *                    — a message a leaving member never acknowledged, back to the owner.
 * Every length and count is u32: a u16 overflowed (a 65,535-byte client id in UTF-8, a
 * publish matching more than 65,535 filters) and half-wrote an entry the receiver threw on.
 */
export const BatchKind = { ROUTED: 0, SHARED: 1, DIRECT: 2, REDISPATCH: 3 } as const;

/** A copy of buf's first `used` bytes in a buffer with room for `n` more (size doubled until it fits). */
export function grown(buf: Buffer, used: number, n: number): Buffer {
  let size = buf.length * 2;
  while (size < used + n) size *= 2;
  const next = Buffer.allocUnsafeSlow(size);
  buf.copy(next, 0, 0, used);
  return next;
}

export class BatchWriter {
  private buf: Buffer;
  private pos = 0;
  count = 0;
  /** QoS 1/2 entries: such a batch goes through the durable outbox */
  qosCount = 0;

  constructor(private readonly initial = 64 * 1024) {
    this.buf = Buffer.allocUnsafeSlow(initial);
  }

  private ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.buf = grown(this.buf, this.pos, n);
  }

  /** Writes the common part; reserves `extra` more bytes for the kind-specific tail. */
  private head(msg: Message, kind: number, extra: number): void {
    const topic = msg.topicBytes;
    const fromLen = Buffer.byteLength(msg.from);
    const props = msg.props;
    const propsLen = props ? props.length : 0;
    this.ensure(1 + 4 + topic.length + 4 + msg.payload.length + 4 + fromLen + 8 + 4 + propsLen + extra + 3);
    const b = this.buf;
    let p = this.pos;
    b[p++] = msg.qos | (msg.retain ? 4 : 0) | (kind << 3);
    b.writeUInt32LE(topic.length, p);
    p += 4;
    p += topic.copy(b, p);
    b.writeUInt32LE(msg.payload.length, p);
    p += 4;
    p += msg.payload.copy(b, p);
    b.writeUInt32LE(fromLen, p);
    p += 4;
    p += b.write(msg.from, p, 'utf8');
    b.writeDoubleLE(msg.expiryAt, p);
    p += 8;
    b.writeUInt32LE(propsLen, p);
    p += 4;
    if (props) p += props.copy(b, p);
    this.pos = p;
    this.count++;
    if (msg.qos > 0) this.qosCount++;
  }

  private str(s: string): void {
    const b = this.buf;
    const p = this.pos;
    const n = b.write(s, p + 4, 'utf8');
    b.writeUInt32LE(n, p);
    this.pos = p + 4 + n;
  }

  /** A message for the subscribers at these index nodes (kind ROUTED or SHARED). */
  add(msg: Message, nodeIds: Int32Array, nodeCount: number, kind: number = BatchKind.ROUTED): void {
    this.head(msg, kind, 4 + 4 * nodeCount);
    const b = this.buf;
    let p = this.pos;
    b.writeUInt32LE(nodeCount, p);
    p += 4;
    // Align node ids to 4 bytes so the reader can view them as an Int32Array.
    p = (p + 3) & ~3;
    for (let i = 0; i < nodeCount; i++, p += 4) b.writeInt32LE(nodeIds[i], p);
    this.pos = p;
  }

  /** A message for one shared-group member on the receiving shard. */
  addDirect(msg: Message, clientId: string, qos: QoS, subId: number, group: string): void {
    this.head(msg, BatchKind.DIRECT, 4 + 3 * clientId.length + 5 + 4 + 3 * group.length);
    this.str(clientId);
    this.buf[this.pos++] = qos;
    this.buf.writeUInt32LE(subId, this.pos);
    this.pos += 4;
    this.str(group);
  }

  /** A message to give to another member of a shared group (the receiver owns the group). */
  addRedispatch(msg: Message, group: string, exclude: string): void {
    this.head(msg, BatchKind.REDISPATCH, 8 + 3 * group.length + 3 * exclude.length);
    this.str(group);
    this.str(exclude);
  }

  /** Hands over the filled buffer (to be transferred) and starts a new one. */
  take(): { buf: ArrayBuffer; len: number; count: number; qosCount: number } {
    const out = {
      buf: this.buf.buffer as ArrayBuffer,
      len: this.pos,
      count: this.count,
      qosCount: this.qosCount,
    };
    this.buf = Buffer.allocUnsafeSlow(this.initial);
    this.pos = 0;
    this.count = 0;
    this.qosCount = 0;
    return out;
  }
}

export interface BatchVisitor {
  onRoutedMessage(msg: Message, nodeIds: Int32Array, nodeCount: number): void;
  onSharedMessage(msg: Message, nodeIds: Int32Array, nodeCount: number): void;
  onDirectMessage(msg: Message, clientId: string, qos: QoS, subId: number, group: string): void;
  onRedispatch(msg: Message, group: string, exclude: string): void;
}

/** Decodes a batch; payloads are zero-copy views into the transferred buffer. */
export function readBatch(ab: ArrayBuffer, len: number, visitor: BatchVisitor): void {
  const b = Buffer.from(ab, 0, len);
  let p = 0;
  const str = (): string => {
    const n = b.readUInt32LE(p);
    const s = b.toString('utf8', p + 4, p + 4 + n);
    p += 4 + n;
    return s;
  };
  while (p < len) {
    const flags = b[p++];
    const tlen = b.readUInt32LE(p);
    p += 4;
    const topic = b.subarray(p, p + tlen);
    p += tlen;
    const plen = b.readUInt32LE(p);
    p += 4;
    const payload = b.subarray(p, p + plen);
    p += plen;
    const from = str();
    const expiryAt = b.readDoubleLE(p);
    p += 8;
    const propsLen = b.readUInt32LE(p);
    p += 4;
    const msg = new Message(topic, payload, (flags & 3) as QoS, (flags & 4) !== 0, from);
    if (propsLen > 0) msg.props = b.subarray(p, p + propsLen);
    p += propsLen;
    msg.expiryAt = expiryAt;
    const kind = flags >> 3;
    if (kind === BatchKind.ROUTED || kind === BatchKind.SHARED) {
      const nodeCount = b.readUInt32LE(p);
      p += 4;
      p = (p + 3) & ~3;
      const nodeIds = new Int32Array(ab, p, nodeCount);
      p += nodeCount * 4;
      if (kind === BatchKind.ROUTED) visitor.onRoutedMessage(msg, nodeIds, nodeCount);
      else visitor.onSharedMessage(msg, nodeIds, nodeCount);
    } else if (kind === BatchKind.DIRECT) {
      const clientId = str();
      const qos = b[p++] as QoS;
      const subId = b.readUInt32LE(p);
      p += 4;
      visitor.onDirectMessage(msg, clientId, qos, subId, str());
    } else {
      const group = str();
      visitor.onRedispatch(msg, group, str());
    }
  }
}

import type { QoS } from '../protocol/constants.js';
import { grown } from '../routing/batch.js';
import { Message } from '../session/message.js';

/**
 * Compact encoding of forwarded publishes, used both from a shard to the cluster thread and on
 * the wire (the `entries` bytes of a ForwardBatch). One bytes field per batch instead of a
 * protobuf message per publish: protobuf decode would cost ~3.5 µs per publish (design notes).
 * Entry, little-endian:
 *   u8 flags (qos | retain << 2) · u32 topic length · topic · u32 payload length · payload ·
 *   u32 publisher id length · publisher id · u32 remaining expiry ms (0 = none) ·
 *   u32 props length · MQTT 5 property bytes as received (user-property order kept)
 * A shard writes one such buffer per destination peer (entries for k peers are written k
 * times), so the cluster thread sends it as it is: no work per entry there. Expiry travels as
 * time remaining, so node clocks need not agree.
 */
export const ENTRY_FIXED = 1 + 4 + 4 + 4 + 4 + 4;
const EMPTY = Buffer.alloc(0);

export class EntryWriter {
  buf: Buffer = EMPTY;
  pos = 0;
  count = 0;
  /** Size of the next buffer: the last batch's, so that a steady stream rarely grows one */
  private next: number;

  constructor(private readonly initial = 64 * 1024) {
    this.next = initial;
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    // Allocated on first use (a writer per peer slot mostly sits empty), grown by doubling.
    if (this.buf.length === 0) this.buf = Buffer.allocUnsafeSlow(Math.max(this.next, n));
    else this.buf = grown(this.buf, this.pos, n);
  }

  /** The last publisher id encoded (a shard's batch is mostly runs of one publisher) */
  private fromStr = '';
  private fromEnc = Buffer.alloc(0);

  private fromBytes(from: string): number {
    if (from !== this.fromStr) {
      this.fromStr = from;
      this.fromEnc = Buffer.from(from, 'utf8');
    }
    return this.fromEnc.length;
  }

  /** Appends one message. */
  add(msg: Message, remainingMs: number): void {
    const topic = msg.topicBytes;
    const payload = msg.payload;
    const props = msg.props;
    const fromLen = this.fromBytes(msg.from);
    this.ensure(ENTRY_FIXED + topic.length + payload.length + fromLen + (props ? props.length : 0));
    const b = this.buf;
    let p = this.pos;
    b[p++] = msg.qos | (msg.retain ? 4 : 0);
    b.writeUInt32LE(topic.length, p);
    p += 4;
    b.set(topic, p);
    p += topic.length;
    b.writeUInt32LE(payload.length, p);
    p += 4;
    b.set(payload, p);
    p += payload.length;
    b.writeUInt32LE(fromLen, p);
    p += 4;
    b.set(this.fromEnc, p);
    p += fromLen;
    b.writeUInt32LE(remainingMs, p);
    p += 4;
    b.writeUInt32LE(props ? props.length : 0, p);
    p += 4;
    if (props) {
      b.set(props, p);
      p += props.length;
    }
    this.pos = p;
    this.count++;
  }

  /** The filled part as a fresh ArrayBuffer-backed Buffer (safe to transfer); starts again. */
  take(): { buf: Buffer; count: number } {
    const out = { buf: this.buf.subarray(0, this.pos), count: this.count };
    this.next = Math.max(this.initial, Math.min(16 << 20, this.pos + (this.pos >> 2)));
    this.buf = EMPTY;
    this.pos = 0;
    this.count = 0;
    return out;
  }
}

/** End offset of the entry starting at `p`; throws on a truncated entry. */
export function entryEnd(b: Buffer, p: number, len: number): number {
  let q = p + 1;
  q += 4 + b.readUInt32LE(q); // topic
  q += 4 + b.readUInt32LE(q); // payload
  q += 4 + b.readUInt32LE(q); // from
  q += 4; // expiry
  q += 4 + b.readUInt32LE(q); // props
  if (q > len) throw new RangeError('truncated forward entry');
  return q;
}

/** Reads length-prefixed fields of one batch; one per batch, so no allocation per entry. */
class Cursor {
  p = 0;
  constructor(private readonly b: Buffer) {}
  u32(): number {
    const v = this.b.readUInt32LE(this.p);
    this.p += 4;
    return v;
  }
  /** A u32-length-prefixed field, as a view into the batch */
  view(): Buffer {
    const n = this.u32();
    const v = this.b.subarray(this.p, this.p + n);
    this.p += n;
    return v;
  }
}

/**
 * Decodes entries into Messages whose topic, payload and props are views into
 * `b`; `now` turns remaining expiry back into a deadline.
 */
export function readEntries(b: Buffer, len: number, now: number, visit: (msg: Message) => void): void {
  const c = new Cursor(b);
  // A batch is mostly a few publishers' runs: the previous entry's publisher id is reused when
  // its bytes are the same (no string decoded per message).
  let from = '';
  let fromAt = -1;
  let fromLen = -1;
  while (c.p < len) {
    const end = entryEnd(b, c.p, len);
    const flags = b[c.p++];
    const qos = flags & 3;
    if (qos === 3) throw new RangeError('forward entry with QoS 3');
    const topic = c.view();
    const payload = c.view();
    const n = c.u32();
    if (n !== fromLen || b.compare(b, fromAt, fromAt + n, c.p, c.p + n) !== 0) {
      from = b.toString('utf8', c.p, c.p + n);
      fromAt = c.p;
      fromLen = n;
    }
    c.p += n;
    const remaining = c.u32();
    const propsLen = c.u32();
    const msg = new Message(topic, payload, qos as QoS, (flags & 4) !== 0, from);
    if (propsLen > 0) msg.props = b.subarray(c.p, c.p + propsLen);
    if (remaining > 0) msg.expiryAt = now + remaining;
    c.p = end;
    visit(msg);
  }
}

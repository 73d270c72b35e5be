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

  /** Appends one message. Lengths are written inline (no helper call per field). */
  add(msg: Message, remainingMs: number): void {
    const topic = msg.topicBytes;
    const payload = msg.payload;
    const props = msg.props;
    const fromLen = this.fromBytes(msg.from);
    const tl = topic.length;
    const pl = payload.length;
    const rl = props ? props.length : 0;
    this.ensure(ENTRY_FIXED + tl + pl + fromLen + rl);
    const b = this.buf;
    let p = this.pos;
    b[p] = msg.qos | (msg.retain ? 4 : 0);
    b[p + 1] = tl;
    b[p + 2] = tl >>> 8;
    b[p + 3] = tl >>> 16;
    b[p + 4] = tl >>> 24;
    p += 5;
    // Topics are short: a loop beats a native call for them.
    if (tl <= 32) for (let i = 0; i < tl; i++) b[p + i] = topic[i];
    else b.set(topic, p);
    p += tl;
    b[p] = pl;
    b[p + 1] = pl >>> 8;
    b[p + 2] = pl >>> 16;
    b[p + 3] = pl >>> 24;
    p += 4;
    b.set(payload, p);
    p += pl;
    b[p] = fromLen;
    b[p + 1] = fromLen >>> 8;
    b[p + 2] = fromLen >>> 16;
    b[p + 3] = fromLen >>> 24;
    p += 4;
    const fe = this.fromEnc;
    if (fromLen <= 32) for (let i = 0; i < fromLen; i++) b[p + i] = fe[i];
    else b.set(fe, p);
    p += fromLen;
    b[p] = remainingMs;
    b[p + 1] = remainingMs >>> 8;
    b[p + 2] = remainingMs >>> 16;
    b[p + 3] = remainingMs >>> 24;
    b[p + 4] = rl;
    b[p + 5] = rl >>> 8;
    b[p + 6] = rl >>> 16;
    b[p + 7] = rl >>> 24;
    p += 8;
    if (props) {
      b.set(props, p);
      p += rl;
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

/** Little-endian u32 at `p`, inline-able (no bounds check: callers check against their end). */
function u32(b: Buffer, p: number): number {
  return (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16)) + b[p + 3] * 0x1000000;
}

const truncated = (): RangeError => new RangeError('truncated forward entry');

/** End offset of the entry starting at `p`; throws on a truncated entry. */
export function entryEnd(b: Buffer, p: number, len: number): number {
  // Each length is read only once the 4 bytes holding it are known to be inside `len`.
  let q = p + 1;
  if (q + 4 > len) throw truncated();
  q += 4 + u32(b, q); // topic
  if (q + 4 > len) throw truncated();
  q += 4 + u32(b, q); // payload
  if (q + 4 > len) throw truncated();
  q += 4 + u32(b, q); // from
  if (q + 8 > len) throw truncated();
  q += 8 + u32(b, q + 4); // expiry, props
  if (q > len) throw truncated();
  return q;
}

/**
 * Decodes entries into Messages whose topic, payload and props are views into `b`; `now` turns
 * remaining expiry back into a deadline. One pass: each length is read once, bounds checked as
 * it goes (a truncated entry throws before any of its fields is used).
 */
export function readEntries(b: Buffer, len: number, now: number, visit: (msg: Message) => void): void {
  // A batch is mostly a few publishers' runs: the previous entry's publisher id is reused when
  // its bytes are the same (no string decoded per message).
  let from = '';
  let fromAt = -1;
  let fromLen = -1;
  let p = 0;
  while (p < len) {
    if (p + 5 > len) throw truncated();
    const flags = b[p];
    const qos = flags & 3;
    if (qos === 3) throw new RangeError('forward entry with QoS 3');
    const topicAt = p + 5;
    let q = topicAt + u32(b, p + 1);
    if (q + 4 > len) throw truncated();
    const payloadAt = q + 4;
    q = payloadAt + u32(b, q);
    if (q + 4 > len) throw truncated();
    const fromBytesAt = q + 4;
    const n = u32(b, q);
    q = fromBytesAt + n;
    if (q + 8 > len) throw truncated();
    const remaining = u32(b, q);
    const propsAt = q + 8;
    const end = propsAt + u32(b, q + 4);
    if (end > len) throw truncated();
    if (n !== fromLen || !sameBytes(b, fromAt, fromBytesAt, n)) {
      from = b.toString('utf8', fromBytesAt, fromBytesAt + n);
      fromAt = fromBytesAt;
      fromLen = n;
    }
    const msg = new Message(
      b.subarray(topicAt, payloadAt - 4),
      b.subarray(payloadAt, fromBytesAt - 4),
      qos as QoS,
      (flags & 4) !== 0,
      from,
    );
    if (end > propsAt) msg.props = b.subarray(propsAt, end);
    if (remaining > 0) msg.expiryAt = now + remaining;
    p = end;
    visit(msg);
  }
}

/** b[a, a + n) equals b[c, c + n) (publisher ids: short, so a loop beats a native compare). */
function sameBytes(b: Buffer, a: number, c: number, n: number): boolean {
  for (let i = 0; i < n; i++) if (b[a + i] !== b[c + i]) return false;
  return true;
}

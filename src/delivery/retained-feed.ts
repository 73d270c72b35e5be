import { Counter, type Counters } from '../metrics/counters.js';
import type { QoS } from '../protocol/constants.js';
import { Message } from '../session/message.js';
import type { Session } from '../session/session.js';
import type { Connection } from '../shard/connection.js';
import type { MainLink } from '../shard/state.js';
import type { RetainedRecord } from '../threads/messages.js';
import type { Delivery } from './deliver.js';

/** One retained lookup's matches being delivered to one subscriber. */
interface RetainedStream {
  reqId: number;
  filter: string;
  records: RetainedRecord[];
  pos: number;
  /** Main has more chunks for this lookup (retained/pager.ts) */
  more: boolean;
  /** A retainedNext is outstanding */
  waiting: boolean;
}

/** One lookup's answer: its first chunk. */
export interface RetainedAnswer {
  reqId: number;
  filter: string;
  records: RetainedRecord[];
  more: boolean;
}

/** Rebuilds a Buffer view of a Uint8Array that arrived by structured clone. */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.length);
}

/**
 * Retained messages on subscribe, paced by the subscriber: a record is delivered only while its
 * socket's unsent output is under the socket's high-water mark (mqtt.output_high_watermark: at
 * that mark a write has returned false, so a 'drain' will come; any lower and none might) and, for QoS 1/2, while the inflight window has room
 * and the session queue is empty. So QoS 0 retained messages wait for 'drain' instead of being
 * dropped as congested, QoS 1/2 wait for acks instead of overflowing the queue, and a subscriber
 * that never reads holds one chunk here while main keeps only its walk position. Pumped on
 * 'drain' and on acks (Shard.drainSession), and when main's next chunk arrives.
 */
export class RetainedFeeds {
  private readonly feeds = new Map<Connection, RetainedStream[]>();
  /** Streams waiting for main's next chunk, by lookup id */
  private readonly waiting = new Map<number, Connection>();

  constructor(
    private readonly main: MainLink,
    private readonly delivery: Delivery,
    private readonly counters: Counters,
  ) {}

  /** Connections with retained messages still to deliver (0 on the normal path: nothing to do) */
  get active(): number {
    return this.feeds.size;
  }

  start(conn: Connection, answers: RetainedAnswer[]): void {
    let list = this.feeds.get(conn);
    if (!list) {
      list = [];
      this.feeds.set(conn, list);
    }
    for (const a of answers)
      list.push({
        reqId: a.reqId,
        filter: a.filter,
        records: a.records,
        pos: 0,
        more: a.more,
        waiting: false,
      });
    this.pump(conn);
  }

  /** A next chunk from main; false when it is for no stream of ours (stale). */
  onChunk(reqId: number, records: RetainedRecord[], more: boolean): boolean {
    const conn = this.waiting.get(reqId);
    if (!conn) return false;
    this.waiting.delete(reqId);
    const s = this.feeds.get(conn)?.find((x) => x.reqId === reqId);
    if (!s) return true;
    s.records = records;
    s.pos = 0;
    s.more = more;
    s.waiting = false;
    this.pump(conn);
    return true;
  }

  /** Acks or 'drain' made room for the session's connection. */
  pumpSession(session: Session): void {
    const conn = session.conn as Connection | null;
    if (conn && this.feeds.has(conn)) this.pump(conn);
  }

  private pump(conn: Connection): void {
    const list = this.feeds.get(conn);
    if (!list) return;
    const session = conn.session;
    if (conn.closed || session.conn !== conn) {
      this.cancel(conn);
      return;
    }
    const socket = conn.socket;
    const mark = socket.writableHighWaterMark;
    const now = Date.now();
    while (list.length > 0) {
      const s = list[0];
      const sub = session.subscriptions.get(s.filter);
      while (sub && s.pos < s.records.length) {
        if (socket.writableLength >= mark || session.queue.length > 0) return this.paced();
        const r = s.records[s.pos];
        if (r.expiryAt && r.expiryAt < now) {
          s.pos++;
          continue;
        }
        const qos = Math.min(r.qos, sub.qos) as QoS;
        // QoS 1/2 beyond the window wait here (for acks), not in the bounded session queue.
        if (qos > 0 && session.inflightCount >= conn.inflightLimit) return this.paced();
        s.pos++;
        const msg = Message.fromStrings(r.topic, asBuffer(r.payload), r.qos, true, '', true);
        if (r.props) msg.props = asBuffer(r.props);
        if (r.expiryAt) msg.expiryAt = r.expiryAt;
        // Retained messages sent on subscribe carry RETAIN 1 whatever Retain As Published says.
        this.delivery.deliver(session, msg, qos, true, sub.subId ? [sub.subId] : null, null);
        if (conn.closed) {
          this.cancel(conn);
          return;
        }
      }
      if (sub && s.more) {
        if (!s.waiting) {
          s.waiting = true;
          s.records = [];
          s.pos = 0;
          this.waiting.set(s.reqId, conn);
          this.main.postMessage({ t: 'retainedNext', reqId: s.reqId });
        }
        return;
      }
      // Done, or unsubscribed meanwhile: main drops the rest.
      if (s.more) this.stop(s);
      list.shift();
    }
    this.feeds.delete(conn);
  }

  private paced(): void {
    this.counters.row[Counter.retainedPaced]++;
  }

  /** The connection closed (or is no longer the session's): main drops the rest of its lookups. */
  cancel(conn: Connection): void {
    const list = this.feeds.get(conn);
    if (!list) return;
    this.feeds.delete(conn);
    for (const s of list) if (s.more) this.stop(s);
  }

  private stop(s: RetainedStream): void {
    this.waiting.delete(s.reqId);
    this.main.postMessage({ t: 'retainedCancel', reqId: s.reqId });
  }
}

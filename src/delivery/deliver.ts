import type { Config } from '../config/schema.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { QoS } from '../protocol/constants.js';
import type { Message } from '../session/message.js';
import type { Session, SessionConnection } from '../session/session.js';
import type { Connection } from '../shard/connection.js';
import type { FlowControl } from './flow-control.js';

/**
 * Delivery to one session of this shard: send now (QoS 0, or into the inflight window), queue
 * (offline, window full, congested connection), drop (expired, QoS 0 on a congested connection,
 * full queue), and move the queue into the window as acks and 'drain' make room. Output is
 * corked per turn; the connections written to are uncorked at its end.
 */
export class Delivery {
  /** Connections written to in this turn, uncorked together at its end (see Shard.endTurn) */
  readonly corked: Connection[] = [];

  constructor(
    private readonly config: Config,
    private readonly counters: Counters,
    /** QoS 0 back-pressure on publishers of congested subscribers */
    readonly flow: FlowControl,
  ) {}

  /** Sends now, or queues (offline, inflight window full, or congested connection). */
  deliver(
    session: Session,
    msg: Message,
    qos: QoS,
    retainFlag: boolean,
    subIds: number[] | null,
    group: string | null,
  ): void {
    const row = this.counters.row;
    if (msg.expiryAt > 0 && Date.now() > msg.expiryAt) {
      // Expired messages are not delivered [MQTT-3.3.2-5]: once the interval has *passed* (as EMQX
      // does), so an interval of 0 still reaches subscribers that are online at once.
      row[Counter.deliveryDroppedExpired]++;
      row[Counter.messagesDropped]++;
      return;
    }
    const conn = session.conn;
    if (conn) {
      if (qos === 0) {
        // Congested: written anyway while its publisher can be held back (flow-control.ts).
        if (conn.congested && !this.flow.admit(conn as Connection, msg)) {
          row[Counter.deliveryDroppedQos0Slow]++;
          row[Counter.messagesDropped]++;
          return;
        }
        if (conn.sendPublish(msg, 0, 0, false, retainFlag, subIds)) {
          row[Counter.messagesSent]++;
          row[Counter.messagesQos0Sent]++;
        } else row[Counter.messagesDropped]++;
        return;
      }
      if (session.queue.length === 0 && session.inflightCount < conn.inflightLimit && !conn.congested) {
        this.sendInflight(session, conn, msg, qos, retainFlag, subIds, group);
        return;
      }
    } else if (session.expiryInterval === 0 || (qos === 0 && !this.config['mqtt.mqueue_store_qos0'])) {
      row[Counter.messagesDropped]++;
      return;
    }
    this.enqueue(session, msg, qos, retainFlag, subIds, group);
  }

  private sendInflight(
    session: Session,
    conn: SessionConnection,
    msg: Message,
    qos: 1 | 2,
    retainFlag: boolean,
    subIds: number[] | null,
    group: string | null,
  ): void {
    const id = session.allocatePacketId();
    // Held until acknowledged: in storage of its own, not a view pinning a read buffer.
    msg.own();
    if (!conn.sendPublish(msg, qos, id, false, retainFlag, subIds)) {
      this.counters.row[Counter.messagesDropped]++;
      return;
    }
    session.inflight.set(id, { msg, qos, released: false, retainFlag, subIds, group });
    this.counters.row[Counter.messagesSent]++;
    this.counters.row[Counter.messagesQos0Sent + qos]++;
  }

  private enqueue(
    session: Session,
    msg: Message,
    qos: QoS,
    retainFlag: boolean,
    subIds: number[] | null,
    group: string | null,
  ): void {
    const max = this.config['mqtt.max_mqueue_len'];
    if (session.queue.length >= max) {
      // Full: drop the oldest, as EMQX does, and count it.
      this.counters.row[Counter.deliveryDroppedQueueFull]++;
      this.counters.row[Counter.messagesDropped]++;
      if (max === 0) return;
      session.queue.shift();
    }
    msg.own();
    session.queue.push({ msg, qos, retainFlag, subIds, group });
  }

  /** Moves queued messages into the inflight window while there is room. */
  drainSession(session: Session): void {
    const conn = session.conn;
    if (!conn || conn.closed) return;
    const q = session.queue;
    const max = conn.inflightLimit;
    const row = this.counters.row;
    const now = q.length > 0 ? Date.now() : 0;
    let i = 0;
    while (i < q.length && !conn.congested) {
      const d = q[i];
      if (d.msg.expiryAt > 0 && now > d.msg.expiryAt) {
        row[Counter.deliveryDroppedExpired]++;
        row[Counter.messagesDropped]++;
      } else if (d.qos === 0) {
        if (conn.sendPublish(d.msg, 0, 0, false, d.retainFlag, d.subIds)) {
          row[Counter.messagesSent]++;
          row[Counter.messagesQos0Sent]++;
        } else row[Counter.messagesDropped]++;
      } else {
        if (session.inflightCount >= max) break;
        this.sendInflight(session, conn, d.msg, d.qos, d.retainFlag, d.subIds, d.group);
      }
      i++;
    }
    if (i > 0) session.queue = i === q.length ? [] : q.slice(i);
  }

  /** Uncorks every connection written to in this turn, in one pass. */
  uncorkAll(): void {
    const list = this.corked;
    for (let i = 0; i < list.length; i++) {
      const c = list[i];
      c.corked = false;
      c.socket.uncork();
    }
    list.length = 0;
  }
}

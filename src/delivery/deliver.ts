import type { Config } from '../config/schema.js';
import type { ShardSecurity } from '../hooks/security.js';
import type { DropReason } from '../hooks/types.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { QoS } from '../protocol/constants.js';
import type { Message } from '../session/message.js';
import { type InflightEntry, newDelivery, type Session, type SessionConnection } from '../session/session.js';
import type { Connection } from '../shard/connection.js';
import type { ShardDurability } from '../storage/shard-durability.js';
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
    /** onMessageDelivered / onMessageDropped hooks (src/hooks): one length test each when none */
    private readonly security: ShardSecurity,
    /** Persistent sessions' deliveries are written here (null: durability.mode none) */
    private readonly durable: ShardDurability | null = null,
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
    const merging = session.merging;
    if (merging !== null) {
      // Its old node's late messages come first (shard-state.ts ends this).
      msg.own();
      merging.push({ msg, qos, retainFlag, subIds, group });
      return;
    }
    if (msg.expiryAt > 0 && Date.now() > msg.expiryAt) {
      // Expired messages are not delivered [MQTT-3.3.2-5]: once the interval has *passed* (as EMQX
      // does), so an interval of 0 still reaches subscribers that are online at once.
      row[Counter.deliveryDroppedExpired]++;
      row[Counter.messagesDropped]++;
      this.droppedHook(session, msg, 'expired');
      return;
    }
    const conn = session.conn;
    if (conn) {
      if (qos === 0) {
        // Congested: written anyway while its publisher can be held back (flow-control.ts).
        if (conn.congested && !this.flow.admit(conn as Connection, msg)) {
          row[Counter.deliveryDroppedQos0Slow]++;
          row[Counter.messagesDropped]++;
          this.droppedHook(session, msg, 'qos0_slow');
          return;
        }
        if (conn.sendPublish(msg, 0, 0, false, retainFlag, subIds)) {
          row[Counter.messagesSent]++;
          row[Counter.messagesQos0Sent]++;
          const hooks = this.security.hooks;
          if (hooks.delivered.length > 0) hooks.messageDelivered(session.clientId, msg, 0);
        } else row[Counter.messagesDropped]++;
        return;
      }
      if (session.queue.length === 0 && session.inflightCount < conn.inflightLimit && !conn.congested) {
        msg.own();
        const e = newDelivery(msg, qos, retainFlag, subIds, group, session.deliverySeq++) as InflightEntry;
        if (!this.sendInflight(session, conn, e)) {
          this.counters.row[Counter.messagesDropped]++;
        }
        return;
      }
    } else if (session.expiryInterval === 0 || (qos === 0 && !this.config['mqtt.mqueue_store_qos0'])) {
      row[Counter.messagesDropped]++;
      return;
    }
    this.enqueue(session, msg, qos, retainFlag, subIds, group);
  }

  /**
   * Sends a delivery into the inflight window; false when the connection refused it (larger
   * than the client's Maximum Packet Size): it is dropped, the caller counts it. The same object
   * moves from the queue into the window (no copy per delivery).
   */
  private sendInflight(session: Session, conn: SessionConnection, e: InflightEntry): boolean {
    const id = session.allocatePacketId();
    const msg = e.msg;
    if (!conn.sendPublish(msg, e.qos, id, false, e.retainFlag, e.subIds)) return false;
    session.inflight.set(id, e);
    if (this.durable) this.durable.held(session, e, id);
    const hooks = this.security.hooks;
    if (hooks.delivered.length > 0) hooks.messageDelivered(session.clientId, msg, e.qos);
    this.counters.row[Counter.messagesSent]++;
    this.counters.row[Counter.messagesQos0Sent + e.qos]++;
    return true;
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
      // the oldest goes (the new one when max is 0)
      this.droppedHook(session, max === 0 ? msg : session.queue.get(0).msg, 'queue_full');
      if (max === 0) return;
      const old = session.queue.shift()!;
      if (this.durable) this.durable.done(session, old);
    }
    // Held until acknowledged: in storage of its own, not a view pinning a read buffer.
    msg.own();
    const e = newDelivery(msg, qos, retainFlag, subIds, group, session.deliverySeq++);
    session.queue.push(e);
    if (this.durable) this.durable.held(session, e, 0);
  }

  /** onMessageDropped, when a hook provides it (one length test otherwise). */
  private droppedHook(session: Session, msg: Message, reason: DropReason): void {
    const hooks = this.security.hooks;
    if (hooks.dropped.length > 0) hooks.messageDropped(session.clientId, msg.topic, reason);
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
      const d = q.get(i);
      if (d.msg.expiryAt > 0 && now > d.msg.expiryAt) {
        row[Counter.deliveryDroppedExpired]++;
        row[Counter.messagesDropped]++;
        this.droppedHook(session, d.msg, 'expired');
        if (this.durable) this.durable.done(session, d);
      } else if (d.qos === 0) {
        if (conn.sendPublish(d.msg, 0, 0, false, d.retainFlag, d.subIds)) {
          row[Counter.messagesSent]++;
          row[Counter.messagesQos0Sent]++;
        } else row[Counter.messagesDropped]++;
      } else {
        if (session.inflightCount >= max) break;
        if (!this.sendInflight(session, conn, d as InflightEntry)) {
          row[Counter.messagesDropped]++;
          // Its record (or held write) goes too: it is no longer the session's.
          if (this.durable) this.durable.done(session, d);
        }
      }
      i++;
    }
    // One PUBACK moves one message of a long queue: taken off its front without moving the
    // rest (session/queue.ts).
    if (i > 0) q.drop(i);
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

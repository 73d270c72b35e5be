import { failHeldAck } from '../cluster/shard-link.js';
import type { Delivery } from '../delivery/deliver.js';
import { type RetainedAnswer, RetainedFeeds } from '../delivery/retained-feed.js';
import { refuseSharedJoin } from '../handlers/subscribe.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { PendingJoin } from '../routing/subscriptions.js';
import type { Message } from '../session/message.js';
import type { ShardDurability } from '../storage/shard-durability.js';
import type { RetainedRecord } from '../threads/messages.js';
import type { Connection, HeldAck } from './connection.js';
import type { MainLink } from './state.js';

/**
 * One SUBSCRIBE's retained lookups and remote shared-group joins; its SUBACK is held until all
 * are answered.
 */
interface RetainedBatch {
  conn: Connection;
  held: HeldAck;
  left: number;
  answers: RetainedAnswer[];
}

export { asBuffer } from '../delivery/retained-feed.js';

/**
 * The retained store lives in main: this relays a retained PUBLISH to it (the PUBACK/PUBREC
 * held until it is stored) and a new subscription's lookups (the SUBACK held until answered,
 * and until owner shards confirm its shared-group joins; the retained messages follow it).
 */
export class RetainedRelay {
  private reqSeq = 0;
  private readonly heldAcks = new Map<number, HeldAck>();
  private readonly retainedRequests = new Map<
    number,
    { conn: Connection; filter: string; batch: RetainedBatch }
  >();
  /** SUBACKs waiting for owner shards to confirm joins, by request id */
  private readonly joinWaits = new Map<number, { owner: number; batch: RetainedBatch; join?: PendingJoin }>();
  /** Retained messages after a SUBACK, delivered paced by the subscriber */
  readonly feeds: RetainedFeeds;

  constructor(
    private readonly main: MainLink,
    delivery: Delivery,
    private readonly counters: Counters,
    /** durable sync: a persistent session's SUBACK waits for its subscriptions' commit too */
    private readonly durable: ShardDurability | null = null,
  ) {
    this.feeds = new RetainedFeeds(main, delivery, counters);
  }

  /**
   * Posts a retained message to main's store. A client's ack (PUBACK/PUBREC) is held until main
   * has stored it, so that a client that saw the ack and then subscribes is sure to get it.
   */
  storeRetained(msg: Message, held: HeldAck | null): void {
    let reqId = 0;
    if (held !== null) {
      reqId = ++this.reqSeq;
      held.parts++;
      this.heldAcks.set(reqId, held);
    }
    const payload = new Uint8Array(msg.payload.length);
    payload.set(msg.payload);
    let props: Uint8Array | null = null;
    if (msg.props) {
      props = new Uint8Array(msg.props.length);
      props.set(msg.props);
    }
    this.main.postMessage({
      t: 'retain',
      reqId,
      record: { topic: msg.topic, payload, qos: msg.qos, props, expiryAt: msg.expiryAt },
    });
  }

  /**
   * Main stored the retained message of a held ack: the ack (and those behind it) go out. A
   * `code` ≥ 0x80: a peer node that is not known down did not confirm it stored it (MQTT 5
   * publishers get the code, as for a failed forward: cluster/shard-link.ts).
   */
  onRetainAck(reqId: number, code = 0): void {
    const held = this.heldAcks.get(reqId);
    if (!held) return;
    this.heldAcks.delete(reqId);
    if (code >= 0x80) {
      this.counters.row[Counter.clusterHeldAcksFailed]++;
      failHeldAck(held, code);
    }
    // durable sync: it may also wait for this shard's commit (storage/shard-durability.ts)
    held.partDone();
  }

  /** A closed connection's held acks are never sent. */
  forgetConnection(conn: Connection): void {
    for (const [reqId, h] of this.heldAcks) if (h.conn === conn) this.heldAcks.delete(reqId);
    this.feeds.cancel(conn);
  }

  /**
   * Sends a SUBACK, or holds it until the owners of remote shared groups have confirmed the
   * joins and main has answered the retained lookups for new subscriptions (acks behind it wait,
   * in order); the retained messages follow it. The lookup then sees the store as it was before
   * the client saw SUBACK, so a message published after that reaches the subscriber live only,
   * not also as a retained message.
   */
  sendSuback(conn: Connection, retainedFilters: string[], joins: PendingJoin[], suback: Buffer): void {
    const durable = this.durable?.sync && conn.session.expiryInterval > 0 ? this.durable : null;
    if (retainedFilters.length === 0 && joins.length === 0) {
      if (durable) durable.holdAck(conn, suback);
      else conn.writeAck(suback);
      return;
    }
    const batch: RetainedBatch = {
      conn,
      held: conn.holdAck(suback),
      left: retainedFilters.length + joins.length + (durable ? 1 : 0),
      answers: [],
    };
    if (durable) durable.afterCommit(() => this.subscribeStepDone(batch));
    for (const j of joins) this.joinWaits.set(j.reqId, { owner: j.owner, batch, join: j });
    for (const filter of retainedFilters) {
      const reqId = ++this.reqSeq;
      this.retainedRequests.set(reqId, { conn, filter, batch });
      this.main.postMessage({ t: 'retainedLookup', reqId, filters: [filter] });
    }
  }

  /** A lookup's first chunk (for a held SUBACK), or a next chunk for a feed. */
  onRetained(reqId: number, records: RetainedRecord[], more: boolean): void {
    const req = this.retainedRequests.get(reqId);
    if (!req) {
      this.feeds.onChunk(reqId, records, more);
      return;
    }
    this.retainedRequests.delete(reqId);
    // Main answers in request order.
    req.batch.answers.push({ reqId, filter: req.filter, records, more });
    this.subscribeStepDone(req.batch);
  }

  onSharedJoined(reqId: number, ok: boolean): void {
    const w = this.joinWaits.get(reqId);
    if (!w) return;
    this.joinWaits.delete(reqId);
    if (!ok && w.join) refuseSharedJoin(w.batch.conn, w.batch.held.frame, w.join);
    this.subscribeStepDone(w.batch);
  }

  /** Releases the SUBACKs waiting for joins sent to `owner` (it died or was restarted). */
  releaseJoinsTo(owner: number): void {
    for (const [reqId, w] of this.joinWaits) {
      if (w.owner !== owner) continue;
      this.joinWaits.delete(reqId);
      this.subscribeStepDone(w.batch);
    }
  }

  /** One answer for a held SUBACK; the last one releases it and sends the retained messages. */
  private subscribeStepDone(batch: RetainedBatch): void {
    if (--batch.left > 0) return;
    const conn = batch.conn;
    batch.held.partDone();
    // Delivered paced by the subscriber (delivery/retained-feed.ts); a closed one cancels.
    if (batch.answers.some((a) => a.records.length > 0 || a.more)) this.feeds.start(conn, batch.answers);
  }
}

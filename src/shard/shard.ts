import { Socket } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import type { Config } from '../config/schema.js';
import { createLogger, type Logger } from '../log.js';
import { Counter, Counters, observeHandoff } from '../metrics/counters.js';
import { encodeAck, encodeConnack } from '../protocol/codec.js';
import { PacketType, type QoS } from '../protocol/constants.js';
import { type BatchVisitor, BatchWriter, readBatch } from '../routing/batch.js';
import { SubscriberTable } from '../routing/subscribers.js';
import { MatchResult, TopicIndex } from '../routing/topic-index.js';
import { Message } from '../session/message.js';
import { Session } from '../session/session.js';
import { publishClientEvent } from '../sys/events.js';
import type { Handoff, MainToShard, ShardInit, ShardToMain } from '../threads/messages.js';
import { Connection, type HeldAck } from './connection.js';
import { answerQuery } from './queries.js';

/** One SUBSCRIBE's retained lookups; its SUBACK is held until all are answered. */
interface RetainedBatch {
  held: HeldAck;
  left: number;
  answers: { filter: string; records: { topic: string; payload: Uint8Array; qos: QoS }[] }[];
}

interface PeerBatch {
  buf: ArrayBuffer;
  len: number;
  count: number;
}

/** Posts to the main thread; a port in a worker, a plain callback when embedded in one thread. */
export interface MainLink {
  postMessage(msg: ShardToMain): void;
  on(event: 'message', listener: (msg: MainToShard) => void): unknown;
}

/**
 * A shard owns the sessions of the client ids that hash to it: their connections, protocol
 * state, subscriptions, inflight windows, queues, keep-alive and wills. It routes each PUBLISH
 * by matching the shared topic index once, delivering to its own sessions directly and to
 * other shards in one batch per shard per event-loop turn.
 */
export class Shard implements BatchVisitor {
  readonly id: number;
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly index: TopicIndex;
  readonly sessions = new Map<string, Session>();
  readonly subscribers = new SubscriberTable();
  private readonly peers: (MessagePort | null)[];
  private readonly batches: (BatchWriter | null)[];
  private readonly match = new MatchResult();
  private readonly targets: Session[] = [];
  private deliverySeq = 0;
  private flushScheduled = false;
  private readonly corked: Connection[] = [];
  private uncorkScheduled = false;
  private reqSeq = 0;
  private readonly heldAcks = new Map<number, { conn: Connection; held: HeldAck }>();
  private readonly retainedRequests = new Map<
    number,
    { conn: Connection; filter: string; batch: RetainedBatch }
  >();
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopping = false;

  constructor(
    init: ShardInit,
    private readonly main: MainLink,
  ) {
    this.id = init.shardId;
    this.config = init.config;
    this.log = createLogger(this.config['log.level'], {
      thread: 'shard',
      shard: this.id,
      gen: init.generation,
    });
    this.counters = Counters.attach(init.counters, this.id + 1);
    this.index = TopicIndex.attach(init.index);
    this.peers = init.peers;
    this.batches = init.peers.map((_, i) => (i === this.id ? null : new BatchWriter()));
    for (let i = 0; i < this.peers.length; i++) this.listenPeer(i);
  }

  start(generation: number): void {
    this.main.on('message', (msg) => this.onMainMessage(msg));
    this.sweepTimer = setInterval(() => this.sweep(), 1000);
    this.main.postMessage({ t: 'ready', generation });
  }

  private listenPeer(i: number): void {
    const port = this.peers[i];
    if (!port) return;
    port.on('message', (b: PeerBatch) => readBatch(b.buf, b.len, this));
  }

  private onMainMessage(msg: MainToShard): void {
    switch (msg.t) {
      case 'adopt':
        for (const h of msg.conns) this.adopt(h);
        break;
      case 'peer':
        this.peers[msg.shard]?.close();
        this.peers[msg.shard] = msg.port;
        this.listenPeer(msg.shard);
        break;
      case 'retainAck': {
        const pending = this.heldAcks.get(msg.reqId);
        if (!pending) break;
        this.heldAcks.delete(msg.reqId);
        pending.held.ready = true;
        pending.conn.releaseAcks();
        break;
      }
      case 'retained':
        this.onRetained(msg.reqId, msg.records);
        break;
      case 'shutdown':
        if (msg.drainMs) this.drain(msg.drainMs);
        else this.shutdown();
        break;
      case 'publish':
        for (const p of msg.messages) {
          const payload = Buffer.from(p.payload.buffer, p.payload.byteOffset, p.payload.length);
          // from '' marks the broker's own $SYS messages (client ids are never empty here).
          this.publish(Message.fromStrings(p.topic, payload, p.qos, p.retain, p.sys ? '' : 'http_api'), null);
        }
        break;
      case 'query':
        this.main.postMessage({ t: 'queryResult', reqId: msg.reqId, result: answerQuery(this, msg.query) });
        break;
      case 'reconfigure':
        this.reconfigure(msg.config);
        break;
      case 'crash':
        // Test hook for the supervisor: an uncaught exception, as a bug would throw.
        setImmediate(() => {
          throw new Error('shard crash requested');
        });
        break;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Connections and sessions

  private adopt(h: Handoff): void {
    // Stream high-water mark = ours: whenever the connection is congested, a write has seen the
    // buffer at the mark, so 'drain' (which moves the session queue) is sure to follow.
    const socketOpts: ConstructorParameters<typeof Socket>[0] & { writableHighWaterMark: number } = {
      fd: h.fd,
      readable: true,
      writable: true,
      writableHighWaterMark: this.config['mqtt.output_high_watermark'],
    };
    const socket = new Socket(socketOpts);
    socket.setNoDelay(true);
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const c = h.connect;
    const row = this.counters.row;
    let session = this.sessions.get(c.clientId);
    if (session?.conn) {
      // Takeover: the same client id is already connected here [MQTT-3.1.4-2]. The old
      // connection closes without DISCONNECT, so its will is published.
      row[Counter.sessionTakenover]++;
      session.conn.log.info('session taken over by a new connection');
      session.conn.close('session taken over');
      session = this.sessions.get(c.clientId);
    }
    let sessionPresent = false;
    if (session && !session.conn && session.expiresAt > 0 && Date.now() >= session.expiresAt) {
      // Expired but not swept yet (the sweep runs once a second): it must not be resumed.
      this.expireSession(session);
      session = undefined;
    }
    if (session && c.clean) {
      this.discardSession(session);
      session = undefined;
    }
    if (session) {
      sessionPresent = true;
      session.expiresAt = 0;
      row[Counter.sessionResumed]++;
    } else {
      session = new Session(c.clientId, c.clean);
      this.sessions.set(c.clientId, session);
      row[Counter.sessionCreated]++;
      row[Counter.sessions]++;
    }
    session.clean = c.clean;
    session.will = c.will;
    const conn = new Connection(this, socket, session, h);
    session.conn = conn;
    row[Counter.connections]++;
    row[Counter.clientConnected]++;
    conn.log.info(
      {
        clean: c.clean,
        keepalive: c.keepalive,
        sessionPresent,
        handoffUs: Math.round((Number(process.hrtime.bigint()) - h.acceptedAt) / 1000),
      },
      'client connected',
    );
    observeHandoff(row, Number(process.hrtime.bigint()) - h.acceptedAt);
    publishClientEvent(this, conn, 'connected');
    // Session present: 1 only for a resumed session [MQTT-3.2.2-1], [MQTT-3.2.2-2].
    conn.write(encodeConnack(sessionPresent, 0));
    if (sessionPresent) this.resend(session);
    conn.start(h.leftover);
  }

  /** On resume: resend unacknowledged PUBLISH with DUP and PUBREL, in original order [MQTT-4.4.0-1]. */
  private resend(session: Session): void {
    const conn = session.conn!;
    for (const [id, e] of session.inflight) {
      if (e.released) conn.write(encodeAck(PacketType.PUBREL, id));
      else conn.write(e.msg.qosFrame(e.qos, id, true));
    }
    this.drainSession(session);
  }

  onConnectionClosed(conn: Connection, reason: string): void {
    const session = conn.session;
    const row = this.counters.row;
    row[Counter.connections]--;
    row[Counter.clientDisconnected]++;
    conn.log.info({ reason }, 'client disconnected');
    if (!this.stopping) publishClientEvent(this, conn, 'disconnected', reason);
    if (session.conn === conn) session.conn = null;
    for (const [reqId, p] of this.heldAcks) if (p.conn === conn) this.heldAcks.delete(reqId);
    if (session.will && !conn.gracefulDisconnect && !this.stopping) {
      // Will on any close other than DISCONNECT [MQTT-3.1.2-8].
      const w = session.will;
      row[Counter.willsPublished]++;
      // The CONNECT came from main by structured clone: the payload is a Uint8Array, not a Buffer.
      const payload = Buffer.from(w.payload.buffer, w.payload.byteOffset, w.payload.length);
      this.publish(Message.fromStrings(w.topic, payload, w.qos, w.retain, session.clientId), null);
    }
    session.will = null;
    if (session.clean) {
      // Clean session: state ends with the connection [MQTT-3.1.2-6].
      this.discardSession(session);
      row[Counter.sessionTerminated]++;
    } else {
      const expiry = this.config['mqtt.session_expiry_interval'];
      session.expiresAt = Date.now() + expiry * 1000;
      if (expiry === 0) this.expireSession(session);
    }
  }

  private discardSession(session: Session): void {
    for (const [filter] of session.subscriptions) this.unsubscribe(session, filter);
    if (this.sessions.get(session.clientId) === session) {
      this.sessions.delete(session.clientId);
      this.counters.row[Counter.sessions]--;
      this.counters.row[Counter.sessionDiscarded]++;
    }
  }

  private expireSession(session: Session): void {
    this.counters.row[Counter.sessionExpired]++;
    this.log.info({ clientId: session.clientId }, 'session expired');
    this.discardSession(session);
  }

  /** Once a second: keep-alive [MQTT-3.1.2-24] and offline-session expiry (expiry is data, not a timer each). */
  private sweep(): void {
    const now = Date.now();
    for (const session of this.sessions.values()) {
      if (session.awaitingRelAt.size > 0) this.expireAwaitingRel(session, now);
      const conn = session.conn;
      if (conn) {
        if (conn.keepaliveMs > 0 && now - conn.lastReceivedAt > conn.keepaliveMs) {
          this.counters.row[Counter.keepaliveTimeouts]++;
          conn.log.info({ keepaliveMs: conn.keepaliveMs }, 'keep-alive timeout');
          conn.close('keep-alive timeout');
        }
      } else if (session.expiresAt > 0 && now >= session.expiresAt) {
        this.expireSession(session);
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Subscriptions

  /** Adds or replaces a subscription; false when the topic index is full. */
  subscribe(session: Session, filter: string, qos: QoS): boolean {
    const existing = session.subscriptions.get(filter);
    if (existing) {
      existing.qos = qos;
      this.subscribers.add(existing.nodeId, session, qos);
      return true;
    }
    const nodeId = this.index.ensure(filter);
    if (nodeId < 0) {
      this.log.error({ filter }, 'topic index full; subscription refused');
      return false;
    }
    session.subscriptions.set(filter, { qos, nodeId });
    if (this.subscribers.add(nodeId, session, qos)) this.index.setShard(nodeId, this.id);
    this.counters.row[Counter.subscriptions] = this.subscribers.count;
    return true;
  }

  unsubscribe(session: Session, filter: string): void {
    const sub = session.subscriptions.get(filter);
    if (!sub) return;
    session.subscriptions.delete(filter);
    if (this.subscribers.remove(sub.nodeId, session)) this.index.clearShard(sub.nodeId, this.id);
    this.counters.row[Counter.subscriptions] = this.subscribers.count;
  }

  /**
   * Asks main for the retained messages matching new subscriptions. The SUBACK is held until main
   * has answered every filter (acks behind it wait, in order) and the retained messages follow
   * it: the lookup then sees the store as it was before the client saw SUBACK, so a message
   * published after that reaches the subscriber live only, not also as a retained message.
   */
  sendRetained(conn: Connection, granted: { filter: string; qos: QoS }[], suback: Buffer): void {
    const batch: RetainedBatch = { held: conn.holdAck(suback), left: granted.length, answers: [] };
    for (const g of granted) {
      const reqId = ++this.reqSeq;
      this.retainedRequests.set(reqId, { conn, filter: g.filter, batch });
      this.main.postMessage({ t: 'retainedLookup', reqId, filters: [g.filter] });
    }
  }

  private onRetained(reqId: number, records: { topic: string; payload: Uint8Array; qos: QoS }[]): void {
    const req = this.retainedRequests.get(reqId);
    if (!req) return;
    this.retainedRequests.delete(reqId);
    const { conn, batch } = req;
    // Main answers in request order: the last answer completes the SUBSCRIBE.
    batch.answers.push({ filter: req.filter, records });
    if (--batch.left > 0) return;
    batch.held.ready = true;
    conn.releaseAcks();
    const session = conn.session;
    if (conn.closed || session.conn !== conn) return;
    for (const a of batch.answers) {
      const sub = session.subscriptions.get(a.filter);
      if (!sub) continue;
      for (const r of a.records) {
        const payload = Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.length);
        const msg = Message.fromStrings(r.topic, payload, r.qos, true, '', true);
        this.deliver(session, msg, Math.min(r.qos, sub.qos) as QoS);
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Publishing and routing

  /**
   * Routes a message published by a client (or a will). `ack` is the PUBACK/PUBREC for `conn`:
   * for a retained message it is held until main has stored it, so that a client that saw the
   * ack and then subscribes is sure to get it.
   */
  publish(msg: Message, conn: Connection | null, ack?: Buffer): void {
    this.route(msg);
    if (msg.retain) {
      const reqId = conn && ack ? ++this.reqSeq : 0;
      if (conn && ack) this.heldAcks.set(reqId, { conn, held: conn.holdAck(ack) });
      const payload = new Uint8Array(msg.payload.length);
      payload.set(msg.payload);
      this.main.postMessage({ t: 'retain', reqId, record: { topic: msg.topic, payload, qos: msg.qos } });
    } else if (conn && ack) {
      conn.writeAck(ack);
    }
  }

  private route(msg: Message): void {
    const m = this.match;
    const topic = msg.topicBytes;
    const n = this.index.match(topic, 0, topic.length, m);
    if (n === 0) {
      // As EMQX: the broker's own $SYS messages (from '') are not counted as dropped.
      if (msg.from !== '') this.counters.row[Counter.messagesDroppedNoSubscribers]++;
      return;
    }
    const mask = m.mask;
    if (mask & (1 << this.id)) this.deliverLocal(msg, m.nodeIds, n);
    if ((mask & ~(1 << this.id)) === 0) return;
    for (let s = 0; s < this.batches.length; s++) {
      const b = this.batches[s];
      if (b && mask & (1 << s)) b.add(msg, m.nodeIds, n);
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flushBatches);
    }
  }

  private readonly flushBatches = (): void => {
    this.flushScheduled = false;
    const row = this.counters.row;
    for (let s = 0; s < this.batches.length; s++) {
      const b = this.batches[s];
      if (!b || b.count === 0) continue;
      const batch = b.take();
      const port = this.peers[s];
      if (!port) continue; // peer restarting: its clients are gone anyway
      row[Counter.crossShardMessages] += batch.count;
      row[Counter.crossShardBatches]++;
      port.postMessage(batch, [batch.buf]);
    }
  };

  /** A batch from a peer shard. */
  onRoutedMessage(msg: Message, nodeIds: Int32Array, nodeCount: number): void {
    this.deliverLocal(msg, nodeIds, nodeCount);
  }

  /**
   * Delivers to this shard's subscribers at the matched nodes: once per session, at the highest
   * granted QoS of its overlapping subscriptions [MQTT-3.3.5-1], capped by the message's QoS.
   */
  private deliverLocal(msg: Message, nodeIds: Int32Array, n: number): void {
    const seq = ++this.deliverySeq;
    const targets = this.targets;
    for (let i = 0; i < n; i++) {
      const list = this.subscribers.get(nodeIds[i]);
      if (!list) continue;
      for (let j = 0; j < list.length; j++) {
        const sub = list[j];
        const s = sub.session;
        if (s.mark !== seq) {
          s.mark = seq;
          s.markQos = sub.qos;
          targets.push(s);
        } else if (sub.qos > s.markQos) s.markQos = sub.qos;
      }
    }
    for (let i = 0; i < targets.length; i++) {
      const s = targets[i];
      this.deliver(s, msg, Math.min(msg.qos, s.markQos) as QoS);
    }
    targets.length = 0;
  }

  /** Sends now, or queues (offline, inflight window full, or congested connection). */
  deliver(session: Session, msg: Message, qos: QoS): void {
    const conn = session.conn;
    const row = this.counters.row;
    if (conn) {
      if (qos === 0) {
        if (conn.congested) {
          row[Counter.deliveryDroppedQos0Slow]++;
          row[Counter.messagesDropped]++;
          return;
        }
        conn.write(msg.qos0Frame());
        row[Counter.messagesSent]++;
        row[Counter.messagesQos0Sent]++;
        return;
      }
      if (
        session.queue.length === 0 &&
        session.inflight.size < this.config['mqtt.max_inflight'] &&
        !conn.congested
      ) {
        this.sendInflight(session, conn, msg, qos);
        return;
      }
    } else if (session.clean || (qos === 0 && !this.config['mqtt.mqueue_store_qos0'])) {
      row[Counter.messagesDropped]++;
      return;
    }
    this.enqueue(session, msg, qos);
  }

  private sendInflight(session: Session, conn: Connection, msg: Message, qos: 1 | 2): void {
    const id = session.allocatePacketId();
    session.inflight.set(id, { msg, qos, released: false });
    conn.write(msg.qosFrame(qos, id, false));
    this.counters.row[Counter.messagesSent]++;
    this.counters.row[Counter.messagesQos0Sent + qos]++;
  }

  private enqueue(session: Session, msg: Message, qos: QoS): void {
    const max = this.config['mqtt.max_mqueue_len'];
    if (session.queue.length >= max) {
      // Full: drop the oldest, as EMQX does, and count it.
      this.counters.row[Counter.deliveryDroppedQueueFull]++;
      this.counters.row[Counter.messagesDropped]++;
      if (max === 0) return;
      session.queue.shift();
    }
    session.queue.push({ msg, qos });
  }

  /** Moves queued messages into the inflight window while there is room. */
  drainSession(session: Session): void {
    const conn = session.conn;
    if (!conn || conn.closed) return;
    const q = session.queue;
    const max = this.config['mqtt.max_inflight'];
    let i = 0;
    while (i < q.length && !conn.congested) {
      const d = q[i];
      if (d.qos === 0) {
        conn.write(d.msg.qos0Frame());
        this.counters.row[Counter.messagesSent]++;
        this.counters.row[Counter.messagesQos0Sent]++;
      } else {
        if (session.inflight.size >= max) break;
        this.sendInflight(session, conn, d.msg, d.qos);
      }
      i++;
    }
    if (i > 0) session.queue = i === q.length ? [] : q.slice(i);
  }

  // ------------------------------------------------------------------------------------------
  // Output batching

  /** Uncorks every connection written to in this turn, in one pass. */
  scheduleUncork(conn: Connection): void {
    this.corked.push(conn);
    if (!this.uncorkScheduled) {
      this.uncorkScheduled = true;
      setImmediate(this.uncorkAll);
    }
  }

  private readonly uncorkAll = (): void => {
    this.uncorkScheduled = false;
    const list = this.corked;
    for (let i = 0; i < list.length; i++) {
      const c = list[i];
      c.corked = false;
      c.socket.uncork();
    }
    list.length = 0;
  };

  /** Inbound QoS 2 ids not released within mqtt.await_rel_timeout are forgotten and counted (as EMQX). */
  private expireAwaitingRel(session: Session, now: number): void {
    const limit = this.config['mqtt.await_rel_timeout'] * 1000;
    for (const [id, at] of session.awaitingRelAt) {
      if (now - at < limit) break; // insertion order is arrival order
      session.awaitingRelAt.delete(id);
      if (session.awaitingRel.delete(id)) this.counters.row[Counter.messagesDroppedAwaitPubrelTimeout]++;
    }
  }

  /** REST API kick: closes the client's connection (if any) and discards its session. */
  kick(clientId: string): boolean {
    const session = this.sessions.get(clientId);
    if (!session) return false;
    session.conn?.log.info('kicked by the REST API');
    session.conn?.close('kicked');
    const still = this.sessions.get(clientId);
    if (still === session) this.discardSession(session);
    return true;
  }

  /** SIGHUP: runtime-changeable options (limits, log level, $SYS switches) take effect. */
  private reconfigure(config: Config): void {
    Object.assign(this.config, config);
    const level = config['log.level'];
    this.log.level = level;
    for (const session of this.sessions.values()) if (session.conn) session.conn.log.level = level;
    this.log.info({ logLevel: level }, 'configuration reloaded');
  }

  /**
   * Graceful drain: no new clients (main stopped accepting), then close the connections spread
   * over `ms` (every 100 ms a share of them), so that they do not all reconnect elsewhere at
   * once; then the normal shutdown. Wills are not published, as in a shutdown.
   */
  private drain(ms: number): void {
    this.stopping = true;
    const live = [...this.sessions.values()].filter((s) => s.conn).map((s) => s.conn!);
    const steps = Math.max(1, Math.floor(ms / 100));
    const perStep = Math.max(1, Math.ceil(live.length / steps));
    this.log.info({ connections: live.length, ms }, 'draining connections');
    const step = (): void => {
      for (const c of live.splice(0, perStep)) c.close('server shutting down');
      if (live.length > 0) setTimeout(step, 100);
      else this.shutdown();
    };
    step();
  }

  private shutdown(): void {
    this.stopping = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const session of this.sessions.values()) session.conn?.close('server shutting down');
    this.main.postMessage({ t: 'shutdownDone' });
  }
}

import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import { ShardClusterLink } from '../cluster/shard-link.js'; // cluster
import type { Config } from '../config/schema.js';
import { refuseSharedJoin } from '../handlers/subscribe.js';
import { type AcceptedConnection, Acceptor } from '../listener/acceptor.js';
import { shardOf } from '../listener/client-id.js';
import { fdutil, handleFd } from '../listener/fdutil.js';
import { createLogger, type Logger } from '../log.js';
import { Counter, Counters, LIVE_CONNECTIONS, observeHandoff } from '../metrics/counters.js';
import { encodeAck, encodeConnack, encodeConnackV5, type WillMessage } from '../protocol/codec.js';
import { PacketType, type QoS } from '../protocol/constants.js';
import { encodeAckV5, encodeConnackV5Full } from '../protocol/v5-control.js';
import { type BatchVisitor, BatchWriter, readBatch } from '../routing/batch.js';
import { ownerShard, SharedGroups, type SharedStrategy } from '../routing/shared.js';
import { SubscriberTable } from '../routing/subscribers.js';
import { MatchResult, TopicIndex } from '../routing/topic-index.js';
import { Message } from '../session/message.js';
import { NEVER_EXPIRES, Session, type Subscription } from '../session/session.js';
import { publishClientEvent } from '../sys/events.js';
import type {
  ConnectionOrigin,
  Handoff,
  MainToShard,
  RetainedRecord,
  ShardInit,
  ShardToMain,
  ShardToShard,
} from '../threads/messages.js';
import { Connection, type HeldAck } from './connection.js';
import { answerQuery } from './queries.js';

/**
 * One SUBSCRIBE's retained lookups and remote shared-group joins; its SUBACK is held until all
 * are answered.
 */
interface RetainedBatch {
  conn: Connection;
  held: HeldAck;
  left: number;
  answers: { filter: string; records: RetainedRecord[] }[];
}

/** A shared-group join sent to its owner shard, which the SUBACK of the SUBSCRIBE waits for. */
export interface PendingJoin {
  owner: number;
  reqId: number;
  sub: Subscription;
  /** Set by the SUBSCRIBE handler: the filter, and its code's distance from the SUBACK's end */
  filter?: string;
  back?: number;
}

/** Posts to the main thread; a port in a worker, a plain callback when embedded in one thread. */
export interface MainLink {
  postMessage(msg: ShardToMain): void;
  on(event: 'message', listener: (msg: MainToShard) => void): unknown;
}

/** Subscription options as requested (MQTT 3 clients get the defaults). */
export interface SubscribeOptions {
  qos: QoS;
  noLocal: boolean;
  retainAsPublished: boolean;
  retainHandling: number;
  subId: number;
}

/** A session's subscription through the shared group with this key (`group\0filter`), if any. */
function sharedSubscriptionOf(session: Session, groupKey: string): Subscription | undefined {
  const cut = groupKey.indexOf('\u0000');
  const group = groupKey.slice(0, cut);
  const filter = groupKey.slice(cut + 1);
  const sub = session.subscriptions.get(`$share/${group}/${filter}`);
  if (sub?.shared) return sub;
  // EMQX's $queue/{filter} is group '$queue'.
  const queued = group === '$queue' ? session.subscriptions.get(`$queue/${filter}`) : undefined;
  return queued?.shared ? queued : undefined;
}

/** [fd, inode of the socket it refers to] (inode 0 when it cannot be read: never closed then). */
function socketInode(h: { fd: number }): [number, number] {
  try {
    return [h.fd, fstatSync(h.fd).ino];
  } catch {
    return [h.fd, 0];
  }
}

/** Closes an fd nothing else owns; an error (already closed) changes nothing for the caller. */
function closeFd(fd: number): void {
  try {
    fdutil.close(fd);
  } catch {}
}

/** Rebuilds a Buffer view of a Uint8Array that arrived by structured clone. */
function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.length);
}

/**
 * A shard owns the sessions of the client ids that hash to it: their connections, protocol
 * state, subscriptions, inflight windows, queues, keep-alive and wills. It routes each PUBLISH
 * by matching the shared topic index once, delivering to its own sessions directly and to
 * other shards in one batch per shard per event-loop turn. It also owns the shared-subscription
 * groups whose owner it is (routing/shared.ts).
 */
export class Shard implements BatchVisitor {
  readonly id: number;
  readonly shardCount: number;
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly index: TopicIndex;
  readonly sharedIndex: TopicIndex;
  readonly sessions = new Map<string, Session>();
  readonly subscribers = new SubscriberTable();
  readonly sharedGroups = new SharedGroups();
  private readonly peers: (MessagePort | null)[];
  private readonly batches: (BatchWriter | null)[];
  private readonly match = new MatchResult();
  private readonly sharedMatch = new MatchResult(8);
  private readonly targets: Session[] = [];
  private deliverySeq = 0;
  /** Batches to flush and/or connections to uncork at the end of this turn: one setImmediate */
  private turnEndScheduled = false;
  private batchesPending = false;
  private readonly corked: Connection[] = [];
  private reqSeq = 0;
  private readonly heldAcks = new Map<number, { conn: Connection; held: HeldAck }>();
  private readonly retainedRequests = new Map<
    number,
    { conn: Connection; filter: string; batch: RetainedBatch }
  >();
  /** Remote shared-group joins of the SUBSCRIBE being handled (see beginSubscribe) */
  private joinCollector: PendingJoin[] | null = null;
  /** SUBACKs waiting for owner shards to confirm joins, by request id */
  private readonly joinWaits = new Map<number, { owner: number; batch: RetainedBatch; join?: PendingJoin }>();
  /** Shared subscriptions of this shard's sessions: count, for the gauge */
  private sharedSubs = 0;
  private sweepTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  /** Accepts on the shared listening socket (after main's `listen`) */
  private acceptor: Acceptor | null = null;
  /** Accepted connections owned by another shard, posted at the end of the turn (per shard) */
  private readonly outHandoffs: Handoff[][];
  private handoffsPending = false;
  /** Per owner: posted `adopt` messages not yet answered, seq → [fd, socket inode] pairs */
  private readonly sentHandoffs: Map<number, [number, number][]>[];
  private handoffSeq = 0;
  private readonly cluster: ShardClusterLink | null; // cluster

  constructor(
    init: ShardInit,
    private readonly main: MainLink,
  ) {
    this.id = init.shardId;
    this.shardCount = init.shardCount;
    this.config = init.config;
    this.log = createLogger(this.config['log.level'], {
      thread: 'shard',
      shard: this.id,
      gen: init.generation,
    });
    this.counters = Counters.attach(init.counters, this.id + 1);
    this.index = TopicIndex.attach(init.index);
    this.sharedIndex = TopicIndex.attach(init.sharedIndex);
    this.peers = init.peers;
    this.batches = init.peers.map((_, i) => (i === this.id ? null : new BatchWriter()));
    this.outHandoffs = init.peers.map(() => []);
    this.sentHandoffs = init.peers.map(() => new Map());
    for (let i = 0; i < this.peers.length; i++) this.listenPeer(i);
    // cluster: publishes to and from other nodes (src/cluster/shard-link.ts)
    this.cluster = ShardClusterLink.create(init, {
      counters: this.counters,
      publish: (m) => this.publish(m, null),
      onLinkError: (err, m) => this.threadMessageError(err, 'cluster', m),
    });
  }

  start(generation: number): void {
    this.main.on('message', (msg) => {
      try {
        this.onMainMessage(msg);
      } catch (err) {
        this.threadMessageError(err, 'main', msg);
      }
    });
    this.sweepTimer = setInterval(() => this.sweep(), 1000);
    this.main.postMessage({ t: 'ready', generation });
  }

  private listenPeer(i: number): void {
    const port = this.peers[i];
    if (!port) return;
    port.on('message', (m: ShardToShard) => {
      try {
        if (m.t === 'batch') readBatch(m.buf, m.len, this);
        else if (m.t === 'adopt') {
          // First: from here on the fds are ours (the sender stops tracking them).
          port.postMessage({ t: 'adopted', seq: m.seq } satisfies ShardToShard);
          this.adoptAll(m.conns);
        } else if (m.t === 'adopted') this.sentHandoffs[i].delete(m.seq);
        else if (m.t === 'sharedJoin')
          this.sharedJoin(m.group, m.filter, m.clientId, m.shard, m.qos, m.subId, m.reqId ?? 0);
        else if (m.t === 'sharedJoined') this.onSharedJoined(m.reqId, m.ok !== false);
        else this.sharedLeave(m.group, m.filter, m.clientId);
      } catch (err) {
        this.threadMessageError(err, `shard ${i}`, m);
      }
    });
  }

  /**
   * A handler threw on a message from another thread (a bug, or input a check missed): logged,
   * counted and dropped, so that the shard and its other clients live on.
   */
  private threadMessageError(err: unknown, from: string, msg: unknown): void {
    this.counters.row[Counter.threadMessageErrors]++;
    this.log.error(
      { err, from, t: (msg as { t?: unknown })?.t },
      'inter-thread message dropped: handler threw',
    );
  }

  /**
   * Adopts each handed-off fd. One that fails is closed (by us while no Socket owns it, else by
   * destroying the Socket: never both, a second close could hit a reused fd); the rest go ahead.
   */
  private adoptAll(conns: Handoff[]): void {
    for (const h of conns) {
      let socket: Socket;
      try {
        socket = this.adoptSocket(h);
      } catch (err) {
        this.threadMessageError(err, 'adopt', { t: 'adopt' });
        closeFd(h.fd);
        continue;
      }
      try {
        this.attach(socket, h);
      } catch (err) {
        this.threadMessageError(err, 'adopt', { t: 'adopt' });
        socket.destroy();
      }
    }
  }

  private onMainMessage(msg: MainToShard): void {
    switch (msg.t) {
      case 'listen':
        this.listen(msg.fd);
        break;
      case 'peer':
        this.peers[msg.shard]?.close();
        this.peers[msg.shard] = msg.port;
        this.listenPeer(msg.shard);
        // Connections accepted for it while it was down.
        if (this.outHandoffs[msg.shard].length > 0) this.flushHandoffs();
        // A restarted shard lost the shared groups it owned: members here join them again.
        this.rejoinSharedGroupsOwnedBy(msg.shard);
        this.releaseJoinsTo(msg.shard);
        break;
      case 'cluster': // cluster: the (re)started cluster thread
        this.cluster?.attach(msg.port);
        break;
      case 'shardDown':
        // Nothing posted to a dead shard's port arrives; its restart brings a new one ('peer').
        this.peers[msg.shard]?.close();
        this.peers[msg.shard] = null;
        this.closeUnadopted(msg.shard);
        for (const nodeId of this.sharedGroups.dropShard(msg.shard))
          this.sharedIndex.clearShard(nodeId, this.id);
        // A dead owner answers no join: those SUBACKs go now (its restart rejoins them).
        this.releaseJoinsTo(msg.shard);
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
          // from '' marks the broker's own $SYS messages (client ids are never empty here).
          this.publish(
            Message.fromStrings(p.topic, asBuffer(p.payload), p.qos, p.retain, p.sys ? '' : 'http_api'),
            null,
          );
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

  /** Starts accepting on the listening socket main shares with every shard. */
  private listen(fd: number): void {
    this.acceptor?.close();
    const acceptor = new Acceptor(fd, {
      config: this.config,
      log: this.log,
      counters: this.counters,
      onConnection: (a) => this.onAccepted(a),
    });
    this.acceptor = acceptor;
    acceptor.listen().then(
      () => this.main.postMessage({ t: 'listening' }),
      (err: Error) => {
        this.log.error({ err }, 'cannot accept on the listening socket');
        this.main.postMessage({ t: 'listenFailed', error: err.message });
      },
    );
  }

  /**
   * A CONNECT read by this shard's acceptor: adopted here when the client id is ours (the same
   * socket object, no fd work), else the fd goes to its owner at the end of the turn.
   */
  private onAccepted(a: AcceptedConnection): void {
    const owner = shardOf(a.connect.clientId, this.shardCount);
    if (owner === this.id) {
      this.attach(a.socket, a);
      return;
    }
    const { socket, ...origin } = a;
    let fd = -1;
    try {
      fd = fdutil.dup(handleFd(socket));
    } catch (err) {
      this.log.error({ err, clientId: a.connect.clientId }, 'dup failed; closing connection');
    }
    // Destroying our handle closes our fd only: the dup keeps the connection open, no FIN.
    socket.destroy();
    if (fd < 0) return;
    this.outHandoffs[owner].push({ ...origin, fd });
    this.handoffsPending = true;
    this.scheduleTurnEnd();
  }

  /** Posts accepted connections to their owners, one message per owner (down owners wait). */
  private flushHandoffs(): void {
    this.handoffsPending = false;
    for (let s = 0; s < this.outHandoffs.length; s++) {
      const conns = this.outHandoffs[s];
      const port = this.peers[s];
      if (conns.length === 0 || !port) continue;
      this.outHandoffs[s] = [];
      this.counters.row[Counter.handoffsCrossShard] += conns.length;
      const seq = ++this.handoffSeq;
      this.sentHandoffs[s].set(seq, conns.map(socketInode));
      port.postMessage({ t: 'adopt', conns, seq } satisfies ShardToShard);
    }
  }

  /**
   * Handoffs a dead owner never answered: an fd still open on the same socket inode was never
   * read (what the owner adopted closed with its thread; a reused fd number has another inode),
   * so it is closed here and the client sees the connection close instead of hanging.
   */
  private closeUnadopted(owner: number): void {
    const sent = this.sentHandoffs[owner];
    let closed = 0;
    for (const pairs of sent.values()) {
      for (const [fd, ino] of pairs) {
        if (ino !== 0 && socketInode({ fd })[1] === ino) {
          closeFd(fd);
          closed++;
        }
      }
    }
    sent.clear();
    if (closed > 0) {
      this.counters.row[Counter.handoffsLost] += closed;
      this.log.warn({ owner, closed }, 'closed connections handed to a shard that died before adopting them');
    }
  }

  /** The socket of a connection another shard accepted for us. */
  private adoptSocket(h: Handoff): Socket {
    // Stream high-water mark = ours: whenever the connection is congested, a write has seen the
    // buffer at the mark, so 'drain' (which moves the session queue) is sure to follow.
    const socketOpts: ConstructorParameters<typeof Socket>[0] & { writableHighWaterMark: number } = {
      fd: h.fd,
      readable: true,
      writable: true,
      writableHighWaterMark: this.config['mqtt.output_high_watermark'],
    };
    // No setNoDelay here: the acceptor (noDelay) set TCP_NODELAY on the accepted socket, and
    // the dup()ed fd is the same socket — a second setsockopt per connection would change nothing.
    return new Socket(socketOpts);
  }

  /** Makes the connection and its session: takeover, resume or a new session, then CONNACK. */
  private attach(socket: Socket, h: ConnectionOrigin): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const row = this.counters.row;
    row[Counter.handoffs]++;
    const c = h.connect;
    const v5 = c.protocolVersion === 5;
    // listener.max_connections over all shards: one Atomics counter, since every shard accepts.
    const max = this.config['listener.max_connections'];
    const live = Atomics.add(this.counters.atomics, LIVE_CONNECTIONS, 1);
    if (max > 0 && live >= max) {
      Atomics.sub(this.counters.atomics, LIVE_CONNECTIONS, 1);
      row[Counter.connectionsRefusedMax]++;
      row[Counter.packetsConnackError]++;
      if (row[Counter.connectionsRefusedMax] % 1000 === 1)
        this.log.warn(
          { clientId: c.clientId, max, refusedSoFar: row[Counter.connectionsRefusedMax] },
          'connection refused: listener.max_connections reached (logged once per 1000 per shard)',
        );
      // 0x97 Quota exceeded (MQTT 5) / 0x03 Server unavailable (MQTT 3), then close.
      socket.end(v5 ? encodeConnackV5(0x97) : encodeConnack(false, 3));
      socket.on('error', () => {});
      socket.destroySoon();
      return;
    }
    let session = this.sessions.get(c.clientId);
    if (session?.conn) {
      // Takeover: the same client id is already connected here [MQTT-3.1.4-2]. The old
      // connection closes without DISCONNECT, so its will is published (MQTT 5: after its
      // Will Delay Interval, unless this connection resumes the session first).
      row[Counter.sessionTakenover]++;
      session.conn.log.info('session taken over by a new connection');
      session.conn.disconnect(0x8e, 'session taken over');
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
      // Resumed in time: a delayed will is not sent [MQTT-3.1.3-9].
      session.pendingWill = null;
      session.willAt = 0;
      row[Counter.sessionResumed]++;
    } else {
      session = new Session(c.clientId, c.clean);
      this.sessions.set(c.clientId, session);
      row[Counter.sessionCreated]++;
      row[Counter.sessions]++;
    }
    session.clean = c.clean;
    // MQTT 3: clean session 1 ends with the connection, 0 lives mqtt.session_expiry_interval.
    // MQTT 5: the client's Session Expiry Interval, absent = 0 [MQTT-3.1.2-?].
    // MQTT 5 asks are capped by mqtt.session_expiry_interval (as EMQX), so 0xFFFFFFFF is not
    // "never" unless the cap is 4294967295; CONNACK then tells the client [MQTT-3.2.2-?].
    session.expiryInterval = v5
      ? Math.min(c.properties?.sessionExpiryInterval ?? 0, this.config['mqtt.session_expiry_interval'])
      : c.clean
        ? 0
        : this.config['mqtt.session_expiry_interval'];
    session.will = c.will;
    const conn = new Connection(this, socket, session, h);
    session.conn = conn;
    row[Counter.connections]++;
    row[Counter.clientConnected]++;
    const handoffNs = Number(process.hrtime.bigint()) - h.acceptedAt;
    // Through the shard's logger with the client's fields: no per-connection child logger (and
    // no fields built at all below info).
    if (this.log.isLevelEnabled('info'))
      this.log.info(
        {
          clientId: c.clientId,
          remote: `${h.remoteAddress}:${h.remotePort}`,
          proto: c.protocolVersion,
          clean: c.clean,
          keepalive: conn.keepalive,
          expiry: session.expiryInterval,
          sessionPresent,
          handoffUs: Math.round(handoffNs / 1000),
        },
        'client connected',
      );
    observeHandoff(row, handoffNs);
    publishClientEvent(this, conn, 'connected');
    // Session present: 1 only for a resumed session [MQTT-3.2.2-1], [MQTT-3.2.2-2]. MQTT 3.1
    // (level 3) has no such flag: its byte is reserved, always 0.
    conn.write(
      v5
        ? this.connackV5(h, conn, sessionPresent)
        : encodeConnack(sessionPresent && c.protocolVersion !== 3, 0),
    );
    if (sessionPresent) {
      if (session.subscriptionCount > 0)
        for (const sub of session.subscriptions.values())
          if (sub.shared) this.sendMembership('sharedJoin', session, sub);
      this.resend(session);
    }
    conn.start(h.leftover);
  }

  /** CONNACK properties: the server's limits and capabilities [MQTT-3.2.2.3]. */
  private connackV5(h: ConnectionOrigin, conn: Connection, sessionPresent: boolean): Buffer {
    const cfg = this.config;
    const req = h.connect.properties ?? {};
    const respInfo = cfg['mqtt.response_information'];
    const props: Record<string, unknown> = {
      receiveMaximum: cfg['mqtt.receive_maximum'],
      maximumPacketSize: cfg['mqtt.max_packet_size'],
      topicAliasMaximum: cfg['mqtt.max_topic_alias'] > 0 ? cfg['mqtt.max_topic_alias'] : undefined,
      maximumQoS: cfg['mqtt.max_qos_allowed'] < 2 ? cfg['mqtt.max_qos_allowed'] : undefined,
      retainAvailable: cfg['mqtt.retain_available'] ? undefined : false,
      wildcardSubscriptionAvailable: cfg['mqtt.wildcard_subscription'],
      subscriptionIdentifiersAvailable: true,
      sharedSubscriptionAvailable: cfg['mqtt.shared_subscription'],
      assignedClientIdentifier: h.assignedClientId ? h.connect.clientId : undefined,
      serverKeepAlive: cfg['mqtt.server_keepalive'] > 0 ? conn.keepalive : undefined,
      responseInformation: req.requestResponseInformation === 1 && respInfo ? respInfo : undefined,
      // The server's value when it differs from the client's [MQTT-3.2.2-?] (3.2.2.3.2).
      sessionExpiryInterval:
        conn.session.expiryInterval !== (req.sessionExpiryInterval ?? 0)
          ? conn.session.expiryInterval
          : undefined,
    };
    const frame = encodeConnackV5Full(sessionPresent, 0, props);
    const max = conn.clientMaxPacket;
    if (max === 0 || frame.length <= max) return frame;
    // Nothing larger than the client's Maximum Packet Size may be sent [MQTT-3.1.2-24]: leave out
    // the properties whose absence means the same or is safe (three "available" that default to
    // 1, no Topic Alias Maximum = no aliases, Response Information is optional [MQTT-3.2.2-19]).
    if (props.wildcardSubscriptionAvailable) props.wildcardSubscriptionAvailable = undefined;
    if (props.sharedSubscriptionAvailable) props.sharedSubscriptionAvailable = undefined;
    props.subscriptionIdentifiersAvailable = undefined;
    props.topicAliasMaximum = undefined;
    props.responseInformation = undefined;
    return encodeConnackV5Full(sessionPresent, 0, props);
  }

  /** On resume: resend unacknowledged PUBLISH with DUP and PUBREL, in original order [MQTT-4.4.0-1]. */
  private resend(session: Session): void {
    const conn = session.conn!;
    for (const [id, e] of session.inflight) {
      if (e.released) conn.write(encodeAck(PacketType.PUBREL, id));
      else conn.sendPublish(e.msg, e.qos, id, true, e.retainFlag, e.subIds);
    }
    this.drainSession(session);
  }

  onConnectionClosed(conn: Connection, reason: string): void {
    const session = conn.session;
    const row = this.counters.row;
    row[Counter.connections]--;
    Atomics.sub(this.counters.atomics, LIVE_CONNECTIONS, 1);
    row[Counter.clientDisconnected]++;
    if (this.log.isLevelEnabled('info'))
      this.log.info(
        { clientId: conn.clientId, remote: `${conn.remoteAddress}:${conn.remotePort}`, reason },
        'client disconnected',
      );
    if (!this.stopping) publishClientEvent(this, conn, 'disconnected', reason);
    if (session.conn === conn) session.conn = null;
    for (const [reqId, p] of this.heldAcks) if (p.conn === conn) this.heldAcks.delete(reqId);
    // A shared-group member that goes away gets no more messages, and what it had not
    // acknowledged goes to another member.
    this.leaveSharedGroups(session, true);
    const will = session.will;
    session.will = null;
    if (will && !conn.gracefulDisconnect && !this.stopping) {
      // Will on any close other than DISCONNECT [MQTT-3.1.2-8]; MQTT 5 may delay it [MQTT-3.1.3-9].
      if (will.delay && will.delay > 0 && session.expiryInterval > 0) {
        session.pendingWill = will;
        session.willAt = Date.now() + will.delay * 1000;
      } else {
        this.publishWill(session.clientId, will);
      }
    }
    if (session.expiryInterval === 0) {
      // State ends with the connection [MQTT-3.1.2-6].
      this.discardSession(session);
      row[Counter.sessionTerminated]++;
    } else {
      session.expiresAt =
        session.expiryInterval === NEVER_EXPIRES ? 0 : Date.now() + session.expiryInterval * 1000;
    }
  }

  private publishWill(clientId: string, w: WillMessage): void {
    this.counters.row[Counter.willsPublished]++;
    // A CONNECT handed over by another shard came by structured clone: Uint8Arrays, not Buffers.
    const msg = Message.fromStrings(w.topic, asBuffer(w.payload), w.qos, w.retain, clientId);
    if (w.props) msg.props = asBuffer(w.props);
    if (w.expiry !== undefined && w.expiry >= 0) msg.expiryAt = Date.now() + w.expiry * 1000;
    this.publish(msg, null);
  }

  private discardSession(session: Session): void {
    if (session.subscriptionCount > 0)
      for (const [filter] of session.subscriptions) this.unsubscribe(session, filter);
    if (session.pendingWill) {
      // The session ends before the will delay: the will is published now [MQTT-3.1.3-9].
      this.publishWill(session.clientId, session.pendingWill);
      session.pendingWill = null;
    }
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

  /**
   * Once a second: keep-alive [MQTT-3.1.2-24], delayed wills and offline-session expiry
   * (expiry is data, not a timer per session).
   */
  private sweep(): void {
    const now = Date.now();
    for (const session of this.sessions.values()) {
      if (session.awaitingRelCount > 0) this.expireAwaitingRel(session, now);
      const conn = session.conn;
      if (conn) {
        if (conn.keepaliveMs > 0 && now - conn.lastReceivedAt > conn.keepaliveMs) {
          this.counters.row[Counter.keepaliveTimeouts]++;
          conn.log.info({ keepaliveMs: conn.keepaliveMs }, 'keep-alive timeout');
          conn.disconnect(0x8d, 'keep-alive timeout');
        }
        continue;
      }
      if (session.pendingWill && now >= session.willAt) {
        const w = session.pendingWill;
        session.pendingWill = null;
        this.publishWill(session.clientId, w);
      }
      if (session.expiresAt > 0 && now >= session.expiresAt) this.expireSession(session);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Subscriptions

  /**
   * Adds or replaces a subscription. Returns 'new' or 'existing' (for Retain Handling 1), or
   * null when the topic index is full.
   */
  subscribe(
    session: Session,
    filter: string,
    o: SubscribeOptions,
    shared: Subscription['shared'] = null,
  ): 'new' | 'existing' | null {
    const existing = session.subscriptions.get(filter);
    if (existing) {
      existing.qos = o.qos;
      existing.noLocal = o.noLocal;
      existing.retainAsPublished = o.retainAsPublished;
      existing.retainHandling = o.retainHandling;
      existing.subId = o.subId;
      if (existing.shared) this.sendMembership('sharedJoin', session, existing);
      else this.subscribers.add(existing.nodeId, session, existing);
      return 'existing';
    }
    const sub: Subscription = { ...o, nodeId: -1, shared };
    if (shared) {
      session.subscriptions.set(filter, sub);
      this.sharedSubs++;
      this.counters.row[Counter.subscriptionsShared] = this.sharedSubs;
      if (this.sendMembership('sharedJoin', session, sub)) return 'new';
      this.unsubscribe(session, filter); // this shard owns the group and its index is full
      return null;
    }
    const nodeId = this.index.acquire(filter, this.id);
    if (nodeId < 0) {
      this.counters.row[Counter.subscriptionsIndexFull]++;
      this.log.warn({ filter }, 'topic index full; subscription refused');
      return null;
    }
    sub.nodeId = nodeId;
    session.subscriptions.set(filter, sub);
    this.subscribers.add(nodeId, session, sub);
    this.counters.row[Counter.subscriptions] = this.subscribers.count;
    return 'new';
  }

  /** Returns false when there was no such subscription. */
  unsubscribe(session: Session, filter: string): boolean {
    const sub = session.subscriptions.get(filter);
    if (!sub) return false;
    session.subscriptions.delete(filter);
    if (sub.shared) {
      this.sharedSubs--;
      this.counters.row[Counter.subscriptionsShared] = this.sharedSubs;
      if (session.conn) this.sendMembership('sharedLeave', session, sub);
      return true;
    }
    if (this.subscribers.remove(sub.nodeId, session)) this.index.clearShard(sub.nodeId, this.id);
    this.counters.row[Counter.subscriptions] = this.subscribers.count;
    return true;
  }

  /**
   * Starts a SUBSCRIBE: joins of shared groups owned by other shards are collected, so that its
   * SUBACK waits for the owners to confirm them. A message published after the client saw the
   * SUBACK then finds the member in its group, as it finds a plain subscription in the index.
   */
  beginSubscribe(): PendingJoin[] {
    this.joinCollector = [];
    return this.joinCollector;
  }

  /** Ends a SUBSCRIBE's collection of joins (also when it failed) and returns them. */
  endSubscribe(): PendingJoin[] {
    const joins = this.joinCollector ?? [];
    this.joinCollector = null;
    return joins;
  }

  /**
   * Sends a SUBACK, or holds it until the owners of remote shared groups have confirmed the
   * joins and main has answered the retained lookups for new subscriptions (acks behind it wait,
   * in order); the retained messages follow it. The lookup then sees the store as it was before
   * the client saw SUBACK, so a message published after that reaches the subscriber live only,
   * not also as a retained message.
   */
  sendSuback(conn: Connection, retainedFilters: string[], joins: PendingJoin[], suback: Buffer): void {
    if (retainedFilters.length === 0 && joins.length === 0) {
      conn.writeAck(suback);
      return;
    }
    const batch: RetainedBatch = {
      conn,
      held: conn.holdAck(suback),
      left: retainedFilters.length + joins.length,
      answers: [],
    };
    for (const j of joins) this.joinWaits.set(j.reqId, { owner: j.owner, batch, join: j });
    for (const filter of retainedFilters) {
      const reqId = ++this.reqSeq;
      this.retainedRequests.set(reqId, { conn, filter, batch });
      this.main.postMessage({ t: 'retainedLookup', reqId, filters: [filter] });
    }
  }

  private onRetained(reqId: number, records: RetainedRecord[]): void {
    const req = this.retainedRequests.get(reqId);
    if (!req) return;
    this.retainedRequests.delete(reqId);
    // Main answers in request order.
    req.batch.answers.push({ filter: req.filter, records });
    this.subscribeStepDone(req.batch);
  }

  private onSharedJoined(reqId: number, ok: boolean): void {
    const w = this.joinWaits.get(reqId);
    if (!w) return;
    this.joinWaits.delete(reqId);
    if (!ok && w.join) refuseSharedJoin(w.batch.conn, w.batch.held.frame, w.join);
    this.subscribeStepDone(w.batch);
  }

  /** Releases the SUBACKs waiting for joins sent to `owner` (it died or was restarted). */
  private releaseJoinsTo(owner: number): void {
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
    batch.held.ready = true;
    conn.releaseAcks();
    const session = conn.session;
    if (conn.closed || session.conn !== conn) return;
    const now = Date.now();
    for (const a of batch.answers) {
      const sub = session.subscriptions.get(a.filter);
      if (!sub) continue;
      for (const r of a.records) {
        if (r.expiryAt && r.expiryAt < now) continue;
        const msg = Message.fromStrings(r.topic, asBuffer(r.payload), r.qos, true, '', true);
        if (r.props) msg.props = asBuffer(r.props);
        if (r.expiryAt) msg.expiryAt = r.expiryAt;
        // Retained messages sent on subscribe carry RETAIN 1 whatever Retain As Published says.
        this.deliver(
          session,
          msg,
          Math.min(r.qos, sub.qos) as QoS,
          true,
          sub.subId ? [sub.subId] : null,
          null,
        );
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Shared subscriptions

  /**
   * Tells the group's owner shard (maybe this one) that a session joins or leaves; false when
   * this shard is the owner and could not add the member (its index is full).
   */
  private sendMembership(t: 'sharedJoin' | 'sharedLeave', session: Session, sub: Subscription): boolean {
    const sf = sub.shared!;
    const owner = ownerShard(sf.group, sf.filter, this.shardCount);
    if (owner === this.id) {
      if (t === 'sharedJoin')
        return this.sharedJoin(sf.group, sf.filter, session.clientId, this.id, sub.qos, sub.subId);
      this.sharedLeave(sf.group, sf.filter, session.clientId);
      return true;
    }
    const port = this.peers[owner];
    if (!port) return true;
    // Inside a SUBSCRIBE, its SUBACK waits for the owner to confirm the join.
    let reqId = 0;
    if (t === 'sharedJoin' && this.joinCollector) {
      reqId = ++this.reqSeq;
      this.joinCollector.push({ owner, reqId, sub });
    }
    port.postMessage({
      t,
      group: sf.group,
      filter: sf.filter,
      clientId: session.clientId,
      shard: this.id,
      qos: sub.qos,
      subId: sub.subId,
      reqId,
    } satisfies ShardToShard);
    return true;
  }

  private sharedJoin(
    group: string,
    filter: string,
    clientId: string,
    shard: number,
    qos: QoS,
    subId: number,
    reqId = 0,
  ): boolean {
    const nodeId = this.sharedIndex.acquire(filter, this.id);
    const ok = nodeId > 0;
    if (ok) this.sharedGroups.join(group, filter, nodeId, { clientId, shard, qos, subId });
    else {
      this.counters.row[Counter.subscriptionsIndexFull]++;
      this.log.warn({ group, filter, clientId }, 'shared-subscription index full; member not added');
    }
    // The member's SUBACK waits for this (answered also when full: 0x97 / 0x80, never held forever).
    if (reqId > 0) this.peers[shard]?.postMessage({ t: 'sharedJoined', reqId, ok } satisfies ShardToShard);
    return ok;
  }

  private sharedLeave(group: string, filter: string, clientId: string): void {
    const g = this.sharedGroups.get(`${group}\u0000${filter}`);
    if (!g) return;
    if (this.sharedGroups.leave(group, filter, clientId)) this.sharedIndex.clearShard(g.nodeId, this.id);
  }

  /**
   * A session went offline or ended: it leaves its groups; its unacknowledged and queued
   * shared-group messages go back to the groups' owners for another member.
   */
  private leaveSharedGroups(session: Session, redispatch: boolean): void {
    if (session.subscriptionCount === 0) return;
    let any = false;
    for (const sub of session.subscriptions.values()) {
      if (!sub.shared) continue;
      any = true;
      this.sendMembership('sharedLeave', session, sub);
    }
    if (!any || !redispatch) return;
    for (const [id, e] of session.inflight) {
      // QoS 2 stays with this member: its delivery completes if it resumes the session
      // [MQTT-4.8.2-4], and must not go to another member if the session ends [MQTT-4.8.2-5].
      if (e.group === null || e.qos === 2) continue;
      session.inflight.delete(id);
      this.redispatch(e.msg, e.group, session.clientId);
    }
    if (session.queue.some((d) => d.group !== null)) {
      const keep = [];
      for (const d of session.queue) {
        if (d.group === null) keep.push(d);
        else this.redispatch(d.msg, d.group, session.clientId);
      }
      session.queue = keep;
    }
  }

  private redispatch(msg: Message, groupKey: string, exclude: string): void {
    const [group, filter] = groupKey.split('\u0000');
    const owner = ownerShard(group, filter, this.shardCount);
    if (owner === this.id) this.onRedispatch(msg, groupKey, exclude);
    else this.batchFor(owner)?.addRedispatch(msg, groupKey, exclude);
  }

  /** Members here join the groups a restarted shard owns again. */
  private rejoinSharedGroupsOwnedBy(shard: number): void {
    for (const session of this.sessions.values()) {
      if (!session.conn || session.subscriptionCount === 0) continue;
      for (const sub of session.subscriptions.values()) {
        if (sub.shared && ownerShard(sub.shared.group, sub.shared.filter, this.shardCount) === shard) {
          this.sendMembership('sharedJoin', session, sub);
        }
      }
    }
  }

  /** Owner side: one member of each matching group gets the message. */
  onSharedMessage(msg: Message, nodeIds: Int32Array, n: number): void {
    const strategy = this.config['mqtt.shared_subscription_strategy'] as SharedStrategy;
    for (let i = 0; i < n; i++) {
      const groups = this.sharedGroups.groupsAt(nodeIds[i]);
      if (!groups) continue;
      for (const g of groups) {
        const m = g.pick(strategy, msg.from, msg.topic, null);
        if (m) this.toMember(msg, m.clientId, m.shard, Math.min(msg.qos, m.qos) as QoS, m.subId, g.key);
      }
    }
  }

  onRedispatch(msg: Message, groupKey: string, exclude: string): void {
    const g = this.sharedGroups.get(groupKey);
    const m = g?.pick(
      this.config['mqtt.shared_subscription_strategy'] as SharedStrategy,
      msg.from,
      msg.topic,
      exclude,
    );
    if (!g || !m) {
      this.counters.row[Counter.messagesDropped]++;
      return;
    }
    this.toMember(msg, m.clientId, m.shard, Math.min(msg.qos, m.qos) as QoS, m.subId, g.key);
  }

  private toMember(
    msg: Message,
    clientId: string,
    shard: number,
    qos: QoS,
    subId: number,
    group: string,
  ): void {
    if (shard === this.id) this.onDirectMessage(msg, clientId, qos, subId, group);
    else this.batchFor(shard)?.addDirect(msg, clientId, qos, subId, group);
  }

  /**
   * Member side: a message its group's owner picked this session for. The session's own
   * subscription decides the options: granted QoS, Retain As Published [MQTT-3.3.1-12]
   * [MQTT-3.3.1-13], Subscription Identifier.
   */
  onDirectMessage(msg: Message, clientId: string, _qos: QoS, _subId: number, group: string): void {
    const session = this.sessions.get(clientId);
    const sub = session?.conn ? sharedSubscriptionOf(session, group) : undefined;
    if (!session || !sub) {
      // Offline, or unsubscribed meanwhile [MQTT-3.10.4-2]: back to the owner for someone else.
      this.redispatch(msg, group, clientId);
      return;
    }
    const qos = Math.min(msg.qos, sub.qos) as QoS;
    this.deliver(
      session,
      msg,
      qos,
      sub.retainAsPublished && msg.retain,
      sub.subId ? [sub.subId] : null,
      group,
    );
  }

  // ------------------------------------------------------------------------------------------
  // Publishing and routing

  /**
   * Routes a message published by a client (or a will, or the broker). For a client's QoS 1/2
   * PUBLISH, `ackType` is PUBACK/PUBREC: MQTT 5 gets reason 0x10 when no subscriber matched.
   * For a retained message the ack is held until main has stored it, so that a client that saw
   * the ack and then subscribes is sure to get it. Returns whether any subscriber matched.
   */
  publish(msg: Message, conn: Connection | null, ackType = 0, packetId = 0): boolean {
    const matched = this.route(msg);
    let ack: Buffer | null = null;
    if (conn && ackType) {
      ack = conn.v5 && !matched ? encodeAckV5(ackType, packetId, 0x10) : encodeAck(ackType, packetId);
    }
    if (msg.retain) {
      const reqId = conn && ack ? ++this.reqSeq : 0;
      if (conn && ack) this.heldAcks.set(reqId, { conn, held: conn.holdAck(ack) });
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
    } else if (conn && ack) {
      // cluster: a QoS 1/2 message forwarded to other nodes is acked once they have accepted it
      if (!this.cluster?.holdAck(conn, ack)) conn.writeAck(ack);
    }
    return matched;
  }

  private batchFor(shard: number): BatchWriter | null {
    this.batchesPending = true;
    this.scheduleTurnEnd();
    return this.batches[shard];
  }

  /**
   * End of an event-loop turn's work: cross-shard batches are posted, then every connection
   * written to is uncorked. One setImmediate for both (each costs a wake-up of the check phase).
   */
  private scheduleTurnEnd(): void {
    if (this.turnEndScheduled) return;
    this.turnEndScheduled = true;
    setImmediate(this.endTurn);
  }

  private readonly endTurn = (): void => {
    this.turnEndScheduled = false;
    if (this.handoffsPending) this.flushHandoffs();
    if (this.batchesPending) this.flushBatches();
    if (this.corked.length > 0) this.uncorkAll();
  };

  private route(msg: Message): boolean {
    const m = this.match;
    const topic = msg.topicBytes;
    const n = this.index.match(topic, 0, topic.length, m);
    let matched = n > 0;
    if (n > 0) {
      const mask = m.mask;
      if (mask & (1 << this.id)) this.deliverLocal(msg, m.nodeIds, n);
      if ((mask & ~(1 << this.id)) !== 0) {
        for (let s = 0; s < this.batches.length; s++) {
          if (s !== this.id && mask & (1 << s)) this.batchFor(s)!.add(msg, m.nodeIds, n);
        }
      }
    }
    if (this.sharedIndex.activeFilters() > 0) {
      const sm = this.sharedMatch;
      const k = this.sharedIndex.match(topic, 0, topic.length, sm);
      if (k > 0) {
        matched = true;
        const mask = sm.mask;
        for (let s = 0; s < this.shardCount; s++) {
          if (!(mask & (1 << s))) continue;
          if (s === this.id) this.onSharedMessage(msg, sm.nodeIds, k);
          else this.batchFor(s)!.add(msg, sm.nodeIds, k, 1);
        }
      }
    }
    if (this.cluster?.route(msg)) matched = true; // cluster: matching routes of other nodes
    // As EMQX: the broker's own $SYS messages (from '') are not counted as dropped.
    if (!matched && msg.from !== '') this.counters.row[Counter.messagesDroppedNoSubscribers]++;
    return matched;
  }

  private flushBatches(): void {
    this.batchesPending = false;
    const row = this.counters.row;
    for (let s = 0; s < this.batches.length; s++) {
      const b = this.batches[s];
      if (!b || b.count === 0) continue;
      const batch = b.take();
      const port = this.peers[s];
      if (!port) continue; // peer restarting: its clients are gone anyway
      row[Counter.crossShardMessages] += batch.count;
      row[Counter.crossShardBatches]++;
      port.postMessage(
        { t: 'batch', buf: batch.buf, len: batch.len, count: batch.count } satisfies ShardToShard,
        [batch.buf],
      );
    }
  }

  /** A batch from a peer shard. */
  onRoutedMessage(msg: Message, nodeIds: Int32Array, nodeCount: number): void {
    this.deliverLocal(msg, nodeIds, nodeCount);
  }

  /**
   * Delivers to this shard's subscribers at the matched nodes: once per session, at the highest
   * granted QoS of its overlapping subscriptions [MQTT-3.3.5-1], capped by the message's QoS,
   * with every matching Subscription Identifier [MQTT-3.3.4-3]; No Local subscriptions skip the
   * publisher's own messages [MQTT-3.8.3-3].
   */
  private deliverLocal(msg: Message, nodeIds: Int32Array, n: number): void {
    const seq = ++this.deliverySeq;
    const targets = this.targets;
    const from = msg.from;
    for (let i = 0; i < n; i++) {
      const list = this.subscribers.get(nodeIds[i]);
      if (!list) continue;
      for (let j = 0; j < list.length; j++) {
        const { session: s, sub } = list[j];
        if (sub.noLocal && s.clientId === from) {
          this.counters.row[Counter.deliveryDroppedNoLocal]++;
          continue;
        }
        const rap = sub.retainAsPublished && msg.retain;
        if (s.mark !== seq) {
          s.mark = seq;
          s.markQos = sub.qos;
          s.markRetain = rap;
          s.markSubIds = sub.subId ? [sub.subId] : null;
          targets.push(s);
        } else {
          if (sub.qos > s.markQos) s.markQos = sub.qos;
          if (rap) s.markRetain = true;
          if (sub.subId) {
            if (s.markSubIds === null) s.markSubIds = [sub.subId];
            else s.markSubIds.push(sub.subId);
          }
        }
      }
    }
    for (let i = 0; i < targets.length; i++) {
      const s = targets[i];
      this.deliver(s, msg, Math.min(msg.qos, s.markQos) as QoS, s.markRetain, s.markSubIds, null);
      s.markSubIds = null;
    }
    targets.length = 0;
  }

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
        if (conn.congested) {
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
    conn: Connection,
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

  // ------------------------------------------------------------------------------------------
  // Output batching

  /** Uncorks every connection written to in this turn, in one pass. */
  scheduleUncork(conn: Connection): void {
    this.corked.push(conn);
    this.scheduleTurnEnd();
  }

  private uncorkAll(): void {
    const list = this.corked;
    for (let i = 0; i < list.length; i++) {
      const c = list[i];
      c.corked = false;
      c.socket.uncork();
    }
    list.length = 0;
  }

  /** Inbound QoS 2 ids not released within mqtt.await_rel_timeout are forgotten and counted (as EMQX). */
  private expireAwaitingRel(session: Session, now: number): void {
    const limit = this.config['mqtt.await_rel_timeout'] * 1000;
    const rel = session.awaitingRel;
    for (const [id, at] of rel) {
      if (now - at < limit) break; // insertion order is arrival order
      rel.delete(id);
      this.counters.row[Counter.messagesDroppedAwaitPubrelTimeout]++;
    }
  }

  /** REST API kick: closes the client's connection (if any) and discards its session. */
  kick(clientId: string): boolean {
    const session = this.sessions.get(clientId);
    if (!session) return false;
    session.conn?.log.info('kicked by the REST API');
    session.conn?.disconnect(0x98, 'kicked');
    const still = this.sessions.get(clientId);
    if (still === session) this.discardSession(session);
    return true;
  }

  /** SIGHUP: runtime-changeable options (limits, log level, $SYS switches) take effect. */
  private reconfigure(config: Config): void {
    Object.assign(this.config, config);
    this.acceptor?.reconfigure();
    const level = config['log.level'];
    // Logged at whichever of the old and new levels shows it, so that raising the level to
    // warn still leaves a line saying that this shard has the new configuration.
    const shown = this.log.isLevelEnabled('info');
    if (shown) this.log.info({ logLevel: level }, 'configuration reloaded');
    this.log.level = level;
    for (const session of this.sessions.values()) session.conn?.setLogLevel(level);
    if (!shown) this.log.info({ logLevel: level }, 'configuration reloaded');
    this.main.postMessage({ t: 'reconfigured' });
  }

  /**
   * Graceful drain: no new clients (the acceptor closes first), then close the connections spread
   * over `ms` (every 100 ms a share of them), so that they do not all reconnect elsewhere at
   * once; then the normal shutdown. Wills are not published, as in a shutdown.
   */
  private drain(ms: number): void {
    this.stopping = true;
    this.stopAccepting();
    const live = [...this.sessions.values()].filter((s) => s.conn).map((s) => s.conn!);
    const steps = Math.max(1, Math.floor(ms / 100));
    const perStep = Math.max(1, Math.ceil(live.length / steps));
    this.log.info({ connections: live.length, ms }, 'draining connections');
    const step = (): void => {
      for (const c of live.splice(0, perStep)) c.disconnect(0x8b, 'server shutting down');
      if (live.length > 0) setTimeout(step, 100);
      else this.shutdown();
    };
    step();
  }

  private stopAccepting(): void {
    this.acceptor?.close();
    this.acceptor = null;
    // Accepted for a peer but not posted yet: closed (the clients reconnect elsewhere).
    for (const list of this.outHandoffs) {
      for (const h of list) fdutil.close(h.fd);
      list.length = 0;
    }
  }

  private shutdown(): void {
    this.stopping = true;
    this.stopAccepting();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const session of this.sessions.values()) session.conn?.disconnect(0x8b, 'server shutting down');
    this.main.postMessage({ t: 'shutdownDone' });
  }
}

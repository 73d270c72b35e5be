import type { Socket } from 'node:net';
import { authenticate } from '../auth/connect.js';
import type { ClientAuth } from '../authz/authorize.js';
import type { Delivery } from '../delivery/deliver.js';
import { admitToListener, leaveListener } from '../listener/limits.js';
import { Counter, LIVE_CONNECTIONS, observeHandoff } from '../metrics/counters.js';
import { encodeAck, encodeConnack, encodeConnackV5, type WillMessage } from '../protocol/codec.js';
import { PacketType } from '../protocol/constants.js';
import { encodeConnackV5Full } from '../protocol/v5-control.js';
import type { SharedGroupRouting } from '../routing/shared-groups.js';
import type { Subscriptions } from '../routing/subscriptions.js';
import type { Connection } from '../shard/connection.js';
import { asBuffer, type RetainedRelay } from '../shard/retained-relay.js';
import type { ShardState } from '../shard/state.js';
import { type ClientEventHost, publishClientEvent } from '../sys/events.js';
import type { ConnectionOrigin } from '../threads/messages.js';
import { Message } from './message.js';
import { NEVER_EXPIRES, Session, type Subscription } from './session.js';

/** What the session lifecycle needs of the rest of the shard. */
export interface LifecycleDeps {
  /** A Connection for an adopted socket (shard/connection.ts) */
  newConnection(socket: Socket, session: Session, h: ConnectionOrigin): Connection;
  /** Client events: config, index and publish (wills go out through it too) */
  events: ClientEventHost;
  shared: SharedGroupRouting;
  subscriptions: Subscriptions;
  delivery: Delivery;
  relay: RetainedRelay;
  /** Cluster II (src/cluster/shard-state.ts): wills other nodes publish if this node dies */
  cluster?: { syncWill(session: Session): void } | null;
}

/**
 * A session from CONNECT to its end: attach (max connections, takeover, expiry check, clean
 * start or resume, CONNACK, resend), close (will, expiry or discard), the once-a-second sweep
 * (keep-alive, delayed wills, expiry, QoS 2 await-rel timeout) and the REST API kick.
 */
export class SessionLifecycle {
  constructor(
    private readonly s: ShardState,
    private readonly d: LifecycleDeps,
  ) {}

  /**
   * The cluster could not grant the client id (cluster.claim_quorum = majority without a
   * reachable quorum, src/cluster/registry.ts): CONNACK 0x88 Server unavailable (MQTT 5) /
   * 3 Server unavailable (MQTT 3.1.1), then close. No session is made.
   */
  refuseUnavailable(socket: Socket, h: ConnectionOrigin): void {
    this.s.counters.row[Counter.packetsConnackError]++;
    socket.on('error', () => {});
    socket.end(h.connect.protocolVersion === 5 ? encodeConnackV5(0x88) : encodeConnack(false, 3));
    socket.destroySoon();
  }

  /** Makes the connection and its session: takeover, resume or a new session, then CONNACK. */
  attach(socket: Socket, h: ConnectionOrigin, auth?: ClientAuth): void {
    if (this.s.stopping) {
      socket.destroy();
      return;
    }
    // Banned, then authentication (src/auth/connect.ts; may answer later), before takeover or
    // any session work: a refused client gets a CONNACK code and no session.
    if (!auth) return authenticate(this.s, socket, h, (a) => this.attach(socket, h, a));
    const hooks = this.s.security.hooks;
    const row = this.s.counters.row;
    row[Counter.handoffs]++;
    const c = h.connect;
    const v5 = c.protocolVersion === 5;
    // listener.max_connections over all shards: one Atomics counter, since every shard accepts.
    const max = this.s.config['listener.max_connections'];
    const live = Atomics.add(this.s.counters.atomics, LIVE_CONNECTIONS, 1);
    const globalFull = max > 0 && live >= max;
    if (globalFull || !admitToListener(this.s.counters, this.s.config, h.listenerIndex ?? 0)) {
      Atomics.sub(this.s.counters.atomics, LIVE_CONNECTIONS, 1);
      const n = globalFull
        ? ++row[Counter.connectionsRefusedMax]
        : row[Counter.listenerConnectionsRefusedMax];
      row[Counter.packetsConnackError]++;
      if (n % 1000 === 1)
        this.s.log.warn(
          {
            clientId: c.clientId,
            limit: globalFull ? 'listener.max_connections' : `${h.listener}.max_connections`,
          },
          'connection refused: max_connections reached (logged once per 1000 per shard)',
        );
      // 0x97 Quota exceeded (MQTT 5) / 0x03 Server unavailable (MQTT 3), then close.
      socket.end(v5 ? encodeConnackV5(0x97) : encodeConnack(false, 3));
      socket.on('error', () => {});
      socket.destroySoon();
      return;
    }
    let session = this.s.sessions.get(c.clientId);
    if (session?.conn) {
      // Takeover: the same client id is already connected here [MQTT-3.1.4-2]. The old
      // connection closes without DISCONNECT, so its will is published (MQTT 5: after its
      // Will Delay Interval, unless this connection resumes the session first).
      row[Counter.sessionTakenover]++;
      session.conn.log.info('session taken over by a new connection');
      session.conn.disconnect(0x8e, 'session taken over');
      session = this.s.sessions.get(c.clientId);
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
      if (hooks.lifecycle) hooks.session('onSessionResumed', c.clientId);
    } else {
      session = new Session(c.clientId, c.clean);
      this.s.sessions.set(c.clientId, session);
      row[Counter.sessionCreated]++;
      row[Counter.sessions]++;
      if (hooks.lifecycle) hooks.session('onSessionCreated', c.clientId);
    }
    session.clean = c.clean;
    // MQTT 3: clean session 1 ends with the connection, 0 lives mqtt.session_expiry_interval.
    // MQTT 5: the client's Session Expiry Interval, absent = 0 [MQTT-3.1.2-?].
    // MQTT 5 asks are capped by mqtt.session_expiry_interval (as EMQX), so 0xFFFFFFFF is not
    // "never" unless the cap is 4294967295; CONNACK then tells the client [MQTT-3.2.2-?].
    session.expiryInterval = v5
      ? Math.min(c.properties?.sessionExpiryInterval ?? 0, this.s.config['mqtt.session_expiry_interval'])
      : c.clean
        ? 0
        : this.s.config['mqtt.session_expiry_interval'];
    session.will = c.will;
    this.d.cluster?.syncWill(session);
    const conn = this.d.newConnection(socket, session, h);
    conn.auth = auth;
    session.conn = conn;
    // Durable store: a persistent session's record; a resumed one that is no longer persistent goes.
    if (this.s.durable) {
      if (session.expiryInterval > 0) this.s.durable.sessionChanged(session);
      else if (sessionPresent) this.s.durable.sessionGone(session);
    }
    row[Counter.connections]++;
    row[Counter.clientConnected]++;
    const handoffNs = Number(process.hrtime.bigint()) - h.acceptedAt;
    // Through the shard's logger with the client's fields: no per-connection child logger (and
    // no fields built at all below info).
    if (this.s.log.isLevelEnabled('info'))
      this.s.log.info(
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
    publishClientEvent(this.d.events, conn, 'connected');
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
          if (sub.shared) this.d.shared.sendMembership('sharedJoin', session, sub);
      this.resend(session);
    }
    conn.start(h.leftover);
  }

  /** CONNACK properties: the server's limits and capabilities [MQTT-3.2.2.3]. */
  private connackV5(h: ConnectionOrigin, conn: Connection, sessionPresent: boolean): Buffer {
    const cfg = this.s.config;
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
    this.d.delivery.drainSession(session);
  }

  onConnectionClosed(conn: Connection, reason: string): void {
    const session = conn.session;
    const row = this.s.counters.row;
    row[Counter.connections]--;
    Atomics.sub(this.s.counters.atomics, LIVE_CONNECTIONS, 1);
    leaveListener(this.s.counters, conn.listenerIndex);
    row[Counter.clientDisconnected]++;
    if (this.s.log.isLevelEnabled('info'))
      this.s.log.info(
        { clientId: conn.clientId, remote: `${conn.remoteAddress}:${conn.remotePort}`, reason },
        'client disconnected',
      );
    if (!this.s.stopping) publishClientEvent(this.d.events, conn, 'disconnected', reason);
    const hooks = this.s.security.hooks;
    if (hooks.disconnect.length > 0 && conn.auth) hooks.disconnected(conn.auth.info, reason);
    if (session.conn === conn) session.conn = null;
    this.d.relay.forgetConnection(conn);
    // A shared-group member that goes away gets no more messages, and what it had not
    // acknowledged goes to another member.
    this.d.shared.leaveSharedGroups(session, true);
    const will = session.will;
    session.will = null;
    if (will && !conn.gracefulDisconnect && !this.s.stopping) {
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
      this.s.durable?.sessionChanged(session);
    }
    this.d.cluster?.syncWill(session);
  }

  publishWill(clientId: string, w: WillMessage): void {
    const hooks = this.s.security.hooks;
    if (hooks.will.length > 0 && !hooks.willAllowed(clientId, w)) return; // onWill may suppress it
    this.s.counters.row[Counter.willsPublished]++;
    // A CONNECT handed over by another shard came by structured clone: Uint8Arrays, not Buffers.
    const msg = Message.fromStrings(w.topic, asBuffer(w.payload), w.qos, w.retain, clientId);
    if (w.props) msg.props = asBuffer(w.props);
    if (w.expiry !== undefined && w.expiry >= 0) msg.expiryAt = Date.now() + w.expiry * 1000;
    this.d.events.publish(msg, null);
  }

  private discardSession(session: Session): void {
    if (session.subscriptionCount > 0)
      for (const [filter] of session.subscriptions) this.d.subscriptions.unsubscribe(session, filter);
    if (session.pendingWill) {
      // The session ends before the will delay: the will is published now [MQTT-3.1.3-9] —
      // unless it is a restored one the cluster may have published already (held until we know).
      const w = session.pendingWill;
      if (this.s.heldWills?.get(session.clientId) === w)
        this.s.restoredWills.push({ clientId: session.clientId, will: w });
      else this.publishWill(session.clientId, w);
      session.pendingWill = null;
      this.d.cluster?.syncWill(session);
    }
    if (this.s.sessions.get(session.clientId) === session) {
      this.s.durable?.sessionGone(session);
      this.s.sessions.delete(session.clientId);
      this.s.counters.row[Counter.sessions]--;
      this.s.counters.row[Counter.sessionDiscarded]++;
      const hooks = this.s.security.hooks;
      if (hooks.lifecycle) hooks.session('onSessionDiscarded', session.clientId);
    }
  }

  private expireSession(session: Session): void {
    this.s.counters.row[Counter.sessionExpired]++;
    this.s.log.info({ clientId: session.clientId }, 'session expired');
    this.discardSession(session);
  }

  /**
   * Once a second: keep-alive [MQTT-3.1.2-24], delayed wills and offline-session expiry
   * (expiry is data, not a timer per session).
   */
  sweep(): void {
    const now = Date.now();
    for (const session of this.s.sessions.values()) {
      if (session.awaitingRelCount > 0) this.expireAwaitingRel(session, now);
      const conn = session.conn;
      if (conn) {
        if (conn.keepaliveMs > 0 && now - conn.lastReceivedAt > conn.keepaliveMs) {
          this.s.counters.row[Counter.keepaliveTimeouts]++;
          conn.log.info({ keepaliveMs: conn.keepaliveMs }, 'keep-alive timeout');
          conn.disconnect(0x8d, 'keep-alive timeout');
        }
        continue;
      }
      const w = session.pendingWill;
      // A restored will held until the cluster's word on it: neither published nor ended with
      // its session yet (the session record, which holds it, stays until then).
      if (w && this.s.heldWills?.get(session.clientId) === w) continue;
      if (w && now >= session.willAt && this.s.peersRestored) {
        session.pendingWill = null;
        this.publishWill(session.clientId, w);
        this.s.durable?.sessionChanged(session);
        this.d.cluster?.syncWill(session);
      }
      if (session.expiresAt > 0 && now >= session.expiresAt) this.expireSession(session);
    }
  }

  /** Inbound QoS 2 ids not released within mqtt.await_rel_timeout are forgotten and counted (as EMQX). */
  private expireAwaitingRel(session: Session, now: number): void {
    const limit = this.s.config['mqtt.await_rel_timeout'] * 1000;
    const rel = session.awaitingRel;
    for (const [id, at] of rel) {
      if (now - at < limit) break; // insertion order is arrival order
      rel.delete(id);
      this.s.durable?.relDone(session, id);
      this.s.counters.row[Counter.messagesDroppedAwaitPubrelTimeout]++;
    }
  }

  /**
   * Cluster takeover by another node: closes the client's connection (MQTT 5: DISCONNECT 0x8E,
   * its will handled as for a takeover here) and removes the session from this node (its
   * routes go with its subscriptions). Returns the session encoded by `encode` before it is
   * removed, or null when there is none, it expired, or `clean` discards it.
   */
  exportSession<T>(clientId: string, clean: boolean, encode: (s: Session) => T): T | null {
    let session = this.s.sessions.get(clientId);
    if (session?.conn) {
      this.s.counters.row[Counter.sessionTakenover]++;
      session.conn.log.info('session taken over by a connection on another node');
      session.conn.disconnect(0x8e, 'session taken over');
      session = this.s.sessions.get(clientId); // gone if it ended with its connection
    }
    if (!session) return null;
    if (clean || (session.expiresAt > 0 && Date.now() >= session.expiresAt)) {
      this.discardSession(session);
      return null;
    }
    const out = encode(session);
    // Shipped: a will waiting for its delay goes with it and is not published here.
    session.pendingWill = null;
    this.discardSession(session);
    this.d.cluster?.syncWill(session);
    return out;
  }

  /**
   * Cluster takeover from another node: the shipped session replaces any local one; its
   * subscriptions go into the routing tables (routes follow the session). The CONNECT that
   * claimed it then resumes it (session present 1, inflight resent with DUP).
   */
  adoptSession(
    session: Session,
    subs: [string, Omit<Subscription, 'nodeId'>][],
    socket: { cork(): void; uncork(): void },
    /** The import is stored (sync: committed; otherwise at once): its old node may forget it */
    onStored: () => void = () => {},
  ): boolean {
    const old = this.s.sessions.get(session.clientId);
    if (old && !old.conn) this.discardSession(old);
    else if (old) return false; // connected here meanwhile: that one is newer
    this.s.sessions.set(session.clientId, session);
    this.s.counters.row[Counter.sessions]++;
    for (const [filter, sub] of subs) this.d.subscriptions.subscribe(session, filter, sub, sub.shared);
    // Offline until its CONNECT attaches (or expires like any offline session if that never comes).
    session.expiresAt =
      session.expiryInterval === NEVER_EXPIRES ? 0 : Date.now() + session.expiryInterval * 1000;
    const durable = this.s.durable;
    if (!durable) {
      onStored();
      return true;
    }
    // Durable: written now, as a session that was always here would be (record, inflight, queue,
    // QoS 2 ids awaiting PUBREL), not when it next changes: the old node has forgotten it.
    durable.sessionChanged(session);
    for (const [id, e] of session.inflight) {
      if (e.released) durable.released(session, e, id);
      else durable.held(session, e, id);
    }
    for (const d of session.queue) durable.held(session, d, 0);
    for (const [id, at] of session.awaitingRel) durable.awaitingRel(session, id, at);
    // sync: what the client gets next (CONNACK with session present 1, the inflight resent with
    // DUP, in this turn) waits in the corked socket until this turn is committed — the import
    // and the packet ids of what the resume sends — so a client that saw the takeover done finds
    // all of it here after a kill -9 of this node. Without it, the flush (durability.sync_delay
    // + one commit) came after the client had it. batched: no wait, as for acks.
    if (durable.sync) {
      socket.cork();
      durable.afterCommit(() => {
        socket.uncork();
        onStored();
      });
    } else onStored();
    return true;
  }

  /** REST API kick: closes the client's connection (if any) and discards its session. */
  kick(clientId: string): boolean {
    const session = this.s.sessions.get(clientId);
    if (!session) return false;
    session.conn?.log.info('kicked by the REST API');
    session.conn?.disconnect(0x98, 'kicked');
    const still = this.s.sessions.get(clientId);
    if (still === session) this.discardSession(session);
    return true;
  }
}

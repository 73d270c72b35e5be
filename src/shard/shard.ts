import type { Socket } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import { ShardClusterLink } from '../cluster/shard-link.js';
import { ShardClusterState } from '../cluster/shard-state.js';
import type { Config } from '../config/schema.js';
import { Delivery } from '../delivery/deliver.js';
import { FlowControl } from '../delivery/flow-control.js';
import { ShardSecurity } from '../hooks/security.js';
import { shardOf } from '../listener/client-id.js';
import { createLogger, type Logger } from '../log.js';
import { Counter, Counters, sampleMemory } from '../metrics/counters.js';
import type { WillMessage } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import { type BatchVisitor, readBatch } from '../routing/batch.js';
import { Router } from '../routing/route.js';
import { SharedGroups } from '../routing/shared.js';
import { SharedGroupRouting } from '../routing/shared-groups.js';
import { SubscriberTable } from '../routing/subscribers.js';
import { type PendingJoin, type SubscribeOptions, Subscriptions } from '../routing/subscriptions.js';
import { TopicIndex } from '../routing/topic-index.js';
import { SessionLifecycle } from '../session/lifecycle.js';
import { Message } from '../session/message.js';
import type { Session, Subscription } from '../session/session.js';
import { ReplayVisitor } from '../storage/replay.js';
import { restoreSessions } from '../storage/restore.js';
import { ShardDurability } from '../storage/shard-durability.js';
import type { DurableStore } from '../storage/types.js';
import {
  type ConnectionOrigin,
  type MainToShard,
  type PeerBatch,
  peerBatchAck,
  type ShardInit,
  type ShardToShard,
} from '../threads/messages.js';
import { ConnectionAccept } from './accept.js';
import { Connection } from './connection.js';
import { answerQuery } from './queries.js';
import { asBuffer, RetainedRelay } from './retained-relay.js';
import type { EndedWill, MainLink, ShardState } from './state.js';

/**
 * Longest a durable first start in a cluster holds its restored wills after `listen` when the
 * cluster thread says nothing (its first join round takes at most 2 join timeouts + 1 s)
 */
const RESTORED_WILLS_HOLD_MS = 15_000;

export type { SubscribeOptions } from '../routing/subscriptions.js';
export type { MainLink } from './state.js';

/**
 * A shard owns the sessions of the client ids that hash to it. This class wires the modules
 * that do the work and dispatches the messages of the other threads to them:
 * - shard/accept.ts: listen/accept, handoff to the owner shard, adopt, closeUnadopted
 * - session/lifecycle.ts: attach, takeover, resume, close, wills, expiry sweep, kick
 * - routing/subscriptions.ts: subscribe/unsubscribe in the topic index and subscriber lists
 * - routing/route.ts: match once, local delivery, cross-shard batches
 * - routing/shared-groups.ts: shared-subscription joins/leaves, member pick, redispatch
 * - delivery/deliver.ts: send, inflight window, queue, congestion, uncork
 * - shard/retained-relay.ts: retained store in main, held PUBACK/SUBACK
 * It is also what connections and packet handlers see of their shard (a facade, below).
 */
export class Shard implements BatchVisitor, ShardState {
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
  readonly peers: (MessagePort | null)[];
  stopping = false;
  peersRestored = true;
  /** Wills of sessions that expired while the broker was down (or ended while held), until released */
  restoredWills: EndedWill[] = [];
  heldWills: Map<string, WillMessage> | null = null;
  /** The cluster's word on the held wills (firedWills): ids it published; null until it comes */
  private firedWills: Set<string> | null = null;
  private heldTimer: NodeJS.Timeout | null = null;
  /** Hooks, authentication, authorization, banned (src/hooks/security.ts): installed before start */
  readonly security: ShardSecurity;
  /** The durable store's shard side; null with durability.mode none */
  readonly durable: ShardDurability | null;
  private readonly replay: ReplayVisitor;
  private readonly delivery: Delivery;
  private readonly flow: FlowControl;
  private readonly relay: RetainedRelay;
  private readonly shared: SharedGroupRouting;
  private readonly router: Router;
  private readonly subscriptions: Subscriptions;
  private readonly lifecycle: SessionLifecycle;
  private readonly accept: ConnectionAccept;
  /** Batches to flush and/or connections to uncork at the end of this turn: one setImmediate */
  private turnEndScheduled = false;
  private sweepTimer: NodeJS.Timeout | null = null;
  /** Publishes to and from other nodes (src/cluster/shard-link.ts); null on a single node */
  private readonly cluster: ShardClusterLink | null;
  /** Cluster II's shard side (wills, shared groups, takeover); null on a single node */
  private readonly clusterState: ShardClusterState | null;

  constructor(
    init: ShardInit,
    private readonly main: MainLink,
    /** Opened by the worker entry (storage/open.ts); null: memory only */
    store: DurableStore | null = null,
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
    this.security = new ShardSecurity(this.config, this.log, this.counters.row);
    this.durable = store ? new ShardDurability(this, store, this.scheduleTurnEnd) : null;
    this.replay = new ReplayVisitor(this, this);
    this.flow = new FlowControl(this);
    this.delivery = new Delivery(this.config, this.counters, this.flow, this.security, this.durable);
    this.relay = new RetainedRelay(main, this.delivery, this.counters, this.durable);
    this.shared = new SharedGroupRouting(this, this.delivery, (s, viaOwner) =>
      this.router.batchFor(s, viaOwner),
    );
    // Received forwards are published here for local subscribers only (never forwarded again).
    this.cluster = ShardClusterLink.create(init, {
      counters: this.counters,
      publish: (m) => this.publish(m, null),
      onLinkError: (err, m) => this.threadMessageError(err, 'cluster', m),
    });
    if (this.cluster)
      this.cluster.onFiredWills = (ids) => {
        if (this.heldWills === null || this.firedWills !== null) return;
        this.firedWills = new Set(ids);
        this.releaseRestoredWills();
      };
    this.router = new Router(
      this,
      this.delivery,
      this.relay,
      this.shared,
      this.scheduleTurnEnd,
      this.cluster,
    );
    this.subscriptions = new Subscriptions(this, this.shared);
    // Cluster II: wills, shared groups and sessions across nodes (src/cluster/shard-state.ts).
    const clusterState = (this.clusterState = this.cluster
      ? new ShardClusterState(this.cluster, {
          publish: (m) => this.publish(m, null),
          shardId: this.id,
          counters: this.counters,
          shared: this.shared,
          sharedGroups: this.sharedGroups,
          exportSession: (id, clean, encode) => this.lifecycle.exportSession(id, clean, encode),
          adoptSession: (session, subs, socket, onStored) =>
            this.lifecycle.adoptSession(session, subs, socket, onStored),
          sessionOf: (id) => this.sessions.get(id),
          deliver: (session, msg, qos, retainFlag, subIds, group) =>
            this.delivery.deliver(session, msg, qos, retainFlag, subIds, group),
          drainTo: (to, reqId) => {
            if (this.router.batchesPending) this.router.flushBatches();
            this.peers[to]?.postMessage({ t: 'drained', reqId } satisfies ShardToShard);
          },
          // Longer than the cluster thread's claim call (4 × its call timeout), which answers first.
          claimTimeoutMs: 5 * Math.min(5000, Math.max(500, this.config['cluster.down_after'] * 1000)),
          claimQuorum: this.config['cluster.claim_quorum'] === 'majority',
          log: this.log,
        })
      : null);
    this.lifecycle = new SessionLifecycle(this, {
      newConnection: (socket: Socket, session: Session, h: ConnectionOrigin) =>
        new Connection(this, socket, session, h),
      events: this,
      shared: this.shared,
      subscriptions: this.subscriptions,
      delivery: this.delivery,
      relay: this.relay,
      cluster: clusterState,
    });
    this.accept = new ConnectionAccept(this, main, {
      attach: (socket, h) =>
        clusterState
          ? clusterState.claimThenAttach(
              socket,
              h,
              () => this.lifecycle.attach(socket, h),
              () => this.lifecycle.refuseUnavailable(socket, h),
            )
          : this.lifecycle.attach(socket, h),
      scheduleTurnEnd: this.scheduleTurnEnd,
      threadMessageError: (err, from, msg) => this.threadMessageError(err, from, msg),
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
    this.sweepTimer = setInterval(() => {
      this.lifecycle.sweep();
      sampleMemory(this.counters.row);
    }, 1000);
    // A durable first start: the other shards may not have restored their sessions yet (main
    // says `listen` once all are ready). A restarted shard's peers are up.
    if (this.durable) {
      this.peersRestored = generation > 1;
      this.restore(generation);
    }
    // Peers' batches only now: those that came while the worker was loading (outbox replays
    // after a restart among them) wait in the ports until the restored sessions can take them.
    for (let i = 0; i < this.peers.length; i++) this.listenPeer(i);
    this.main.postMessage({ t: 'ready', generation });
  }

  private listenPeer(i: number): void {
    const port = this.peers[i];
    if (!port) return;
    port.on('message', (m: ShardToShard) => {
      try {
        if (typeof m === 'number') {
          // batchCommitted (seq > 0) or batchAck (-bytes), threads/messages.ts
          if (m > 0) this.durable?.onConfirmed(i, m);
          else this.router.windows.acked(i, -m);
        } else if (m.t === 'batch') {
          if (this.deferredBatches !== null) this.deferredBatches.push({ from: i, port, m });
          else this.onPeerBatch(i, port, m);
        } else if (m.t === 'drained') this.clusterState?.onDrained(m.reqId);
        else if (m.t === 'hold' || m.t === 'release') this.flow.onPeerHold(i, m.clientId, m.t === 'hold');
        else if (m.t === 'adopt') {
          // First: from here on the fds are ours (the sender stops tracking them).
          port.postMessage({ t: 'adopted', seq: m.seq } satisfies ShardToShard);
          this.accept.adoptAll(m.conns);
        } else if (m.t === 'adopted') this.accept.onAdopted(i, m.seq);
        else if (m.t === 'tunnel') this.accept.onTunnel(i, m);
        else if (m.t === 'sharedJoin')
          this.shared.sharedJoin(m.group, m.filter, m.clientId, m.shard, m.qos, m.subId, m.reqId ?? 0);
        else if (m.t === 'sharedJoined') this.relay.onSharedJoined(m.reqId, m.ok !== false);
        else if (m.t === 'sharedRejoined') this.shared.onRejoined(i);
        else this.shared.sharedLeave(m.group, m.filter, m.clientId);
      } catch (err) {
        this.threadMessageError(err, `shard ${i}`, m);
      }
    });
  }

  /**
   * A restarted owner of shared groups (durable modes) holds the batches its peers send until
   * every live peer's members have rejoined its groups (SharedGroupRouting.awaitRejoins): a
   * group's message read before its members' joins (they come on other ports) found no member
   * and was dropped, though acked to its publisher. Null when not waiting.
   */
  private deferredBatches: { from: number; port: MessagePort; m: PeerBatch }[] | null = null;

  private onPeerBatch(i: number, port: MessagePort, m: PeerBatch): void {
    // The publishers in it were read by shard i: a congested subscriber holds them there.
    this.flow.sourceShard = i;
    try {
      // Durable: a batch committed here already (re-sent after a restart) is not delivered again.
      if (m.seq === undefined || !this.durable || this.durable.acceptBatch(i, m.seq))
        readBatch(m.buf, m.len, m.replay ? this.replay : this);
    } finally {
      this.flow.sourceShard = -1;
      if (m.seq !== undefined) this.durable?.endBatch();
    }
    port.postMessage(peerBatchAck(m.len) satisfies ShardToShard);
  }

  /** Every live peer has rejoined the groups owned here: the batches held meanwhile, in order. */
  private readonly onRejoinsDone = (): void => {
    const held = this.deferredBatches;
    this.deferredBatches = null;
    if (held === null) return;
    for (const b of held) {
      try {
        this.onPeerBatch(b.from, b.port, b.m);
      } catch (err) {
        this.threadMessageError(err, `shard ${b.from}`, b.m);
      }
    }
  };

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

  private onMainMessage(msg: MainToShard): void {
    switch (msg.t) {
      case 'listen':
        if (!this.peersRestored) {
          this.peersRestored = true;
          this.releaseRestoredWills();
        }
        this.accept.listen(msg.listeners);
        break;
      case 'peer':
        this.peers[msg.shard]?.close();
        this.peers[msg.shard] = msg.port;
        this.listenPeer(msg.shard);
        this.router.windows.reset(msg.shard);
        // Connections accepted for it while it was down.
        this.accept.onPeer(msg.shard);
        // A restarted shard lost the shared groups it owned: members here join them again.
        this.shared.rejoinSharedGroupsOwnedBy(msg.shard);
        this.relay.releaseJoinsTo(msg.shard);
        // What it had not committed when it went down.
        this.durable?.replayTo(msg.shard);
        msg.port.postMessage({ t: 'sharedRejoined' } satisfies ShardToShard);
        break;
      case 'shardDown':
        // Nothing posted to a dead shard's port arrives; its restart brings a new one ('peer').
        this.peers[msg.shard]?.close();
        this.peers[msg.shard] = null;
        this.accept.closeUnadopted(msg.shard);
        this.shared.dropShard(msg.shard);
        this.flow.dropShard(msg.shard);
        this.router.windows.reset(msg.shard);
        // A dead owner answers no join: those SUBACKs go now (its restart rejoins them).
        this.relay.releaseJoinsTo(msg.shard);
        this.shared.onRejoined(msg.shard);
        break;
      case 'retainAck':
        this.relay.onRetainAck(msg.reqId, msg.code);
        break;
      case 'retained':
        this.relay.onRetained(msg.reqId, msg.records, msg.more);
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
      case 'security': // banned list, built-in users (src/hooks/security.ts)
        this.security.onMessage(msg.msg);
        break;
      case 'cluster': // the (re)started cluster thread
        this.cluster?.attach(msg.port);
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
  // What connections, packet handlers and queries ask of their shard

  /** See Router.publish. */
  publish(msg: Message, conn: Connection | null, ackType = 0, packetId = 0): boolean {
    return this.router.publish(msg, conn, ackType, packetId);
  }

  subscribe(
    session: Session,
    filter: string,
    o: SubscribeOptions,
    shared: Subscription['shared'] = null,
  ): 'new' | 'existing' | null {
    return this.subscriptions.subscribe(session, filter, o, shared);
  }

  unsubscribe(session: Session, filter: string): boolean {
    return this.subscriptions.unsubscribe(session, filter);
  }

  beginSubscribe(): PendingJoin[] {
    return this.shared.beginSubscribe();
  }

  endSubscribe(): PendingJoin[] {
    return this.shared.endSubscribe();
  }

  sendSuback(conn: Connection, retainedFilters: string[], joins: PendingJoin[], suback: Buffer): void {
    this.relay.sendSuback(conn, retainedFilters, joins, suback);
  }

  drainSession(session: Session): void {
    this.delivery.drainSession(session);
    // Retained messages still to send after a SUBACK wait for this room (none on the normal path).
    if (this.relay.feeds.active > 0) this.relay.feeds.pumpSession(session);
    // A congested subscriber that drained lets its held publishers go (none on the normal path).
    if (this.flow.active > 0 && session.conn) this.flow.onRoom(session.conn as Connection);
  }

  onConnectionClosed(conn: Connection, reason: string): void {
    if (this.flow.active > 0) this.flow.forget(conn);
    this.lifecycle.onConnectionClosed(conn, reason);
  }

  kick(clientId: string): boolean {
    return this.lifecycle.kick(clientId);
  }

  // ------------------------------------------------------------------------------------------
  // Batches from peer shards (routing/batch.ts)

  onRoutedMessage(msg: Message, nodeIds: Int32Array, nodeCount: number): void {
    this.router.deliverLocal(msg, nodeIds, nodeCount);
  }

  onSharedMessage(msg: Message, nodeIds: Int32Array, n: number): void {
    this.shared.onSharedMessage(msg, nodeIds, n);
  }

  onDirectMessage(msg: Message, clientId: string, qos: QoS, subId: number, group: string): void {
    this.shared.onDirectMessage(msg, clientId, qos, subId, group);
  }

  onRedispatch(msg: Message, groupKey: string, exclude: string): void {
    this.shared.onRedispatch(msg, groupKey, exclude);
  }

  // ------------------------------------------------------------------------------------------
  // End of turn

  /** Uncorks every connection written to in this turn, in one pass. */
  scheduleUncork(conn: Connection): void {
    this.delivery.corked.push(conn);
    this.scheduleTurnEnd();
  }

  /** Connections that used up their read budget this turn (Connection.onData): read again at its end */
  private readonly yielded: Connection[] = [];

  yieldRead(conn: Connection): void {
    this.yielded.push(conn);
    this.scheduleTurnEnd();
  }

  /**
   * End of an event-loop turn's work: handoffs and cross-shard batches are posted, then every
   * connection written to is uncorked. One setImmediate for all (each costs a wake-up of the
   * check phase).
   */
  private readonly scheduleTurnEnd = (): void => {
    if (this.turnEndScheduled) return;
    this.turnEndScheduled = true;
    setImmediate(this.endTurn);
  };

  private readonly endTurn = (): void => {
    this.turnEndScheduled = false;
    if (this.accept.handoffsPending) this.accept.flushHandoffs();
    if (this.router.batchesPending) this.router.flushBatches();
    if (this.delivery.corked.length > 0) this.delivery.uncorkAll();
    if (this.durable) this.durable.endTurn();
    const y = this.yielded;
    if (y.length > 0) {
      for (let i = 0; i < y.length; i++) y[i].resumeAfterYield();
      y.length = 0;
    }
  };

  /**
   * Durable: this shard's persistent sessions back from the store (offline, subscribed), the
   * wills of those that expired meanwhile, and the batches peers had not committed re-sent.
   */
  private restore(generation: number): void {
    const durable = this.durable!;
    const wills = restoreSessions(this, durable.store, (id) => shardOf(id, this.shardCount) === this.id, {
      subscribe: (session, filter, o) => this.subscriptions.subscribe(session, filter, o),
    });
    durable.restored();
    // After a crash main left our bits in the index (supervisor.ts): keep only those of nodes
    // that restored sessions subscribe to. In the shared index, those of the groups we own once
    // their members have rejoined (SharedGroupRouting.awaitRejoins).
    this.index.clearShardUnless(this.id, (ref) => this.subscribers.get(ref) !== undefined);
    if (generation > 1) {
      const live: number[] = [];
      for (let i = 0; i < this.peers.length; i++) if (this.peers[i]) live.push(i);
      this.deferredBatches = [];
      this.shared.awaitRejoins(live, this.onRejoinsDone);
    }
    this.restoredWills = wills;
    // First start of a node in a cluster: its peers may have published these wills when its
    // previous incarnation died (src/cluster/will-sync.ts). Held until the cluster thread's
    // first join round says which (firedWills), at most RESTORED_WILLS_HOLD_MS after `listen`.
    if (generation === 1 && this.cluster) {
      const held = new Map<string, WillMessage>();
      for (const w of wills) held.set(w.clientId, w.will);
      for (const [id, session] of this.sessions) if (session.pendingWill) held.set(id, session.pendingWill);
      if (held.size > 0) this.heldWills = held;
    }
    this.releaseRestoredWills();
    durable.replayAll();
    if (this.sessions.size > 0)
      this.log.info({ sessions: this.sessions.size }, 'persistent sessions restored');
  }

  /**
   * Restored wills go once every shard has restored its sessions (`listen`) and, when they are
   * held (heldWills), the cluster has said which of them it published for this node's previous
   * incarnation: those are dropped (and the sessions' records no longer hold them); the others
   * are this node's: the ended sessions' at once, the pending ones when due (sweep), known to
   * the peers meanwhile as any pending will [MQTT-3.1.2-8], [MQTT-3.1.3-9].
   */
  private releaseRestoredWills(): void {
    if (!this.peersRestored) return;
    const held = this.heldWills;
    if (held !== null && this.firedWills === null) {
      this.heldTimer ??= setTimeout(() => {
        this.log.warn(
          { held: held.size, ms: RESTORED_WILLS_HOLD_MS },
          'no word from the cluster thread on the restored wills: publishing them',
        );
        this.firedWills = new Set();
        this.releaseRestoredWills();
      }, RESTORED_WILLS_HOLD_MS);
      return;
    }
    const fired = this.firedWills;
    const row = this.counters.row;
    let dropped = 0;
    const ended = this.restoredWills;
    this.restoredWills = [];
    for (const w of ended) {
      if (fired?.has(w.clientId)) dropped++;
      else this.lifecycle.publishWill(w.clientId, w.will);
      // Published or the cluster's: the expired session's record goes, with what it wrote.
      if (w.stored) this.durable?.recordGone(w.clientId);
    }
    if (held === null) return;
    if (this.heldTimer) clearTimeout(this.heldTimer);
    this.heldTimer = null;
    this.heldWills = null;
    this.firedWills = null;
    for (const [id, w] of held) {
      const session = this.sessions.get(id);
      // Resumed meanwhile (no will due), or ended (its will was in `ended`)
      if (!session || session.pendingWill !== w) continue;
      if (fired?.has(id)) {
        session.pendingWill = null;
        session.willAt = 0;
        this.durable?.sessionChanged(session);
        dropped++;
      } else this.clusterState?.syncWill(session);
    }
    row[Counter.willsRestoredDropped] += dropped;
    this.log.info({ held: held.size, dropped }, 'restored wills: those the cluster published are dropped');
  }

  // ------------------------------------------------------------------------------------------
  // Configuration and shutdown

  /** SIGHUP: runtime-changeable options (limits, log level, $SYS switches) take effect. */
  private reconfigure(config: Config): void {
    Object.assign(this.config, config);
    this.accept.reconfigure();
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
    this.accept.stopAccepting();
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

  private shutdown(): void {
    this.stopping = true;
    this.accept.stopAccepting();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const session of this.sessions.values()) session.conn?.disconnect(0x8b, 'server shutting down');
    const done = (): void => this.main.postMessage({ t: 'shutdownDone' });
    if (!this.durable) return done();
    // The closed sessions' records are committed before main ends the thread.
    this.durable.flushAll().then(done, done);
  }
}

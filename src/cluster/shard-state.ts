import type { Delivery } from '../delivery/deliver.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { WillMessage } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import { topicMatches } from '../protocol/topic.js';
import type { SharedGroups } from '../routing/shared.js';
import type { SharedGroupRouting } from '../routing/shared-groups.js';
import { Message } from '../session/message.js';
import { Session, type Subscription } from '../session/session.js';
import { asBuffer } from '../shard/retained-relay.js';
import type { ConnectionOrigin } from '../threads/messages.js';
import { EntryWriter, readEntries } from './codec.js';
import { decodeSession, encodeSession, restoreSession } from './session-codec.js';
import type { ShardClusterLink } from './shard-link.js';
import type { ClusterStateToShard, ClusterWill, SharedOut } from './state-messages.js';

/** Most shared deliveries a shard keeps for members on other nodes until they acknowledge */
const MAX_UNACKED = 10_000;
/** An imported session's deliveries wait at most this long for its old node's `done` */
const MERGE_MAX_MS = 5000;
/** Late messages held per client id for a claim whose session has not arrived yet */
const MAX_EARLY = 10_000;
/** Tests only (test/cluster-handover.test.ts): the node dies as it receives a shipped session */
const DIE_ON_IMPORT = process.env.EMQX_TS_TEST_DIE_ON_IMPORT === '1';
/** A restored session has no claiming connection */
const NO_SOCKET: ClaimSocket = { destroyed: true, cork() {}, uncork() {} };

/** What the shard side of Cluster II needs of its shard. */
export interface ShardStateDeps {
  /** Routes a message as published on this node (local, other shards, other nodes) */
  publish(msg: Message): void;
  readonly shardId: number;
  readonly counters: Counters;
  readonly shared: SharedGroupRouting;
  readonly sharedGroups: SharedGroups;
  /** Session lifecycle (session/lifecycle.ts): takeover to and from other nodes */
  exportSession<T>(clientId: string, clean: boolean, encode: (s: Session) => T): T | null;
  /**
   * `socket` (the claiming connection's) is held corked until the import is stored, then
   * `onStored` runs; false: not adopted (the client connected here meanwhile)
   */
  adoptSession(
    session: Session,
    subs: [string, Omit<Subscription, 'nodeId'>][],
    socket: ClaimSocket,
    onStored?: () => void,
  ): boolean;
  /** Posts this turn's cross-shard batches, then `drained` to shard `to` behind them */
  drainTo(to: number, reqId: number): void;
  /** A session of this shard */
  sessionOf(clientId: string): Session | undefined;
  /** Sends, queues, or holds while the session merges */
  deliver: Delivery['deliver'];
  readonly claimTimeoutMs: number;
  /** cluster.claim_quorum = majority: a claim not answered in time refuses the CONNECT */
  readonly claimQuorum: boolean;
  readonly log: { warn(o: object, msg: string): void };
}

/** The claiming connection's socket */
export interface ClaimSocket {
  readonly destroyed: boolean;
  cork(): void;
  uncork(): void;
}

interface PendingClaim {
  clientId: string;
  socket: ClaimSocket;
  attach: () => void;
  refuse: () => void;
  timer: NodeJS.Timeout;
  /** Takeovers by other nodes that arrived while this claim was in flight: run after it */
  deferred: (() => void)[];
  /** The old node's late messages for this client that came before its session did */
  early: { buf: ArrayBuffer; done: boolean }[];
}

/**
 * A shard's side of Cluster II: tells the cluster thread which wills of its clients the other
 * nodes must publish if this node dies, and publishes the wills of dead nodes' clients the
 * cluster thread hands it. Rides the shard's cluster port (shard-link.ts).
 */
export class ShardClusterState {
  /** Wills the cluster thread holds for clients of this shard (resent to a restarted thread) */
  private readonly wills = new Map<string, ClusterWill>();
  /** When each pending will (`ClusterWill.pending`) is due, ms: its delay is sent as what is left */
  private readonly willsDue = new Map<string, number>();
  private set: ClusterWill[] = [];
  private clear: string[] = [];
  private scheduled = false;
  // Shared groups across nodes
  private groupsAdd: [string, string][] = [];
  private groupsDel: [string, string][] = [];
  private sharedOut: SharedOut[] = [];
  private sharedDone: { peer: number; id: number }[] = [];
  private readonly entries = new EntryWriter(4096);
  private unackedSeq = 0;
  /** QoS 1/2 shared messages sent to another node's member, until it acknowledges them */
  private readonly unacked = new Map<number, { msg: Message; groupKey: string; slot: number }>();
  // Session takeover across nodes
  private claimSeq = 0;
  private readonly claims = new Map<number, PendingClaim>();
  /** Takeovers waiting for the other shards' `drained` */
  private readonly drainWaits = new Map<
    number,
    { remaining: number; run: () => void; timer: NodeJS.Timeout }
  >();

  constructor(
    private readonly link: ShardClusterLink,
    private readonly deps: ShardStateDeps,
  ) {
    link.onState = (m) => this.onMessage(m);
    link.onAttach = () => {
      // The old thread's takeovers: nobody takes their answer any more, the sessions stay here.
      for (const w of this.drainWaits.values()) clearTimeout(w.timer);
      this.drainWaits.clear();
      const now = Date.now();
      this.set = [...this.wills.values()].map((w) => {
        const due = this.willsDue.get(w.clientId);
        return due === undefined ? w : { ...w, will: { ...w.will, delay: secondsLeft(due, now) } };
      });
      this.clear = [];
      // A new cluster thread: peers' slots start again; groups with local members are re-sent.
      this.peerGone(-1);
      this.groupsAdd = [];
      this.groupsDel = [];
      for (const g of deps.sharedGroups.all())
        if (g.members.length > 0) this.groupsAdd.push([g.group, g.filter]);
      this.schedule();
    };
    deps.shared.cluster = {
      localMembers: (group, filter, present) => {
        (present ? this.groupsAdd : this.groupsDel).push([group, filter]);
        this.schedule();
      },
      toNode: (msg, slot, groupKey) => this.toNode(msg, slot, groupKey),
    };
  }

  /**
   * The will this node would publish for the session now: the connection's (with its delay
   * capped by the session expiry, as on close here) or one waiting for its delay (what is left
   * of it, capped by what is left of the session); none → cleared.
   */
  syncWill(session: Session): void {
    const id = session.clientId;
    let will: ClusterWill | null = null;
    if (session.will) {
      const w = session.will;
      const delay =
        w.delay && w.delay > 0 && session.expiryInterval > 0 ? Math.min(w.delay, session.expiryInterval) : 0;
      will = { clientId: id, will: { ...w, delay } };
    } else if (session.pendingWill) {
      // Due at its delay or when the session ends, whichever comes first [MQTT-3.1.3-9].
      const due = session.expiresAt > 0 ? Math.min(session.willAt, session.expiresAt) : session.willAt;
      const delay = secondsLeft(due, Date.now());
      will = { clientId: id, will: { ...session.pendingWill, delay }, pending: true };
      this.willsDue.set(id, due);
    }
    if (!will?.pending) this.willsDue.delete(id);
    if (will) {
      this.wills.set(id, will);
      this.set.push(will);
    } else if (this.wills.delete(id)) this.clear.push(id);
    else return;
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    // Not posted (no cluster thread): a new thread gets the whole state on attach.
    if (this.set.length > 0 || this.clear.length > 0)
      this.link.postState({ t: 'wills', set: this.set, clear: this.clear });
    this.set = [];
    this.clear = [];
    if (this.groupsAdd.length > 0 || this.groupsDel.length > 0)
      this.link.postState({ t: 'sharedGroups', add: this.groupsAdd, del: this.groupsDel });
    this.groupsAdd = [];
    this.groupsDel = [];
    if (this.sharedOut.length > 0) {
      this.entries.take(); // the entries' buffer goes with the message (cloned)
      if (!this.link.postState({ t: 'sharedOut', items: this.sharedOut })) this.peerGone(-1);
    }
    this.sharedOut = [];
    if (this.sharedDone.length > 0) this.link.postState({ t: 'sharedDone', items: this.sharedDone });
    this.sharedDone = [];
  };

  /** The owner here picked another node for a shared message. */
  private toNode(msg: Message, slot: number, groupKey: string): void {
    let remaining = 0;
    if (msg.expiryAt > 0) {
      remaining = msg.expiryAt - Date.now();
      if (remaining <= 0) return; // expired [MQTT-3.3.2-5]
      remaining = Math.min(Math.ceil(remaining), 0xffffffff);
    }
    let id = 0;
    if (msg.qos > 0) {
      id = ++this.unackedSeq * 32 + this.deps.shardId;
      msg.own();
      this.unacked.set(id, { msg, groupKey, slot });
      if (this.unacked.size > MAX_UNACKED) {
        const oldest = this.unacked.keys().next().value as number;
        this.unacked.delete(oldest);
      }
    }
    const w = this.entries;
    const start = w.pos;
    w.add(msg, remaining);
    const cut = groupKey.indexOf('\u0000');
    this.sharedOut.push({
      slot,
      group: groupKey.slice(0, cut),
      filter: groupKey.slice(cut + 1),
      entry: w.buf.subarray(start, w.pos),
      id,
    });
    this.deps.counters.row[Counter.sharedForwarded]++;
    this.schedule();
  }

  /** A peer (slot; -1 = all) is gone: its groups drop it, its unacked messages go to another member. */
  private peerGone(slot: number): void {
    this.deps.shared.dropRemote(slot);
    for (const [id, u] of [...this.unacked]) {
      if (slot >= 0 && u.slot !== slot) continue;
      this.unacked.delete(id);
      this.deps.counters.row[Counter.sharedRedispatched]++;
      this.deps.shared.onRedispatch(u.msg, u.groupKey, '');
    }
  }

  /** Another node's owner picked this node: one local member gets it; its ack goes back. */
  private sharedIn(from: number, group: string, filter: string, entry: Uint8Array, id: number): void {
    const b = Buffer.from(entry.buffer, entry.byteOffset, entry.length);
    readEntries(b, b.length, Date.now(), (msg) => {
      if (id > 0) {
        let done = false;
        msg.onAcked = () => {
          if (done) return;
          done = true;
          this.sharedDone.push({ peer: from, id });
          this.schedule();
        };
      }
      if (!this.deps.shared.onRemoteShared(msg, `${group}\u0000${filter}`)) {
        this.deps.counters.row[Counter.messagesDropped]++;
        msg.onAcked?.();
      } else if (msg.qos === 0 || id === 0) msg.onAcked = null;
    });
  }

  private onMessage(m: ClusterStateToShard): void {
    if (m.t === 'publishWill') this.publishWill(m.clientId, m.will);
    else if (m.t === 'sharedRemote') this.deps.shared.setRemote(m.group, m.filter, m.slot, m.add);
    else if (m.t === 'sharedPeerGone') this.peerGone(m.slot);
    else if (m.t === 'sharedIn') this.sharedIn(m.from, m.group, m.filter, m.entry, m.id);
    else if (m.t === 'sharedAcked') for (const id of m.ids) this.unacked.delete(id);
    else if (m.t === 'claimed') this.claimed(m.reqId, m.session, m.refused === true);
    else if (m.t === 'holds') {
      const pending = new Set<string>();
      for (const c of this.claims.values()) pending.add(c.clientId);
      const clientIds = m.clientIds.filter((id) => this.deps.sessionOf(id) !== undefined || pending.has(id));
      this.link.postState({ t: 'holding', reqId: m.reqId, clientIds });
    } else if (m.t === 'takeover') this.takeover(m.reqId, m.clientId, m.clean, m.afterClaim, m.drains);
    // No port to it (restarting): nothing of ours reaches it anyway; it waits for its timer.
    else if (m.t === 'takeoverDrain') this.deps.drainTo(m.to, m.reqId);
    else if (m.t === 'sessionIn') this.sessionIn(m.clientId, m.buf, m.done);
    else if (m.t === 'restore') this.restore(m.clientId, m.session);
    else if (m.t === 'dropRestored') {
      const s = this.deps.sessionOf(m.clientId);
      if (s && !s.conn && this.restored.has(s)) this.deps.exportSession(m.clientId, true, () => null);
    }
  }

  /** Sessions restored by `restore` (until a client resumes them, their new node may claim them back) */
  private readonly restored = new WeakSet<Session>();

  /** A session shipped from here whose new node died before storing it: back, offline. */
  private restore(clientId: string, blob: Uint8Array): void {
    if (this.deps.sessionOf(clientId)) return; // the client is here again: that one is newer
    for (const c of this.claims.values()) if (c.clientId === clientId) return; // its claim decides
    try {
      const snap = decodeSession(blob);
      const session = new Session(clientId, false);
      restoreSession(session, snap);
      if (this.deps.adoptSession(session, snap.subs, NO_SOCKET)) this.restored.add(session);
    } catch (err) {
      this.deps.counters.row[Counter.clusterErrors]++;
      this.deps.log.warn({ clientId, err: String(err) }, 'shipped session unreadable: not restored');
    }
  }

  private readonly mergeTimers = new Map<Session, NodeJS.Timeout>();

  private startMerge(session: Session): void {
    session.merging = [];
    this.mergeTimers.set(
      session,
      setTimeout(() => {
        this.deps.counters.row[Counter.sessionMergeTimeouts]++;
        this.endMerge(session);
      }, MERGE_MAX_MS),
    );
  }

  /** The old node forwards no more: the deliveries held meanwhile go, in their order. */
  private endMerge(session: Session): void {
    const t = this.mergeTimers.get(session);
    if (t) clearTimeout(t);
    this.mergeTimers.delete(session);
    const held = session.merging;
    session.merging = null;
    if (this.deps.sessionOf(session.clientId) !== session) return; // discarded meanwhile
    if (held) for (const d of held) this.deps.deliver(session, d.msg, d.qos, d.retainFlag, d.subIds, d.group);
  }

  /**
   * Messages that reached the client's old node after it shipped the session (forwarded for
   * this session only): delivered as its subscriptions would have there — once, at the highest
   * granted QoS of the matching ones [MQTT-3.3.5-1], with their identifiers, No Local kept.
   */
  private sessionIn(clientId: string, buf: ArrayBuffer, done: boolean): void {
    const session = this.deps.sessionOf(clientId);
    if (!session) {
      // Before its claim's answer (they travel on different connections): after the adoption.
      for (const c of this.claims.values())
        if (c.clientId === clientId && c.early.length < MAX_EARLY) {
          c.early.push({ buf, done });
          return;
        }
      if (buf.byteLength > 0) this.deps.counters.row[Counter.messagesDropped]++;
      return;
    }
    const held = session.merging;
    session.merging = null; // these go first
    const b = Buffer.from(buf);
    readEntries(b, b.length, Date.now(), (msg) => {
      let qos = -1;
      let rap = false;
      let subIds: number[] | null = null;
      for (const [filter, sub] of session.subscriptions) {
        if (sub.shared || !topicMatches(filter, msg.topic)) continue;
        if (sub.noLocal && msg.from === clientId) continue;
        if (sub.qos > qos) qos = sub.qos;
        if (sub.retainAsPublished && msg.retain) rap = true;
        if (sub.subId) (subIds ??= []).push(sub.subId);
      }
      if (qos < 0) return; // unsubscribed meanwhile
      this.deps.deliver(session, msg, Math.min(msg.qos, qos) as QoS, rap, subIds, null);
    });
    session.merging = held;
    if (done && held !== null) this.endMerge(session);
  }

  /**
   * A CONNECT: the client id is claimed cluster-wide first (registry.ts); a session another
   * node ships is adopted, then the connection attaches as usual and resumes it. Bytes the
   * client sends meanwhile wait in the socket (nothing reads it before attach).
   */
  claimThenAttach(socket: ClaimSocket, h: ConnectionOrigin, attach: () => void, refuse: () => void): void {
    const clientId = h.connect.clientId;
    const reqId = ++this.claimSeq;
    if (!this.link.postState({ t: 'claim', reqId, clientId, clean: h.connect.clean })) {
      attach(); // no cluster thread: this node alone decides, as a single broker
      return;
    }
    const timer = setTimeout(() => {
      this.deps.counters.row[Counter.claimFailures]++;
      const quorum = this.deps.claimQuorum;
      this.deps.log.warn(
        { clientId },
        quorum
          ? 'session claim not answered in time: CONNECT refused'
          : 'session claim not answered in time: session starts here',
      );
      this.claimed(reqId, null, quorum);
    }, this.deps.claimTimeoutMs);
    this.claims.set(reqId, { clientId, socket, attach, refuse, timer, deferred: [], early: [] });
  }

  private claimed(reqId: number, blob: Uint8Array | null, refused = false): void {
    const c = this.claims.get(reqId);
    if (!c) return;
    this.claims.delete(reqId);
    clearTimeout(c.timer);
    if (refused) {
      if (!c.socket.destroyed) c.refuse();
      for (const run of c.deferred) run();
      return;
    }
    if (blob && blob.length > 0) {
      try {
        const snap = decodeSession(blob);
        const session = new Session(c.clientId, false);
        restoreSession(session, snap);
        if (DIE_ON_IMPORT) process.kill(process.pid, 'SIGKILL'); // tests: a crash with the session in transit
        const clientId = c.clientId;
        // Stored here: the old node forgets the copy it kept (two-phase hand-over, tombstones.ts).
        this.deps.adoptSession(session, snap.subs, c.socket, () =>
          this.link.postState({ t: 'imported', clientId }),
        );
        this.deps.counters.row[Counter.sessionsImported]++;
        // Its old node forwards what reached it late, then says done (tombstones.ts): until
        // then the session's other deliveries wait behind those, in order.
        if (snap.subs.some(([, sub]) => !sub.shared) && this.deps.sessionOf(c.clientId) === session)
          this.startMerge(session);
        for (const e of c.early) this.sessionIn(c.clientId, e.buf, e.done);
      } catch (err) {
        this.deps.counters.row[Counter.clusterErrors]++;
        this.deps.log.warn({ clientId: c.clientId, err: String(err) }, 'shipped session unreadable: dropped');
      }
    }
    // A client that gave up meanwhile leaves the adopted session offline, as a disconnect would.
    if (!c.socket.destroyed) c.attach();
    for (const run of c.deferred) run();
  }

  /**
   * Another node takes the client over. It waits for the `drained` of the `drains` other shards
   * (messages this node accepted before the takeover are in the session then, and are shipped
   * with it; registry.ts). When it revokes our claim `afterClaim` whose answer has not arrived
   * yet, it runs after that claim's connection attached (the later claim wins).
   */
  private takeover(
    reqId: number,
    clientId: string,
    clean: boolean,
    afterClaim: number,
    drains: number,
  ): void {
    const run = () => {
      // Still merging its previous move: what it held goes into the session first.
      const here = this.deps.sessionOf(clientId);
      if (here?.merging) this.endMerge(here);
      const session = this.deps.exportSession(clientId, clean, encodeSession);
      this.link.postState({ t: 'exported', reqId, session });
    };
    const afterDrains = () => {
      const pending = afterClaim > 0 ? this.claims.get(afterClaim) : undefined;
      if (pending) pending.deferred.push(run);
      else run();
    };
    if (drains === 0) return afterDrains();
    // A shard that died meanwhile never answers (what it held died with it): bounded, shorter
    // than the cluster thread's wait for the export (2.5 × its call timeout).
    const timer = setTimeout(() => {
      this.deps.counters.row[Counter.takeoverDrainTimeouts]++;
      this.drainWaits.delete(reqId);
      afterDrains();
    }, this.deps.claimTimeoutMs / 5);
    this.drainWaits.set(reqId, { remaining: drains, run: afterDrains, timer });
  }

  /** Another shard's `drained` for takeover `reqId` (its messages before it are routed here). */
  onDrained(reqId: number): void {
    const w = this.drainWaits.get(reqId);
    if (!w || --w.remaining > 0) return;
    clearTimeout(w.timer);
    this.drainWaits.delete(reqId);
    w.run();
  }

  private publishWill(clientId: string, w: WillMessage): void {
    const msg = Message.fromStrings(w.topic, asBuffer(w.payload), w.qos, w.retain, clientId);
    if (w.props) msg.props = asBuffer(w.props);
    if (w.expiry !== undefined && w.expiry >= 0) msg.expiryAt = Date.now() + w.expiry * 1000;
    this.deps.publish(msg);
  }
}

/** Whole seconds from `now` to `due` (rounded up), 0 when past. */
function secondsLeft(due: number, now: number): number {
  return Math.max(0, Math.ceil((due - now) / 1000));
}

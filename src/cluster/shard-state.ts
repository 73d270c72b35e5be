import { Counter, type Counters } from '../metrics/counters.js';
import type { WillMessage } from '../protocol/codec.js';
import type { SharedGroups } from '../routing/shared.js';
import type { SharedGroupRouting } from '../routing/shared-groups.js';
import { Message } from '../session/message.js';
import type { Session } from '../session/session.js';
import { asBuffer } from '../shard/retained-relay.js';
import { EntryWriter, readEntries } from './codec.js';
import type { ShardClusterLink } from './shard-link.js';
import type { ClusterStateToShard, ClusterWill, SharedOut } from './state-messages.js';

/** Most shared deliveries a shard keeps for members on other nodes until they acknowledge */
const MAX_UNACKED = 10_000;

/** What the shard side of Cluster II needs of its shard. */
export interface ShardStateDeps {
  /** Routes a message as published on this node (local, other shards, other nodes) */
  publish(msg: Message): void;
  readonly shardId: number;
  readonly counters: Counters;
  readonly shared: SharedGroupRouting;
  readonly sharedGroups: SharedGroups;
}

/**
 * A shard's side of Cluster II: tells the cluster thread which wills of its clients the other
 * nodes must publish if this node dies, and publishes the wills of dead nodes' clients the
 * cluster thread hands it. Rides the shard's cluster port (shard-link.ts).
 */
export class ShardClusterState {
  /** Wills the cluster thread holds for clients of this shard (resent to a restarted thread) */
  private readonly wills = new Map<string, WillMessage & { delay: number }>();
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

  constructor(
    private readonly link: ShardClusterLink,
    private readonly deps: ShardStateDeps,
  ) {
    link.onState = (m) => this.onMessage(m);
    link.onAttach = () => {
      this.set = [...this.wills].map(([clientId, will]) => ({ clientId, will }));
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
   * capped by the session expiry, as on close here) or one waiting for its delay; none → cleared.
   */
  syncWill(session: Session): void {
    const id = session.clientId;
    let will: (WillMessage & { delay: number }) | null = null;
    if (session.will) {
      const w = session.will;
      const delay =
        w.delay && w.delay > 0 && session.expiryInterval > 0 ? Math.min(w.delay, session.expiryInterval) : 0;
      will = { ...w, delay };
    } else if (session.pendingWill) {
      will = { ...session.pendingWill, delay: Math.max(0, Math.ceil((session.willAt - Date.now()) / 1000)) };
    }
    if (will) {
      this.wills.set(id, will);
      this.set.push({ clientId: id, will });
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
    w.add(msg, remaining, -1);
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
  }

  private publishWill(clientId: string, w: WillMessage): void {
    const msg = Message.fromStrings(w.topic, asBuffer(w.payload), w.qos, w.retain, clientId);
    if (w.props) msg.props = asBuffer(w.props);
    if (w.expiry !== undefined && w.expiry >= 0) msg.expiryAt = Date.now() + w.expiry * 1000;
    this.deps.publish(msg);
  }
}

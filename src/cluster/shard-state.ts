import type { WillMessage } from '../protocol/codec.js';
import { Message } from '../session/message.js';
import type { Session } from '../session/session.js';
import { asBuffer } from '../shard/retained-relay.js';
import type { ShardClusterLink } from './shard-link.js';
import type { ClusterStateToShard, ClusterWill } from './state-messages.js';

/** What the shard side of Cluster II needs of its shard. */
export interface ShardStateDeps {
  /** Routes a message as published on this node (local, other shards, other nodes) */
  publish(msg: Message): void;
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

  constructor(
    private readonly link: ShardClusterLink,
    private readonly deps: ShardStateDeps,
  ) {
    link.onState = (m) => this.onMessage(m);
    link.onAttach = () => {
      this.set = [...this.wills].map(([clientId, will]) => ({ clientId, will }));
      this.clear = [];
      this.schedule();
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
    if (this.set.length === 0 && this.clear.length === 0) return;
    // Not posted (no cluster thread): a new thread gets the whole table on attach.
    this.link.postState({ t: 'wills', set: this.set, clear: this.clear });
    this.set = [];
    this.clear = [];
  };

  private onMessage(m: ClusterStateToShard): void {
    if (m.t === 'publishWill') this.publishWill(m.clientId, m.will);
  }

  private publishWill(clientId: string, w: WillMessage): void {
    const msg = Message.fromStrings(w.topic, asBuffer(w.payload), w.qos, w.retain, clientId);
    if (w.props) msg.props = asBuffer(w.props);
    if (w.expiry !== undefined && w.expiry >= 0) msg.expiryAt = Date.now() + w.expiry * 1000;
    this.deps.publish(msg);
  }
}

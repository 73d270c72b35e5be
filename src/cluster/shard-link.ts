import type { MessagePort } from 'node:worker_threads';
import { Counter, type Counters } from '../metrics/counters.js';
import { MatchResult, TopicIndex } from '../routing/topic-index.js';
import type { Message } from '../session/message.js';
import type { ClusterToShard, ShardInit, ShardToCluster } from '../threads/messages.js';
import { EntryWriter, readEntries } from './codec.js';

/** What the link needs from its shard (kept small so the shard's layout may change). */
export interface ShardSide {
  readonly counters: Counters;
  /** Routes a message to this node's subscribers (the link makes sure it is not forwarded again). */
  publish(msg: Message, conn: null): boolean;
  /** Logs and counts a handler that threw on an inter-thread message. */
  onLinkError(err: unknown, msg: unknown): void;
}

/**
 * A shard's side of the cluster (all cluster logic lives in src/cluster/; the shard calls
 * `route` from its routing step and `attach` when main sends a new port).
 *
 * Outgoing: a publish whose topic matches the remote-route index (shared memory written by the
 * cluster thread; bit = peer slot) is appended with its destination mask to one buffer, posted
 * (transferred) to the cluster thread once per event-loop turn: never a postMessage per message.
 * Incoming: batches forwarded by peers are routed to local subscribers only — a forwarded
 * message never leaves this node again, so routes that overlap cannot loop.
 */
export class ShardClusterLink {
  private readonly remote: TopicIndex;
  private readonly match = new MatchResult(8);
  private readonly out = new EntryWriter();
  private flushScheduled = false;
  /** True while routing a forwarded batch: those messages stay on this node */
  private receiving = false;

  private constructor(
    private readonly shard: ShardSide,
    remote: TopicIndex,
    private port: MessagePort | null,
  ) {
    this.remote = remote;
    if (port) this.listen(port);
  }

  /** Null when the broker runs without a cluster. */
  static create(init: ShardInit, shard: ShardSide): ShardClusterLink | null {
    if (!init.remoteIndex) return null;
    return new ShardClusterLink(shard, TopicIndex.attach(init.remoteIndex), init.cluster ?? null);
  }

  /** A (re)started cluster thread's port. */
  attach(port: MessagePort): void {
    this.port?.close();
    this.port = port;
    this.listen(port);
  }

  private listen(port: MessagePort): void {
    port.on('message', (m: ClusterToShard) => {
      try {
        if (m.t === 'forwarded') this.onForwarded(m);
      } catch (err) {
        this.shard.onLinkError(err, m);
      }
    });
  }

  /**
   * Called for every routed message: true when some remote node has a matching route (the
   * message then counts as matched). Cost when no peer has routes: one Atomics.load.
   */
  route(msg: Message): boolean {
    if (this.receiving) return false;
    const remote = this.remote;
    if (remote.activeFilters() === 0) return false;
    const topic = msg.topicBytes;
    const m = this.match;
    if (remote.match(topic, 0, topic.length, m) === 0 || m.mask === 0) return false;
    let remaining = 0;
    if (msg.expiryAt > 0) {
      remaining = msg.expiryAt - Date.now();
      if (remaining <= 0) return true; // expired in flight: nobody may get it [MQTT-3.3.2-5]
      remaining = Math.min(Math.ceil(remaining), 0xffffffff);
    }
    this.out.add(msg, remaining, m.mask);
    const row = this.shard.counters.row;
    let mask = m.mask;
    while (mask !== 0) {
      row[Counter.messagesForward]++;
      mask &= mask - 1;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
    return true;
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.out.count === 0) return;
    const { buf, count } = this.out.take();
    const row = this.shard.counters.row;
    if (!this.port) {
      row[Counter.forwardDropped] += count; // cluster thread restarting
      return;
    }
    row[Counter.forwardBatches]++;
    const ab = buf.buffer as ArrayBuffer;
    this.port.postMessage({ t: 'forward', buf: ab, len: buf.length, count } satisfies ShardToCluster, [ab]);
  };

  private onForwarded(m: ClusterToShard): void {
    const b = Buffer.from(m.buf, 0, m.len);
    this.shard.counters.row[Counter.messagesForwardReceived] += m.count;
    this.receiving = true;
    try {
      readEntries(b, m.len, Date.now(), (msg) => {
        this.shard.publish(msg, null);
      });
    } finally {
      this.receiving = false;
    }
  }
}

import { Counter } from '../metrics/counters.js';
import type { Message } from '../session/message.js';
import type { Connection } from '../shard/connection.js';
import type { ShardState } from '../shard/state.js';
import type { ShardToShard } from '../threads/messages.js';

/** A subscriber whose output is over its high-water mark, and the publishers it holds. */
interface Congestion {
  /** Completed output bytes at the last check (progress = more since) */
  flushed: number;
  /** libuv's unsent bytes of the write in flight at the last check (progress = fewer) */
  unsent: number;
  timer: NodeJS.Timeout;
  /** Took nothing for mqtt.slow_consumer_timeout: holds released, QoS 0 dropped until 'drain' */
  slow: boolean;
  /** Publishers on this shard it holds */
  local: Set<Connection>;
  /** Publishers on other shards it holds: `${shard}\n${clientId}` */
  remote: Set<string>;
}

/** Bytes of a socket's output whose write has completed (public counters only). */
function flushedBytes(conn: Connection): number {
  return conn.socket.bytesWritten - conn.socket.writableLength;
}

/**
 * Bytes of the write in flight that the kernel has not taken yet (libuv's write queue; Node's
 * handle exposes it, undocumented: 0 when absent). A turn's output is one write that completes
 * only when all of it is in the kernel, which for a slow reader can take longer than the
 * timeout: this shrinking is progress too.
 */
function unsentInFlight(conn: Connection): number {
  return (conn.socket as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize ?? 0;
}

/**
 * QoS 0 fairness (issue #9 item 10). A QoS 0 delivery to a subscriber whose socket is over its
 * high-water mark used to be dropped, so a fast publisher got most of a continuously-reading but
 * slower subscriber's messages dropped. Now, while such a subscriber keeps taking output, the
 * delivery is written anyway and its publisher is *held*: not read until the subscriber drains
 * (TCP then pushes back on the publisher, as mosquitto's single loop does). A publisher on
 * another shard is held by a `hold` message to its shard (`release` undoes it). A subscriber
 * that takes nothing for `mqtt.slow_consumer_timeout` is a slow consumer: its holds are released
 * and QoS 0 to it is dropped (as before) until it drains, so a stopped reader never slows anyone
 * for longer than that. A message with no publisher to hold (will, $SYS, REST, another node's)
 * is dropped as before. Nothing here runs unless a subscriber is congested.
 */
export class FlowControl {
  /** Publisher of the message being routed, when it was read on this shard (Router.publish) */
  sourceConn: Connection | null = null;
  /** Shard the batch being delivered came from (-1: none; Shard.listenPeer) */
  sourceShard = -1;
  private readonly congested = new Map<Connection, Congestion>();
  /** Holds other shards' subscribers placed on publishers here: by shard, client id → count */
  private readonly remoteHolds: Map<string, number>[];

  constructor(private readonly s: ShardState) {
    this.remoteHolds = s.peers.map(() => new Map());
  }

  /** Congested subscribers on this shard (0 on the normal path: nothing to do) */
  get active(): number {
    return this.congested.size;
  }

  /**
   * A QoS 0 delivery to a congested subscriber: true to write it anyway (its publisher is now
   * held), false to drop it (slow consumer, the option is 0, or no publisher to hold).
   */
  admit(sub: Connection, msg: Message): boolean {
    const timeout = this.s.config['mqtt.slow_consumer_timeout'] * 1000;
    if (timeout <= 0) return false;
    const pub = this.sourceConn;
    const fromShard = this.sourceShard;
    if (pub === null && (fromShard < 0 || msg.from === '')) return false;
    let c = this.congested.get(sub);
    if (c === undefined) {
      c = {
        flushed: flushedBytes(sub),
        unsent: unsentInFlight(sub),
        timer: setTimeout(checkProgress, timeout, this, sub),
        slow: false,
        local: new Set(),
        remote: new Set(),
      };
      c.timer.unref();
      this.congested.set(sub, c);
    }
    if (c.slow) return false;
    if (pub !== null) {
      if (!c.local.has(pub)) {
        c.local.add(pub);
        this.s.counters.row[Counter.publishersHeld]++;
        pub.holdRead();
      }
    } else {
      const key = `${fromShard}\n${msg.from}`;
      if (!c.remote.has(key)) {
        c.remote.add(key);
        this.s.counters.row[Counter.publishersHeld]++;
        this.s.peers[fromShard]?.postMessage({ t: 'hold', clientId: msg.from } satisfies ShardToShard);
      }
    }
    return true;
  }

  /** Acks or 'drain' for a session's connection: a subscriber no longer congested lets go. */
  onRoom(sub: Connection): void {
    const c = this.congested.get(sub);
    if (c === undefined || sub.congested) return;
    this.end(sub, c);
  }

  /** A connection closed: as a subscriber it lets go of its publishers. */
  forget(conn: Connection): void {
    const c = this.congested.get(conn);
    if (c !== undefined) this.end(conn, c);
  }

  /** The subscriber's timer: progress keeps the holds one more period, none makes it slow. */
  check(sub: Connection): void {
    const c = this.congested.get(sub);
    if (c === undefined || c.slow) return;
    if (sub.closed) {
      this.end(sub, c);
      return;
    }
    // One write is in flight at a time: a new one means the last completed (flushed grows).
    const flushed = flushedBytes(sub);
    const unsent = unsentInFlight(sub);
    if (flushed > c.flushed || unsent < c.unsent) {
      c.flushed = flushed;
      c.unsent = unsent;
      c.timer.refresh();
      return;
    }
    c.slow = true;
    this.release(c);
    this.s.counters.row[Counter.slowConsumers]++;
    if (this.s.log.isLevelEnabled('info'))
      this.s.log.info(
        { clientId: sub.clientId, timeoutS: this.s.config['mqtt.slow_consumer_timeout'] },
        'slow consumer: took no output within mqtt.slow_consumer_timeout; QoS 0 dropped until it drains',
      );
  }

  private end(sub: Connection, c: Congestion): void {
    clearTimeout(c.timer);
    this.congested.delete(sub);
    this.release(c);
  }

  private release(c: Congestion): void {
    for (const pub of c.local) pub.releaseRead();
    c.local.clear();
    for (const key of c.remote) {
      const nl = key.indexOf('\n');
      const shard = Number(key.slice(0, nl));
      this.s.peers[shard]?.postMessage({ t: 'release', clientId: key.slice(nl + 1) } satisfies ShardToShard);
    }
    c.remote.clear();
  }

  /** A subscriber on shard `from` holds the publisher `clientId` of this shard (or lets go). */
  onPeerHold(from: number, clientId: string, hold: boolean): void {
    const holds = this.remoteHolds[from];
    const n = holds.get(clientId) ?? 0;
    if (!hold && n === 0) return;
    if (hold) holds.set(clientId, n + 1);
    else if (n === 1) holds.delete(clientId);
    else holds.set(clientId, n - 1);
    const conn = this.s.sessions.get(clientId)?.conn as Connection | null | undefined;
    if (!conn || conn.closed) return;
    if (hold) conn.holdRead();
    else conn.releaseRead();
  }

  /** Shard `from` died: its subscribers' holds go with it. */
  dropShard(from: number): void {
    const holds = this.remoteHolds[from];
    for (const [clientId, n] of holds) {
      const conn = this.s.sessions.get(clientId)?.conn as Connection | null | undefined;
      if (conn && !conn.closed) for (let i = 0; i < n; i++) conn.releaseRead();
    }
    holds.clear();
  }
}

function checkProgress(flow: FlowControl, sub: Connection): void {
  flow.check(sub);
}

import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import type { MessagePort } from 'node:worker_threads';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { ClusterToShard, ShardForward } from '../threads/messages.js';
import { entryEnd } from './codec.js';
import { ACCEPTED, type BatchDone, ForwardStream, LOST, QUEUE_FULL } from './forward.js';
import type { ForwardBatch } from './gen/emqx_ts/cluster/v1/cluster_pb.js';
import { type Peer, type PeerTable, touch } from './peers.js';
import { EnvelopeReader, forwardAck, readForwardBatch } from './wire.js';
import { YOUNG_GC_BYTES, YoungGc } from './young-gc.js';

/**
 * The cluster thread's data plane: the forward stream to every synced peer (out), the streams
 * from peers (in, handed to shards), and the shards' batches split per destination peer. The
 * membership side (node.ts) opens and closes streams as peers come and go.
 */
export class DataPlane {
  private readonly touched: Peer[] = [];
  private stallTimer: NodeJS.Timeout | null = null;
  stopping = false;
  /** Scavenges after every few MiB of buffers taken in (young-gc.ts: else V8 runs mark-compacts) */
  readonly youngGc = new YoungGc(YOUNG_GC_BYTES);
  /**
   * Gate of incoming batches (tombstones.ts): calls `run` (hand to the shard, ack) now or later,
   * in arrival order
   */
  admit: (buf: Buffer, off: number, len: number, run: () => void) => void = (_b, _o, _l, run) => run();

  constructor(
    private config: Config,
    private readonly name: string,
    private readonly incarnation: bigint,
    private readonly peers: PeerTable,
    private readonly shards: (MessagePort | null)[],
    private readonly counters: Counters,
    private readonly log: Logger,
  ) {}

  /** Checks for stalled streams a few times per ack timeout. */
  start(): void {
    const every = Math.max(50, Math.min(1000, (this.config['cluster.forward_ack_timeout'] * 1000) / 4));
    if (this.stallTimer) clearInterval(this.stallTimer);
    this.stallTimer = setInterval(() => this.checkStalls(Date.now()), every);
  }

  /** A reload: the new window, queue bound and ack timeout apply (streams opened later get them too). */
  reconfigure(config: Config): void {
    this.config = config;
    for (const p of this.peers.byName.values()) p.stream?.setLimits(this.windowBytes(), this.queueBytes());
    if (this.stallTimer) this.start();
  }

  private windowBytes(): number {
    return this.config['cluster.max_inflight_bytes'];
  }

  private queueBytes(): number {
    return this.config['cluster.max_queue_bytes'];
  }

  stop(): void {
    this.stopping = true;
    if (this.stallTimer) clearInterval(this.stallTimer);
  }

  /**
   * A batch waiting longer than cluster.forward_ack_timeout for its ack: the stream is stalled
   * (a frozen peer whose heartbeats have not timed out yet, a broken connection the kernel has
   * not noticed). It is closed — what it holds is LOST, held acks go with an error code — and a
   * new one is opened, so no publisher waits on it forever.
   */
  checkStalls(now: number): void {
    const limit = this.config['cluster.forward_ack_timeout'] * 1000;
    for (const p of this.peers.byName.values()) {
      const s = p.stream;
      if (!s) continue;
      const at = s.oldestAt();
      if (at === 0 || now - at <= limit) continue;
      this.counters.row[Counter.clusterForwardTimeouts]++;
      this.log.warn({ peer: p.name, waitedMs: now - at }, 'forward stream stalled: closed, held acks fail');
      s.close(LOST);
    }
  }

  /**
   * Opens the forward stream to a peer we are synced with, and again at once when it ends: the
   * new one queues what shards send meanwhile and calls the peer after `delayMs` (a dead peer is
   * retried every 100 ms; what it queued is LOST when that call fails too).
   */
  openStream(p: Peer, delayMs = 0): void {
    if (p.stream || !p.client || !p.clientAddress) return;
    const to = p.incarnation; // its acks prove this incarnation alive, not a later one
    const s = new ForwardStream(
      p.clientAddress,
      this.name,
      this.incarnation,
      this.windowBytes(),
      this.queueBytes(),
      this.counters,
      (lost, err, code) => {
        const row = this.counters.row;
        if (lost > 0) row[Counter.forwardDropped] += lost;
        if (p.stream === s) p.stream = null;
        if (err && !this.stopping) {
          if (code !== ACCEPTED) row[Counter.clusterStreamBreaks]++;
          this.log.warn({ peer: p.name, lost, err: String(err) }, 'forward stream ended');
        }
        // Still synced: a new one (order restarts with it).
        if (p.synced && !this.stopping) this.openStream(p, 100);
      },
      () => touch(p, to),
    );
    p.stream = s;
    s.start(delayMs);
  }

  /**
   * Incoming forward stream, gRPC framed by hand (wire.ts): each ForwardBatch is read once into
   * a buffer of its own, checked, and that buffer is transferred to the shard (the same shard
   * for a peer: order kept); acknowledged once handed over.
   */
  serveForward(req: Http2ServerRequest, res: Http2ServerResponse): void {
    let from: Peer | undefined;
    let failed = false;
    const fail = (status: number, message: string) => {
      if (failed) return;
      failed = true;
      this.counters.row[Counter.clusterErrors]++;
      this.log.warn({ err: message }, 'forward stream refused');
      res.addTrailers({ 'grpc-status': String(status), 'grpc-message': encodeURIComponent(message) });
      res.end();
    };
    res.writeHead(200, { 'content-type': 'application/grpc+proto' });
    const reader = new EnvelopeReader(Math.max(1 << 20, this.queueBytes()), (m) => {
      const b = readForwardBatch(m, 0, m.length);
      if (b.from) from = this.peers.byName.get(b.from);
      this.counters.row[Counter.clusterWireBatchesIn]++;
      this.counters.row[Counter.clusterWireBytesIn] += b.entriesLen;
      const ack = () => {
        if (!res.stream.destroyed) res.write(forwardAck(Number(b.seq)));
      };
      if (touch(from, b.incarnation) && b.count > 0) {
        const peer = from;
        if (!this.check(peer, m, b.entriesAt, b.entriesLen, b.count)) return this.admit(m, 0, 0, ack);
        // Acked once handed over, after any batch held before it (acks stay in order).
        this.admit(m, b.entriesAt, b.entriesLen, () => {
          this.deliver(peer, m, b.entriesAt, b.entriesLen, b.count, true);
          ack();
        });
        return;
      }
      if (b.count > 0) this.counters.row[Counter.forwardDropped] += b.count;
      this.admit(m, 0, 0, ack);
    });
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      this.youngGc.add(chunk.length);
      try {
        reader.push(chunk);
      } catch (err) {
        fail(3, (err as Error).message); // INVALID_ARGUMENT
      }
    });
    req.on('end', () => {
      if (failed) return;
      if (reader.partial) return fail(3, 'stream ended inside a message');
      res.addTrailers({ 'grpc-status': '0' });
      res.end();
    });
    req.on('error', () => {}); // a peer that goes away: its batches are its to count
  }

  /** The same stream through connect-node (a client speaking the Connect or gRPC-Web protocol). */
  async *receive(reqs: AsyncIterable<ForwardBatch>): AsyncGenerator<{ seq: bigint }> {
    let from: Peer | undefined;
    for await (const b of reqs) {
      if (b.from) from = this.peers.byName.get(b.from);
      if (touch(from, b.incarnation) && b.count > 0) {
        const e = b.entries;
        const buf = Buffer.from(e.buffer, e.byteOffset, e.length);
        // Not held (the ack is this generator's yield): tombstones see it, exports may race it.
        if (this.check(from, buf, 0, e.length, b.count)) {
          this.onReceived(buf, 0, e.length);
          this.deliver(from, buf, 0, e.length, b.count, false);
        }
      } else if (b.count > 0) {
        this.counters.row[Counter.forwardDropped] += b.count;
      }
      yield { seq: b.seq };
    }
  }

  /** Sees a batch that is not gated (connect-node path): tombstones.ts scans it. */
  onReceived: (buf: Buffer, off: number, len: number) => void = () => {};

  /** Checks a batch's entries (bounds and count); a malformed one is dropped and counted. */
  private check(from: Peer, buf: Buffer, off: number, len: number, count: number): boolean {
    try {
      const end = off + len;
      let p = off;
      let n = 0;
      while (p < end) {
        p = entryEnd(buf, p, end);
        n++;
      }
      if (n !== count) throw new RangeError(`batch count ${count}, found ${n} entries`);
    } catch (err) {
      this.counters.row[Counter.clusterErrors]++;
      this.log.warn({ peer: from.name, err: (err as Error).message }, 'malformed forward batch dropped');
      return false;
    }
    return true;
  }

  /**
   * Posts a checked batch to the peer's shard. `own`: `buf`'s ArrayBuffer holds only this
   * message (wire.ts) and is transferred as it is; otherwise it is copied.
   */
  private deliver(from: Peer, buf: Buffer, off: number, len: number, count: number, own: boolean): void {
    const shard = this.shards[from.slot % this.shards.length];
    if (!shard) {
      this.counters.row[Counter.forwardDropped] += count;
      return;
    }
    let ab = buf.buffer as ArrayBuffer;
    let at = buf.byteOffset + off;
    if (!own || ab.byteLength !== buf.length) {
      ab = new ArrayBuffer(len);
      Buffer.from(ab).set(buf.subarray(off, off + len));
      at = 0;
    }
    shard.postMessage({ t: 'forwarded', buf: ab, off: at, len, count } satisfies ClusterToShard, [ab]);
  }

  /**
   * A shard's batch: one buffer of entries per destination peer, queued for that peer as it is
   * (no work per entry here); the buffers go to the streams once per event-loop turn, so shard
   * batches that arrive together (several shards, or a thread that was descheduled) leave as
   * one gRPC message per peer. With a `seq`, the shard holds QoS 1/2 acks until every peer its
   * batch went to has accepted its part (or is gone): one `forwardAcked` when the last part is
   * done, with the worst outcome.
   */
  onShardForward(m: ShardForward, port: MessagePort): void {
    const slots = this.peers.bySlot;
    const seq = m.seq;
    let parts = 1;
    let worst = ACCEPTED;
    const done: BatchDone | null =
      seq > 0
        ? (code) => {
            if (code > worst) worst = code;
            if (--parts === 0)
              port.postMessage({ t: 'forwardAcked', seq, code: worst } satisfies ClusterToShard);
          }
        : null;
    for (const part of m.parts) {
      const peer = slots[part.slot];
      if (!peer?.stream) {
        // Its stream is between two (broken, reopening) or it is rejoining: lost, not accepted.
        this.counters.row[Counter.forwardDropped] += part.count;
        worst = LOST;
        continue;
      }
      if (peer.outCount === 0) {
        this.touched.push(peer);
        if (!this.flushScheduled) {
          this.flushScheduled = true;
          setImmediate(this.flush);
        }
      }
      peer.outParts.push(Buffer.from(part.buf, 0, part.len));
      this.youngGc.add(part.buf.byteLength);
      peer.outCount += part.count;
      if (done) {
        parts++;
        peer.outDone.push(done);
      }
    }
    done?.(ACCEPTED);
  }

  private flushScheduled = false;

  /** This turn's entries, one batch per peer, onto the streams. */
  private readonly flush = (): void => {
    this.flushScheduled = false;
    const now = Date.now();
    for (const peer of this.touched) {
      const chunks = peer.outParts;
      const count = peer.outCount;
      peer.outParts = [];
      peer.outCount = 0;
      const dones = peer.outDone;
      peer.outDone = [];
      const done: BatchDone | null =
        dones.length === 0
          ? null
          : dones.length === 1
            ? dones[0]
            : (code) => {
                for (const d of dones) d(code);
              };
      if (!peer.stream?.push(chunks, count, done, now)) {
        this.counters.row[Counter.forwardDropped] += count;
        done?.(peer.stream ? QUEUE_FULL : LOST);
      }
    }
    this.touched.length = 0;
  };
}

import { type ClientHttp2Session, type ClientHttp2Stream, connect, constants } from 'node:http2';
import { Counter, type Counters } from '../metrics/counters.js';
import { isCut } from './partition.js';
import { EnvelopeReader, FORWARD_PATH, forwardHeader, readForwardAck } from './wire.js';

/** HTTP/2 flow-control window and largest frame on cluster connections (both directions). */
export const H2_WINDOW = 8 << 20;
export const H2_FRAME = 1 << 20;

/** How a batch ended, as the reason code its held PUBACK/PUBREC gets (MQTT 5). */
export const ACCEPTED = 0;
/** Lost in a stream that broke or stalled: it may or may not have reached the peer */
export const LOST = 0x80;
/** Refused: the peer's queue is over cluster.max_queue_bytes */
export const QUEUE_FULL = 0x97;

/** Called once per batch: ACCEPTED (also when the peer is known down: no destination), LOST, QUEUE_FULL */
export type BatchDone = (code: number) => void;

interface Pending {
  seq: number;
  /** The batch's entries, in pieces (one per shard batch): sent back to back as one message;
   *  dropped once written (inflight batches keep only their size and count) */
  chunks: Buffer[];
  bytes: number;
  count: number;
  /** When it was queued (ms): a batch unacknowledged for cluster.forward_ack_timeout stalls the stream */
  at: number;
  done: BatchDone | null;
}

/**
 * The one long-lived bidi stream of forwarded publishes to one peer. Batches wait in a queue
 * bounded by `maxQueueBytes` (beyond it `push` refuses and the caller counts the drop: memory
 * stays bounded even when a peer is slow); at most `windowBytes` are sent and not yet
 * acknowledged. The peer acknowledges a batch once it has handed it to its shards, so the window
 * is the back-pressure of the link. Order is kept: one stream, batches in sequence.
 * Delivery across nodes is at most once (as EMQX's default async forwarding): batches in flight
 * when the stream breaks are lost and counted, never resent (QoS 0 is thus at most once between
 * nodes). Their held QoS 1/2 acks end with LOST, unless the stream was closed because the peer
 * is known down (ACCEPTED: its routes are gone, as if it had no subscribers). A batch not
 * acknowledged within the ack timeout means a stalled stream: `stalledSince` tells the node,
 * which closes it (LOST) and opens another, so no held ack waits longer than that.
 */
export class ForwardStream {
  private readonly queue: Pending[] = [];
  private readonly inflight: Pending[] = [];
  queuedBytes = 0;
  inflightBytes = 0;
  private seq = 0;
  private closed = false;
  private ended = false;
  /** Code for the batches the stream still holds when it ends */
  private endCode = LOST;
  private session: ClientHttp2Session | null = null;
  private req: ClientHttp2Stream | null = null;
  /** The HTTP/2 stream took our writes (false: wait for 'drain' before writing more) */
  private writable = false;
  private fromBytes: Buffer;
  private err: unknown = null;
  private status = '';

  constructor(
    /** host:port of the peer's cluster service */
    private readonly address: string,
    from: string,
    private readonly incarnation: bigint,
    private windowBytes: number,
    private maxQueueBytes: number,
    private readonly counters: Counters,
    /** The stream ended (error or close) with this many publishes unsent or unacknowledged */
    private readonly onEnd: (lost: number, err: unknown, code: number) => void,
    /** An ack arrived: the peer is alive and taking our batches (its liveness, node.ts) */
    private readonly onProgress: () => void = () => {},
  ) {
    this.fromBytes = Buffer.from(from, 'utf8');
  }

  /** Calls the peer now, or after `delayMs` (batches pushed meanwhile wait in the queue). */
  start(delayMs = 0): void {
    if (delayMs > 0) setTimeout(() => this.open(), delayMs);
    else this.open();
  }

  /** Queues a batch; false (nothing queued) when the queue is full or the stream closed. */
  push(chunks: Buffer[], count: number, done: BatchDone | null, now: number): boolean {
    let bytes = 0;
    for (const c of chunks) bytes += c.length;
    if (this.closed || this.queuedBytes + bytes > this.maxQueueBytes) return false;
    this.queue.push({ seq: 0, chunks, bytes, count, at: now, done });
    this.queuedBytes += bytes;
    this.pump();
    return true;
  }

  /** A reload's new bounds (a lower queue bound refuses new batches until it drains below). */
  setLimits(windowBytes: number, maxQueueBytes: number): void {
    this.windowBytes = windowBytes;
    this.maxQueueBytes = maxQueueBytes;
    this.pump();
  }

  /** When the oldest unacknowledged batch was queued (ms), 0 when none waits. */
  oldestAt(): number {
    const b = this.inflight[0] ?? this.queue[0];
    return b ? b.at : 0;
  }

  /** Ends the stream; what it still holds ends with `code` (ACCEPTED: the peer is known down). */
  close(code = LOST): void {
    if (this.closed) return;
    this.endCode = code;
    this.closed = true;
    this.finish(new Error('forward stream closed'));
  }

  /**
   * One HTTP/2 connection per stream (a broken stream takes its connection with it; the next
   * one starts clean), with the wide windows of the server (node.ts).
   */
  private open(): void {
    if (this.closed) return this.finish(this.err ?? new Error('forward stream closed'));
    if (isCut(this.address)) return this.finish(new Error('partitioned (test)'));
    const session = connect(`http://${this.address}`, {
      settings: { initialWindowSize: H2_WINDOW, maxFrameSize: H2_FRAME },
    });
    this.session = session;
    session.on('error', (err) => this.finish(err));
    session.on('close', () => this.finish(new Error('connection closed')));
    session.on('connect', () => {
      // A stream closed while connecting has destroyed the session already (setting it throws).
      if (!session.destroyed) session.setLocalWindowSize(H2_WINDOW);
    });
    const req = session.request(
      {
        ':method': 'POST',
        ':path': FORWARD_PATH,
        'content-type': 'application/grpc+proto',
        te: 'trailers',
      },
      { endStream: false },
    );
    this.req = req;
    this.writable = true;
    const acks = new EnvelopeReader(1 << 16, (m) => this.onAck(readForwardAck(m, 0, m.length)));
    req.on('response', (h) => {
      const type = String(h['content-type'] ?? '');
      if (h[':status'] !== 200 || !type.startsWith('application/grpc'))
        this.finish(new Error(`forward stream refused: HTTP ${h[':status']} ${type}`));
      else if (h['grpc-status'] !== undefined) this.status = String(h['grpc-status']);
    });
    req.on('data', (chunk: Buffer) => {
      try {
        acks.push(chunk);
      } catch (err) {
        this.finish(err);
      }
    });
    req.on('trailers', (t) => {
      this.status = String(t['grpc-status'] ?? '');
      if (this.status !== '0')
        this.finish(new Error(`forward stream ended: grpc-status ${this.status} ${t['grpc-message'] ?? ''}`));
    });
    req.on('drain', () => {
      this.writable = true;
      this.pump();
    });
    req.on('error', (err) => this.finish(err));
    req.on('close', () =>
      this.finish(
        new Error(this.status === '0' ? 'forward stream ended by the peer' : 'forward stream broken'),
      ),
    );
    this.pump();
  }

  /** Sends queued batches while the window has room: a header, then the entries as they are. */
  private pump(): void {
    const req = this.req;
    if (!req || !this.writable || this.closed) return;
    const row = this.counters.row;
    while (this.queue.length > 0 && this.inflightBytes < this.windowBytes && this.writable) {
      const b = this.queue.shift()!;
      this.queuedBytes -= b.bytes;
      b.seq = ++this.seq;
      this.inflight.push(b);
      this.inflightBytes += b.bytes;
      const from = this.seq === 1 ? this.fromBytes : EMPTY;
      req.cork();
      req.write(forwardHeader(from, this.incarnation, b.seq, b.count, b.bytes));
      for (const c of b.chunks) this.writable = req.write(c);
      req.uncork();
      // Not kept until the ack: the HTTP/2 stream holds what it has not written yet, and
      // nothing is resent, so an inflight batch needs only its size and count.
      b.chunks = NO_CHUNKS;
      row[Counter.clusterWireBatchesOut]++;
      row[Counter.clusterWireBytesOut] += b.bytes;
    }
  }

  private onAck(seq: number): void {
    this.onProgress();
    const inflight = this.inflight;
    while (inflight.length > 0 && inflight[0].seq <= seq) {
      const b = inflight.shift()!;
      this.inflightBytes -= b.bytes;
      b.done?.(ACCEPTED);
    }
    this.pump();
  }

  /** Once: what is left ends with the end code (LOST unless the peer is known down). */
  private finish(err: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.closed = true;
    this.err = err;
    this.req?.close(constants.NGHTTP2_CANCEL);
    this.session?.destroy();
    let lost = 0;
    const code = this.endCode;
    for (const b of this.inflight) {
      lost += b.count;
      b.done?.(code);
    }
    for (const b of this.queue) {
      lost += b.count;
      b.done?.(code);
    }
    this.inflight.length = 0;
    this.queue.length = 0;
    this.inflightBytes = 0;
    this.queuedBytes = 0;
    this.onEnd(lost, err, code);
  }
}

const EMPTY = Buffer.alloc(0);
const NO_CHUNKS: Buffer[] = [];

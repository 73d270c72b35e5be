import type { Client } from '@connectrpc/connect';
import type { ClusterService, ForwardBatch } from './gen/emqx_ts/cluster/v1/cluster_pb.js';

/** How a batch ended, as the reason code its held PUBACK/PUBREC gets (MQTT 5). */
export const ACCEPTED = 0;
/** Lost in a stream that broke or stalled: it may or may not have reached the peer */
export const LOST = 0x80;
/** Refused: the peer's queue is over cluster.max_queue_bytes */
export const QUEUE_FULL = 0x97;

/** Called once per batch: ACCEPTED (also when the peer is known down: no destination), LOST, QUEUE_FULL */
export type BatchDone = (code: number) => void;

interface Pending {
  seq: bigint;
  entries: Uint8Array;
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
  private seq = 0n;
  private wake: (() => void) | null = null;
  private closed = false;
  /** Code for the batches the stream still holds when it ends */
  private endCode = LOST;
  /** Aborts the call on close: a frozen peer never ends the response stream by itself */
  private readonly abort = new AbortController();

  constructor(
    private readonly client: Client<typeof ClusterService>,
    private readonly from: string,
    private readonly incarnation: bigint,
    private windowBytes: number,
    private maxQueueBytes: number,
    /** The stream ended (error or close) with this many publishes unsent or unacknowledged */
    private readonly onEnd: (lost: number, err: unknown, code: number) => void,
    /** An ack arrived: the peer is alive and taking our batches (its liveness, node.ts) */
    private readonly onProgress: () => void = () => {},
  ) {}

  /** Calls the peer now, or after `delayMs` (batches pushed meanwhile wait in the queue). */
  start(delayMs = 0): void {
    if (delayMs > 0) setTimeout(() => void this.run(), delayMs);
    else void this.run();
  }

  /** Queues a batch; false (nothing queued) when the queue is full or the stream closed. */
  push(entries: Uint8Array, count: number, done: BatchDone | null, now: number): boolean {
    if (this.closed || this.queuedBytes + entries.length > this.maxQueueBytes) return false;
    this.queue.push({ seq: 0n, entries, count, at: now, done });
    this.queuedBytes += entries.length;
    this.signal();
    return true;
  }

  /** A reload's new bounds (a lower queue bound refuses new batches until it drains below). */
  setLimits(windowBytes: number, maxQueueBytes: number): void {
    this.windowBytes = windowBytes;
    this.maxQueueBytes = maxQueueBytes;
    this.signal();
  }

  /** When the oldest unacknowledged batch was queued (ms), 0 when none waits. */
  oldestAt(): number {
    const b = this.inflight[0] ?? this.queue[0];
    return b ? b.at : 0;
  }

  /** Ends the stream; what it still holds ends with `code` (ACCEPTED: the peer is known down). */
  close(code = LOST): void {
    if (!this.closed) this.endCode = code;
    this.closed = true;
    this.signal();
    this.abort.abort();
  }

  /** Resumes the batch generator if it waits (for a batch, or for window space). */
  private signal(): void {
    if (this.wake === null) return;
    const resume = this.wake;
    this.wake = null;
    resume();
  }

  private async *batches(): AsyncGenerator<Partial<ForwardBatch>> {
    let first = true;
    while (!this.closed) {
      if (this.queue.length === 0 || this.inflightBytes >= this.windowBytes) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      const b = this.queue.shift()!;
      this.queuedBytes -= b.entries.length;
      b.seq = ++this.seq;
      this.inflight.push(b);
      this.inflightBytes += b.entries.length;
      yield {
        from: first ? this.from : '',
        incarnation: this.incarnation,
        seq: b.seq,
        count: b.count,
        entries: b.entries,
      };
      first = false;
    }
  }

  private async run(): Promise<void> {
    let err: unknown = null;
    try {
      for await (const ack of this.client.forward(this.batches() as AsyncIterable<ForwardBatch>, {
        signal: this.abort.signal,
      })) {
        this.onProgress();
        const inflight = this.inflight;
        while (inflight.length > 0 && inflight[0].seq <= ack.seq) {
          const b = inflight.shift()!;
          this.inflightBytes -= b.entries.length;
          b.done?.(ACCEPTED);
        }
        this.signal();
      }
    } catch (e) {
      err = e;
    }
    this.closed = true;
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

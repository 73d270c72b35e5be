import type { Client } from '@connectrpc/connect';
import type { ClusterService, ForwardBatch } from './gen/emqx_ts/cluster/v1/cluster_pb.js';

interface Pending {
  seq: bigint;
  entries: Uint8Array;
  count: number;
  /** Called once: accepted by the peer, or lost (stream ended) */
  done: (() => void) | null;
}

/**
 * The one long-lived bidi stream of forwarded publishes to one peer. Batches wait in a queue
 * bounded by `maxQueueBytes` (beyond it `push` refuses and the caller counts the drop: memory
 * stays bounded even when a peer is slow); at most `windowBytes` are sent and not yet
 * acknowledged. The peer acknowledges a batch once it has handed it to its shards, so the window
 * is the back-pressure of the link. Order is kept: one stream, batches in sequence.
 * Delivery across nodes is at most once (as EMQX's default async forwarding): batches in flight
 * when the stream breaks are lost and counted.
 */
export class ForwardStream {
  private readonly queue: Pending[] = [];
  private readonly inflight: Pending[] = [];
  queuedBytes = 0;
  inflightBytes = 0;
  private seq = 0n;
  private wake: (() => void) | null = null;
  private closed = false;
  /** Aborts the call on close: a frozen peer never ends the response stream by itself */
  private readonly abort = new AbortController();

  constructor(
    private readonly client: Client<typeof ClusterService>,
    private readonly from: string,
    private readonly incarnation: bigint,
    private readonly windowBytes: number,
    private readonly maxQueueBytes: number,
    /** The stream ended (error or close) with this many publishes unsent or unacknowledged */
    private readonly onEnd: (lost: number, err: unknown) => void,
  ) {}

  start(): void {
    void this.run();
  }

  /** Queues a batch; false (nothing queued) when the queue is full or the stream closed. */
  push(entries: Uint8Array, count: number, done: (() => void) | null = null): boolean {
    if (this.closed || this.queuedBytes + entries.length > this.maxQueueBytes) return false;
    this.queue.push({ seq: 0n, entries, count, done });
    this.queuedBytes += entries.length;
    this.signal();
    return true;
  }

  close(): void {
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
        const inflight = this.inflight;
        while (inflight.length > 0 && inflight[0].seq <= ack.seq) {
          const b = inflight.shift()!;
          this.inflightBytes -= b.entries.length;
          b.done?.();
        }
        this.signal();
      }
    } catch (e) {
      err = e;
    }
    this.closed = true;
    let lost = 0;
    // Lost: the publishers' held acks go anyway (the peer is known gone, as for a down node).
    for (const b of this.inflight) {
      lost += b.count;
      b.done?.();
    }
    for (const b of this.queue) {
      lost += b.count;
      b.done?.();
    }
    this.inflight.length = 0;
    this.queue.length = 0;
    this.inflightBytes = 0;
    this.queuedBytes = 0;
    this.onEnd(lost, err);
  }
}

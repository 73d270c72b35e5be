// Long-lived load-generator threads, reused across runs (starting a tsx worker costs ~0.3 s).

import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import {
  CTRL_SLOTS,
  type FromWorker,
  type RunSpec,
  type SharedBuffers,
  STAT_FIELDS,
  type ToWorker,
  type WorkerResult,
} from './types.js';

type Ready = Extract<FromWorker, { type: 'ready' }>;

interface Waiter {
  type: FromWorker['type'];
  got: Map<number, FromWorker>;
  expect: number;
  resolve: (msgs: FromWorker[]) => void;
  reject: (err: Error) => void;
}

export class LoadPool {
  private readonly workers: Worker[] = [];
  private waiter: Waiter | null = null;
  private broken: Error | null = null;
  private active = 0;

  constructor(readonly size: number) {
    const ports: (MessagePort | null)[][] = Array.from({ length: size }, () => Array(size).fill(null));
    // One channel per pair of threads: a subscriber thread wakes a stalled publisher thread directly.
    for (let a = 0; a < size; a++) {
      for (let b = a + 1; b < size; b++) {
        const ch = new MessageChannel();
        ports[a]![b] = ch.port1;
        ports[b]![a] = ch.port2;
      }
    }
    for (let id = 0; id < size; id++) {
      const w = new Worker(new URL('./load-worker.mjs', import.meta.url));
      w.on('message', (msg: FromWorker) => this.onMessage(id, msg));
      w.on('error', (err) => this.fail(new Error(`load thread ${id}: ${err.message}`)));
      w.on('exit', (code) => this.fail(new Error(`load thread ${id} exited (${code})`)));
      const mine = ports[id]!;
      const transfer = mine.filter((p): p is MessagePort => p !== null);
      w.postMessage({ type: 'init', id, ports: mine } satisfies ToWorker, transfer);
      this.workers.push(w);
    }
  }

  static shared(pubs: number): SharedBuffers {
    return {
      ctrl: new SharedArrayBuffer(CTRL_SLOTS * 4),
      delivered: new SharedArrayBuffer(Math.max(1, pubs) * 4),
      stats: new SharedArrayBuffer(64 * STAT_FIELDS * 8),
    };
  }

  private fail(err: Error): void {
    this.broken ??= err;
    this.waiter?.reject(err);
    this.waiter = null;
  }

  private onMessage(id: number, msg: FromWorker): void {
    if (msg.type === 'fatal') {
      const w = this.waiter;
      this.waiter = null;
      w?.reject(new Error(`load thread ${id}: ${msg.message}`));
      return;
    }
    const w = this.waiter;
    if (w === null || w.type !== msg.type) return;
    w.got.set(id, msg);
    if (w.got.size === w.expect) {
      this.waiter = null;
      w.resolve([...w.got.values()]);
    }
  }

  private expect(type: FromWorker['type'], timeoutMs: number): Promise<FromWorker[]> {
    if (this.broken !== null) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`load threads: no '${type}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        type,
        got: new Map(),
        expect: this.active,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  /** Hands one spec per thread (index = thread id) and resolves when all are connected and subscribed. */
  async start(specs: RunSpec[], shared: SharedBuffers, timeoutMs: number): Promise<Ready[]> {
    this.active = specs.length;
    const ready = this.expect('ready', timeoutMs);
    specs.forEach((spec, i) => {
      this.workers[i]!.postMessage({ type: 'run', spec, shared } satisfies ToWorker);
    });
    return (await ready) as Ready[];
  }

  go(): void {
    for (let i = 0; i < this.active; i++) this.workers[i]!.postMessage({ type: 'go' } satisfies ToWorker);
  }

  /** Resolves once every thread has stopped publishing (message handlers never interleave a pump). */
  async stop(timeoutMs: number): Promise<void> {
    const done = this.expect('stopped', timeoutMs);
    for (let i = 0; i < this.active; i++) this.workers[i]!.postMessage({ type: 'stop' } satisfies ToWorker);
    await done;
  }

  async finish(timeoutMs: number): Promise<WorkerResult[]> {
    const done = this.expect('result', timeoutMs);
    for (let i = 0; i < this.active; i++) this.workers[i]!.postMessage({ type: 'finish' } satisfies ToWorker);
    const msgs = await done;
    return msgs.map((m) => (m as Extract<FromWorker, { type: 'result' }>).result);
  }

  /** After a failed run the threads may hold half-open state: replace the whole pool. */
  get usable(): boolean {
    return this.broken === null;
  }

  async close(): Promise<void> {
    this.broken ??= new Error('pool closed');
    await Promise.all(
      this.workers.map((w) => {
        w.removeAllListeners('exit');
        return w.terminate();
      }),
    );
  }
}

import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { RetainedStore } from '../retained/store.js';
import type { RetainedRecord } from '../threads/messages.js';
import { openStore } from './open.js';
import type { DurableStore } from './types.js';

/**
 * The main thread's side of the durable store: it opens (and so checks) the data dir before
 * any shard starts, loads the retained messages into main's store, writes each change, and in
 * sync mode sends a retained PUBLISH's `retainAck` (which releases the client's PUBACK) only
 * once the change is committed.
 */
export class RetainedDurability {
  private store: DurableStore | null = null;
  private sync = false;

  constructor(
    private readonly config: Config,
    private readonly retained: RetainedStore,
    private readonly counters: Counters,
    private readonly log: Logger,
  ) {}

  /** Throws StorageError when the data dir cannot be used. */
  async open(): Promise<void> {
    this.store = await openStore(this.config, 'main');
    if (!this.store) return;
    this.sync = this.config['durability.mode'] === 'sync';
    const now = Date.now();
    let loaded = 0;
    let purged = 0;
    for (const r of this.store.loadRetained()) {
      if (r.expiryAt > 0 && r.expiryAt < now) {
        this.store.deleteRetained(r.topic);
        purged++;
        continue;
      }
      const rec: RetainedRecord = { ...r, qos: r.qos as RetainedRecord['qos'] };
      if (this.retained.set(rec)) loaded++;
    }
    this.counters.row[Counter.retainedCount] = this.retained.size;
    this.counters.row[Counter.messagesPurged] += purged;
    this.log.info(
      {
        dataDir: this.config['node.data_dir'],
        mode: this.config['durability.mode'],
        retained: loaded,
        purged,
      },
      'durable store opened',
    );
  }

  /** A retained PUBLISH was handled (stored = main's store took it); `ack` answers the shard. */
  stored(rec: RetainedRecord, stored: boolean, ack: (() => void) | null): void {
    const store = this.store;
    if (store && stored) {
      if (rec.payload.length === 0) store.deleteRetained(rec.topic);
      else
        store.putRetained(rec.topic, {
          topic: rec.topic,
          payload: rec.payload,
          qos: rec.qos,
          props: rec.props ?? null,
          expiryAt: rec.expiryAt ?? 0,
        });
      this.counters.row[Counter.storeWrites]++;
    }
    if (!ack) return;
    const p = store && this.sync ? store.commit() : null;
    if (!p) return ack();
    this.counters.row[Counter.storeCommits]++;
    p.then(ack, (err: unknown) => {
      this.counters.row[Counter.storeErrors]++;
      this.log.error({ err }, 'durable store commit failed (retained message)');
      ack();
    });
  }

  async close(): Promise<void> {
    const s = this.store;
    this.store = null;
    if (!s) return;
    await s.commit();
    await s.close();
  }
}

import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type Database, open, type RootDatabase } from 'lmdb';
import {
  type DurableStore,
  type LoadedSession,
  StorageError,
  type StoredDelivery,
  type StoredRetained,
  type StoredSession,
  type StoreOptions,
} from './types.js';

/** LMDB's meta page magic (mdb.c MDB_MAGIC), at this offset of each of the two meta pages. */
const MDB_MAGIC = 0xbeefc0de;
const MAGIC_OFFSET = 0x18;
const PSIZE_OFFSET = 0x30;

/**
 * Checks data.mdb before LMDB maps it: LMDB trusts its meta pages, and a file that is not an
 * LMDB environment can crash the process inside the native open instead of failing cleanly.
 */
function checkDataFile(dir: string): void {
  const file = join(dir, 'data.mdb');
  if (!existsSync(file)) return;
  const size = statSync(file).size;
  const head = Buffer.alloc(64);
  const fd = openSync(file, 'r');
  try {
    if (size < 2 * 4096 || readSync(fd, head, 0, 64, 0) < 64 || head.readUInt32LE(MAGIC_OFFSET) !== MDB_MAGIC)
      throw new StorageError(`${file} is not an LMDB environment (corrupt or a foreign file)`);
    const psize = head.readUInt32LE(PSIZE_OFFSET);
    if (psize < 512 || psize > 65536 || (psize & (psize - 1)) !== 0 || size < 2 * psize)
      throw new StorageError(`${file} is corrupt: bad page size ${psize}`);
    if (readSync(fd, head, 0, 64, psize) < 64 || head.readUInt32LE(MAGIC_OFFSET) !== MDB_MAGIC)
      throw new StorageError(`${file} is corrupt: second meta page damaged`);
  } finally {
    closeSync(fd);
  }
}

/** LMDB keys are short (lmdb-js: under ~1978 bytes): a longer client id or topic is hashed. */
const MAX_KEY = 400;

function k(s: string): string {
  if (s.length * 3 <= MAX_KEY || Buffer.byteLength(s) <= MAX_KEY) return s;
  return `\u0001${createHash('sha256').update(s).digest('hex')}`;
}

/**
 * The built-in store: one LMDB environment in node.data_dir, opened by main and every shard
 * (lmdb-js shares one environment per path within the process). Writes are lmdb-js's async
 * puts: every write made in one event-loop turn goes into one transaction, committed on
 * lmdb-js's writer thread, so a turn's writes cost one commit (group commit). Keys are arrays
 * (ordered-binary), so a session's deliveries are one ordered range.
 */
export class LmdbStore implements DurableStore {
  private readonly env: RootDatabase;
  /** clientId → StoredSession */
  private readonly sessions: Database<StoredSession & { id?: string }, string>;
  /** [clientId, seq] → StoredDelivery */
  private readonly deliveries: Database<StoredDelivery, [string, number]>;
  /** [clientId, packetId] → arrival ms */
  private readonly rel: Database<number, [string, number]>;
  /** [from, to, seq] → batch bytes */
  private readonly outbox: Database<Buffer, [number, number, number]>;
  /** [to, from] → last committed seq */
  private readonly marks: Database<number, [number, number]>;
  private readonly retained: Database<StoredRetained, string>;
  private pending = false;
  /** The promise of the last write: lmdb-js gives every write of one transaction the same one */
  private last: Promise<unknown> | null = null;
  /** A failed write is logged by the caller's counters; it must not become an unhandled rejection */
  private readonly fail = (err: unknown): void => {
    this.errors++;
    this.lastError = err;
  };
  errors = 0;
  lastError: unknown = null;

  constructor(o: StoreOptions) {
    try {
      mkdirSync(o.path, { recursive: true });
    } catch (err) {
      throw new StorageError(`cannot create data dir ${o.path}: ${(err as Error).message}`);
    }
    checkDataFile(o.path);
    try {
      this.env = open({
        path: o.path,
        // lmdb-js treats a path with an extension ("/var/lib/emqx.ts") as a file: it is a directory.
        noSubdir: false,
        maxDbs: 8,
        // batched, main (retained): writes of several turns share one commit, at most
        // flush_interval later. Shards time their own flushes (storage/shard-durability.ts).
        commitDelay: o.mode === 'batched' && o.role === 'main' ? o.flushIntervalMs : 0,
      });
      this.sessions = this.env.openDB({ name: 'sessions' });
      this.deliveries = this.env.openDB({ name: 'deliveries' });
      this.rel = this.env.openDB({ name: 'awaiting_rel' });
      this.outbox = this.env.openDB({ name: 'outbox', encoding: 'binary' });
      this.marks = this.env.openDB({ name: 'marks' });
      this.retained = this.env.openDB({ name: 'retained' });
      // A write now, so that a read-only or full disk fails the start, not the first PUBLISH.
      if (o.role === 'main') this.env.putSync('started', Date.now());
    } catch (err) {
      if (err instanceof StorageError) throw err;
      throw new StorageError(`cannot open the store in ${o.path}: ${(err as Error).message}`);
    }
  }

  /** One rejection handler per transaction's promise, not one per write. */
  private track(p: Promise<unknown>): void {
    this.pending = true;
    if (p !== this.last) {
      this.last = p;
      p.catch(this.fail);
    }
  }

  putSession(clientId: string, s: StoredSession): void {
    this.track(this.sessions.put(k(clientId), { ...s, id: clientId }));
  }

  deleteSession(clientId: string): void {
    const key = k(clientId);
    this.track(this.sessions.remove(key));
    // Committed keys (the shard flushes only once its earlier writes are committed: all of them).
    for (const d of this.deliveries.getKeys({ start: [key], end: [key, Infinity] }))
      this.track(this.deliveries.remove(d));
    for (const r of this.rel.getKeys({ start: [key], end: [key, Infinity] })) this.track(this.rel.remove(r));
  }

  putDelivery(clientId: string, seq: number, d: StoredDelivery): void {
    this.track(this.deliveries.put([k(clientId), seq], d));
  }

  deleteDelivery(clientId: string, seq: number): void {
    this.track(this.deliveries.remove([k(clientId), seq]));
  }

  putAwaitingRel(clientId: string, packetId: number, at: number): void {
    this.track(this.rel.put([k(clientId), packetId], at));
  }

  deleteAwaitingRel(clientId: string, packetId: number): void {
    this.track(this.rel.remove([k(clientId), packetId]));
  }

  putOutbox(from: number, to: number, seq: number, batch: Uint8Array): void {
    this.track(this.outbox.put([from, to, seq], batch as Buffer));
  }

  deleteOutbox(from: number, to: number, seq: number): void {
    this.track(this.outbox.remove([from, to, seq]));
  }

  putMark(to: number, from: number, seq: number): void {
    this.track(this.marks.put([to, from], seq));
  }

  putRetained(topic: string, r: StoredRetained): void {
    this.track(this.retained.put(k(topic), r));
  }

  deleteRetained(topic: string): void {
    this.track(this.retained.remove(k(topic)));
  }

  loadSessions(mine: (clientId: string) => boolean): LoadedSession[] {
    const out: LoadedSession[] = [];
    const known = new Set<string>();
    for (const { key, value } of this.sessions.getRange()) {
      const clientId = (value as StoredSession & { id?: string }).id ?? key;
      known.add(key);
      if (!mine(clientId)) continue;
      const deliveries: LoadedSession['deliveries'] = [];
      for (const r of this.deliveries.getRange({ start: [key], end: [key, Infinity] }))
        deliveries.push({ seq: r.key[1], d: r.value });
      const awaitingRel: [number, number][] = [];
      for (const r of this.rel.getRange({ start: [key], end: [key, Infinity] }))
        awaitingRel.push([r.key[1], r.value]);
      out.push({ clientId, session: value, deliveries, awaitingRel });
    }
    // Deliveries of a session removed in the turn they were written: nobody owns them.
    for (const d of this.deliveries.getKeys())
      if (!known.has(d[0]) && mine(d[0])) {
        this.track(this.deliveries.remove(d));
      }
    return out;
  }

  loadOutbox(from: number): { to: number; seq: number; batch: Uint8Array }[] {
    const out: { to: number; seq: number; batch: Uint8Array }[] = [];
    for (const r of this.outbox.getRange({ start: [from], end: [from, Infinity] }))
      out.push({ to: r.key[1], seq: r.key[2], batch: r.value });
    return out;
  }

  loadMarks(to: number): Map<number, number> {
    const m = new Map<number, number>();
    for (const r of this.marks.getRange({ start: [to], end: [to, Infinity] })) m.set(r.key[1], r.value);
    return m;
  }

  loadRetained(): StoredRetained[] {
    const out: StoredRetained[] = [];
    for (const r of this.retained.getRange()) out.push(r.value);
    return out;
  }

  commit(): Promise<void> | null {
    if (!this.pending) return null;
    this.pending = false;
    const errors = this.errors;
    // The last write's transaction: lmdb-js commits them in order.
    const p = this.last ?? this.env.committed;
    return p.then(() => {
      // A write of this batch failed (too large, disk full): the caller logs and counts it.
      if (this.errors !== errors) throw this.lastError;
    });
  }

  async close(): Promise<void> {
    await this.env.close();
  }
}

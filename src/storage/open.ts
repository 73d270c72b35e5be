import { mkdirSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Config } from '../config/schema.js';
import { LmdbStore } from './lmdb.js';
import { type DurableStore, type OpenStore, StorageError } from './types.js';

/**
 * Opens the configured durable store (null for durability.mode = none): the built-in LMDB one,
 * or `durability.store` = a module path exporting `openStore`. Throws StorageError when the
 * data dir cannot be used: the broker never falls back to running memory-only.
 */
export async function openStore(config: Config, role: 'main' | 'shard'): Promise<DurableStore | null> {
  const mode = config['durability.mode'];
  if (mode === 'none') return null;
  const o = {
    path: resolve(config['node.data_dir']),
    mode: mode as 'sync' | 'batched',
    flushIntervalMs: config['durability.flush_interval'],
    role,
  };
  const backend = config['durability.store'];
  if (backend === 'lmdb' || backend === '') return new LmdbStore(o);
  const url = isAbsolute(backend) || backend.startsWith('.') ? pathToFileURL(resolve(backend)).href : backend;
  let open: OpenStore;
  try {
    open = ((await import(url)) as { openStore: OpenStore }).openStore;
  } catch (err) {
    throw new StorageError(`cannot load durability.store ${backend}: ${(err as Error).message}`);
  }
  if (typeof open !== 'function') throw new StorageError(`durability.store ${backend} exports no openStore`);
  return await open(o);
}

/**
 * Creates node.data_dir when the durable store will use it (before anything else writes
 * there), so that an unusable path is a StorageError with the path, not a later failure.
 */
export function ensureDataDir(config: Config): void {
  if (config['durability.mode'] === 'none') return;
  const dir = resolve(config['node.data_dir']);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (err) {
    throw new StorageError(`cannot create data dir ${dir}: ${(err as Error).message}`);
  }
}

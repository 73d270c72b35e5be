/**
 * `kill -USR2 <pid>`: a V8 heap snapshot of every thread (main, each shard, the cluster thread)
 * in the working directory, for finding what holds memory (Node's `--heapsnapshot-signal` covers
 * the main thread only). Writing one stops that thread for a second or more: diagnosis only.
 */
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { writeHeapSnapshot } from 'node:v8';
import type { Worker } from 'node:worker_threads';
import type { Logger } from '../log.js';

export async function writeHeapSnapshots(
  workers: { name: string; worker: Worker | null }[],
  dir: string,
  log: Logger,
): Promise<string[]> {
  const stamp = new Date().toISOString().replaceAll(':', '-');
  const files: string[] = [];
  for (const { name, worker } of workers) {
    if (!worker) continue;
    const file = join(dir, `heap-${stamp}-${process.pid}-${name}.heapsnapshot`);
    try {
      await pipeline(await worker.getHeapSnapshot(), createWriteStream(file));
      files.push(file);
    } catch (err) {
      log.warn({ err: (err as Error).message, thread: name }, 'heap snapshot failed');
    }
  }
  files.push(writeHeapSnapshot(join(dir, `heap-${stamp}-${process.pid}-main.heapsnapshot`)));
  log.info({ files }, 'heap snapshots written');
  return files;
}

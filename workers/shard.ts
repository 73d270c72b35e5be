/** Shard worker thread entry: owns the sessions of the client ids that hash to this shard. */
import { parentPort, workerData } from 'node:worker_threads';
import { Shard } from '../src/shard/shard.js';
import { openStore } from '../src/storage/open.js';
import type { MainToShard, ShardInit, ShardToMain } from '../src/threads/messages.js';

if (!parentPort) throw new Error('workers/shard must run in a worker thread');
const port = parentPort;
const init = workerData as ShardInit;
// The same environment main opened and checked at start (durability.mode none: no store).
const store = await openStore(init.config, 'shard');
const shard = new Shard(
  init,
  {
    postMessage: (msg: ShardToMain) => port.postMessage(msg),
    on: (_event: 'message', listener: (msg: MainToShard) => void) => port.on('message', listener),
  },
  store,
);
shard.start(init.generation);

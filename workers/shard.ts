/** Shard worker thread entry: owns the sessions of the client ids that hash to this shard. */
import { parentPort, workerData } from 'node:worker_threads';
import { loadHooks } from '../src/hooks/load.js';
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
// Hook modules and the auth/authz providers are loaded in every shard before it starts
// (messages from main wait in the port meanwhile); main has loaded them once already, so a
// failure here is unexpected and fails the shard loudly.
const loaded = await loadHooks({ shardId: init.shardId, config: shard.config, log: shard.log });
shard.security.install(loaded.hooks);
// Bans and REST-managed users live on main: a (re)started shard asks for the current lists
// before it says ready, so that they arrive before main tells it to accept.
port.postMessage({ t: 'securityRequest' } satisfies ShardToMain);
shard.start(init.generation);

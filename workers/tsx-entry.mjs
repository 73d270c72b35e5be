// Worker threads do not inherit tsx's loader hooks: when the broker runs from TypeScript
// sources (tests, `tsx src/main.ts`) the shard is started through this entry, which registers
// tsx in the worker and then loads the real entry module named in workerData.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);

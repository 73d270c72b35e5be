// Worker entry: worker threads do not inherit tsx's loader hooks, so register them before importing TS.
import { register } from 'tsx/esm/api';

register();
await import('./load-worker.ts');

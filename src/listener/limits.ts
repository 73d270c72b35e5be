import type { Config } from '../config/schema.js';
import { Counter, type Counters, LISTENER_CONNECTIONS, LISTENER_GAUGES } from '../metrics/counters.js';
import { LISTENER_TYPES, listenerKey } from './listeners.js';

/**
 * listeners.<type>.default.max_connections: one Atomics cell per listener over all shards (as
 * listener.max_connections), plus this shard's own gauge so that a dead shard's connections are
 * given back (Counters.resetRow). Checked where the global limit is, at CONNECT.
 */
export function admitToListener(counters: Counters, cfg: Config, index: number): boolean {
  const max = cfg[listenerKey(LISTENER_TYPES[index], 'max_connections')] as number;
  const live = Atomics.add(counters.atomics, LISTENER_CONNECTIONS + index, 1);
  if (max > 0 && live >= max) {
    Atomics.sub(counters.atomics, LISTENER_CONNECTIONS + index, 1);
    counters.row[Counter.listenerConnectionsRefusedMax]++;
    return false;
  }
  counters.row[LISTENER_GAUGES + index]++;
  return true;
}

export function leaveListener(counters: Counters, index: number): void {
  Atomics.sub(counters.atomics, LISTENER_CONNECTIONS + index, 1);
  counters.row[LISTENER_GAUGES + index]--;
}

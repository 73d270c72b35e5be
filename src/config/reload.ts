import type { Config, OptionKey } from './schema.js';
import { SCHEMA } from './schema.js';

/**
 * Options that a reload (SIGHUP) cannot change: sockets already bound, the shard pool, the
 * node's identity and files. A changed value is reported and kept until the next restart.
 */
export const RESTART_ONLY: ReadonlySet<OptionKey> = new Set<OptionKey>([
  'listener.host',
  'listener.port',
  'listener.backlog',
  'node.shards',
  'node.shard_young_generation_mb',
  'node.name',
  'node.data_dir',
  'metrics.host',
  'metrics.port',
  'api.host',
  'api.port',
  // The cluster thread's socket and identity, and how it discovers (a k8s watch is set up once).
  'cluster.discovery',
  'cluster.port',
  'cluster.listen_host',
  'cluster.advertise',
  'cluster.k8s.service',
  'cluster.k8s.namespace',
  'cluster.k8s.port_name',
]);

export interface ConfigDiff {
  /** Changed and applied at runtime */
  applied: OptionKey[];
  /** Changed but needing a restart (ignored until then) */
  needRestart: OptionKey[];
}

export function diffConfig(current: Config, next: Config): ConfigDiff {
  const applied: OptionKey[] = [];
  const needRestart: OptionKey[] = [];
  for (const key of Object.keys(SCHEMA) as OptionKey[]) {
    if (current[key] === next[key]) continue;
    (RESTART_ONLY.has(key) ? needRestart : applied).push(key);
  }
  return { applied, needRestart };
}

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
  'listeners.tcp.default.enable',
  'listeners.tcp.default.bind',
  'listeners.tcp.default.proxy_protocol',
  'listeners.ssl.default.enable',
  'listeners.ssl.default.bind',
  'listeners.ws.default.enable',
  'listeners.ws.default.bind',
  'listeners.wss.default.enable',
  'listeners.wss.default.bind',
  'node.shards',
  'node.shard_young_generation_mb',
  'node.heap_growing_percent',
  'node.memory_reducer',
  'node.gc_marking_start_percent',
  'node.name',
  'node.data_dir',
  'metrics.host',
  'metrics.port',
  'api.host',
  'api.port',
  // Hooks and the auth/authz providers are built once per shard at start (src/hooks/load.ts).
  'hooks.modules',
  'auth.allow_anonymous',
  'auth.chain',
  'auth.users_file',
  'auth.hash_threads',
  'auth.jwt.secret',
  'auth.jwt.public_key_file',
  'auth.jwt.jwks_file',
  'auth.jwt.algorithm',
  'auth.jwt.from',
  'auth.http.url',
  'auth.http.timeout',
  'authz.acl_file',
  'authz.no_match',
  // The cluster thread's socket and identity, and how it discovers (a k8s watch is set up once).
  'cluster.discovery',
  'cluster.port',
  'cluster.listen_host',
  'cluster.advertise',
  // Read by the shards (a claim not answered in time) as well: one mode for all threads.
  'cluster.claim_quorum',
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

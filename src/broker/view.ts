import type { Registry } from 'prom-client';
import type { Config } from '../config/schema.js';
import type { MainSecurity } from '../hooks/main-security.js';
import type { ApiCredentials } from '../http/credentials.js';
import type { Logger } from '../log.js';
import type { Counters } from '../metrics/counters.js';
import type { StatsTracker } from '../metrics/emqx.js';
import type { BrokerPublish, ClusterMember } from '../threads/messages.js';
import type { ShardQueries } from './queries.js';

export interface Readiness {
  ready: boolean;
  listener: boolean;
  stopping: boolean;
  shards: { shard: number; running: boolean }[];
  /** Clustered: the first join round is over (false until then); absent on a single node */
  clusterSynced?: boolean;
}

/**
 * What the REST API, the metrics endpoint and the $SYS publisher may ask of the broker: its
 * configuration, counters, queries to the shards, readiness, and publishing as the broker.
 * Broker (broker.ts) implements it; they depend on this, not on Broker.
 */
export interface BrokerView {
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly startedAt: number;
  readonly version: string;
  readonly sysdescr: string;
  readonly stats: StatsTracker;
  readonly registry: Registry;
  readonly queries: ShardQueries;
  readonly credentials: ApiCredentials;
  readonly shardCount: number;
  /** Bans and built-in users (REST routes in src/hooks/main-security.ts) */
  readonly security: MainSecurity;
  readiness(): Readiness;
  /** Routes messages from the broker itself ($SYS, REST publish) through a running shard. */
  publishInternal(messages: BrokerPublish[]): boolean;
  hasSubscribers(topic: string): boolean;
  /** Cluster members as the cluster thread last reported them (empty without a cluster) */
  clusterMembers(): readonly ClusterMember[];
}

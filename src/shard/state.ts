import type { MessagePort } from 'node:worker_threads';
import type { Config } from '../config/schema.js';
import type { ShardSecurity } from '../hooks/security.js';
import type { Logger } from '../log.js';
import type { Counters } from '../metrics/counters.js';
import type { WillMessage } from '../protocol/codec.js';
import type { SharedGroups } from '../routing/shared.js';
import type { SubscriberTable } from '../routing/subscribers.js';
import type { TopicIndex } from '../routing/topic-index.js';
import type { Session } from '../session/session.js';
import type { ShardDurability } from '../storage/shard-durability.js';
import type { MainToShard, ShardToMain } from '../threads/messages.js';

/** Posts to the main thread; a port in a worker, a plain callback when embedded in one thread. */
export interface MainLink {
  postMessage(msg: ShardToMain): void;
  on(event: 'message', listener: (msg: MainToShard) => void): unknown;
}

/**
 * What a shard's modules share: identity, configuration, counters, the topic indexes, its
 * sessions and subscriber lists, and the ports to the other shards. Data only: the modules'
 * behaviour is wired by Shard (shard.ts), so none of them imports another's owner.
 */
export interface ShardState {
  readonly id: number;
  readonly shardCount: number;
  /** Changed in place on SIGHUP (Object.assign), so a held reference stays current */
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly index: TopicIndex;
  readonly sharedIndex: TopicIndex;
  readonly sessions: Map<string, Session>;
  readonly subscribers: SubscriberTable;
  readonly sharedGroups: SharedGroups;
  /** Ports to the other shards, by shard id (null: this shard, or a peer that is down) */
  readonly peers: (MessagePort | null)[];
  /** Draining or shut down: no new connections, no wills */
  stopping: boolean;
  /**
   * Every shard has restored its persistent sessions (durable start: main's first `listen`).
   * Until then no will is published: the sessions it is owed to may not be back in the index.
   */
  peersRestored: boolean;
  /**
   * Durable start in a cluster: the restored sessions' pending wills (client id → will), held
   * until the cluster thread's first join round says which of them the cluster published for
   * this node's previous incarnation (Shard.releaseRestoredWills); null when none are held.
   * A held will is not published by the sweep; a session that ends meanwhile moves it to
   * `restoredWills`.
   */
  heldWills: Map<string, WillMessage> | null;
  /** Restored wills of sessions that ended (expired while down, or while held), to release */
  restoredWills: EndedWill[];
  /** Hooks, authorizer, banned list (src/hooks/security.ts) */
  readonly security: ShardSecurity;
  /** The durable store's shard side (storage/shard-durability.ts); null with durability.mode none */
  readonly durable: ShardDurability | null;
}

/** The will of a restored session that ended, to publish (or drop: the cluster published it). */
export interface EndedWill {
  clientId: string;
  will: WillMessage;
  /**
   * The session expired while the broker was down and its record is still stored (with the
   * will): removed when the will is published or dropped, in the same flush as what the will's
   * publish writes, so that a kill before then finds the will again at the next start.
   */
  stored?: boolean;
}

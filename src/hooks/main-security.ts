import type { HashAlgorithm } from '../auth/hash.js';
import { HashPool } from '../auth/hash-pool.js';
import { UserStore, usersRoute } from '../auth/users-api.js';
import { BannedStore, bannedRoute, type RestRequest } from '../authz/banned-api.js';
import { ConfigError } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { SecurityToShard } from '../threads/messages.js';
import { chainNames } from './load.js';

/** Posts to one shard (by id) or, without one, to every running shard. */
export type PostSecurity = (msg: SecurityToShard, shard?: number) => void;

/**
 * On main: the authority for banned clients (REST `/api/v5/banned`) and, when the built-in
 * database is in the chain, its users (REST `/api/v5/authentication/password_based:
 * built_in_database/users`). A change is posted to every shard at once; a (re)started shard
 * asks for both lists (`securityRequest`) before it accepts.
 */
export class MainSecurity {
  readonly banned = new BannedStore();
  private users: UserStore | null = null;
  private readonly postAll = (msg: SecurityToShard): void => this.post(msg);

  constructor(
    private readonly cfg: Config,
    private readonly post: PostSecurity,
  ) {}

  /** Reads the users file (after checkHooksAtStart has validated it), before shards start. */
  load(): void {
    const cfg = this.cfg;
    if (!chainNames(cfg).includes('built_in_database') || !cfg['auth.users_file']) return;
    try {
      this.users = new UserStore(
        cfg['auth.users_file'],
        () => cfg['auth.password_hash'] as HashAlgorithm,
        new HashPool(cfg['auth.hash_threads']),
      );
    } catch (err) {
      throw new ConfigError(`auth.users_file: ${(err as Error).message}`);
    }
  }

  /** A starting shard's `securityRequest`: the whole lists, before it accepts. */
  onShardRequest(shard: number): void {
    this.post(this.banned.message(), shard);
    if (this.users) this.post(this.users.message(), shard);
  }

  /** The REST routes of bans and built-in users; false when the path is another one. */
  route(r: RestRequest): Promise<boolean> {
    if (r.parts[0] === 'banned') return bannedRoute(this.banned, this.postAll, r);
    return usersRoute(this.users, this.postAll, r);
  }

  close(): Promise<void> {
    return this.users?.close() ?? Promise.resolve();
  }
}

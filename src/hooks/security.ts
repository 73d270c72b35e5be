import type { UserRecord } from '../auth/users-file.js';
import { Authorizer } from '../authz/authorize.js';
import { BannedList } from '../authz/banned.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { SecurityToShard } from '../threads/messages.js';
import { Hooks } from './registry.js';
import type { Hook } from './types.js';

/** What the built-in users provider lets main change at run time (REST user management). */
export interface MutableUsers {
  replaceUsers(users: readonly UserRecord[]): void;
  putUser(user: UserRecord): void;
  deleteUser(username: string): void;
}

const isMutableUsers = (h: Hook): h is Hook & MutableUsers =>
  typeof (h as Partial<MutableUsers>).replaceUsers === 'function';

/**
 * A shard's hooks, authorizer and banned list (src/hooks, src/auth, src/authz), shared by the
 * modules that call hooks (session/lifecycle.ts, handlers, routing/route.ts, delivery). Until
 * `install` runs (workers/shard.ts, before the shard starts) there are no hooks, and every call
 * site's test is a length or boolean that is false.
 */
export class ShardSecurity {
  hooks: Hooks;
  authz: Authorizer;
  /** ACL or onPublish hooks apply: the PUBLISH handler's one test (src/authz/publish.ts) */
  publishChecks = false;
  readonly banned = new BannedList();
  /** The built_in_database provider, if in the chain: REST user changes reach it */
  private users: MutableUsers | null = null;

  constructor(
    private readonly config: Config,
    private readonly log: Logger,
    private readonly row: Float64Array,
  ) {
    this.hooks = Hooks.none(log, row);
    this.authz = new Authorizer(this.hooks, config, row);
  }

  install(list: readonly Hook[]): void {
    this.hooks = new Hooks(list, this.log, this.row);
    this.authz = new Authorizer(this.hooks, this.config, this.row);
    this.publishChecks = this.authz.active || this.hooks.publish.length > 0;
    this.users = list.find(isMutableUsers) ?? null;
    if (list.length > 0) this.log.info({ hooks: list.map((h) => h.id) }, 'hooks installed');
  }

  /** A security message from main: the banned list, or built-in users (all, or one change). */
  onMessage(msg: SecurityToShard): void {
    if (msg.t === 'banned') this.banned.set(msg.entries);
    else if (msg.t === 'users') this.users?.replaceUsers(msg.users);
    else if (msg.t === 'userPut') this.users?.putUser(msg.user);
    else this.users?.deleteUser(msg.username);
  }
}

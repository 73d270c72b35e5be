import type { MutableUsers } from '../hooks/security.js';
import type { Hook } from '../hooks/types.js';
import type { HashPool } from './hash-pool.js';
import { readUsersFile, type UserRecord } from './users-file.js';

/**
 * EMQX's `password_based:built_in_database`: users from auth.users_file, changed at run time by
 * the REST API on main (src/auth/users-api.ts posts each change to every shard: MutableUsers).
 * An unknown user is `ignore` (the next provider may know it, as in EMQX); a known user with a
 * wrong or missing password is denied.
 */
export function builtInDatabase(path: string, pool: HashPool): Hook & MutableUsers {
  let users = readUsersFile(path);
  return {
    id: 'built_in_database',
    async onConnectAuthenticate(req) {
      if (req.username === null) return 'ignore';
      const u = users.get(req.username);
      if (!u) return 'ignore';
      if (req.password === null) return 'deny';
      const ok = await pool.verify(req.password, u.password_hash);
      return ok ? { result: 'allow', superuser: u.is_superuser } : 'deny';
    },
    replaceUsers(list: readonly UserRecord[]) {
      users = new Map(list.map((u) => [u.username, u]));
    },
    putUser(u: UserRecord) {
      users.set(u.username, u);
    },
    deleteUser(username: string) {
      users.delete(username);
    },
  };
}

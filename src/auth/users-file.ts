import { readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { isKnownHash } from './hash.js';

export interface UserRecord {
  username: string;
  password_hash: string;
  is_superuser: boolean;
}

/**
 * The built-in users file: JSON (an array of {username, password_hash, is_superuser}, `user_id`
 * accepted for username as in EMQX's exports) or CSV (`username,password_hash,is_superuser`, an
 * optional header line). Format by extension (`.csv` or else JSON). Throws with a clear reason.
 */
export function readUsersFile(path: string): Map<string, UserRecord> {
  const text = readFileSync(path, 'utf8');
  const users = new Map<string, UserRecord>();
  const add = (u: UserRecord, where: string): void => {
    if (!u.username) throw new Error(`${path}: ${where}: no username`);
    if (!isKnownHash(u.password_hash)) throw new Error(`${path}: ${where}: unknown password_hash form`);
    users.set(u.username, u);
  };
  if (path.endsWith('.csv')) {
    const lines = text.split(/\r?\n/);
    lines.forEach((line, i) => {
      const l = line.trim();
      if (!l || l.startsWith('#') || (i === 0 && l.startsWith('username,'))) return;
      const [username, hash, su] = l.split(',');
      add({ username, password_hash: hash ?? '', is_superuser: su?.trim() === 'true' }, `line ${i + 1}`);
    });
    return users;
  }
  const data = text.trim() ? JSON.parse(text) : [];
  if (!Array.isArray(data)) throw new Error(`${path}: expected a JSON array of users`);
  data.forEach((r: Record<string, unknown>, i: number) => {
    add(
      {
        username: String(r.username ?? r.user_id ?? ''),
        password_hash: String(r.password_hash ?? ''),
        is_superuser: r.is_superuser === true,
      },
      `entry ${i}`,
    );
  });
  return users;
}

/**
 * Writes the whole file: to a temporary file next to it, then renamed over it, so that a reader
 * (a starting shard, the passwd CLI) never sees half a file. Throws when it cannot.
 */
export function writeUsersFile(path: string, users: Iterable<UserRecord>): void {
  const list = [...users];
  let text: string;
  if (path.endsWith('.csv')) {
    const lines = ['username,password_hash,is_superuser'];
    for (const u of list) lines.push(`${u.username},${u.password_hash},${u.is_superuser}`);
    text = `${lines.join('\n')}\n`;
  } else text = `${JSON.stringify(list, null, 2)}\n`;
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, text, { mode: 0o600 });
    renameSync(tmp, path);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {}
    throw err;
  }
}

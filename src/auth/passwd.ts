/**
 * `npm run passwd -- [options] <users file> <username> [password]`, like mosquitto_passwd:
 * adds or updates a user (password from the argument or one line on stdin), `-D` deletes one.
 * Options: `-c` create/overwrite the file, `-a pbkdf2|bcrypt|sha256` (default pbkdf2),
 * `-s` superuser. The file is JSON, or CSV when it ends in `.csv` (auth.users_file).
 */
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { type HashAlgorithm, hashPassword } from './hash.js';
import { readUsersFile, type UserRecord, writeUsersFile } from './users-file.js';

const USAGE =
  'usage: emqx-ts passwd [-c] [-a pbkdf2|bcrypt|sha256] [-s] <users file> <username> [password]\n' +
  '       emqx-ts passwd -D <users file> <username>\n';

async function readLine(): Promise<string> {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return '';
}

/** Returns the exit code. */
export async function runPasswd(args: readonly string[], out = process.stderr): Promise<number> {
  let create = false;
  let del = false;
  let superuser = false;
  let algorithm: HashAlgorithm = 'pbkdf2';
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '-c') create = true;
    else if (a === '-D') del = true;
    else if (a === '-s') superuser = true;
    else if (a === '-a') {
      const v = args[++i];
      if (v !== 'pbkdf2' && v !== 'bcrypt' && v !== 'sha256') {
        out.write(USAGE);
        return 2;
      }
      algorithm = v;
    } else rest.push(a);
  }
  const [file, username, given] = rest;
  if (!file || !username || rest.length > 3 || username.includes(',')) {
    out.write(USAGE);
    return 2;
  }
  let users: Map<string, UserRecord>;
  try {
    users = create || !existsSync(file) ? new Map() : readUsersFile(file);
  } catch (err) {
    out.write(`emqx-ts passwd: ${(err as Error).message}\n`);
    return 1;
  }
  if (del) {
    if (!users.delete(username)) {
      out.write(`emqx-ts passwd: no user ${username} in ${file}\n`);
      return 1;
    }
  } else {
    const password = given ?? (await readLine());
    if (!password) {
      out.write('emqx-ts passwd: empty password\n');
      return 2;
    }
    users.set(username, {
      username,
      password_hash: hashPassword(password, algorithm),
      is_superuser: superuser,
    });
  }
  writeUsersFile(file, users.values());
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  void runPasswd(process.argv.slice(2)).then((code) => process.exit(code));
}

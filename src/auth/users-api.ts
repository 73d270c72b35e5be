import type { IncomingMessage, ServerResponse } from 'node:http';
import type { PostToShards, RestRequest } from '../authz/banned-api.js';
import { readBody, sendError, sendJson } from '../http/util.js';
import type { SecurityToShard } from '../threads/messages.js';
import type { HashAlgorithm } from './hash.js';
import type { HashPool } from './hash-pool.js';
import { readUsersFile, type UserRecord, writeUsersFile } from './users-file.js';

/** The REST path of EMQX's built-in users (after `/api/v5/`). */
export const USERS_PATH = ['authentication', 'password_based:built_in_database', 'users'] as const;
const MAX_USER_ID = 256;
const MAX_PASSWORD = 1024;

/**
 * Main's copy of the built-in users (auth.users_file), changed by the REST API. A change is
 * hashed off the event loop (piscina), written to the users file (whole file, renamed into
 * place) and only then applied and posted to every shard, so that a restarted shard, which
 * reads the file and then gets the whole list (`securityRequest`), never misses it. A file that
 * cannot be written fails the request and changes nothing.
 */
export class UserStore {
  private users: Map<string, UserRecord>;

  constructor(
    private readonly path: string,
    /** auth.password_hash, read at each change (SIGHUP may change it) */
    private readonly algorithm: () => HashAlgorithm,
    private readonly pool: HashPool,
  ) {
    this.users = readUsersFile(path);
  }

  message(): SecurityToShard {
    return { t: 'users', users: [...this.users.values()] };
  }

  get(id: string): UserRecord | undefined {
    return this.users.get(id);
  }

  list(): UserRecord[] {
    return [...this.users.values()];
  }

  hash(password: string): Promise<string> {
    return this.pool.hash(password, this.algorithm());
  }

  /** Writes the file with `u` put (or `deleted` removed), then applies it; throws if unwritable. */
  commit(change: { put: UserRecord } | { deleted: string }, post: PostToShards): void {
    const next = new Map(this.users);
    if ('put' in change) next.set(change.put.username, change.put);
    else next.delete(change.deleted);
    writeUsersFile(this.path, next.values());
    this.users = next;
    post(
      'put' in change ? { t: 'userPut', user: change.put } : { t: 'userDelete', username: change.deleted },
    );
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

const view = (u: UserRecord) => ({ user_id: u.username, is_superuser: u.is_superuser });

async function jsonBody(req: IncomingMessage, res: ServerResponse): Promise<Record<string, unknown> | null> {
  try {
    const v = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8'));
    if (v && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch {}
  sendError(res, 400, 'BAD_REQUEST', 'body must be a JSON object');
  return null;
}

function passwordError(p: unknown): string | null {
  if (typeof p !== 'string' || p === '') return 'password must be a non-empty string';
  if (p.length > MAX_PASSWORD) return `password longer than ${MAX_PASSWORD} characters`;
  return null;
}

function userIdError(id: unknown): string | null {
  if (typeof id !== 'string' || id === '') return 'user_id must be a non-empty string';
  if (id.length > MAX_USER_ID) return `user_id longer than ${MAX_USER_ID} characters`;
  // The CSV form of the users file has one user per line, fields separated by commas.
  if (/[,\r\n\u0000]/.test(id)) return 'user_id must not contain a comma, a line break or NUL';
  return null;
}

function commitOr500(
  store: UserStore,
  change: Parameters<UserStore['commit']>[0],
  post: PostToShards,
  res: ServerResponse,
): boolean {
  try {
    store.commit(change, post);
    return true;
  } catch (err) {
    sendError(res, 500, 'INTERNAL_ERROR', `users file not written: ${(err as Error).message}`);
    return false;
  }
}

/**
 * `/api/v5/authentication/password_based:built_in_database/users` (EMQX's form): GET (list,
 * `page`, `limit`, `like_user_id`), POST `{user_id, password, is_superuser?}`, and on
 * `/users/{user_id}` GET, PUT `{password?, is_superuser?}`, DELETE. 404 when the built-in
 * database is not in the chain (no auth.users_file). Returns false for other paths.
 */
export async function usersRoute(
  store: UserStore | null,
  post: PostToShards,
  r: RestRequest,
): Promise<boolean> {
  const { method, parts, req, res, q } = r;
  if (parts.length < 3 || parts.length > 4 || USERS_PATH.some((p, i) => parts[i] !== p)) return false;
  if (!store) {
    sendError(res, 404, 'NOT_FOUND', 'password_based:built_in_database is not configured (auth.users_file)');
    return true;
  }
  const id = parts[3];
  if (id === undefined && method === 'GET') {
    const page = Number(q.get('page') ?? 1);
    const limit = Number(q.get('limit') ?? 100);
    if (!Number.isInteger(page) || page < 1 || !Number.isInteger(limit) || limit < 1 || limit > 10_000) {
      sendError(res, 400, 'BAD_REQUEST', 'page must be >= 1 and limit 1..10000');
      return true;
    }
    const like = q.get('like_user_id');
    const all = store.list().filter((u) => like === null || u.username.includes(like));
    const data = all.slice((page - 1) * limit, page * limit).map(view);
    sendJson(res, 200, { data, meta: { page, limit, count: all.length } });
    return true;
  }
  if (id === undefined && method === 'POST') {
    const body = await jsonBody(req, res);
    if (!body) return true;
    const err = userIdError(body.user_id) ?? passwordError(body.password);
    if (err || (body.is_superuser !== undefined && typeof body.is_superuser !== 'boolean')) {
      sendError(res, 400, 'BAD_REQUEST', err ?? 'is_superuser must be a boolean');
      return true;
    }
    const username = body.user_id as string;
    if (store.get(username)) {
      sendError(res, 409, 'ALREADY_EXISTS', `user ${username} exists`);
      return true;
    }
    const u: UserRecord = {
      username,
      password_hash: await store.hash(body.password as string),
      is_superuser: body.is_superuser === true,
    };
    // Checked again: another request may have added it while this one was hashing.
    if (store.get(username)) sendError(res, 409, 'ALREADY_EXISTS', `user ${username} exists`);
    else if (commitOr500(store, { put: u }, post, res)) sendJson(res, 201, view(u));
    return true;
  }
  if (id === undefined) return false;
  const existing = store.get(id);
  if (!existing && (method === 'GET' || method === 'PUT' || method === 'DELETE')) {
    sendError(res, 404, 'NOT_FOUND', `no user ${id}`);
    return true;
  }
  if (method === 'GET') {
    sendJson(res, 200, view(existing!));
    return true;
  }
  if (method === 'DELETE') {
    if (commitOr500(store, { deleted: id }, post, res)) res.writeHead(204).end();
    return true;
  }
  if (method === 'PUT') {
    const body = await jsonBody(req, res);
    if (!body) return true;
    const err =
      body.password === undefined && body.is_superuser === undefined
        ? 'give password and/or is_superuser'
        : body.password !== undefined
          ? passwordError(body.password)
          : null;
    if (err || (body.is_superuser !== undefined && typeof body.is_superuser !== 'boolean')) {
      sendError(res, 400, 'BAD_REQUEST', err ?? 'is_superuser must be a boolean');
      return true;
    }
    const hash = body.password === undefined ? null : await store.hash(body.password as string);
    const now = store.get(id);
    if (!now) {
      sendError(res, 404, 'NOT_FOUND', `no user ${id}`);
      return true;
    }
    const u: UserRecord = {
      username: id,
      password_hash: hash ?? now.password_hash,
      is_superuser: typeof body.is_superuser === 'boolean' ? body.is_superuser : now.is_superuser,
    };
    if (commitOr500(store, { put: u }, post, res)) sendJson(res, 200, view(u));
    return true;
  }
  return false;
}

import type { IncomingMessage, ServerResponse } from 'node:http';
import { readBody, sendError, sendJson } from '../http/util.js';
import type { SecurityToShard } from '../threads/messages.js';
import { type BannedEntry, bannedEntryError } from './banned.js';

/** A REST API request as the security routes get it (src/http/api.ts decodes the path). */
export interface RestRequest {
  method: string;
  /** Path segments after /api/v5/, decoded */
  parts: string[];
  req: IncomingMessage;
  res: ServerResponse;
  q: URLSearchParams;
}

/** Posts a security message to every shard (src/hooks/main-security.ts). */
export type PostToShards = (msg: SecurityToShard) => void;

/**
 * Main's authority over banned clients: the REST API changes it, and every change (and every
 * shard that starts: `securityRequest`) posts the whole list to the shards. In memory: a
 * restart of the broker forgets the bans.
 */
export class BannedStore {
  private readonly entries = new Map<string, BannedEntry>();

  list(now = Date.now()): BannedEntry[] {
    for (const [k, e] of this.entries) if (e.until !== 0 && e.until <= now) this.entries.delete(k);
    return [...this.entries.values()];
  }

  message(): SecurityToShard {
    return { t: 'banned', entries: this.list() };
  }

  add(e: BannedEntry): void {
    this.entries.set(`${e.as}\u0000${e.who}`, e);
  }

  delete(as: string, who: string): boolean {
    return this.entries.delete(`${as}\u0000${who}`);
  }
}

function time(v: unknown, fallback: number): number {
  if (v === undefined || v === null || v === '') return fallback;
  const t = typeof v === 'number' ? v * 1000 : Date.parse(String(v));
  return Number.isFinite(t) ? t : Number.NaN;
}

const iso = (ms: number): string | undefined => (ms === 0 ? undefined : new Date(ms).toISOString());

/**
 * `/api/v5/banned`: GET (list), POST `{as, who, by?, reason?, at?, until?}` (until RFC 3339 or
 * epoch seconds; absent = never), DELETE `/banned/{as}/{who}`. Returns false for other paths.
 */
export async function bannedRoute(store: BannedStore, post: PostToShards, r: RestRequest): Promise<boolean> {
  const { method, parts, req, res } = r;
  if (parts[0] !== 'banned') return false;
  if (method === 'GET' && parts.length === 1) {
    const data = store.list().map((e) => ({ ...e, at: iso(e.at), until: iso(e.until) ?? 'infinity' }));
    sendJson(res, 200, { data, meta: { page: 1, limit: data.length, count: data.length } });
    return true;
  }
  if (method === 'POST' && parts.length === 1) {
    let body: Record<string, unknown>;
    try {
      body = JSON.parse((await readBody(req, 64 * 1024)).toString('utf8'));
    } catch {
      sendError(res, 400, 'BAD_REQUEST', 'body must be JSON');
      return true;
    }
    const now = Date.now();
    const e: BannedEntry = {
      as: body.as as BannedEntry['as'],
      who: body.who as string,
      by: typeof body.by === 'string' ? body.by : 'mgmt_api',
      reason: typeof body.reason === 'string' ? body.reason : '',
      at: time(body.at, now),
      until: time(body.until, 0),
    };
    const err =
      bannedEntryError(e) ??
      (Number.isNaN(e.at) || Number.isNaN(e.until) ? 'at/until must be RFC 3339 or epoch seconds' : null);
    if (err) {
      sendError(res, 400, 'BAD_REQUEST', err);
      return true;
    }
    store.add(e);
    post(store.message());
    sendJson(res, 200, { ...e, at: iso(e.at), until: iso(e.until) ?? 'infinity' });
    return true;
  }
  if (method === 'DELETE' && parts.length === 3) {
    if (!store.delete(parts[1], parts[2])) {
      sendError(res, 404, 'NOT_FOUND', 'no such ban');
      return true;
    }
    post(store.message());
    res.writeHead(204).end();
    return true;
  }
  return false;
}

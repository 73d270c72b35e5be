import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { builtInDatabase } from '../auth/builtin.js';
import { HashPool } from '../auth/hash-pool.js';
import { httpProvider } from '../auth/http.js';
import { jwtProvider } from '../auth/jwt.js';
import { aclFileHook, parseAcl } from '../authz/acl-file.js';
import type { Config } from '../config/schema.js';
import type { Hook, HookContext } from './types.js';

/**
 * What a hook module exports (as `default` or `hooks`): a Hook, an array of them, or a factory
 * `(ctx) => Hook | Hook[]` (maybe async), called once per shard.
 */
export type HookModuleExport = Hook | Hook[] | ((ctx: HookContext) => Hook | Hook[] | Promise<Hook | Hook[]>);

/** `hooks.modules` as a list of import specifiers (relative paths are from the working directory). */
export function hookSpecifiers(cfg: Config): string[] {
  return cfg['hooks.modules']
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => (s.startsWith('.') || isAbsolute(s) ? pathToFileURL(resolve(s)).href : s));
}

async function loadModule(spec: string, ctx: HookContext): Promise<Hook[]> {
  const mod = (await import(spec)) as { default?: HookModuleExport; hooks?: HookModuleExport };
  let exp = mod.default ?? mod.hooks;
  if (typeof exp === 'function') exp = await exp(ctx);
  const list = Array.isArray(exp) ? exp : exp ? [exp] : [];
  for (const h of list) {
    if (!h || typeof h !== 'object' || typeof h.id !== 'string')
      throw new Error(`hook module ${spec}: a hook is an object with a string id`);
  }
  if (list.length === 0) throw new Error(`hook module ${spec} exports no hook (default or hooks)`);
  return list;
}

const PROVIDERS = ['built_in_database', 'jwt', 'http'] as const;

/** The authentication providers in auth.chain order (or those configured, in PROVIDERS order). */
export function chainNames(cfg: Config): string[] {
  if (cfg['auth.chain'].trim())
    return cfg['auth.chain']
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const configured: Record<string, boolean> = {
    built_in_database: cfg['auth.users_file'] !== '',
    jwt:
      cfg['auth.jwt.secret'] !== '' ||
      cfg['auth.jwt.public_key_file'] !== '' ||
      cfg['auth.jwt.jwks_file'] !== '',
    http: cfg['auth.http.url'] !== '',
  };
  return PROVIDERS.filter((p) => configured[p]);
}

export interface LoadedHooks {
  hooks: Hook[];
  /** Closes what the built-in providers opened (hash pool) */
  close(): Promise<void>;
}

/**
 * The hooks of one shard, in order: hook modules (hooks.modules), then the authentication chain,
 * then the ACL file. Runs in every shard thread (and once on main at start, to fail early on a
 * bad module or file instead of crash-looping shards).
 */
export async function loadHooks(ctx: HookContext): Promise<LoadedHooks> {
  const cfg = ctx.config;
  const hooks: Hook[] = [];
  for (const spec of hookSpecifiers(cfg)) hooks.push(...(await loadModule(spec, ctx)));
  const pool = new HashPool(cfg['auth.hash_threads']);
  for (const name of chainNames(cfg)) {
    if (name === 'built_in_database') {
      if (!cfg['auth.users_file'])
        throw new Error('auth.chain has built_in_database but auth.users_file is empty');
      hooks.push(builtInDatabase(cfg['auth.users_file'], pool));
    } else if (name === 'jwt') hooks.push(await jwtProvider(cfg));
    else if (name === 'http') {
      if (!cfg['auth.http.url']) throw new Error('auth.chain has http but auth.http.url is empty');
      hooks.push(httpProvider(cfg));
    } else throw new Error(`auth.chain: unknown provider ${name} (${PROVIDERS.join(', ')})`);
  }
  if (cfg['authz.acl_file']) {
    const file = cfg['authz.acl_file'];
    hooks.push(aclFileHook(parseAcl(readFileSync(file, 'utf8'), file)));
  }
  for (const h of hooks) await h.init?.(ctx);
  return { hooks, close: () => pool.close() };
}

import { ConfigError } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { chainNames, loadHooks } from './load.js';

/** What `Broker.start({ hooks })` takes: module specifiers (paths, file URLs, package names). */
export type HookModuleRef = string | URL;

/**
 * Hooks run in the shard worker threads, and a function or object cannot be sent to a thread:
 * embedders name hook modules, which every shard imports (see README "Hooks").
 */
export function hookModulesOption(refs: readonly HookModuleRef[]): string {
  return refs
    .map((r) => {
      if (r instanceof URL) return r.href;
      if (typeof r !== 'string')
        throw new TypeError(
          'Broker hooks are module paths or URLs (hooks run in worker threads; see README "Hooks")',
        );
      if (r.includes(',')) throw new TypeError(`hook module path must not contain a comma: ${r}`);
      return r;
    })
    .join(',');
}

/**
 * At start, on the main thread: loads the hooks once so that a bad module, users file, key or
 * ACL file stops the broker with a clear error (instead of shards failing one by one), and
 * says loudly when anyone may connect.
 */
export async function checkHooksAtStart(cfg: Config, log: Logger): Promise<void> {
  let loaded: Awaited<ReturnType<typeof loadHooks>>;
  try {
    loaded = await loadHooks({ shardId: -1, config: cfg, log });
  } catch (err) {
    // A configuration mistake (bad file, key, module): the CLI prints it and exits 2.
    throw new ConfigError(`hooks/authentication/authorization: ${(err as Error).message}`);
  }
  await loaded.close();
  const chain = chainNames(cfg);
  if (cfg['auth.allow_anonymous']) {
    log.warn(
      { chain },
      'auth.allow_anonymous is true: clients that no authentication provider accepts are let in ' +
        'anonymously. Set auth.allow_anonymous=false in production (README "Securing it")',
    );
  } else log.info({ chain, hooks: loaded.hooks.map((h) => h.id) }, 'authentication required');
}

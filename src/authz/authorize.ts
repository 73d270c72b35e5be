import type { Config } from '../config/schema.js';
import type { Hooks } from '../hooks/registry.js';
import type { AclAction, ClientInfo } from '../hooks/types.js';
import { Counter } from '../metrics/counters.js';
import { filterCovers, substitute } from './match.js';

/** Per-connection authorization state: who the client is, and its cache of recent answers. */
export class ClientAuth {
  /** topic → ±expiry (ms since epoch; positive = allowed) */
  pubCache: Map<string, number> | null = null;
  subCache: Map<string, number> | null = null;
  constructor(readonly info: ClientInfo) {}
}

function listed(list: string[] | undefined, c: ClientInfo, topic: string): boolean {
  if (!list) return false;
  for (const f of list) {
    const s = substitute(f, c);
    if (s !== null && filterCovers(s, topic)) return true;
  }
  return false;
}

/**
 * Decides PUBLISH and SUBSCRIBE: a superuser may do anything; then the client's own ACL (a JWT
 * `acl` claim), then the onAclCheck hooks in order (module hooks, then the ACL file) — the
 * first that does not `ignore` wins; else authz.no_match. `$SYS/…` needs an explicit allow when
 * the broker is locked down (auth.allow_anonymous false or an ACL file set). Answers are
 * cached per client (authz.cache.*). `active` is false when nothing could ever deny: the
 * publish and subscribe paths then skip the check entirely.
 */
export class Authorizer {
  readonly active: boolean;
  private readonly protectSys: boolean;

  constructor(
    private readonly hooks: Hooks,
    private readonly cfg: Config,
    private readonly row: Float64Array,
  ) {
    this.protectSys = !cfg['auth.allow_anonymous'] || cfg['authz.acl_file'] !== '';
    // An authentication hook may attach a client ACL (a JWT acl claim).
    this.active =
      hooks.acl.length > 0 || hooks.auth.length > 0 || this.protectSys || cfg['authz.no_match'] === 'deny';
  }

  check(auth: ClientAuth, action: AclAction, topic: string): boolean {
    const cfg = this.cfg;
    const useCache = cfg['authz.cache.enable'] && cfg['authz.cache.ttl'] > 0;
    let now = 0;
    if (useCache) {
      const cache = action === 'publish' ? auth.pubCache : auth.subCache;
      const v = cache?.get(topic);
      if (v !== undefined) {
        now = Date.now();
        if (Math.abs(v) > now) {
          this.row[Counter.authzCacheHit]++;
          return this.count(v > 0);
        }
        cache!.delete(topic);
      }
    }
    const allowed = this.decide(auth.info, action, topic);
    if (useCache) {
      let cache = action === 'publish' ? auth.pubCache : auth.subCache;
      if (!cache) {
        cache = new Map();
        if (action === 'publish') auth.pubCache = cache;
        else auth.subCache = cache;
      }
      // Full: the oldest entry goes (a Map iterates in insertion order).
      if (cache.size >= cfg['authz.cache.max_size']) cache.delete(cache.keys().next().value!);
      const until = (now || Date.now()) + cfg['authz.cache.ttl'] * 1000;
      cache.set(topic, allowed ? until : -until);
    }
    return this.count(allowed);
  }

  private count(allowed: boolean): boolean {
    this.row[allowed ? Counter.authzAllow : Counter.authzDeny]++;
    return allowed;
  }

  private decide(c: ClientInfo, action: AclAction, topic: string): boolean {
    if (c.superuser) return true;
    const acl = c.acl;
    if (acl) {
      if (listed(action === 'publish' ? acl.denyPublish : acl.denySubscribe, c, topic)) return false;
      if (listed(action === 'publish' ? acl.publish : acl.subscribe, c, topic)) return true;
    }
    for (const h of this.hooks.acl) {
      let r: string;
      try {
        r = h.onAclCheck!(c, action, topic);
      } catch (err) {
        this.hooks.failed(h, 'onAclCheck', err);
        continue;
      }
      if (r === 'allow') return true;
      if (r === 'deny') return false;
    }
    if (this.protectSys && topic.startsWith('$SYS')) return false;
    return this.cfg['authz.no_match'] === 'allow';
  }

  /** After a reload the rules may differ: cached answers are forgotten. */
  static clearCache(auth: ClientAuth | null): void {
    if (!auth) return;
    auth.pubCache = null;
    auth.subCache = null;
  }
}

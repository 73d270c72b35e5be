import { readFileSync } from 'node:fs';
import { createLocalJWKSet, importSPKI, type JWTPayload, jwtVerify } from 'jose';
import type { Config } from '../config/schema.js';
import type { AuthResult, ClientAcl, Hook } from '../hooks/types.js';

type Key = Parameters<typeof jwtVerify>[1];

/**
 * The `acl` claim, in either of EMQX's forms: `{pub: [...], sub: [...], all: [...]}` or a list of
 * `{permission: allow|deny, action: publish|subscribe|all, topic}`. Anything else: no client ACL.
 */
export function aclFromClaim(claim: unknown): ClientAcl | null {
  if (!claim || typeof claim !== 'object') return null;
  const acl: ClientAcl = { publish: [], subscribe: [], denyPublish: [], denySubscribe: [] };
  const strs = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x) => typeof x === 'string') : []);
  if (Array.isArray(claim)) {
    for (const r of claim as Record<string, unknown>[]) {
      if (!r || typeof r.topic !== 'string') continue;
      const deny = r.permission === 'deny';
      const act = r.action ?? 'all';
      if (act === 'publish' || act === 'all') (deny ? acl.denyPublish! : acl.publish).push(r.topic);
      if (act === 'subscribe' || act === 'all') (deny ? acl.denySubscribe! : acl.subscribe).push(r.topic);
    }
    return acl;
  }
  const c = claim as Record<string, unknown>;
  acl.publish.push(...strs(c.pub), ...strs(c.all));
  acl.subscribe.push(...strs(c.sub), ...strs(c.all));
  return acl;
}

/**
 * JWT authentication (jose): an HMAC secret, a PEM public key or a JWKS file. `exp` and `nbf`
 * are checked when present. A password (or username, auth.jwt.from) that is not JWT-shaped is
 * `ignore`, so that a chain can hold both users and tokens; a JWT that fails to verify is a deny.
 */
export async function jwtProvider(cfg: Config): Promise<Hook> {
  let key: Key;
  if (cfg['auth.jwt.jwks_file']) {
    key = createLocalJWKSet(JSON.parse(readFileSync(cfg['auth.jwt.jwks_file'], 'utf8')));
  } else if (cfg['auth.jwt.public_key_file']) {
    key = await importSPKI(readFileSync(cfg['auth.jwt.public_key_file'], 'utf8'), cfg['auth.jwt.algorithm']);
  } else {
    key = new TextEncoder().encode(cfg['auth.jwt.secret']);
  }
  const fromUsername = cfg['auth.jwt.from'] === 'username';
  return {
    id: 'jwt',
    async onConnectAuthenticate(req): Promise<AuthResult> {
      const raw = fromUsername ? req.username : (req.password?.toString('utf8') ?? null);
      if (raw?.split('.').length !== 3) return 'ignore';
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(raw, key));
      } catch {
        return 'deny';
      }
      return {
        result: 'allow',
        superuser: payload.is_superuser === true,
        acl: aclFromClaim(payload.acl),
        attrs: payload as Record<string, unknown>,
      };
    },
  };
}

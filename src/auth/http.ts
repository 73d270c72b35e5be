import { Pool } from 'undici';
import type { Config } from '../config/schema.js';
import type { AuthResult, Hook } from '../hooks/types.js';

/**
 * HTTP authentication (undici, a keep-alive pool per shard): POSTs
 * `{clientid, username, password, peerhost}` as JSON; a 2xx JSON answer `{result, is_superuser}`
 * decides (allow/deny/ignore), another status is `ignore` (as EMQX); no answer within
 * auth.http.timeout, or a connection error, is a deny.
 */
export function httpProvider(cfg: Config): Hook {
  const url = new URL(cfg['auth.http.url']);
  const timeout = cfg['auth.http.timeout'] * 1000;
  const pool = new Pool(url.origin, { connections: 8, keepAliveTimeout: 30_000 });
  const path = url.pathname + url.search;
  return {
    id: 'http',
    async onConnectAuthenticate(req): Promise<AuthResult> {
      try {
        const res = await pool.request({
          method: 'POST',
          path,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({
            clientid: req.clientId,
            username: req.username,
            password: req.password?.toString('utf8') ?? null,
            peerhost: req.peerhost,
          }),
          headersTimeout: timeout,
          bodyTimeout: timeout,
          signal: AbortSignal.timeout(timeout),
        });
        const text = await res.body.text();
        if (res.statusCode < 200 || res.statusCode >= 300) return 'ignore';
        const answer = text ? JSON.parse(text) : { result: 'allow' };
        const result = answer.result;
        if (result !== 'allow' && result !== 'deny' && result !== 'ignore') return 'ignore';
        return { result, superuser: answer.is_superuser === true };
      } catch {
        return 'deny';
      }
    },
  };
}

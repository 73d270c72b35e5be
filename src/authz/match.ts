import type { ClientInfo } from '../hooks/types.js';

/**
 * Whether rule filter `rule` covers `target` — a topic name (PUBLISH) or a topic filter
 * (SUBSCRIBE): `+` in the rule takes any one level of the target (a `+` too), `#` the rest; a
 * literal must equal the target's level, so `t/+` does not cover the filter `t/#`. A target
 * starting with `$` is not covered by a rule starting with a wildcard [MQTT-4.7.2-1].
 */
export function filterCovers(rule: string, target: string): boolean {
  if (rule === target) return true;
  if (target.charCodeAt(0) === 0x24 && (rule[0] === '+' || rule[0] === '#')) return false;
  let i = 0;
  let j = 0;
  for (;;) {
    const ie = rule.indexOf('/', i);
    const je = target.indexOf('/', j);
    const rl = rule.slice(i, ie < 0 ? undefined : ie);
    if (rl === '#') return true;
    const tl = target.slice(j, je < 0 ? undefined : je);
    if (rl === '+') {
      if (tl === '#') return false;
    } else if (rl !== tl) return false;
    if (ie < 0 || je < 0) {
      // Both ended: match. The rule has more: `t/#` covers `t` [MQTT-4.7.1-2].
      if (ie < 0 && je < 0) return true;
      return je < 0 && rule.slice(ie + 1) === '#';
    }
    i = ie + 1;
    j = je + 1;
  }
}

/**
 * `${clientid}`, `${username}` and `${jwt.<claim>}` (a string or number claim of the client's
 * JWT) filled in; null when the rule needs a username or claim the client has not got (the rule
 * then does not apply).
 */
export function substitute(filter: string, c: ClientInfo): string | null {
  if (filter.indexOf('$' + '{') < 0) return filter;
  if (filter.includes(USERNAME) && c.username === null) return null;
  let out = filter.replaceAll(CLIENTID, c.clientId).replaceAll(USERNAME, c.username ?? '');
  if (out.includes(JWT)) {
    let missing = false;
    out = out.replace(JWT_CLAIM, (_, name: string) => {
      const v = c.attrs?.[name];
      if (typeof v === 'string' || typeof v === 'number') return String(v);
      missing = true;
      return '';
    });
    if (missing) return null;
  }
  return out;
}

// The placeholders are literal text in ACL rules, not template strings.
const CLIENTID = '$' + '{clientid}';
const USERNAME = '$' + '{username}';
const JWT = '$' + '{jwt.';
const JWT_CLAIM = /\$\{jwt\.([A-Za-z0-9_]+)\}/g;

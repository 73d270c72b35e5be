import { BlockList, isIPv6 } from 'node:net';
import type { AclAction, AuthDecision, ClientInfo, Hook } from '../hooks/types.js';
import { filterCovers, substitute } from './match.js';
import { isAtom, isTuple, parseTerms, type Term } from './terms.js';

type Who =
  | { all: true }
  | { field: 'username' | 'clientid'; value: string | RegExp }
  | { ip: BlockList }
  | { and: Who[] }
  | { or: Who[] };

interface TopicRule {
  filter: string;
  /** {eq, "t/#"}: the filter itself, literally, not what it matches */
  eq: boolean;
}

export interface AclRule {
  allow: boolean;
  who: Who;
  publish: boolean;
  subscribe: boolean;
  /** null: every topic ({allow, all}.) */
  topics: TopicRule[] | null;
}

/** `::ffff:10.0.0.1` (IPv4 on a dual-stack listener) is 10.0.0.1 for the rules. */
export function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

function cidrs(list: string[], file: string): BlockList {
  const b = new BlockList();
  for (const c of list) {
    const [addr, bits] = c.split('/');
    const type = isIPv6(addr) ? 'ipv6' : 'ipv4';
    if (bits === undefined) b.addAddress(addr, type);
    else b.addSubnet(addr, Number(bits), type);
  }
  void file;
  return b;
}

function str(t: Term, what: string, file: string): string {
  if (typeof t !== 'string') throw new Error(`${file}: ${what} must be a "string"`);
  return t;
}

function compileWho(t: Term, file: string): Who {
  if (isAtom(t, 'all')) return { all: true };
  if (!isTuple(t) || t.tuple.length !== 2 || !isAtom(t.tuple[0]))
    throw new Error(`${file}: bad Who ${JSON.stringify(t)}`);
  const [k, v] = t.tuple;
  const kind = (k as { atom: string }).atom;
  if (kind === 'user' || kind === 'username' || kind === 'client' || kind === 'clientid') {
    const field = kind.startsWith('user') ? 'username' : 'clientid';
    if (isTuple(v) && v.tuple.length === 2 && isAtom(v.tuple[0], 're'))
      return { field, value: new RegExp(str(v.tuple[1], 're', file)) };
    return { field, value: str(v, kind, file) };
  }
  if (kind === 'ipaddr') return { ip: cidrs([str(v, 'ipaddr', file)], file) };
  if (kind === 'ipaddrs') {
    if (!Array.isArray(v)) throw new Error(`${file}: ipaddrs needs a list`);
    return {
      ip: cidrs(
        v.map((x) => str(x, 'ipaddrs', file)),
        file,
      ),
    };
  }
  if (kind === 'and' || kind === 'or') {
    if (!Array.isArray(v)) throw new Error(`${file}: ${kind} needs a list`);
    const list = v.map((x) => compileWho(x, file));
    return kind === 'and' ? { and: list } : { or: list };
  }
  throw new Error(`${file}: unknown Who ${kind}`);
}

/** Parses an acl.conf (EMQX syntax). Throws with file and line on bad input. */
export function parseAcl(text: string, file = 'acl.conf'): AclRule[] {
  return parseTerms(text, file).map((t) => {
    if (!isTuple(t)) throw new Error(`${file}: a rule must be a tuple`);
    const [perm, who, action, topics] = t.tuple;
    if (!isAtom(perm) || (perm.atom !== 'allow' && perm.atom !== 'deny'))
      throw new Error(`${file}: a rule starts with allow or deny`);
    const allow = perm.atom === 'allow';
    if (t.tuple.length === 2)
      return { allow, who: compileWho(who, file), publish: true, subscribe: true, topics: null };
    if (t.tuple.length !== 4) throw new Error(`${file}: a rule is {Permission, Who, Action, Topics}`);
    const act = isTuple(action) ? action.tuple[0] : action; // {publish, [{qos,…}]}: options not supported
    if (!isAtom(act) || !['publish', 'subscribe', 'all', 'pubsub'].includes(act.atom))
      throw new Error(`${file}: action must be publish, subscribe or all`);
    if (!Array.isArray(topics)) throw new Error(`${file}: topics must be a [list]`);
    const list: TopicRule[] = topics.map((x) => {
      if (typeof x === 'string') return { filter: x, eq: false };
      if (isTuple(x) && isAtom(x.tuple[0], 'eq')) return { filter: str(x.tuple[1], 'eq', file), eq: true };
      throw new Error(`${file}: a topic is "filter" or {eq, "filter"}`);
    });
    return {
      allow,
      who: compileWho(who, file),
      publish: act.atom !== 'subscribe',
      subscribe: act.atom !== 'publish',
      topics: list,
    };
  });
}

function whoMatches(w: Who, c: ClientInfo): boolean {
  if ('all' in w) return true;
  if ('field' in w) {
    const v = w.field === 'username' ? c.username : c.clientId;
    if (v === null) return false;
    return typeof w.value === 'string' ? w.value === v : w.value.test(v);
  }
  if ('ip' in w) {
    const ip = plainIp(c.peerhost);
    return w.ip.check(ip, isIPv6(ip) ? 'ipv6' : 'ipv4');
  }
  if ('and' in w) return w.and.every((x) => whoMatches(x, c));
  return w.or.some((x) => whoMatches(x, c));
}

/** The first rule that matches decides; none matching is `ignore` (authz.no_match applies). */
export function checkRules(
  rules: readonly AclRule[],
  c: ClientInfo,
  action: AclAction,
  topic: string,
): AuthDecision {
  for (const r of rules) {
    if (action === 'publish' ? !r.publish : !r.subscribe) continue;
    if (!whoMatches(r.who, c)) continue;
    if (r.topics === null) return r.allow ? 'allow' : 'deny';
    for (const t of r.topics) {
      if (t.eq) {
        if (t.filter === topic) return r.allow ? 'allow' : 'deny';
        continue;
      }
      const f = substitute(t.filter, c);
      if (f !== null && filterCovers(f, topic)) return r.allow ? 'allow' : 'deny';
    }
  }
  return 'ignore';
}

export function aclFileHook(rules: AclRule[]): Hook {
  return { id: 'acl_file', onAclCheck: (c, action, topic) => checkRules(rules, c, action, topic) };
}

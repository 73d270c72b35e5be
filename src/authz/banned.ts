import { BlockList, isIP, isIPv6 } from 'node:net';
import { plainIp } from './acl-file.js';

/** One ban, in EMQX's REST form (`/api/v5/banned`). Times are ms since epoch; until 0 = never. */
export interface BannedEntry {
  /** peerhost: one IP; peerhost_net: a CIDR */
  as: 'clientid' | 'username' | 'peerhost' | 'peerhost_net';
  who: string;
  by: string;
  reason: string;
  at: number;
  until: number;
}

const KINDS = ['clientid', 'username', 'peerhost', 'peerhost_net'] as const;

/** Validates a POSTed ban; returns a reason string when it is not one. */
export function bannedEntryError(e: Partial<BannedEntry>): string | null {
  if (!KINDS.includes(e.as as BannedEntry['as'])) return `as must be one of ${KINDS.join(', ')}`;
  if (typeof e.who !== 'string' || e.who === '') return 'who must be a non-empty string';
  if (e.as === 'peerhost' && !isIP(e.who)) return 'peerhost must be an IP address';
  if (e.as === 'peerhost_net') {
    const [addr, bits] = e.who.split('/');
    const max = isIPv6(addr) ? 128 : 32;
    if (!isIP(addr) || bits === undefined || !(Number(bits) >= 0 && Number(bits) <= max))
      return 'peerhost_net must be a CIDR, e.g. 10.0.0.0/8';
  }
  return null;
}

/**
 * The banned clients as a shard checks them at CONNECT (before authentication): exact client
 * ids, usernames and IPs in Maps, CIDRs in a BlockList. Main holds the authority and posts the
 * whole list to every shard on a change (bans are few and change rarely).
 */
export class BannedList {
  private byKind = new Map<string, BannedEntry>();
  private nets: { entry: BannedEntry; list: BlockList }[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  set(entries: readonly BannedEntry[]): void {
    this.byKind = new Map();
    this.nets = [];
    for (const e of entries) {
      if (e.as === 'peerhost_net') {
        const [addr, bits] = e.who.split('/');
        const list = new BlockList();
        list.addSubnet(addr, Number(bits), isIPv6(addr) ? 'ipv6' : 'ipv4');
        this.nets.push({ entry: e, list });
      } else this.byKind.set(`${e.as}\u0000${e.who}`, e);
    }
    this.count = entries.length;
  }

  /** The ban that applies, if any (expired ones do not). */
  find(clientId: string, username: string | null, peerhost: string, now: number): BannedEntry | null {
    if (this.count === 0) return null;
    const live = (e: BannedEntry | undefined): e is BannedEntry => !!e && (e.until === 0 || e.until > now);
    const ip = plainIp(peerhost);
    for (const e of [
      this.byKind.get(`clientid\u0000${clientId}`),
      username === null ? undefined : this.byKind.get(`username\u0000${username}`),
      this.byKind.get(`peerhost\u0000${ip}`),
    ])
      if (live(e)) return e;
    const type = isIPv6(ip) ? 'ipv6' : 'ipv4';
    for (const n of this.nets) if (live(n.entry) && n.list.check(ip, type)) return n.entry;
    return null;
  }
}

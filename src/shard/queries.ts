import type { Config } from '../config/schema.js';
import { topicMatches } from '../protocol/topic.js';
import type { Session } from '../session/session.js';
import type {
  ClientFilter,
  ClientInfo,
  ShardQuery,
  ShardQueryResult,
  SubscriptionFilter,
  SubscriptionInfo,
} from '../threads/messages.js';

/** What answering a query needs of the shard. */
export interface QueryHost {
  readonly id: number;
  readonly config: Config;
  readonly sessions: Map<string, Session>;
  kick(clientId: string): boolean;
}

/**
 * Answers the REST API's questions from this shard's own state (sessions, subscriptions). The
 * main thread keeps no copy: it asks every shard and merges. Lists are sorted and cut to `limit`
 * here, so a page near the start costs each shard a sort, not a transfer of everything.
 */
export function answerQuery(shard: QueryHost, query: ShardQuery): ShardQueryResult {
  switch (query.q) {
    case 'clients': {
      const all: ClientInfo[] = [];
      for (const s of shard.sessions.values()) {
        const info = clientInfo(shard, s);
        if (clientMatches(info, query.filter)) all.push(info);
      }
      all.sort((a, b) => cmp(a.clientid, b.clientid));
      return { count: all.length, items: all.slice(0, query.limit) };
    }
    case 'client': {
      const s = shard.sessions.get(query.clientId);
      return s ? clientInfo(shard, s) : null;
    }
    case 'kick':
      return shard.kick(query.clientId);
    case 'subscriptions': {
      const all: SubscriptionInfo[] = [];
      for (const s of shard.sessions.values()) {
        if (query.filter.clientid !== undefined && s.clientId !== query.filter.clientid) continue;
        if (s.subscriptionCount === 0) continue;
        for (const [topic, sub] of s.subscriptions) {
          const info: SubscriptionInfo = { clientid: s.clientId, topic, qos: sub.qos };
          if (subscriptionMatches(info, query.filter)) all.push(info);
        }
      }
      all.sort((a, b) => cmp(a.clientid, b.clientid) || cmp(a.topic, b.topic));
      return { count: all.length, items: all.slice(0, query.limit) };
    }
    case 'clientSubscriptions': {
      const s = shard.sessions.get(query.clientId);
      if (!s) return null;
      return [...s.subscriptions].map(([topic, sub]) => ({ clientid: s.clientId, topic, qos: sub.qos }));
    }
    case 'topics': {
      const topics = new Set<string>();
      for (const s of shard.sessions.values()) {
        if (s.subscriptionCount === 0) continue;
        for (const filter of s.subscriptions.keys()) {
          if (query.topic === undefined || filter === query.topic) topics.add(filter);
        }
      }
      return [...topics];
    }
    case 'memory': {
      // Only with --expose-gc (diagnosis, tests): live memory rather than live + garbage.
      const gc = (globalThis as { gc?: () => void }).gc;
      if (gc) gc();
      const m = process.memoryUsage();
      return { heapUsed: m.heapUsed, arrayBuffers: m.arrayBuffers };
    }
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function clientInfo(shard: QueryHost, s: Session): ClientInfo {
  const c = s.conn;
  const expiry = s.clean ? 0 : shard.config['mqtt.session_expiry_interval'];
  return {
    clientid: s.clientId,
    username: c?.username ?? null,
    connected: c !== null,
    ip_address: c?.remoteAddress ?? '',
    port: c?.remotePort ?? 0,
    listener: c?.listener ?? '',
    keepalive: c?.keepalive ?? 0,
    clean_start: s.clean,
    proto_name: c?.protocolName ?? 'MQTT',
    proto_ver: c?.protocolVersion ?? 4,
    connected_at: c?.connectedAt ?? 0,
    disconnected_at: c === null && s.expiresAt > 0 ? s.expiresAt - expiry * 1000 : 0,
    created_at: s.createdAt,
    expiry_interval: expiry,
    subscriptions_cnt: s.subscriptionCount,
    inflight_cnt: s.inflightCount,
    mqueue_len: s.queue.length,
    awaiting_rel_cnt: s.awaitingRelCount,
    shard: shard.id,
  };
}

function clientMatches(c: ClientInfo, f: ClientFilter): boolean {
  if (f.clientid !== undefined && c.clientid !== f.clientid) return false;
  if (f.like_clientid !== undefined && !c.clientid.includes(f.like_clientid)) return false;
  if (f.username !== undefined && c.username !== f.username) return false;
  if (f.like_username !== undefined && !(c.username ?? '').includes(f.like_username)) return false;
  if (f.ip_address !== undefined && c.ip_address !== f.ip_address) return false;
  if (f.conn_state !== undefined && c.connected !== (f.conn_state === 'connected')) return false;
  if (f.clean_start !== undefined && c.clean_start !== f.clean_start) return false;
  if (f.proto_ver !== undefined && c.proto_ver !== f.proto_ver) return false;
  if (f.gte_created_at !== undefined && c.created_at < f.gte_created_at) return false;
  if (f.lte_created_at !== undefined && c.created_at > f.lte_created_at) return false;
  if (f.gte_connected_at !== undefined && (!c.connected || c.connected_at < f.gte_connected_at)) return false;
  if (f.lte_connected_at !== undefined && (!c.connected || c.connected_at > f.lte_connected_at)) return false;
  return true;
}

function subscriptionMatches(s: SubscriptionInfo, f: SubscriptionFilter): boolean {
  if (f.topic !== undefined && s.topic !== f.topic) return false;
  if (f.qos !== undefined && s.qos !== f.qos) return false;
  if (f.match_topic !== undefined && !topicMatches(f.match_topic, s.topic)) return false;
  return true;
}

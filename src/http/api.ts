import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { loadavg } from 'node:os';
import { ShardUnavailableError } from '../broker/queries.js';
import type { BrokerView } from '../broker/view.js';
import { shardOf } from '../listener/client-id.js';
import { metricsSnapshot } from '../metrics/emqx.js';
import { topicFilterError, topicLevels, topicNameError } from '../protocol/topic.js';
import type { ClientFilter, ClientInfo, SubscriptionFilter, SubscriptionInfo } from '../threads/messages.js';
import { BodyError, basicAuthOk, readBody, sendError, sendJson, sendText } from './util.js';

/**
 * EMQX's REST API (`/api/v5`, port `api.port`), the parts an operator scripts against: clients
 * (list with paging and filters, get, kick, subscriptions), subscriptions, topics, publish,
 * stats, metrics, nodes, status. Every request needs the API key and secret as HTTP basic auth
 * (see http/credentials.ts); the one exception is `/api/v5/prometheus/stats`, open like EMQX's
 * unless `prometheus.enable_basic_auth` is set.
 *
 * Nothing here keeps client state: questions go to the shards (broker/queries.ts) and the
 * answers are merged; a client's own shard is found by hashing its id.
 */
export function apiHandler(broker: BrokerView) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    void route(broker, req, res).catch((err) => {
      if (err instanceof ShardUnavailableError) {
        sendError(res, 503, 'SERVICE_UNAVAILABLE', err.message);
        return;
      }
      if (err instanceof BadRequest || err instanceof BodyError) {
        sendError(res, 400, 'BAD_REQUEST', err.message);
        return;
      }
      broker.log.error({ err, method: req.method, url: req.url }, 'REST API request failed');
      if (!res.headersSent) sendError(res, 500, 'INTERNAL_ERROR', 'internal error');
      else res.destroy();
    });
  };
}

class BadRequest extends Error {}

const PREFIX = '/api/v5';
const MAX_LIMIT = 10_000;
/**
 * Every shard sorts and returns up to page × limit items for a list, so one request's cost grows
 * with the page number: deeper than this many items is 400 (filters narrow a list instead).
 */
const MAX_PAGE_WINDOW = 1_000_000;
const MAX_BODY = 4 * 1024 * 1024;

async function route(broker: BrokerView, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const path = url.pathname.replace(/\/+$/, '');
  if (!path.startsWith(`${PREFIX}/`)) return notFound(res);
  const parts = path
    .slice(PREFIX.length + 1)
    .split('/')
    .map(decodeURIComponent);
  const method = req.method ?? 'GET';
  const q = url.searchParams;

  const open =
    parts[0] === 'prometheus' && parts[1] === 'stats' && !broker.config['prometheus.enable_basic_auth'];
  if (!open && !basicAuthOk(req, broker.credentials.key, broker.credentials.secret)) {
    res.setHeader('www-authenticate', 'Basic realm="emqx-ts"');
    return sendError(res, 401, 'BAD_API_KEY_OR_SECRET', 'Check api_key/api_secret');
  }

  const is = (m: string, ...p: string[]) =>
    method === m && parts.length === p.length && p.every((s, i) => s === '*' || s === parts[i]);

  if (is('GET', 'clients')) return listClients(broker, q, res);
  if (is('GET', 'clients', '*')) return getClient(broker, parts[1], res);
  if (is('DELETE', 'clients', '*')) return kick(broker, parts[1], res);
  if (is('GET', 'clients', '*', 'subscriptions')) return clientSubscriptions(broker, parts[1], res);
  if (is('GET', 'subscriptions')) return listSubscriptions(broker, q, res);
  if (is('GET', 'topics')) return listTopics(broker, q, res);
  if (is('POST', 'publish')) return publish(broker, req, res);
  if (is('GET', 'stats')) return stats(broker, q, res);
  if (is('GET', 'metrics')) return metrics(broker, q, res);
  if (is('GET', 'nodes')) return sendJson(res, 200, [nodeInfo(broker), ...peerNodes(broker)]);
  if (is('GET', 'nodes', '*')) {
    if (parts[1] === broker.config['node.name']) return sendJson(res, 200, nodeInfo(broker));
    const peer = peerNodes(broker).find((n) => n.node === parts[1]);
    if (!peer) return sendError(res, 404, 'NOT_FOUND', 'node not found');
    return sendJson(res, 200, peer);
  }
  if (is('GET', 'status')) return status(broker, q, res);
  // /banned, /authentication/password_based:built_in_database/users (src/hooks/main-security.ts)
  if (await broker.security.route({ method, parts, req, res, q })) return;
  if (is('GET', 'prometheus', 'stats')) {
    return sendText(res, 200, await broker.registry.metrics(), broker.registry.contentType);
  }
  return notFound(res);
}

function notFound(res: ServerResponse): void {
  sendError(res, 404, 'NOT_FOUND', 'no such endpoint');
}

// ---------------------------------------------------------------------------------------------
// Paging and parameters

interface Page {
  page: number;
  limit: number;
}

function paging(q: URLSearchParams): Page {
  const page = intParam(q, 'page', 1);
  const limit = intParam(q, 'limit', 100);
  if (page < 1) throw new BadRequest('page must be >= 1');
  if (limit < 1 || limit > MAX_LIMIT) throw new BadRequest(`limit must be between 1 and ${MAX_LIMIT}`);
  if (page * limit > MAX_PAGE_WINDOW)
    throw new BadRequest(`page × limit must be at most ${MAX_PAGE_WINDOW} (narrow the list with a filter)`);
  return { page, limit };
}

function intParam(q: URLSearchParams, name: string, dflt: number): number {
  const v = q.get(name);
  if (v === null || v === '') return dflt;
  if (!/^-?\d+$/.test(v)) throw new BadRequest(`${name} must be an integer`);
  return Number(v);
}

function boolParam(q: URLSearchParams, name: string): boolean | undefined {
  const v = q.get(name);
  if (v === null) return undefined;
  if (v !== 'true' && v !== 'false') throw new BadRequest(`${name} must be true or false`);
  return v === 'true';
}

/** EMQX accepts RFC 3339 or epoch milliseconds for time filters. */
function timeParam(q: URLSearchParams, name: string): number | undefined {
  const v = q.get(name);
  if (v === null) return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(n)) throw new BadRequest(`${name} must be RFC 3339 or epoch milliseconds`);
  return n;
}

function str(q: URLSearchParams, name: string): string | undefined {
  return q.get(name) ?? undefined;
}

/** The page of the merged, sorted answers of every shard (each sent at most page × limit). */
function pageOf<T>(parts: { count: number; items: T[] }[], p: Page, cmp: (a: T, b: T) => number) {
  const all = parts.flatMap((r) => r.items).sort(cmp);
  const count = parts.reduce((n, r) => n + r.count, 0);
  const start = (p.page - 1) * p.limit;
  return {
    data: all.slice(start, start + p.limit),
    meta: { page: p.page, limit: p.limit, count, hasnext: start + p.limit < count },
  };
}

const byString = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const iso = (ms: number) => new Date(ms).toISOString();

// ---------------------------------------------------------------------------------------------
// Clients

function clientJson(broker: BrokerView, c: ClientInfo): Record<string, unknown> {
  const out: Record<string, unknown> = {
    ...c,
    node: broker.config['node.name'],
    connected_at: c.connected_at ? iso(c.connected_at) : undefined,
    created_at: iso(c.created_at),
    disconnected_at: c.disconnected_at ? iso(c.disconnected_at) : undefined,
    is_persistent: !c.clean_start,
  };
  for (const k of Object.keys(out)) if (out[k] === undefined) delete out[k];
  return out;
}

async function listClients(broker: BrokerView, q: URLSearchParams, res: ServerResponse): Promise<void> {
  const p = paging(q);
  const connState = str(q, 'conn_state');
  if (connState !== undefined && connState !== 'connected' && connState !== 'disconnected') {
    throw new BadRequest('conn_state must be connected or disconnected');
  }
  const protoVer = q.get('proto_ver');
  const filter: ClientFilter = {
    clientid: str(q, 'clientid'),
    like_clientid: str(q, 'like_clientid'),
    username: str(q, 'username'),
    like_username: str(q, 'like_username'),
    ip_address: str(q, 'ip_address'),
    conn_state: connState as ClientFilter['conn_state'],
    clean_start: boolParam(q, 'clean_start'),
    proto_ver: protoVer === null ? undefined : intParam(q, 'proto_ver', 0),
    gte_created_at: timeParam(q, 'gte_created_at'),
    lte_created_at: timeParam(q, 'lte_created_at'),
    gte_connected_at: timeParam(q, 'gte_connected_at'),
    lte_connected_at: timeParam(q, 'lte_connected_at'),
  };
  for (const k of Object.keys(filter) as (keyof ClientFilter)[])
    if (filter[k] === undefined) delete filter[k];
  const parts = await broker.queries.askAll({ q: 'clients', filter, limit: p.page * p.limit });
  const page = pageOf(parts, p, (a, b) => byString(a.clientid, b.clientid));
  sendJson(res, 200, { data: page.data.map((c) => clientJson(broker, c)), meta: page.meta });
}

async function getClient(broker: BrokerView, clientId: string, res: ServerResponse): Promise<void> {
  const c = await broker.queries.ask(shardOf(clientId, broker.shardCount), { q: 'client', clientId });
  if (!c) return sendError(res, 404, 'CLIENTID_NOT_FOUND', 'Client ID not found');
  sendJson(res, 200, clientJson(broker, c));
}

async function kick(broker: BrokerView, clientId: string, res: ServerResponse): Promise<void> {
  const found = await broker.queries.ask(shardOf(clientId, broker.shardCount), { q: 'kick', clientId });
  if (!found) return sendError(res, 404, 'CLIENTID_NOT_FOUND', 'Client ID not found');
  broker.log.info({ clientId }, 'client kicked through the REST API');
  res.writeHead(204);
  res.end();
}

function subscriptionJson(broker: BrokerView, s: SubscriptionInfo) {
  return { ...s, node: broker.config['node.name'], nl: 0, rap: 0, rh: 0 };
}

async function clientSubscriptions(broker: BrokerView, clientId: string, res: ServerResponse): Promise<void> {
  const subs = await broker.queries.ask(shardOf(clientId, broker.shardCount), {
    q: 'clientSubscriptions',
    clientId,
  });
  if (!subs) return sendError(res, 404, 'CLIENTID_NOT_FOUND', 'Client ID not found');
  subs.sort((a, b) => byString(a.topic, b.topic));
  sendJson(
    res,
    200,
    subs.map((s) => subscriptionJson(broker, s)),
  );
}

// ---------------------------------------------------------------------------------------------
// Subscriptions and topics

async function listSubscriptions(broker: BrokerView, q: URLSearchParams, res: ServerResponse): Promise<void> {
  const p = paging(q);
  const qos = q.get('qos');
  if (qos !== null && !/^[012]$/.test(qos)) throw new BadRequest('qos must be 0, 1 or 2');
  const filter: SubscriptionFilter = {
    clientid: str(q, 'clientid'),
    topic: str(q, 'topic'),
    qos: qos === null ? undefined : Number(qos),
    match_topic: str(q, 'match_topic'),
  };
  for (const k of Object.keys(filter) as (keyof SubscriptionFilter)[])
    if (filter[k] === undefined) delete filter[k];
  if (filter.match_topic !== undefined && topicFilterError(filter.match_topic)) {
    throw new BadRequest('match_topic is not a valid topic filter');
  }
  if (q.get('share_group') !== null) {
    // Shared subscriptions are not implemented: no subscription belongs to a group.
    return sendJson(res, 200, { data: [], meta: { page: p.page, limit: p.limit, count: 0, hasnext: false } });
  }
  const parts = await broker.queries.askAll({ q: 'subscriptions', filter, limit: p.page * p.limit });
  const page = pageOf(parts, p, (a, b) => byString(a.clientid, b.clientid) || byString(a.topic, b.topic));
  sendJson(res, 200, { data: page.data.map((s) => subscriptionJson(broker, s)), meta: page.meta });
}

async function listTopics(broker: BrokerView, q: URLSearchParams, res: ServerResponse): Promise<void> {
  const p = paging(q);
  const parts = await broker.queries.askAll({ q: 'topics', topic: str(q, 'topic') });
  const topics = [...new Set(parts.flat())].sort(byString);
  const start = (p.page - 1) * p.limit;
  const node = broker.config['node.name'];
  sendJson(res, 200, {
    data: topics.slice(start, start + p.limit).map((topic) => ({ topic, node })),
    meta: { page: p.page, limit: p.limit, count: topics.length, hasnext: start + p.limit < topics.length },
  });
}

// ---------------------------------------------------------------------------------------------
// Publish

async function publish(broker: BrokerView, req: IncomingMessage, res: ServerResponse): Promise<void> {
  let body: unknown;
  try {
    body = JSON.parse((await readBody(req, MAX_BODY)).toString('utf8'));
  } catch (err) {
    if (err instanceof BodyError) throw err;
    throw new BadRequest('body is not JSON');
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body))
    throw new BadRequest('body must be an object');
  const b = body as Record<string, unknown>;
  const topic = b.topic;
  if (typeof topic !== 'string') throw new BadRequest('topic is required');
  const topicErr = topicNameError(topic);
  if (topicErr) throw new BadRequest(`bad topic: ${topicErr}`);
  if (topicLevels(topic) > broker.config['mqtt.max_topic_levels'])
    throw new BadRequest(`bad topic: more than ${broker.config['mqtt.max_topic_levels']} levels`);
  const qos = b.qos ?? 0;
  if (qos !== 0 && qos !== 1 && qos !== 2) throw new BadRequest('qos must be 0, 1 or 2');
  const retain = b.retain ?? false;
  if (typeof retain !== 'boolean') throw new BadRequest('retain must be a boolean');
  const payloadRaw = b.payload ?? '';
  if (typeof payloadRaw !== 'string') throw new BadRequest('payload must be a string');
  const encoding = b.payload_encoding ?? 'plain';
  if (encoding !== 'plain' && encoding !== 'base64')
    throw new BadRequest('payload_encoding must be plain or base64');
  const payload = encoding === 'base64' ? Buffer.from(payloadRaw, 'base64') : Buffer.from(payloadRaw, 'utf8');
  if (!broker.publishInternal([{ topic, payload: new Uint8Array(payload), qos, retain, sys: false }])) {
    throw new ShardUnavailableError('no shard is running');
  }
  const id = randomBytes(16).toString('hex').toUpperCase();
  if (!broker.hasSubscribers(topic)) {
    return sendJson(res, 202, { id, message: 'no_matching_subscribers', reason_code: 16 });
  }
  sendJson(res, 200, { id });
}

// ---------------------------------------------------------------------------------------------
// Stats, metrics, nodes, status

function stats(broker: BrokerView, q: URLSearchParams, res: ServerResponse): void {
  const s = broker.stats.sample();
  if (boolParam(q, 'aggregate')) return sendJson(res, 200, s);
  sendJson(res, 200, [{ node: broker.config['node.name'], ...s }]);
}

function metrics(broker: BrokerView, q: URLSearchParams, res: ServerResponse): void {
  const m = metricsSnapshot(broker.counters);
  if (boolParam(q, 'aggregate')) return sendJson(res, 200, m);
  sendJson(res, 200, [{ node: broker.config['node.name'], ...m }]);
}

function nodeInfo(broker: BrokerView): Record<string, unknown> {
  const mem = process.memoryUsage();
  const [load1, load5, load15] = loadavg();
  const s = broker.stats.current();
  return {
    node: broker.config['node.name'],
    node_status: broker.readiness().ready ? 'running' : 'stopped',
    version: broker.version,
    edition: 'Opensource',
    role: 'core',
    uptime: Date.now() - broker.startedAt,
    connections: s.connections,
    live_connections: s.live_connections,
    memory_total: mem.rss,
    memory_used: mem.heapUsed,
    load1: round2(load1),
    load5: round2(load5),
    load15: round2(load15),
    sys_path: process.cwd(),
    node_version: process.version,
    shards: broker.shardCount,
  };
}

/** Other cluster members as the cluster thread last reported them (only what it knows of them). */
function peerNodes(broker: BrokerView): Record<string, unknown>[] {
  const members = broker.clusterMembers();
  return members
    .filter((m) => !m.self)
    .map((m) => ({
      node: m.name,
      node_status: m.status,
      address: m.address,
      last_seen: new Date(m.lastSeen).toISOString(),
      routes: m.routes,
      forward_inflight_bytes: m.inflightBytes,
      forward_queued_bytes: m.queuedBytes,
    }));
}

const round2 = (n: number) => Math.round(n * 100) / 100;

function status(broker: BrokerView, q: URLSearchParams, res: ServerResponse): void {
  const ready = broker.readiness().ready;
  const node = broker.config['node.name'];
  if (q.get('format') === 'json') {
    return sendJson(res, ready ? 200 : 503, {
      node_name: node,
      rel_vsn: broker.version,
      broker_status: ready ? 'started' : 'stopped',
      app_status: ready ? 'running' : 'not_running',
    });
  }
  sendText(
    res,
    ready ? 200 : 503,
    `Node ${node} is ${ready ? 'started' : 'stopped'}\nemqx is ${ready ? 'running' : 'not_running'}`,
  );
}

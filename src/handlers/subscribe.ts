import { subscribeAllowed } from '../authz/publish.js';
import { Counter } from '../metrics/counters.js';
import {
  encodeAck,
  encodeSuback,
  ProtocolError,
  parseSubscribe,
  parseUnsubscribe,
} from '../protocol/codec.js';
import { PacketType, type QoS, SUBACK_FAILURE } from '../protocol/constants.js';
import { hasWildcard, topicFilterError, topicLevels } from '../protocol/topic.js';
import {
  encodeSubackV5,
  encodeUnsubackV5,
  parseSubscribeV5,
  parseUnsubscribeV5,
  type SubscriptionRequest,
} from '../protocol/v5-control.js';
import { parseSharedFilter } from '../routing/shared.js';
import type { PendingJoin } from '../routing/subscriptions.js';
import type { HandlerConnection as Connection, PacketHandler } from './types.js';

/** MQTT 5 SUBACK reason codes [MQTT-3.9.3] */
const Reason = {
  UNSPECIFIED: 0x80,
  QUOTA_EXCEEDED: 0x97,
  TOPIC_FILTER_INVALID: 0x8f,
  SHARED_NOT_SUPPORTED: 0x9e,
  WILDCARD_NOT_SUPPORTED: 0xa2,
} as const;

/**
 * Grants one subscription or returns a failure code (3.1.1: 0x80 [MQTT-3.9.3-2]; 5.0: the
 * specific reason). Returns the granted QoS and whether the retained messages are to be sent.
 */
function subscribeOne(
  conn: Connection,
  r: SubscriptionRequest,
  subId: number,
): { code: number; sendRetained: boolean } {
  const cfg = conn.shard.config;
  const v5 = conn.v5;
  const fail = (code: number, reason: string): { code: number; sendRetained: boolean } => {
    conn.log.info({ filter: r.filter, reason }, 'subscription refused');
    return { code: v5 ? code : SUBACK_FAILURE, sendRetained: false };
  };
  const shared = parseSharedFilter(r.filter);
  if (typeof shared === 'string') return fail(Reason.TOPIC_FILTER_INVALID, shared);
  if (shared) {
    if (!cfg['mqtt.shared_subscription'])
      return fail(Reason.SHARED_NOT_SUPPORTED, 'shared subscriptions disabled');
    // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
    if (r.noLocal)
      throw new ProtocolError('No Local on a shared subscription [MQTT-3.8.3-4]', undefined, 0x82);
  } else {
    const err = topicFilterError(r.filter);
    if (err) return fail(Reason.TOPIC_FILTER_INVALID, err);
  }
  const maxLevels = cfg['mqtt.max_topic_levels'];
  if (topicLevels(shared ? shared.filter : r.filter) > maxLevels) {
    conn.shard.counters.row[Counter.topicLevelsRefused]++;
    return fail(Reason.TOPIC_FILTER_INVALID, `topic filter has more than ${maxLevels} levels`);
  }
  if (!cfg['mqtt.wildcard_subscription'] && hasWildcard(shared ? shared.filter : r.filter)) {
    return fail(Reason.WILDCARD_NOT_SUPPORTED, 'wildcard subscriptions disabled');
  }
  // Authorization (src/authz): a refused filter gets 0x87 (3.x: 0x80); after a deny_action
  // disconnect the rest of the SUBSCRIBE is refused too.
  if (
    conn.shard.security.authz.active &&
    (conn.closed || !subscribeAllowed(conn, shared ? shared.filter : r.filter))
  )
    return fail(0x87, 'not authorized');
  const maxSubs = cfg['mqtt.max_subscriptions'];
  if (
    maxSubs > 0 &&
    conn.session.subscriptions.size >= maxSubs &&
    !conn.session.subscriptions.has(r.filter)
  ) {
    conn.shard.counters.row[Counter.subscriptionsRefusedMax]++;
    return fail(Reason.QUOTA_EXCEEDED, `client has mqtt.max_subscriptions (${maxSubs}) subscriptions`);
  }
  const qos = Math.min(r.qos, cfg['mqtt.max_qos_allowed']) as QoS;
  const result = conn.shard.subscribe(
    conn.session,
    r.filter,
    {
      qos,
      noLocal: r.noLocal,
      retainAsPublished: r.retainAsPublished,
      retainHandling: r.retainHandling,
      subId,
    },
    shared,
  );
  if (result === null) return fail(Reason.QUOTA_EXCEEDED, 'topic index full');
  const hooks = conn.shard.security.hooks;
  if (hooks.subscribe.length > 0 && conn.auth) hooks.subscribed(conn.auth.info, r.filter, qos);
  // Retain Handling: 0 send, 1 only for a new subscription, 2 never [MQTT-3.3.1-9..11]; shared
  // subscriptions get no retained messages [MQTT-4.8.2-?].
  const sendRetained = !shared && (r.retainHandling === 0 || (r.retainHandling === 1 && result === 'new'));
  return { code: qos, sendRetained };
}

/**
 * SUBSCRIBE: one return code per filter, in order [MQTT-3.8.4-5]; a filter that is invalid or
 * cannot be stored fails alone while the others still succeed. A subscription with the same
 * filter replaces the old one [MQTT-3.8.4-3]; retained messages are (re)sent after SUBACK.
 */
export const handleSubscribe: PacketHandler = (conn, _flags, body, start, end) => {
  let packetId: number;
  let requests: SubscriptionRequest[];
  let subId = 0;
  if (conn.v5) {
    const p = parseSubscribeV5(body, start, end);
    packetId = p.packetId;
    requests = p.subscriptions;
    subId = p.subscriptionId;
  } else {
    const p = parseSubscribe(body, start, end);
    packetId = p.packetId;
    requests = p.subscriptions.map((s) => ({
      filter: s.filter,
      qos: s.qos,
      noLocal: false,
      retainAsPublished: false,
      retainHandling: 0,
    }));
  }
  const codes: number[] = [];
  const retained: string[] = [];
  const shard = conn.shard;
  const pending = shard.beginSubscribe();
  try {
    for (let i = 0; i < requests.length; i++) {
      const r = requests[i]!;
      const before = pending.length;
      const { code, sendRetained } = subscribeOne(conn, r, subId);
      codes.push(code);
      if (sendRetained) retained.push(r.filter);
      // A join a remote owner may still refuse: where its code sits (codes end the SUBACK).
      for (let k = before; k < pending.length; k++) {
        pending[k]!.filter = r.filter;
        pending[k]!.back = requests.length - i;
      }
    }
  } catch (err) {
    shard.endSubscribe();
    throw err;
  }
  const joins = shard.endSubscribe();
  if (codes.some((c) => c >= 0x80)) shard.counters.row[Counter.packetsSubscribeError]++;
  const suback = conn.v5 ? encodeSubackV5(packetId, codes) : encodeSuback(packetId, codes);
  // SUBACK waits for the retained messages of new subscriptions and for the owners of shared
  // groups on other shards to have the new members (see Shard.sendSuback).
  shard.sendSuback(conn, retained, joins, suback);
};

/**
 * The owner of a shared group on another shard could not add the member (its index is full):
 * the held SUBACK says 0x97 (MQTT 3: 0x80) for that filter instead of the granted QoS, and the
 * subscription is undone here, so the client's view and the group agree. Counted by the owner.
 */
export function refuseSharedJoin(conn: Connection, suback: Buffer, join: PendingJoin): void {
  if (join.filter === undefined || join.back === undefined) return;
  suback[suback.length - join.back] = conn.v5 ? Reason.QUOTA_EXCEEDED : SUBACK_FAILURE;
  conn.log.info({ filter: join.filter, reason: 'shared-subscription index full' }, 'subscription refused');
  conn.shard.counters.row[Counter.packetsSubscribeError]++;
  const session = conn.session;
  if (session.subscriptions.get(join.filter) === join.sub) conn.shard.unsubscribe(session, join.filter);
}

/**
 * UNSUBSCRIBE: always answered with UNSUBACK, even when nothing matched [MQTT-3.10.4-5];
 * MQTT 5 says per filter 0x00 Success or 0x11 No subscription existed.
 */
export const handleUnsubscribe: PacketHandler = (conn, _flags, body, start, end) => {
  if (conn.v5) {
    const p = parseUnsubscribeV5(body, start, end);
    const codes = p.filters.map((f) => (conn.shard.unsubscribe(conn.session, f) ? 0x00 : 0x11));
    conn.writeAck(encodeUnsubackV5(p.packetId, codes));
    return;
  }
  const packet = parseUnsubscribe(body, start, end);
  for (const filter of packet.filters) conn.shard.unsubscribe(conn.session, filter);
  conn.writeAck(encodeAck(PacketType.UNSUBACK, packet.packetId));
};

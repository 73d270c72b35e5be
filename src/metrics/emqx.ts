/**
 * EMQX's metric and stat names, defined once over the shared counters. The same table feeds the
 * Prometheus exposition (`emqx_` + name with `_` for `.`), the REST API's /metrics and /stats,
 * and the `$SYS/brokers/<node>/{metrics,stats}/...` messages, so the three always agree.
 *
 * Values are read at the moment they are asked for: sums of the per-thread counter rows.
 */
import type { TopicIndex } from '../routing/topic-index.js';
import { Counter, type Counters, PACKETS_RECEIVED_BY_TYPE, PACKETS_SENT_BY_TYPE } from './counters.js';

export interface EmqxMetric {
  /** EMQX's dotted name, e.g. `messages.qos1.received` */
  name: string;
  /** Prometheus name where it is not `emqx_` + name with dots as underscores */
  prom?: string;
  help: string;
  value(c: Counters): number;
}

const total = (i: number) => (c: Counters) => c.total(i);
const received = (type: number) => (c: Counters) => c.total(PACKETS_RECEIVED_BY_TYPE + type);
const sent = (type: number) => (c: Counters) => c.total(PACKETS_SENT_BY_TYPE + type);
const zero = () => 0;
const m = (name: string, help: string, value: (c: Counters) => number, prom?: string): EmqxMetric => ({
  name,
  help,
  value,
  prom,
});

// MQTT packet types
const CONNECT = 1;
const CONNACK = 2;
const PUBLISH = 3;
const PUBACK = 4;
const PUBREC = 5;
const PUBREL = 6;
const PUBCOMP = 7;
const SUBSCRIBE = 8;
const SUBACK = 9;
const UNSUBSCRIBE = 10;
const UNSUBACK = 11;
const PINGREQ = 12;
const PINGRESP = 13;
const DISCONNECT = 14;
const AUTH = 15;

/** EMQX's counters (`emqx_metrics`), in EMQX's order. All are monotonic. */
export const EMQX_METRICS: readonly EmqxMetric[] = [
  m('bytes.received', 'Bytes received from clients', total(Counter.bytesReceived)),
  m('bytes.sent', 'Bytes sent to clients', total(Counter.bytesSent)),
  m('packets.received', 'MQTT packets received', total(Counter.packetsReceived)),
  m('packets.sent', 'MQTT packets sent', total(Counter.packetsSent)),
  m('packets.connect.received', 'CONNECT packets received', received(CONNECT), 'emqx_packets_connect'),
  m('packets.connack.sent', 'CONNACK packets sent', sent(CONNACK)),
  m('packets.connack.error', 'CONNACK packets sent with a refusal code', total(Counter.packetsConnackError)),
  m(
    'packets.connack.auth_error',
    'CONNACK packets refusing bad credentials or not authorised',
    total(Counter.packetsConnackAuthError),
  ),
  m('packets.publish.received', 'PUBLISH packets received', received(PUBLISH)),
  m('packets.publish.sent', 'PUBLISH packets sent', sent(PUBLISH)),
  m(
    'packets.publish.inuse',
    'QoS 2 PUBLISH received again with a packet id still awaiting PUBREL',
    total(Counter.packetsPublishInuse),
  ),
  m(
    'packets.publish.error',
    'PUBLISH packets that failed to parse or validate',
    total(Counter.packetsPublishError),
  ),
  m(
    'packets.publish.auth_error',
    'PUBLISH packets refused by authorisation',
    total(Counter.publishAuthError),
  ),
  m(
    'packets.publish.dropped',
    'QoS 2 PUBLISH dropped because too many await PUBREL',
    total(Counter.packetsPublishDropped),
  ),
  m('packets.puback.received', 'PUBACK packets received', received(PUBACK)),
  m('packets.puback.sent', 'PUBACK packets sent', sent(PUBACK)),
  m('packets.puback.inuse', 'PUBACK with a packet id in use (MQTT 5 only: 0)', zero),
  m('packets.puback.missed', 'PUBACK for an unknown packet id', total(Counter.packetsPubackMissed)),
  m('packets.pubrec.received', 'PUBREC packets received', received(PUBREC)),
  m('packets.pubrec.sent', 'PUBREC packets sent', sent(PUBREC)),
  m('packets.pubrec.inuse', 'PUBREC with a packet id in use (MQTT 5 only: 0)', zero),
  m('packets.pubrec.missed', 'PUBREC for an unknown packet id', total(Counter.packetsPubrecMissed)),
  m('packets.pubrel.received', 'PUBREL packets received', received(PUBREL)),
  m('packets.pubrel.sent', 'PUBREL packets sent', sent(PUBREL)),
  m('packets.pubrel.missed', 'PUBREL for an unknown packet id', total(Counter.packetsPubrelMissed)),
  m('packets.pubcomp.received', 'PUBCOMP packets received', received(PUBCOMP)),
  m('packets.pubcomp.sent', 'PUBCOMP packets sent', sent(PUBCOMP)),
  m('packets.pubcomp.inuse', 'PUBCOMP with a packet id in use (MQTT 5 only: 0)', zero),
  m('packets.pubcomp.missed', 'PUBCOMP for an unknown packet id', total(Counter.packetsPubcompMissed)),
  m('packets.subscribe.received', 'SUBSCRIBE packets received', received(SUBSCRIBE)),
  m(
    'packets.subscribe.error',
    'SUBSCRIBE packets with at least one refused filter',
    total(Counter.packetsSubscribeError),
  ),
  m(
    'packets.subscribe.auth_error',
    'SUBSCRIBE filters refused by authorisation',
    total(Counter.subscribeAuthError),
  ),
  m('packets.suback.sent', 'SUBACK packets sent', sent(SUBACK)),
  m('packets.unsubscribe.received', 'UNSUBSCRIBE packets received', received(UNSUBSCRIBE)),
  m('packets.unsubscribe.error', 'UNSUBSCRIBE errors (MQTT 5 reason codes only: 0)', zero),
  m('packets.unsuback.sent', 'UNSUBACK packets sent', sent(UNSUBACK)),
  m('packets.pingreq.received', 'PINGREQ packets received', received(PINGREQ)),
  m('packets.pingresp.sent', 'PINGRESP packets sent', sent(PINGRESP)),
  m('packets.disconnect.received', 'DISCONNECT packets received', received(DISCONNECT)),
  m('packets.disconnect.sent', 'DISCONNECT packets sent', sent(DISCONNECT)),
  m('packets.auth.received', 'AUTH packets received', received(AUTH)),
  m('packets.auth.sent', 'AUTH packets sent', sent(AUTH)),
  m('messages.received', 'Application messages received from clients', total(Counter.messagesReceived)),
  m('messages.sent', 'Application messages sent to clients', total(Counter.messagesSent)),
  m('messages.qos0.received', 'QoS 0 messages received', total(Counter.messagesQos0Received)),
  m('messages.qos0.sent', 'QoS 0 messages sent', total(Counter.messagesQos0Sent)),
  m('messages.qos1.received', 'QoS 1 messages received', total(Counter.messagesQos1Received)),
  m('messages.qos1.sent', 'QoS 1 messages sent', total(Counter.messagesQos1Sent)),
  m('messages.qos2.received', 'QoS 2 messages received', total(Counter.messagesQos2Received)),
  m('messages.qos2.sent', 'QoS 2 messages sent', total(Counter.messagesQos2Sent)),
  m(
    'messages.publish',
    'Messages published by clients and wills (not $SYS)',
    (c) => c.total(Counter.messagesReceived) + c.total(Counter.willsPublished),
  ),
  m(
    'messages.dropped',
    'Messages dropped before delivery (no subscribers; $SYS not counted)',
    total(Counter.messagesDroppedNoSubscribers),
  ),
  m(
    'messages.dropped.await_pubrel_timeout',
    'Inbound QoS 2 packet ids dropped after mqtt.await_rel_timeout without PUBREL',
    total(Counter.messagesDroppedAwaitPubrelTimeout),
    'emqx_messages_dropped_expired',
  ),
  m(
    'messages.dropped.no_subscribers',
    'Messages dropped because nobody subscribed',
    total(Counter.messagesDroppedNoSubscribers),
  ),
  m(
    'messages.forward',
    'Messages forwarded to other nodes (once per destination node)',
    total(Counter.messagesForward),
  ),
  m('messages.retained', 'Retained messages stored', total(Counter.messagesRetained)),
  m('messages.delayed', 'Delayed-publish messages (not supported: 0)', zero),
  m('messages.delivered', 'Messages delivered to subscribers', total(Counter.messagesSent)),
  m(
    'messages.acked',
    'Outbound QoS 1/2 messages acknowledged (PUBACK, PUBREC)',
    (c) =>
      c.total(PACKETS_RECEIVED_BY_TYPE + PUBACK) -
      c.total(Counter.packetsPubackMissed) +
      c.total(PACKETS_RECEIVED_BY_TYPE + PUBREC) -
      c.total(Counter.packetsPubrecMissed),
  ),
  // Our messagesDropped counts every delivery-side drop plus the receive-side drops of
  // packets.publish.dropped; EMQX keeps the two apart.
  m(
    'delivery.dropped',
    'Deliveries dropped (queue full, QoS 0 to a congested or offline client)',
    (c) => c.total(Counter.messagesDropped) - c.total(Counter.packetsPublishDropped),
  ),
  m(
    'delivery.dropped.no_local',
    'Deliveries skipped by No Local (MQTT 5)',
    total(Counter.deliveryDroppedNoLocal),
  ),
  m(
    'delivery.dropped.too_large',
    'Deliveries dropped as larger than the client accepts (MQTT 5 Maximum Packet Size)',
    total(Counter.deliveryDroppedTooLarge),
  ),
  m(
    'delivery.dropped.qos0_msg',
    'QoS 0 deliveries dropped because the client is congested',
    total(Counter.deliveryDroppedQos0Slow),
  ),
  m(
    'delivery.dropped.queue_full',
    'Deliveries dropped because the session queue was full',
    total(Counter.deliveryDroppedQueueFull),
  ),
  m(
    'delivery.dropped.expired',
    'Deliveries dropped by message expiry (MQTT 5)',
    total(Counter.deliveryDroppedExpired),
  ),
  m('client.connect', 'CONNECT packets received', received(CONNECT)),
  m('client.connack', 'CONNACK packets sent', sent(CONNACK)),
  m('client.connected', 'Clients connected', total(Counter.clientConnected)),
  m('client.subscribe', 'SUBSCRIBE requests', received(SUBSCRIBE)),
  m('client.unsubscribe', 'UNSUBSCRIBE requests', received(UNSUBSCRIBE)),
  m('client.disconnected', 'Clients disconnected', total(Counter.clientDisconnected)),
  // Authentication and authorization (src/auth, src/authz), EMQX's names.
  m('client.auth.anonymous', 'Clients let in anonymously', total(Counter.authnSuccessAnonymous)),
  m('authentication.success', 'Successful authentications (anonymous included)', total(Counter.authnSuccess)),
  m(
    'authentication.success.anonymous',
    'Clients let in anonymously (no provider decided, auth.allow_anonymous)',
    total(Counter.authnSuccessAnonymous),
  ),
  m(
    'authentication.failure',
    'Failed authentications (denied or timed out; banned clients are not counted here)',
    total(Counter.authnFailure),
  ),
  m('authorization.allow', 'Authorization checks allowed', total(Counter.authzAllow)),
  m('authorization.deny', 'Authorization checks denied', total(Counter.authzDeny)),
  m(
    'authorization.cache_hit',
    'Authorization checks answered by the per-client cache',
    total(Counter.authzCacheHit),
  ),
  m('session.created', 'Sessions created', total(Counter.sessionCreated)),
  m('session.resumed', 'Persistent sessions resumed', total(Counter.sessionResumed)),
  m('session.takenover', 'Sessions taken over by a new connection', total(Counter.sessionTakenover)),
  // The shard counts sessionDiscarded for every session it drops (clean start, clean
  // disconnect, expiry, kick) and sessionTerminated / sessionExpired on top for the ends of a
  // session; EMQX's discarded is the clean-start (and kick) kind only.
  m(
    'session.discarded',
    'Sessions discarded by a clean-start connection or a kick',
    (c) =>
      c.total(Counter.sessionDiscarded) -
      c.total(Counter.sessionTerminated) -
      c.total(Counter.sessionExpired),
  ),
  m(
    'session.terminated',
    'Sessions ended (clean session disconnected, or expired)',
    (c) => c.total(Counter.sessionTerminated) + c.total(Counter.sessionExpired),
  ),
];

/** EMQX's stats (gauges); each has a `.max` companion tracked by StatsTracker. */
export const EMQX_STATS = [
  'connections',
  'live_connections',
  'sessions',
  'topics',
  'suboptions',
  'subscribers',
  'subscriptions',
  'subscriptions.shared',
  'retained',
] as const;

export type StatName = (typeof EMQX_STATS)[number];

/**
 * Current stats and their maxima. Maxima are what this process has seen when it sampled (on
 * every scrape and API call and once a second), as EMQX's stats are.
 */
export class StatsTracker {
  private readonly max = new Map<StatName, number>();

  constructor(
    private readonly counters: Counters,
    private readonly index: TopicIndex,
  ) {}

  current(): Record<StatName, number> {
    const c = this.counters;
    const sessions = c.total(Counter.sessions);
    const shared = c.total(Counter.subscriptionsShared);
    const subs = c.total(Counter.subscriptions) + shared;
    return {
      // EMQX counts a persistent session whose client is away as a connection (its channel
      // lives on); live_connections are the connected ones.
      connections: sessions,
      live_connections: c.total(Counter.connections),
      sessions,
      topics: this.index.stats().activeFilters,
      suboptions: subs,
      subscribers: subs,
      subscriptions: subs,
      'subscriptions.shared': shared,
      retained: c.total(Counter.retainedCount),
    };
  }

  /** `{'connections.count': n, 'connections.max': m, ...}` after updating the maxima. */
  sample(): Record<string, number> {
    const cur = this.current();
    const out: Record<string, number> = {};
    for (const name of EMQX_STATS) {
      const v = cur[name];
      const mx = Math.max(this.max.get(name) ?? 0, v);
      this.max.set(name, mx);
      out[`${name}.count`] = v;
      out[`${name}.max`] = mx;
    }
    return out;
  }
}

/** `{'messages.received': n, ...}` */
export function metricsSnapshot(c: Counters): Record<string, number> {
  const out: Record<string, number> = {};
  for (const def of EMQX_METRICS) out[def.name] = def.value(c);
  return out;
}

export function promName(name: string): string {
  return `emqx_${name.replaceAll('.', '_')}`;
}

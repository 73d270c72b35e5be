import type { Config } from '../config/schema.js';
import { MatchResult, type TopicIndex } from '../routing/topic-index.js';
import { Message } from '../session/message.js';
import type { Connection } from '../shard/connection.js';

/** What publishing a client event needs of its shard. */
export interface ClientEventHost {
  readonly config: Config;
  readonly index: TopicIndex;
  publish(msg: Message, conn: null): boolean;
}

/**
 * `$SYS/brokers/<node>/clients/<clientid>/{connected,disconnected}` (EMQX's client event
 * messages, QoS 0, not retained), published by the shard that owns the client. One match of the
 * shared topic index first: with no subscriber (the usual case) nothing else is done, so the
 * cost per connection event is one trie walk, and nothing is counted as dropped (as EMQX does
 * not count $SYS messages).
 */
const scratch = new MatchResult(8);
const MAX_TOPIC_BYTES = 65535;

export function sysTopicPrefix(node: string): string {
  return `$SYS/brokers/${node}`;
}

/** EMQX's reason atoms for a close reason of ours. */
export function disconnectReason(conn: Connection, reason: string): string {
  if (conn.gracefulDisconnect) return 'normal';
  if (reason.includes('keep-alive')) return 'keepalive_timeout';
  if (reason.includes('taken over')) return 'takenover';
  if (reason.includes('kicked')) return 'kicked';
  if (reason.includes('shutting down')) return 'shutdown';
  if (reason.includes('closed by peer')) return 'sock_closed';
  return 'protocol_error';
}

export function publishClientEvent(
  shard: ClientEventHost,
  conn: Connection,
  event: 'connected' | 'disconnected',
  reason = '',
): void {
  const cfg = shard.config;
  if (!cfg[`sys_topics.sys_event_messages.client_${event}`]) return;
  const topic = `${sysTopicPrefix(cfg['node.name'])}/clients/${conn.clientId}/${event}`;
  // A long client id (up to 65,535 bytes) makes a topic no MQTT frame can carry (u16 length):
  // that event is not published, rather than a frame or batch entry half-written.
  if (topic.length > MAX_TOPIC_BYTES || Buffer.byteLength(topic) > MAX_TOPIC_BYTES) return;
  if (shard.index.matchString(topic, scratch) === 0) return;
  const now = Date.now();
  const payload: Record<string, unknown> = {
    clientid: conn.clientId,
    username: conn.username,
    ipaddress: conn.remoteAddress,
    sockport: conn.localPort,
    protocol: 'mqtt',
    proto_name: conn.protocolName,
    proto_ver: conn.protocolVersion,
    connected_at: conn.connectedAt,
    ts: now,
  };
  if (event === 'connected') {
    payload.keepalive = conn.keepalive;
    payload.clean_start = conn.session.clean;
    payload.expiry_interval = conn.session.expiryInterval;
  } else {
    payload.reason = disconnectReason(conn, reason);
    payload.disconnected_at = now;
  }
  const msg = Message.fromStrings(topic, Buffer.from(JSON.stringify(payload)), 0, false, '');
  shard.publish(msg, null);
}

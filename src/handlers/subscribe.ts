import { Counter } from '../metrics/counters.js';
import { encodeAck, encodeSuback, parseSubscribe, parseUnsubscribe } from '../protocol/codec.js';
import { PacketType, type QoS, SUBACK_FAILURE } from '../protocol/constants.js';
import { topicFilterError } from '../protocol/topic.js';
import type { PacketHandler } from './types.js';

/**
 * SUBSCRIBE: one return code per filter, in order [MQTT-3.8.4-5]; a filter that is invalid or
 * cannot be stored gets 0x80 [MQTT-3.9.3-2] while the others still succeed. A subscription with
 * the same filter replaces the old one [MQTT-3.8.4-3]; retained messages are (re)sent after SUBACK.
 */
export const handleSubscribe: PacketHandler = (conn, _flags, body, start, end) => {
  const packet = parseSubscribe(body, start, end);
  const codes: number[] = [];
  const granted: { filter: string; qos: QoS }[] = [];
  for (const { filter, qos } of packet.subscriptions) {
    const err = topicFilterError(filter);
    if (err) {
      conn.log.info({ filter, reason: err }, 'subscription refused');
      codes.push(SUBACK_FAILURE);
      continue;
    }
    if (!conn.shard.subscribe(conn.session, filter, qos as QoS)) {
      codes.push(SUBACK_FAILURE);
      continue;
    }
    codes.push(qos);
    granted.push({ filter, qos: qos as QoS });
  }
  if (granted.length < codes.length) conn.shard.counters.row[Counter.packetsSubscribeError]++;
  const suback = encodeSuback(packet.packetId, codes);
  // With new subscriptions, SUBACK waits for their retained messages (see Shard.sendRetained).
  if (granted.length > 0) conn.shard.sendRetained(conn, granted, suback);
  else conn.writeAck(suback);
};

/** UNSUBSCRIBE: always answered with UNSUBACK, even when nothing matched [MQTT-3.10.4-5]. */
export const handleUnsubscribe: PacketHandler = (conn, _flags, body, start, end) => {
  const packet = parseUnsubscribe(body, start, end);
  for (const filter of packet.filters) conn.shard.unsubscribe(conn.session, filter);
  conn.writeAck(encodeAck(PacketType.UNSUBACK, packet.packetId));
};

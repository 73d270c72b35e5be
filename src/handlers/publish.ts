import { isUtf8 } from 'node:buffer';
import { Counter } from '../metrics/counters.js';
import { encodeAck, ProtocolError, parsePublish } from '../protocol/codec.js';
import { PacketType, type QoS } from '../protocol/constants.js';
import { Message } from '../session/message.js';
import type { PacketHandler } from './types.js';

/** Topic name bytes: non-empty, no wildcards [MQTT-3.3.2-2], no U+0000, well-formed UTF-8 [MQTT-1.5.3-1]. */
function checkTopicName(buf: Buffer, start: number, end: number): void {
  if (start === end) throw new ProtocolError('empty topic name [MQTT-4.7.3-1]', undefined, 0x82);
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c === 0x2b || c === 0x23)
      throw new ProtocolError('wildcard in PUBLISH topic [MQTT-3.3.2-2]', undefined, 0x82);
    if (c === 0) throw new ProtocolError('U+0000 in topic [MQTT-1.5.3-2]', undefined, 0x82);
  }
  if (!isUtf8(buf.subarray(start, end))) throw new ProtocolError('topic is not UTF-8 [MQTT-1.5.3-1]');
}

export const handlePublish: PacketHandler = (conn, flags, body, start, end) => {
  const f = conn.publishFrame;
  const shard = conn.shard;
  const row = shard.counters.row;
  try {
    parsePublish(flags, body, start, end, f);
    checkTopicName(body, f.topicStart, f.topicEnd);
  } catch (err) {
    row[Counter.packetsPublishError]++;
    throw err;
  }
  row[Counter.messagesReceived]++;
  row[Counter.messagesQos0Received + f.qos]++;
  const msg = new Message(
    body.subarray(f.topicStart, f.topicEnd),
    body.subarray(f.payloadStart, end),
    f.qos as QoS,
    f.retain,
    conn.clientId,
  );
  if (f.qos === 0) {
    shard.publish(msg, null);
    return;
  }
  const session = conn.session;
  if (f.qos === 1) {
    shard.publish(msg, conn, encodeAck(PacketType.PUBACK, f.packetId));
    return;
  }
  // QoS 2, method A: route now, remember the id until PUBREL so that a resent PUBLISH with the
  // same id is acknowledged but not routed again [MQTT-4.3.3-2].
  if (session.awaitingRel.has(f.packetId)) {
    row[Counter.packetsPublishInuse]++;
    conn.writeAck(encodeAck(PacketType.PUBREC, f.packetId));
    return;
  }
  if (session.awaitingRel.size >= shard.config['mqtt.max_awaiting_rel']) {
    row[Counter.messagesDropped]++;
    row[Counter.packetsPublishDropped]++;
    throw new ProtocolError(
      `more than ${shard.config['mqtt.max_awaiting_rel']} QoS 2 messages awaiting PUBREL`,
      undefined,
      0x93,
    );
  }
  session.awaitingRel.add(f.packetId);
  session.awaitingRelAt.set(f.packetId, conn.lastReceivedAt);
  shard.publish(msg, conn, encodeAck(PacketType.PUBREC, f.packetId));
};

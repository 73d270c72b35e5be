import { isUtf8 } from 'node:buffer';
import { checkPublish } from '../authz/publish.js';
import { Counter } from '../metrics/counters.js';
import { encodeAck, ProtocolError, type PublishFrame, parsePublish } from '../protocol/codec.js';
import { PacketType, type QoS } from '../protocol/constants.js';
import { newPublishProps, parsePublishProps } from '../protocol/v5.js';
import { encodeAckV5 } from '../protocol/v5-control.js';
import { Message } from '../session/message.js';
import type { HandlerConnection as Connection, PacketHandler } from './types.js';

/**
 * Topic name bytes: no wildcards [MQTT-3.3.2-2] (a protocol error), no U+0000 and well-formed
 * UTF-8 (either is a Malformed Packet, 0x81 [MQTT-1.5.4-1], [MQTT-1.5.4-2]), at most `maxLevels`
 * levels (mqtt.max_topic_levels, as EMQX: 0x90 Topic Name invalid). Returns false only for too
 * many levels, so the caller counts that refusal.
 */
function checkTopicName(buf: Buffer, start: number, end: number, maxLevels: number): boolean {
  let levels = 1;
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c === 0x2f) levels++;
    else if (c === 0x2b || c === 0x23)
      throw new ProtocolError('wildcard in PUBLISH topic [MQTT-3.3.2-2]', undefined, 0x82);
    else if (c === 0) throw new ProtocolError('U+0000 in topic [MQTT-1.5.4-2]', undefined, 0x81);
  }
  if (levels > maxLevels) return false;
  if (!isUtf8(buf.subarray(start, end)))
    throw new ProtocolError('topic is not UTF-8 [MQTT-1.5.4-1]', undefined, 0x81);
  return true;
}

/** Reused across messages: properties of the PUBLISH being handled. */
const props = newPublishProps();

/** The PUBLISH being handled (one per thread: a handler runs to completion before the next parse) */
const FRAME: PublishFrame = {
  qos: 0,
  dup: false,
  retain: false,
  topicStart: 0,
  topicEnd: 0,
  packetId: 0,
  payloadStart: 0,
};

/**
 * MQTT 5 parts of a PUBLISH: properties, topic alias, payload format, server limits. Returns
 * the topic bytes, or null when the message was refused with an ack reason code.
 */
function v5Publish(
  conn: Connection,
  body: Buffer,
  end: number,
  msgStart: { payload: number },
): Buffer | null {
  const f = FRAME;
  const cfg = conn.shard.config;
  msgStart.payload = parsePublishProps(body, f.payloadStart, end, props);
  if (f.qos > cfg['mqtt.max_qos_allowed']) {
    throw new ProtocolError(`QoS ${f.qos} above Maximum QoS [MQTT-3.2.2-11]`, undefined, 0x9b);
  }
  if (f.retain && !cfg['mqtt.retain_available']) {
    throw new ProtocolError('retain not supported [MQTT-3.2.2-14]', undefined, 0x9a);
  }
  let topic = body.subarray(f.topicStart, f.topicEnd);
  if (props.topicAlias > 0) {
    // Topic aliases are per connection, 1..Topic Alias Maximum [MQTT-3.3.2-9], [MQTT-3.3.2-10].
    if (props.topicAlias > cfg['mqtt.max_topic_alias']) {
      throw new ProtocolError(`topic alias ${props.topicAlias} above maximum`, undefined, 0x94);
    }
    if (!conn.inAliases) conn.inAliases = new Map();
    if (topic.length === 0) {
      const known = conn.inAliases.get(props.topicAlias);
      if (!known) throw new ProtocolError(`unknown topic alias ${props.topicAlias}`, undefined, 0x82);
      topic = known;
    } else {
      // Copied: the alias outlives the read buffer.
      conn.inAliases.set(props.topicAlias, Buffer.from(topic));
    }
  } else if (topic.length === 0) {
    throw new ProtocolError('empty topic name without topic alias [MQTT-3.3.2-8]', undefined, 0x82);
  }
  if (props.payloadFormat === 1 && !isUtf8(body.subarray(msgStart.payload, end))) {
    // Payload Format Indicator 1 promises UTF-8 [MQTT-3.3.2-4]: refused with 0x99.
    if (f.qos === 0)
      throw new ProtocolError('payload is not UTF-8 (Payload Format Indicator 1)', undefined, 0x99);
    conn.shard.counters.row[Counter.packetsPublishDropped]++;
    conn.writeAck(encodeAckV5(f.qos === 1 ? PacketType.PUBACK : PacketType.PUBREC, f.packetId, 0x99));
    return null;
  }
  return topic;
}

const payloadAt = { payload: 0 };

export const handlePublish: PacketHandler = (conn, flags, body, start, end) => {
  const f = FRAME;
  const shard = conn.shard;
  const row = shard.counters.row;
  let topic: Buffer | null;
  try {
    parsePublish(flags, body, start, end, f);
    const maxLevels = shard.config['mqtt.max_topic_levels'];
    if (!checkTopicName(body, f.topicStart, f.topicEnd, maxLevels)) {
      row[Counter.topicLevelsRefused]++;
      throw new ProtocolError(`topic has more than ${maxLevels} levels`, undefined, 0x90);
    }
    if (conn.v5) {
      topic = v5Publish(conn, body, end, payloadAt);
      if (topic === null) return;
    } else {
      if (f.topicStart === f.topicEnd)
        throw new ProtocolError('empty topic name [MQTT-4.7.3-1]', undefined, 0x82);
      topic = body.subarray(f.topicStart, f.topicEnd);
      payloadAt.payload = f.payloadStart;
    }
  } catch (err) {
    row[Counter.packetsPublishError]++;
    throw err;
  }
  row[Counter.messagesReceived]++;
  row[Counter.messagesQos0Received + f.qos]++;
  let msg: Message | null = new Message(
    topic,
    body.subarray(payloadAt.payload, end),
    f.qos as QoS,
    f.retain,
    conn.clientId,
  );
  if (conn.v5) {
    msg.props = props.forward;
    if (props.messageExpiry >= 0) msg.expiryAt = conn.lastReceivedAt + props.messageExpiry * 1000;
  }
  // Authorization and onPublish hooks (src/authz/publish.ts): one precomputed test when off.
  if (shard.security.publishChecks && (msg = checkPublish(conn, msg, f.packetId)) === null) return;
  if (f.qos === 0) {
    shard.publish(msg, conn, 0, 0); // conn: a congested subscriber may hold it (flow-control.ts)
    return;
  }
  const session = conn.session;
  if (f.qos === 1) {
    shard.publish(msg, conn, PacketType.PUBACK, f.packetId);
    return;
  }
  // QoS 2, method A: route now, remember the id until PUBREL so that a resent PUBLISH with the
  // same id is acknowledged but not routed again [MQTT-4.3.3-2].
  if (session.awaitingRel.has(f.packetId)) {
    row[Counter.packetsPublishInuse]++;
    conn.writeAck(encodeAck(PacketType.PUBREC, f.packetId));
    return;
  }
  // MQTT 5: more unacknowledged QoS 2 than our Receive Maximum is 0x93 [MQTT-3.3.4-9].
  const limit = conn.v5 ? shard.config['mqtt.receive_maximum'] : shard.config['mqtt.max_awaiting_rel'];
  if (session.awaitingRel.size >= limit) {
    row[Counter.messagesDropped]++;
    row[Counter.packetsPublishDropped]++;
    throw new ProtocolError(`more than ${limit} QoS 2 messages awaiting PUBREL`, undefined, 0x93);
  }
  session.awaitingRel.set(f.packetId, conn.lastReceivedAt);
  shard.durable?.awaitingRel(session, f.packetId, conn.lastReceivedAt);
  shard.publish(msg, conn, PacketType.PUBREC, f.packetId);
};

import { Counter } from '../metrics/counters.js';
import { encodeAck, parsePacketId } from '../protocol/codec.js';
import { PacketType } from '../protocol/constants.js';
import type { PacketHandler } from './types.js';

/** PUBACK: QoS 1 delivery complete; frees the inflight slot [MQTT-4.3.2]. */
export const handlePuback: PacketHandler = (conn, _flags, body, start, end) => {
  const id = parsePacketId(body, start, end);
  const entry = conn.session.inflight.get(id);
  // An ack for an unknown id is ignored (it may answer a message resent before a reconnect).
  if (entry && entry.qos === 1) {
    conn.session.inflight.delete(id);
    conn.shard.drainSession(conn.session);
  } else {
    conn.shard.counters.row[Counter.packetsPubackMissed]++;
  }
};

/** PUBREC: the client has the QoS 2 message; answer PUBREL [MQTT-4.3.3-1]. */
export const handlePubrec: PacketHandler = (conn, _flags, body, start, end) => {
  const id = parsePacketId(body, start, end);
  const entry = conn.session.inflight.get(id);
  if (entry && entry.qos === 2) entry.released = true;
  else conn.shard.counters.row[Counter.packetsPubrecMissed]++;
  conn.write(encodeAck(PacketType.PUBREL, id));
};

/** PUBCOMP: QoS 2 delivery complete. */
export const handlePubcomp: PacketHandler = (conn, _flags, body, start, end) => {
  const id = parsePacketId(body, start, end);
  const entry = conn.session.inflight.get(id);
  if (entry && entry.qos === 2 && entry.released) {
    conn.session.inflight.delete(id);
    conn.shard.drainSession(conn.session);
  } else {
    conn.shard.counters.row[Counter.packetsPubcompMissed]++;
  }
};

/** PUBREL from the publisher: forget the id and answer PUBCOMP (also for an unknown id) [MQTT-4.3.3-2]. */
export const handlePubrel: PacketHandler = (conn, _flags, body, start, end) => {
  const id = parsePacketId(body, start, end);
  if (!conn.session.awaitingRel.delete(id)) conn.shard.counters.row[Counter.packetsPubrelMissed]++;
  conn.session.awaitingRelAt.delete(id);
  conn.writeAck(encodeAck(PacketType.PUBCOMP, id));
};

import { Counter } from '../metrics/counters.js';
import { encodeAck, parsePacketId } from '../protocol/codec.js';
import { PacketType } from '../protocol/constants.js';
import { encodeAckV5, parseAckV5 } from '../protocol/v5-control.js';
import type { HandlerConnection as Connection, PacketHandler } from './types.js';

/** Packet id and reason code of an ack (3.1.1 has no reason code: 0). */
function ack(conn: Connection, body: Buffer, start: number, end: number): { id: number; reason: number } {
  if (!conn.v5) return { id: parsePacketId(body, start, end), reason: 0 };
  const a = parseAckV5(body, start, end);
  return { id: a.packetId, reason: a.reason };
}

/*
 * Unexpected acknowledgements (a PUBREC or PUBCOMP for a QoS 1 delivery, a PUBACK for a QoS 2
 * one, a PUBCOMP before PUBREC) are ignored and counted (packets.*.missed), as mosquitto does:
 * MQTT 3.1.1 has no reason code to answer with and does not require closing, and ending the
 * connection would lose nothing the client could fix. The delivery stays inflight unchanged, so
 * it completes on the right ack later or is resent with DUP on reconnect [MQTT-4.4.0-1].
 */

/** PUBACK: QoS 1 delivery complete; frees the inflight slot [MQTT-4.3.2]. */
export const handlePuback: PacketHandler = (conn, _flags, body, start, end) => {
  const { id } = ack(conn, body, start, end);
  const entry = conn.session.inflight.get(id);
  // An ack for an unknown id is ignored (it may answer a message resent before a reconnect).
  if (entry !== undefined && entry.qos === 1) {
    conn.session.inflight.delete(id);
    conn.shard.durable?.done(conn.session, entry);
    entry.msg.onAcked?.(); // cluster: a shared message from another node is done
    conn.shard.drainSession(conn.session);
  } else {
    conn.shard.counters.row[Counter.packetsPubackMissed]++;
  }
};

/**
 * PUBREC: the client has the QoS 2 message; answer PUBREL [MQTT-4.3.3-1]. A MQTT 5 PUBREC with
 * a failure reason code (≥ 0x80) ends the exchange: no PUBREL, the slot is freed [MQTT-4.3.3-?].
 */
export const handlePubrec: PacketHandler = (conn, _flags, body, start, end) => {
  const { id, reason } = ack(conn, body, start, end);
  const entry = conn.session.inflight.get(id);
  if (reason >= 0x80) {
    if (entry && entry.qos === 2) {
      conn.session.inflight.delete(id);
      conn.shard.durable?.done(conn.session, entry);
      conn.shard.drainSession(conn.session);
    }
    return;
  }
  if (entry !== undefined && entry.qos === 2) {
    if (!entry.released) conn.shard.durable?.released(conn.session, entry, id);
    entry.released = true;
    entry.msg.onAcked?.(); // cluster: the member has it (QoS 2 stays with it)
  } else {
    conn.shard.counters.row[Counter.packetsPubrecMissed]++;
    // The id belongs to a QoS 1 delivery: a PUBREL for it would start a QoS 2 exchange the
    // client never had; it still owes the PUBACK.
    if (entry !== undefined) return;
  }
  if (conn.v5 && !entry) conn.write(encodeAckV5(PacketType.PUBREL, id, 0x92));
  else conn.write(encodeAck(PacketType.PUBREL, id));
};

/** PUBCOMP: QoS 2 delivery complete. */
export const handlePubcomp: PacketHandler = (conn, _flags, body, start, end) => {
  const { id } = ack(conn, body, start, end);
  const entry = conn.session.inflight.get(id);
  if (entry && entry.qos === 2 && entry.released) {
    conn.session.inflight.delete(id);
    conn.shard.durable?.done(conn.session, entry);
    conn.shard.drainSession(conn.session);
  } else {
    conn.shard.counters.row[Counter.packetsPubcompMissed]++;
  }
};

/**
 * PUBREL from the publisher: forget the id and answer PUBCOMP [MQTT-4.3.3-2]; for an unknown id
 * MQTT 3.1.1 still answers PUBCOMP, MQTT 5 with 0x92 Packet Identifier not found.
 */
export const handlePubrel: PacketHandler = (conn, _flags, body, start, end) => {
  const { id } = ack(conn, body, start, end);
  const known = conn.session.awaitingRelCount > 0 && conn.session.awaitingRel.delete(id);
  if (!known) conn.shard.counters.row[Counter.packetsPubrelMissed]++;
  else conn.shard.durable?.relDone(conn.session, id);
  if (conn.v5 && !known) conn.writeAck(encodeAckV5(PacketType.PUBCOMP, id, 0x92));
  else conn.writeAck(encodeAck(PacketType.PUBCOMP, id));
};

import type { HandlerConnection as Connection } from '../handlers/types.js';
import { Counter } from '../metrics/counters.js';
import { encodeAck } from '../protocol/codec.js';
import { PacketType } from '../protocol/constants.js';
import { encodeAckV5 } from '../protocol/v5-control.js';
import type { Message } from '../session/message.js';

/**
 * A PUBLISH that is not routed (refused by authorization, or dropped by a hook) is still
 * acknowledged. MQTT 5 with `reason` 0x87: PUBACK/PUBREC 0x87 ends the flow. Otherwise (3.x, or a
 * hook drop) a positive ack by the normal QoS rules [MQTT-3.3.5-2]; a QoS 2 id is remembered so
 * that its PUBREL completes normally.
 */
function ackUnrouted(conn: Connection, qos: number, packetId: number, reason: number): void {
  if (qos === 0) return;
  const type = qos === 1 ? PacketType.PUBACK : PacketType.PUBREC;
  if (conn.v5 && reason !== 0) {
    conn.writeAck(encodeAckV5(type, packetId, reason));
    return;
  }
  if (qos === 2) conn.session.awaitingRel.set(packetId, conn.lastReceivedAt);
  conn.writeAck(encodeAck(type, packetId));
}

/**
 * Authorization and onPublish hooks for a client's PUBLISH (called only when the shard's
 * `publishChecks` is set). Returns the message to route (maybe changed by a hook) or null when
 * it was refused or dropped and already acknowledged.
 */
export function checkPublish(conn: Connection, msg: Message, packetId: number): Message | null {
  const shard = conn.shard;
  const { authz, hooks } = shard.security;
  const auth = conn.auth!;
  if (authz.active && !authz.check(auth, 'publish', msg.topic)) {
    const row = shard.counters.row;
    row[Counter.publishAuthError]++;
    row[Counter.messagesDropped]++;
    if (hooks.dropped.length > 0) hooks.messageDropped(conn.clientId, msg.topic, 'not_authorized');
    conn.log.info({ topic: msg.topic }, 'PUBLISH not authorized');
    if (shard.config['authz.deny_action'] === 'disconnect') {
      conn.disconnect(0x87, 'not authorized');
      return null;
    }
    ackUnrouted(conn, msg.qos, packetId, 0x87);
    return null;
  }
  if (hooks.publish.length === 0) return msg;
  const out = hooks.runPublish(auth.info, msg);
  if (out === null) ackUnrouted(conn, msg.qos, packetId, 0);
  return out;
}

/** SUBSCRIBE authorization for one filter (shared subscriptions: the filter after $share/group/). */
export function subscribeAllowed(conn: Connection, filter: string): boolean {
  const shard = conn.shard;
  if (shard.security.authz.check(conn.auth!, 'subscribe', filter)) return true;
  shard.counters.row[Counter.subscribeAuthError]++;
  if (shard.config['authz.deny_action'] === 'disconnect') conn.disconnect(0x87, 'not authorized');
  return false;
}

import { ProtocolError } from '../protocol/codec.js';
import { parseDisconnectV5 } from '../protocol/v5-control.js';
import type { PacketHandler } from './types.js';

/**
 * DISCONNECT: the will is discarded [MQTT-3.14.4-3] and the connection closed [MQTT-3.14.4-1].
 * MQTT 5: reason 0x04 "Disconnect with Will Message" publishes the will; a Session Expiry
 * Interval may replace the CONNECT's, except that 0 cannot become non-zero [MQTT-3.14.2-2].
 */
export const handleDisconnect: PacketHandler = (conn, _flags, body, start, end) => {
  const session = conn.session;
  if (!conn.v5) {
    if (end !== start) throw new ProtocolError('DISCONNECT with a body');
    conn.gracefulDisconnect = true;
    session.will = null;
    conn.close('client disconnected');
    return;
  }
  const { reason, props } = parseDisconnectV5(body, start, end);
  const expiry = props.sessionExpiryInterval;
  if (expiry !== undefined) {
    // The rule is about what the client sent in CONNECT, not the value the server capped it to:
    // with mqtt.session_expiry_interval = 0 a client that asked for 60 may still say 30 here.
    if (conn.connectExpiry === 0 && expiry !== 0) {
      throw new ProtocolError(
        'Session Expiry Interval set at DISCONNECT after 0 in CONNECT [MQTT-3.14.2-2]',
        undefined,
        0x82,
      );
    }
    // Capped by mqtt.session_expiry_interval, as at CONNECT.
    session.expiryInterval = Math.min(expiry, conn.shard.config['mqtt.session_expiry_interval']);
  }
  if (reason !== 0x04) {
    conn.gracefulDisconnect = true;
    session.will = null;
  }
  conn.close(reason === 0 ? 'client disconnected' : `client disconnected (reason 0x${reason.toString(16)})`);
};

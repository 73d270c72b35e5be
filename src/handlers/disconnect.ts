import { ProtocolError } from '../protocol/codec.js';
import type { PacketHandler } from './types.js';

/** DISCONNECT: discard the will [MQTT-3.14.4-3] and close [MQTT-3.14.4-1]. */
export const handleDisconnect: PacketHandler = (conn, _flags, _body, start, end) => {
  if (end !== start) throw new ProtocolError('DISCONNECT with a body');
  conn.gracefulDisconnect = true;
  conn.session.will = null;
  conn.close('client disconnected');
};

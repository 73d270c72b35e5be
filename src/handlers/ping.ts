import { PINGRESP, ProtocolError } from '../protocol/codec.js';
import type { PacketHandler } from './types.js';

/** PINGREQ → PINGRESP [MQTT-3.12.4-1]. Receiving any packet already reset the keep-alive clock. */
export const handlePingreq: PacketHandler = (conn, _flags, _body, start, end) => {
  if (end !== start) throw new ProtocolError('PINGREQ with a body');
  conn.write(PINGRESP);
};

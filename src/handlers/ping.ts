import { PINGRESP } from '../protocol/codec.js';
import type { PacketHandler } from './types.js';

/** PINGREQ → PINGRESP [MQTT-3.12.4-1]. Receiving any packet already reset the keep-alive clock. */
export const handlePingreq: PacketHandler = (conn) => {
  conn.write(PINGRESP);
};

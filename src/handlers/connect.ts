import { ProtocolError } from '../protocol/codec.js';
import type { PacketHandler } from './types.js';

/** The first CONNECT is read by the main thread; a second one is a protocol violation [MQTT-3.1.0-2]. */
export const handleConnect: PacketHandler = () => {
  throw new ProtocolError('second CONNECT [MQTT-3.1.0-2]', undefined, 0x82);
};

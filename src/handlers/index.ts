import { PacketType } from '../protocol/constants.js';
import { handlePuback, handlePubcomp, handlePubrec, handlePubrel } from './acks.js';
import { handleConnect } from './connect.js';
import { handleDisconnect } from './disconnect.js';
import { handlePingreq } from './ping.js';
import { handlePublish } from './publish.js';
import { handleSubscribe, handleUnsubscribe } from './subscribe.js';
import type { PacketHandler } from './types.js';

/** Handlers indexed by packet type; packets a client must not send (CONNACK, SUBACK…) have none. */
export const HANDLERS: (PacketHandler | undefined)[] = [];
HANDLERS[PacketType.CONNECT] = handleConnect;
HANDLERS[PacketType.PUBLISH] = handlePublish;
HANDLERS[PacketType.PUBACK] = handlePuback;
HANDLERS[PacketType.PUBREC] = handlePubrec;
HANDLERS[PacketType.PUBREL] = handlePubrel;
HANDLERS[PacketType.PUBCOMP] = handlePubcomp;
HANDLERS[PacketType.SUBSCRIBE] = handleSubscribe;
HANDLERS[PacketType.UNSUBSCRIBE] = handleUnsubscribe;
HANDLERS[PacketType.PINGREQ] = handlePingreq;
HANDLERS[PacketType.DISCONNECT] = handleDisconnect;
for (let t = 0; t < 16; t++) if (!HANDLERS[t]) HANDLERS[t] = undefined;

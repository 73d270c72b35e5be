import type { ClientAuth } from '../authz/authorize.js';
import type { Config } from '../config/schema.js';
import type { ShardSecurity } from '../hooks/security.js';
import type { Logger } from '../log.js';
import type { Counters } from '../metrics/counters.js';
import type { PendingJoin, SubscribeOptions } from '../routing/subscriptions.js';
import type { Message } from '../session/message.js';
import type { Session, Subscription } from '../session/session.js';
import type { ShardDurability } from '../storage/shard-durability.js';

/**
 * What a packet handler may ask of its connection's shard (Shard implements it). ACL and
 * message hooks (`security`) are called by the handlers before these (docs/ARCHITECTURE.md).
 */
export interface HandlerShard {
  readonly config: Config;
  readonly counters: Counters;
  readonly security: ShardSecurity;
  publish(msg: Message, conn: HandlerConnection | null, ackType?: number, packetId?: number): boolean;
  subscribe(
    session: Session,
    filter: string,
    o: SubscribeOptions,
    shared?: Subscription['shared'],
  ): 'new' | 'existing' | null;
  unsubscribe(session: Session, filter: string): boolean;
  beginSubscribe(): PendingJoin[];
  endSubscribe(): PendingJoin[];
  sendSuback(conn: HandlerConnection, retainedFilters: string[], joins: PendingJoin[], suback: Buffer): void;
  drainSession(session: Session): void;
  /** Persistent sessions' acks and QoS 2 ids go to the durable store (null: durability.mode none) */
  readonly durable: ShardDurability | null;
}

/** What a packet handler may ask of its connection (shard/connection.ts implements it). */
export interface HandlerConnection {
  readonly shard: HandlerShard;
  readonly session: Session;
  readonly clientId: string;
  readonly v5: boolean;
  readonly log: Logger;
  gracefulDisconnect: boolean;
  /** Session Expiry Interval the client asked for in CONNECT (before the server cap) */
  readonly connectExpiry: number;
  lastReceivedAt: number;
  /** Inbound topic aliases (client → broker) [MQTT-3.3.2-7] */
  inAliases: Map<number, Buffer> | null;
  /** Who authenticated (src/auth); set before the first packet is read */
  readonly auth: ClientAuth | null;
  readonly closed: boolean;
  write(frame: Buffer): void;
  writeAck(frame: Buffer): void;
  close(reason: string): void;
  /** DISCONNECT with a reason code (MQTT 5), then close */
  disconnect(reasonCode: number, reason: string): void;
}

/** Handles one packet type. `body` is only valid during the call. Throws ProtocolError to close. */
export type PacketHandler = (
  conn: HandlerConnection,
  flags: number,
  body: Buffer,
  start: number,
  end: number,
) => void;

/**
 * The hook interface (after mochi-mqtt's `Hook`): one object per hook, each method optional.
 * A hook runs in every shard thread (see hooks/load.ts for how it gets there). It declares the
 * events it provides with `provides(event)`, or by defining the method; the registry keeps one
 * list per event, so an event no hook provides costs one boolean test on its path.
 */
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';

export const HOOK_EVENTS = [
  'onConnectAuthenticate',
  'onAclCheck',
  'onPublish',
  'onSubscribe',
  'onDisconnect',
  'onSessionCreated',
  'onSessionResumed',
  'onSessionDiscarded',
  'onMessageDelivered',
  'onMessageDropped',
  'onWill',
] as const;
export type HookEvent = (typeof HOOK_EVENTS)[number];

/** Who a client is, as the hooks see it. Plain data, made once per connection. */
export interface ClientInfo {
  clientId: string;
  username: string | null;
  /** Peer IP address */
  peerhost: string;
  protocolVersion: number;
  /** Set by the authenticating provider: skips authorization */
  superuser: boolean;
  /** Provider-attached rules (e.g. a JWT `acl` claim), checked before the ACL file */
  acl: ClientAcl | null;
  /** Provider-attached attributes (e.g. JWT claims) */
  attrs: Record<string, unknown> | null;
}

/** A client-attached ACL: filters allowed per action (placeholders allowed); anything else falls through. */
export interface ClientAcl {
  publish: string[];
  subscribe: string[];
  /** Rules denied explicitly (JWT list form with permission deny) */
  denyPublish?: string[];
  denySubscribe?: string[];
}

export interface ConnectRequest extends ClientInfo {
  password: Buffer | null;
}

/** `ignore` passes to the next provider (EMQX's chain). */
export type AuthDecision = 'allow' | 'deny' | 'ignore';
export interface AuthAnswer {
  result: AuthDecision;
  /** For a deny: bad credentials (CONNACK 0x86 / 4, the default) or not authorized (0x87 / 5) */
  reason?: 'bad_credentials' | 'not_authorized';
  superuser?: boolean;
  acl?: ClientAcl | null;
  attrs?: Record<string, unknown> | null;
}
export type AuthResult = AuthDecision | AuthAnswer;

export type AclAction = 'publish' | 'subscribe';

/** A message as onPublish sees it; the hook may change topic/payload in place. */
export interface PublishInfo {
  topic: string;
  payload: Buffer;
  qos: number;
  retain: boolean;
}

export interface WillInfo {
  topic: string;
  payload: Uint8Array;
  qos: number;
  retain: boolean;
}

export type DropReason =
  | 'no_subscribers'
  | 'queue_full'
  | 'qos0_slow'
  | 'expired'
  | 'not_authorized'
  | 'hook';

export interface HookContext {
  shardId: number;
  config: Readonly<Config>;
  log: Logger;
}

export interface Hook {
  /** For logs */
  id: string;
  /** Which events this hook provides; default: the methods it defines. */
  provides?(event: HookEvent): boolean;
  /** Called once in each shard before it accepts connections. */
  init?(ctx: HookContext): void | Promise<void>;
  /** May be async: the connection waits (auth.timeout). `ignore` passes to the next hook. */
  onConnectAuthenticate?(req: ConnectRequest): AuthResult | Promise<AuthResult>;
  /** Synchronous (it is on the publish path). `ignore` passes to the next hook. */
  onAclCheck?(client: ClientInfo, action: AclAction, topic: string): AuthDecision;
  /** May change `msg.topic`/`msg.payload`; returning false drops the message. */
  onPublish?(client: ClientInfo, msg: PublishInfo): boolean | undefined;
  onSubscribe?(client: ClientInfo, filter: string, qos: number): void;
  onDisconnect?(client: ClientInfo, reason: string): void;
  onSessionCreated?(clientId: string): void;
  onSessionResumed?(clientId: string): void;
  onSessionDiscarded?(clientId: string): void;
  onMessageDelivered?(clientId: string, topic: string, qos: number): void;
  onMessageDropped?(clientId: string | null, topic: string, reason: DropReason): void;
  /** Returning false suppresses the will. */
  onWill?(clientId: string, will: WillInfo): boolean | undefined;
}

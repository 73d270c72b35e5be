/** Embedding API: `const broker = await Broker.start({ config: { listener: { port: 1883 } } })` */
export { Broker, type BrokerOptions } from './broker/broker.js';
export { ConfigError, loadConfig } from './config/load.js';
export type { Config } from './config/schema.js';
export { SCHEMA } from './config/schema.js';
export type { HookModuleExport } from './hooks/load.js';
export type { HookModuleRef } from './hooks/main.js';
/** Hooks (README "Hooks"): a hook module exports one of these, loaded in every shard */
export type {
  AclAction,
  AuthAnswer,
  AuthDecision,
  AuthResult,
  ClientAcl,
  ClientInfo,
  ConnectRequest,
  DropReason,
  Hook,
  HookContext,
  HookEvent,
  PublishInfo,
  WillInfo,
} from './hooks/types.js';

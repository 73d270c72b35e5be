/** Embedding API: `const broker = await Broker.start({ config: { listener: { port: 1883 } } })` */
export { Broker, type BrokerOptions } from './broker/broker.js';
export { ConfigError, loadConfig } from './config/load.js';
export type { Config } from './config/schema.js';
export { SCHEMA } from './config/schema.js';

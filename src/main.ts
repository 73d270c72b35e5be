#!/usr/bin/env node
import { Broker } from './broker/broker.js';
import { ConfigError } from './config/load.js';
import { StorageError } from './storage/types.js';

/** CLI entry: `npm start -- --port 1883 --shards 2 --host 0.0.0.0 [--config file.json]` */
async function main(): Promise<void> {
  // `emqx-ts passwd …`: the users-file tool (src/auth/passwd.ts), like mosquitto_passwd.
  if (process.argv[2] === 'passwd') {
    const { runPasswd } = await import('./auth/passwd.js');
    process.exit(await runPasswd(process.argv.slice(3)));
  }
  let broker: Broker;
  try {
    broker = await Broker.start({ argv: process.argv.slice(2), env: process.env });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`emqx-ts: ${err.message}\n`);
      process.exit(2);
    }
    // The data dir is unusable: refuse to start rather than run memory-only (docs/DURABILITY.md).
    if (err instanceof StorageError) {
      process.stderr.write(`emqx-ts: data dir: ${err.message}\n`);
      process.exit(3);
    }
    if (err instanceof Error && err.message.startsWith('cannot listen')) {
      process.stderr.write(`emqx-ts: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    broker.log.info({ signal }, 'shutting down');
    void broker.stop().then(() => process.exit(0));
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // SIGHUP: reload the configuration from the same sources; what can change at runtime does.
  process.on('SIGHUP', () => {
    broker.log.info({ signal: 'SIGHUP' }, 'reloading configuration');
    broker.reload().catch((err: Error) => {
      broker.log.error(
        { err: err.message },
        'configuration reload failed; keeping the running configuration',
      );
    });
  });
}

void main();

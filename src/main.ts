#!/usr/bin/env node
import { Broker } from './broker/broker.js';
import { writeHeapSnapshots } from './broker/heap-snapshots.js';
import { ConfigError } from './config/load.js';
import { StorageError } from './storage/types.js';

/** CLI entry: `npm start -- --port 1883 --shards 2 --host 0.0.0.0 [--config file.json]` */
async function main(): Promise<void> {
  // `emqx-ts passwd …`: the users-file tool (src/auth/passwd.ts), like mosquitto_passwd.
  if (process.argv[2] === 'passwd') {
    const { runPasswd } = await import('./auth/passwd.js');
    process.exit(await runPasswd(process.argv.slice(3)));
  }
  let broker: Broker | null = null;
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    if (!broker) return; // still starting: stopped as soon as it has started (below)
    broker.log.info({ signal }, 'shutting down');
    void broker.stop().then(() => process.exit(0));
  };
  // Installed before the start: a SIGTERM while it starts (HTTP servers after 'listening') is a
  // clean stop, not the default kill.
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
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
  const started: Broker = broker;
  if (stopping) {
    stopping = false;
    shutdown('SIGTERM');
  }
  // SIGHUP: reload the configuration from the same sources; what can change at runtime does.
  process.on('SIGHUP', () => {
    started.log.info({ signal: 'SIGHUP' }, 'reloading configuration');
    started.reload().catch((err: Error) => {
      started.log.error(
        { err: err.message },
        'configuration reload failed; keeping the running configuration',
      );
    });
  });
  // SIGUSR2: heap snapshots of every thread in the working directory (diagnosis), only when
  // asked for with EMQX_TS_HEAP_SNAPSHOTS=1: a snapshot stalls every thread for seconds, and a
  // stray signal must not do that to a production broker.
  if (process.env.EMQX_TS_HEAP_SNAPSHOTS === '1')
    process.on('SIGUSR2', () => {
      const sup = started.supervisor;
      const workers = sup.shards.map((s) => ({ name: `shard${s.id}`, worker: s.worker }));
      if (sup.cluster) workers.push({ name: 'cluster', worker: sup.cluster.worker });
      void writeHeapSnapshots(workers, process.cwd(), started.log);
    });
}

void main();

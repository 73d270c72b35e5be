// aedes as a comparison broker: plain TCP listener with aedes' default in-memory persistence.
// Usage: node --import tsx bench/aedes-server.ts --port 1883 [--host 127.0.0.1]

import net from 'node:net';
import { Aedes } from 'aedes';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback;
}

const port = Number(arg('port', '1883'));
const host = arg('host', '127.0.0.1');

const broker = await Aedes.createBroker();
// Surface why aedes drops a client (the bench reports the broker's last output on failures).
broker.on('clientError', (client, err) => console.error(`clientError ${client.id}: ${err.message}`));
broker.on('connectionError', (_client, err) => console.error(`connectionError: ${err.message}`));
const server = net.createServer({ noDelay: true }, broker.handle);
server.listen(port, host, () => {
  console.log(JSON.stringify({ msg: 'listening', broker: 'aedes', host, port }));
});

function shutdown(): void {
  server.close();
  broker.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

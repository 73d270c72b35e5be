import { createServer } from 'node:net';
import { Counter } from '../metrics/counters.js';
import type { AcceptorHost, TransportServer } from './acceptor.js';
import { readProxyHeader } from './proxy-protocol.js';

/**
 * Plain MQTT over TCP (`listeners.tcp.default`). With `proxy_protocol` every connection must
 * start with a PROXY v1/v2 header (a load balancer in front, typically one that terminates TLS:
 * the fastest way to serve TLS, see docs/ARCHITECTURE.md); the address in it is the client's.
 * A connection accepted here can be handed to its owner shard as an fd (shard/accept.ts).
 */
export function tcpServer(a: AcceptorHost): TransportServer {
  const cfg = a.opts.config;
  const server = createServer({ noDelay: true, highWaterMark: a.highWaterMark }, (socket) => {
    if (!cfg['listeners.tcp.default.proxy_protocol']) {
      a.accept(socket);
      return;
    }
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.on('error', destroyOnError);
    readProxyHeader(
      socket,
      cfg['listeners.tcp.default.proxy_protocol_timeout'] * 1000,
      (addr) => {
        socket.removeListener('error', destroyOnError);
        a.accept(socket, addr ? { remoteAddress: addr.address, remotePort: addr.port } : undefined);
      },
      (reason) => {
        a.refused(Counter.proxyProtocolErrors, reason, peer);
        socket.destroy();
      },
    );
  });
  return { server };
}

function destroyOnError(this: { destroy(): void }): void {
  this.destroy();
}

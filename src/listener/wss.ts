import { createServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import type { AcceptorHost, TransportServer } from './acceptor.js';
import { onTlsClientError, tlsOptions, tlsPeer } from './ssl.js';
import { attachWebSocket, HTTP_CHECK_MS } from './ws.js';

/**
 * MQTT over secure WebSocket (`listeners.wss.default`): TLS as the ssl listener (same
 * ssl_options, mutual TLS, peer_cert_as_username, reload on SIGHUP), then WebSocket as ws.
 */
export function wssServer(a: AcceptorHost): TransportServer {
  const server = createServer({
    ...tlsOptions(a.opts.config, 'wss'),
    noDelay: true,
    connectionsCheckingInterval: HTTP_CHECK_MS,
  });
  server.on('tlsClientError', (err, socket) => {
    onTlsClientError(a, err, socket);
    socket.destroy();
  });
  attachWebSocket(a, server, 'wss', (req) => tlsPeer(a, req.socket as TLSSocket, 'wss'));
  return { server, rebuildOnReload: true };
}

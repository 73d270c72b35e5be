import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { Counter } from '../metrics/counters.js';
import type { AcceptMeta, AcceptorHost, TransportServer } from './acceptor.js';
import { listenerKey } from './listeners.js';
import { WsStream } from './ws-stream.js';

/** Subprotocols MQTT clients offer: `mqtt` (MQTT 3.1.1 and 5), `mqttv3.1` (MQTT 3.1), EMQX's aliases. */
const SUBPROTOCOLS = new Set(['mqtt', 'mqttv3.1', 'mqttv5', 'mqtt-v3', 'mqtt-v3.1.1', 'mqtt-v5']);

/** `mqtt` when offered [MQTT-6.0.0-4], else the first supported one; none supported: no subprotocol. */
function chooseProtocol(offered: Set<string>): string | false {
  if (offered.has('mqtt')) return 'mqtt';
  for (const p of offered) if (SUBPROTOCOLS.has(p)) return p;
  return false;
}

/**
 * MQTT over WebSocket on an HTTP(S) server: upgrades on the listener's mqtt_path (others 404,
 * plain requests 426), negotiates the subprotocol, and hands the connection to the CONNECT
 * reader as a WsStream. `peer` (wss) checks the client certificate first.
 */
export function attachWebSocket(
  a: AcceptorHost,
  server: Server,
  type: 'ws' | 'wss',
  peer?: (req: IncomingMessage) => AcceptMeta | null,
): void {
  const cfg = a.opts.config;
  const wss = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    // Compression costs CPU per message and memory per connection; MQTT payloads are the client's.
    perMessageDeflate: false,
    handleProtocols: chooseProtocol,
    // Read at each upgrade would need a server per value; a new limit applies on restart.
    maxPayload: (cfg[listenerKey(type, 'websocket.max_frame_size')] as number) || cfg['mqtt.max_packet_size'],
    // Binary only: text frames are refused anyway.
    skipUTF8Validation: true,
  });
  const remoteOf = (s: { remoteAddress?: string; remotePort?: number }): string =>
    `${s.remoteAddress}:${s.remotePort}`;
  wss.on('wsClientError', (err, socket: Socket) => {
    a.refused(Counter.wsUpgradeRefused, `WebSocket upgrade refused: ${err.message}`, remoteOf(socket));
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
    socket.destroySoon();
  });
  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    const path = (req.url ?? '').split('?')[0];
    const want = String(cfg[listenerKey(type, 'websocket.mqtt_path')]);
    if (path !== want) {
      a.refused(Counter.wsUpgradeRefused, `WebSocket path ${path} is not ${want}`, remoteOf(socket));
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      socket.destroySoon();
      return;
    }
    const meta = peer ? peer(req) : {};
    if (!meta) return;
    wss.handleUpgrade(req, socket, head, (ws) => {
      const stream = new WsStream(ws, socket, a.highWaterMark, (reason) => {
        a.refused(Counter.wsProtocolErrors, reason, remoteOf(socket));
      });
      // A WsStream offers what the CONNECT reader and a Connection use of a net.Socket.
      a.accept(stream as unknown as Socket, meta);
    });
  });
  server.on('request', (_req, res) => {
    res.writeHead(426, { Upgrade: 'websocket', Connection: 'close' });
    res.end('MQTT over WebSocket: connect with a WebSocket client\n');
  });
  server.on('clientError', (_err, socket: Socket) => socket.destroy());
  // A connection that never completes its upgrade request is closed after listener.connect_timeout,
  // as one that never sends CONNECT (checked every second: HTTP_CHECK_MS).
  server.headersTimeout = cfg['listener.connect_timeout'] * 1000;
  server.requestTimeout = server.headersTimeout;
}

/** How often the HTTP server looks for requests past their timeout (Node's default is 30 s). */
export const HTTP_CHECK_MS = 1000;

/** MQTT over WebSocket (`listeners.ws.default`); carried to its owner shard by a tunnel (tunnel.ts). */
export function wsServer(a: AcceptorHost): TransportServer {
  const server = createHttpServer({ connectionsCheckingInterval: HTTP_CHECK_MS });
  attachWebSocket(a, server, 'ws');
  return { server };
}

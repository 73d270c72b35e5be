import type { Server, Socket } from 'node:net';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Counter, type Counters } from '../metrics/counters.js';
import type { ConnectionOrigin } from '../threads/messages.js';
import { readConnect } from './connect-reader.js';
import { fdutil } from './fdutil.js';
import type { ListenerSpec, ListenerType } from './listeners.js';
import { sslServer } from './ssl.js';
import { tcpServer } from './tcp.js';
import { wsServer } from './ws.js';
import { wssServer } from './wss.js';

/**
 * A connection whose CONNECT has been read and validated; the socket is paused. `socket` is a
 * `net.Socket` for tcp, a `tls.TLSSocket` for ssl and a `WsStream` (ws.ts) for ws/wss: all three
 * offer what a Connection uses of a socket. `transport` says which, since only a plain TCP
 * socket can be handed to another shard as an fd.
 */
export interface AcceptedConnection extends ConnectionOrigin {
  socket: Socket;
  transport: ListenerType;
}

export interface AcceptorOptions {
  /** Live configuration object: a reload's new limits apply to the next connection */
  config: Config;
  log: Logger;
  counters: Counters;
  onConnection: (accepted: AcceptedConnection) => void;
}

/** What a transport module (tcp.ts, ssl.ts, ws.ts, wss.ts) gets from the acceptor. */
export interface AcceptorHost {
  readonly spec: ListenerSpec;
  readonly opts: AcceptorOptions;
  /** Stream high-water mark = mqtt.output_high_watermark (see Connection.congested) */
  readonly highWaterMark: number;
  /** Reads the CONNECT of a new connection (the transport's handshake is done). */
  accept(socket: Socket, meta?: AcceptMeta): void;
  /** Counts and logs a connection refused before MQTT (handshake, upgrade, PROXY header). */
  refused(counter: number, reason: string, remote: string): void;
}

/** What a transport knows of a connection beyond the socket. */
export interface AcceptMeta {
  /** The client's address when a proxy says it (PROXY protocol), else the socket's peer */
  remoteAddress?: string;
  remotePort?: number;
  /** peer_cert_as_username: replaces the CONNECT's username */
  username?: string;
}

/** A transport's server, listening on the fd; TLS ones are built anew on SIGHUP (certificates re-read). */
export interface TransportServer {
  server: Server;
  rebuildOnReload?: boolean;
}

const TRANSPORTS: Record<ListenerType, (host: AcceptorHost) => TransportServer> = {
  tcp: tcpServer,
  ssl: sslServer,
  ws: wsServer,
  wss: wssServer,
};

/**
 * Accepts connections of one listener on a dup of the broker's listening socket and reads each
 * one's CONNECT (`connect-reader.ts`) after the transport's own handshake (TLS, WebSocket
 * upgrade, PROXY header: one module per transport). Every shard runs one per listener, so
 * accept(), handshakes and the first packet are spread over the shards and the main thread never
 * handles a connection. The kernel wakes one of the acceptors; which one does not matter, the
 * owner decides by client id.
 */
export class Acceptor implements AcceptorHost {
  private transport: TransportServer | null = null;
  /** Sockets still sending their CONNECT: closed if the acceptor closes */
  private readonly reading = new Set<Socket>();
  highWaterMark = 0;
  private closed = false;

  /** `fd` stays the caller's (main closes a shard's when its thread exits); the server listens on a dup. */
  constructor(
    private readonly fd: number,
    readonly spec: ListenerSpec,
    readonly opts: AcceptorOptions,
  ) {}

  /** Starts accepting; resolves once listening. */
  listen(): Promise<void> {
    // The streams' high-water mark is the output limit, so that 'drain' follows congestion (see
    // Connection.congested). It is a server option: a reload that changes it listens anew.
    this.highWaterMark = this.opts.config['mqtt.output_high_watermark'];
    let transport: TransportServer;
    try {
      transport = TRANSPORTS[this.spec.type](this); // reads certificate files: may throw
    } catch (err) {
      return Promise.reject(err);
    }
    const server = transport.server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // A dup: closing this server (reload, shutdown) leaves our own fd and the socket open.
      server.listen({ fd: fdutil.dup(this.fd) }, () => {
        server.removeListener('error', reject);
        server.on('error', (err) => this.opts.log.error({ err, listener: this.spec.id }, 'listener error'));
        if (this.closed) {
          server.close();
        } else {
          this.transport?.server.close();
          this.transport = transport;
        }
        resolve();
      });
    });
  }

  /**
   * After a reload: a TLS listener is built again with its certificate files re-read (a renewed
   * certificate at the same path is picked up), and a new output high-water mark needs a new
   * server. The new server listens before the old one closes; connections already open keep
   * theirs. A file that cannot be read keeps the old server, logged and counted.
   */
  reconfigure(): void {
    if (this.closed || !this.transport) return;
    const tls = this.transport.rebuildOnReload === true;
    if (!tls && this.opts.config['mqtt.output_high_watermark'] === this.highWaterMark) return;
    this.listen().then(
      () => {
        if (tls) this.opts.counters.row[Counter.tlsCertReloads]++;
        if (tls) this.opts.log.info({ listener: this.spec.id }, 'TLS certificates reloaded');
      },
      (err: Error) => {
        if (tls) this.opts.counters.row[Counter.tlsCertReloadErrors]++;
        this.opts.log.error(
          { err, listener: this.spec.id },
          'listener reload failed; the old one keeps running',
        );
      },
    );
  }

  /** Stops accepting and closes connections that have not completed their CONNECT. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.transport?.server.close();
    this.transport = null;
    for (const s of this.reading) s.destroy();
    this.reading.clear();
  }

  refused(counter: number, reason: string, remote: string): void {
    this.opts.counters.row[counter]++;
    this.opts.log.info({ listener: this.spec.id, remote, reason }, 'connection refused');
  }

  accept(socket: Socket, meta?: AcceptMeta): void {
    const acceptedAt = Number(process.hrtime.bigint());
    if (this.closed) {
      socket.destroy();
      return;
    }
    const cfg = this.opts.config;
    this.reading.add(socket);
    socket.on('error', onPreConnectError);
    const forget = (): void => {
      this.reading.delete(socket);
    };
    socket.once('close', forget);
    const remoteAddress = meta?.remoteAddress ?? socket.remoteAddress ?? '';
    const remotePort = meta?.remotePort ?? socket.remotePort ?? 0;
    readConnect(
      socket,
      {
        maxPacketSize: cfg['mqtt.max_packet_size'],
        maxClientIdLength: cfg['mqtt.max_clientid_len'],
        connectTimeoutMs: cfg['listener.connect_timeout'] * 1000,
        maxQosAllowed: cfg['mqtt.max_qos_allowed'],
        retainAvailable: cfg['mqtt.retain_available'],
        log: this.opts.log,
        counters: this.opts.counters,
        remote: `${remoteAddress}:${remotePort}`,
      },
      ({ connect, leftover, assignedClientId }) => {
        this.reading.delete(socket);
        // The connection's owner installs its own listeners.
        socket.removeListener('error', onPreConnectError);
        socket.removeListener('close', forget);
        if (meta?.username !== undefined) connect.username = meta.username;
        this.opts.onConnection({
          socket,
          transport: this.spec.type,
          connect,
          leftover,
          assignedClientId,
          remoteAddress,
          remotePort,
          acceptedAt,
          listener: this.spec.id,
          listenerIndex: this.spec.index,
          localPort: socket.localPort ?? 0,
        });
      },
    );
  }
}

function onPreConnectError(this: Socket): void {
  this.destroy();
}

import { createServer, type Server, type Socket } from 'node:net';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { Counters } from '../metrics/counters.js';
import type { ConnectionOrigin } from '../threads/messages.js';
import { readConnect } from './connect-reader.js';
import { fdutil } from './fdutil.js';

/** A connection whose CONNECT has been read and validated; the socket is paused. */
export interface AcceptedConnection extends ConnectionOrigin {
  socket: Socket;
}

export interface AcceptorOptions {
  /** Live configuration object: a reload's new limits apply to the next connection */
  config: Config;
  log: Logger;
  counters: Counters;
  onConnection: (accepted: AcceptedConnection) => void;
}

/**
 * Accepts connections on a dup of the broker's listening socket and reads each one's CONNECT
 * (`connect-reader.ts`). Every shard runs one, so accept() and the first packet are spread over
 * the shards and the main thread never handles a connection. The kernel queues connections in
 * the listen backlog and wakes one of the acceptors; which one does not matter, the owner
 * decides by client id.
 */
export class Acceptor {
  private server: Server | null = null;
  /** Sockets still sending their CONNECT: closed if the acceptor closes */
  private readonly reading = new Set<Socket>();
  private highWaterMark = 0;
  private closed = false;
  private readonly onSocket = (socket: Socket): void => this.accept(socket);

  /** `fd` stays the caller's (main closes a shard's when its thread exits); the server listens on a dup. */
  constructor(
    private readonly fd: number,
    private readonly opts: AcceptorOptions,
  ) {}

  /** Starts accepting; resolves once listening. */
  listen(): Promise<void> {
    // The streams' high-water mark is the output limit, so that 'drain' follows congestion (see
    // Connection.congested). It is a server option: a reload that changes it listens anew.
    this.highWaterMark = this.opts.config['mqtt.output_high_watermark'];
    const server = createServer({ noDelay: true, highWaterMark: this.highWaterMark }, this.onSocket);
    const old = this.server;
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // A dup: closing this server (reload, shutdown) leaves our own fd and the socket open.
      server.listen({ fd: fdutil.dup(this.fd) }, () => {
        server.removeListener('error', reject);
        server.on('error', (err) => this.opts.log.error({ err }, 'listener error'));
        old?.close();
        resolve();
      });
    });
  }

  /** After a reload: a new output high-water mark needs a server created with it. */
  reconfigure(): void {
    if (this.closed || !this.server) return;
    if (this.opts.config['mqtt.output_high_watermark'] === this.highWaterMark) return;
    this.listen().catch((err: Error) => this.opts.log.error({ err }, 'listener restart failed'));
  }

  /** Stops accepting and closes connections that have not completed their CONNECT. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server?.close();
    this.server = null;
    for (const s of this.reading) s.destroy();
    this.reading.clear();
  }

  private accept(socket: Socket): void {
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
      },
      ({ connect, leftover, assignedClientId }) => {
        this.reading.delete(socket);
        // The connection's owner installs its own listeners.
        socket.removeListener('error', onPreConnectError);
        socket.removeListener('close', forget);
        this.opts.onConnection({
          socket,
          connect,
          leftover,
          assignedClientId,
          remoteAddress: socket.remoteAddress ?? '',
          remotePort: socket.remotePort ?? 0,
          acceptedAt,
        });
      },
    );
  }
}

function onPreConnectError(this: Socket): void {
  this.destroy();
}

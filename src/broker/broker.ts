import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { type ConfigInput, loadConfig, shardCount } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { createLogger, type Logger } from '../log.js';
import { Counter, Counters } from '../metrics/counters.js';
import { RetainedStore } from '../retained/store.js';
import { TopicIndex } from '../routing/topic-index.js';
import type { RetainedRecord, ShardToMain } from '../threads/messages.js';
import { shardOf } from './client-id.js';
import { readConnect } from './connect-reader.js';
import { fdutil } from './fdutil.js';
import { Supervisor } from './supervisor.js';

export interface BrokerOptions {
  /** Programmatic options (nested `{listener: {port: 0}}` or flat `{'listener.port': 0}`) */
  config?: ConfigInput;
  argv?: readonly string[];
  env?: NodeJS.ProcessEnv;
  logger?: Logger;
}

/**
 * The main thread: accepts TCP connections, reads each one's CONNECT, and hands the socket to
 * the shard worker that owns the client id. It also owns the retained-message store and the
 * shard supervisor. It never touches a connection's bytes after the handoff.
 */
export class Broker {
  readonly config: Config;
  readonly log: Logger;
  readonly counters: Counters;
  readonly index: TopicIndex;
  readonly retained = new RetainedStore();
  readonly supervisor: Supervisor;
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private stopped: Promise<void> | null = null;

  private constructor(opts: BrokerOptions) {
    this.config = loadConfig({ argv: opts.argv, env: opts.env, overrides: opts.config });
    this.log = opts.logger ?? createLogger(this.config['log.level'], { thread: 'main' });
    const shards = shardCount(this.config);
    this.counters = Counters.create(shards + 1);
    this.index = TopicIndex.create();
    this.supervisor = new Supervisor(this.config, shards, this.index, this.counters, this.log);
    this.supervisor.on('message', (shard, msg) => this.onShardMessage(shard, msg));
    this.supervisor.on('fatal', (reason) => {
      this.log.fatal({ reason }, 'giving up');
      void this.stop().then(() => process.exit(1));
    });
    this.server = createServer({ noDelay: true }, (socket) => this.onSocket(socket));
  }

  static async start(opts: BrokerOptions = {}): Promise<Broker> {
    const broker = new Broker(opts);
    await broker.supervisor.start();
    broker.server.listen({
      port: broker.config['listener.port'],
      host: broker.config['listener.host'],
      backlog: broker.config['listener.backlog'],
    });
    await once(broker.server, 'listening');
    broker.log.info(
      { host: broker.config['listener.host'], port: broker.port, shards: broker.supervisor.shards.length },
      'listening',
    );
    return broker;
  }

  get port(): number {
    const addr = this.server.address();
    return addr && typeof addr === 'object' ? addr.port : 0;
  }

  get shardCount(): number {
    return this.supervisor.shards.length;
  }

  private onSocket(socket: Socket): void {
    const acceptedAt = Number(process.hrtime.bigint());
    this.sockets.add(socket);
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.sockets.delete(socket));
    readConnect(
      socket,
      {
        maxPacketSize: this.config['mqtt.max_packet_size'],
        maxClientIdLength: this.config['mqtt.max_clientid_len'],
        connectTimeoutMs: this.config['listener.connect_timeout'] * 1000,
        log: this.log,
        counters: this.counters,
      },
      ({ connect, leftover, assignedClientId }) => {
        // biome-ignore lint/suspicious/noExplicitAny: Node exposes no public accessor for the fd
        const handle = (socket as any)._handle as { fd?: number } | null;
        if (!handle || typeof handle.fd !== 'number' || handle.fd < 0) {
          socket.destroy();
          return;
        }
        const shard = shardOf(connect.clientId, this.shardCount);
        let fd: number;
        try {
          fd = fdutil.dup(handle.fd);
        } catch (err) {
          this.log.error({ err, clientId: connect.clientId }, 'dup failed; closing connection');
          socket.destroy();
          return;
        }
        const remoteAddress = socket.remoteAddress ?? '';
        const remotePort = socket.remotePort ?? 0;
        // Destroying our handle closes our fd only: the dup keeps the connection open, no FIN.
        socket.destroy();
        this.supervisor.handoff(shard, {
          fd,
          connect,
          leftover,
          assignedClientId,
          remoteAddress,
          remotePort,
          acceptedAt,
        });
      },
    );
  }

  private onShardMessage(shard: number, msg: ShardToMain): void {
    switch (msg.t) {
      case 'retain': {
        this.retained.set(msg.record);
        if (msg.record.payload.length > 0) this.counters.row[Counter.messagesRetained]++;
        this.counters.row[Counter.retainedCount] = this.retained.size;
        if (msg.reqId > 0) this.supervisor.post(shard, { t: 'retainAck', reqId: msg.reqId });
        break;
      }
      case 'retainedLookup': {
        const records: RetainedRecord[] = [];
        for (const f of msg.filters) this.retained.match(f, records);
        this.supervisor.post(shard, { t: 'retained', reqId: msg.reqId, records });
        break;
      }
      default:
        break;
    }
  }

  /** Graceful stop: no new connections, shards close their clients, threads end. */
  stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = (async () => {
        this.log.info('stopping');
        this.server.close();
        for (const s of this.sockets) s.destroy();
        await this.supervisor.stop();
        this.log.info('stopped');
      })();
    }
    return this.stopped;
  }
}

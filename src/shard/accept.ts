import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { type AcceptedConnection, Acceptor } from '../listener/acceptor.js';
import { shardOf } from '../listener/client-id.js';
import { fdutil, handleFd } from '../listener/fdutil.js';
import { enabledListeners } from '../listener/listeners.js';
import { Tunnels } from '../listener/tunnel.js';
import { Counter } from '../metrics/counters.js';
import type {
  ConnectionOrigin,
  Handoff,
  ListenerFd,
  ShardToShard,
  TunnelBatch,
} from '../threads/messages.js';
import type { MainLink, ShardState } from './state.js';

/** [fd, inode of the socket it refers to] (inode 0 when it cannot be read: never closed then). */
function socketInode(h: { fd: number }): [number, number] {
  try {
    return [h.fd, fstatSync(h.fd).ino];
  } catch {
    return [h.fd, 0];
  }
}

/** Closes an fd nothing else owns; an error (already closed) changes nothing for the caller. */
function closeFd(fd: number): void {
  try {
    fdutil.close(fd);
  } catch {}
}

/** What accepting needs of the rest of the shard. */
export interface AcceptDeps {
  /** Makes the connection and session of an accepted or adopted socket (session/lifecycle.ts) */
  attach(socket: Socket, h: ConnectionOrigin): void;
  scheduleTurnEnd(): void;
  threadMessageError(err: unknown, from: string, msg: unknown): void;
}

/**
 * Connections in: accepting on the listening socket main shares with every shard, handing an
 * accepted connection whose client id hashes elsewhere to its owner (dup'ed fd, one `adopt`
 * message per owner per turn), adopting those other shards hand here, and closing handoffs an
 * owner died before adopting.
 */
export class ConnectionAccept {
  /** One per listener, on the listening sockets main shares (after main's `listen`) */
  private acceptors: Acceptor[] = [];
  /** TLS/WebSocket connections terminated here for another owner, and the reverse */
  private readonly tunnels: Tunnels;
  /** Accepted connections owned by another shard, posted at the end of the turn (per shard) */
  private readonly outHandoffs: Handoff[][];
  /** Some handoff waits: flush at the end of the turn */
  handoffsPending = false;
  /** Per owner: posted `adopt` messages not yet answered, seq → [fd, socket inode] pairs */
  private readonly sentHandoffs: Map<number, [number, number][]>[];
  private handoffSeq = 0;

  constructor(
    private readonly s: ShardState,
    private readonly main: MainLink,
    private readonly d: AcceptDeps,
  ) {
    this.outHandoffs = s.peers.map(() => []);
    this.sentHandoffs = s.peers.map(() => new Map());
    this.tunnels = new Tunnels({
      peers: s.peers,
      counters: s.counters,
      log: s.log,
      markPending: () => {
        this.handoffsPending = true;
        this.d.scheduleTurnEnd();
      },
      attach: (socket, origin) => this.d.attach(socket, origin),
    });
  }

  /** Starts accepting on the listening sockets main shares with every shard (one acceptor per listener). */
  listen(listeners: ListenerFd[]): void {
    for (const a of this.acceptors) a.close();
    const specs = enabledListeners(this.s.config);
    const opts = {
      config: this.s.config,
      log: this.s.log,
      counters: this.s.counters,
      onConnection: (a: AcceptedConnection) => this.onAccepted(a),
    };
    this.acceptors = [];
    for (const l of listeners) {
      const spec = specs.find((x) => x.id === l.id);
      if (spec) this.acceptors.push(new Acceptor(l.fd, spec, opts));
      else this.s.log.error({ listener: l.id }, 'listening socket for a listener this shard does not know');
    }
    Promise.all(this.acceptors.map((a) => a.listen())).then(
      () => this.main.postMessage({ t: 'listening' }),
      (err: Error) => {
        this.s.log.error({ err }, 'cannot accept on the listening socket');
        this.main.postMessage({ t: 'listenFailed', error: err.message });
      },
    );
  }

  /** SIGHUP: the acceptors' limits follow the configuration; TLS certificates are re-read. */
  reconfigure(): void {
    for (const a of this.acceptors) a.reconfigure();
  }

  /** Tunnel records from a peer (listener/tunnel.ts). */
  onTunnel(peer: number, m: TunnelBatch): void {
    this.tunnels.onBatch(peer, m.opens, m.buf, m.len);
  }

  /** A (re)started peer: connections accepted for it while it was down go now. */
  onPeer(shard: number): void {
    if (this.outHandoffs[shard].length > 0 || this.tunnels.pending) this.flushHandoffs();
  }

  /**
   * A CONNECT read by this shard's acceptor: adopted here when the client id is ours (the same
   * socket object, no fd work), else the fd goes to its owner at the end of the turn.
   */
  private onAccepted(a: AcceptedConnection): void {
    const owner = shardOf(a.connect.clientId, this.s.shardCount);
    if (owner === this.s.id) {
      this.d.attach(a.socket, a);
      return;
    }
    const { socket, transport, ...origin } = a;
    if (transport !== 'tcp') {
      // TLS/WebSocket state cannot move to another thread: this shard keeps the socket.
      this.tunnels.open(owner, socket, origin);
      return;
    }
    let fd = -1;
    try {
      fd = fdutil.dup(handleFd(socket));
    } catch (err) {
      this.s.log.error({ err, clientId: a.connect.clientId }, 'dup failed; closing connection');
    }
    // Destroying our handle closes our fd only: the dup keeps the connection open, no FIN.
    socket.destroy();
    if (fd < 0) return;
    this.outHandoffs[owner].push({ ...origin, fd });
    this.handoffsPending = true;
    this.d.scheduleTurnEnd();
  }

  /** Posts accepted connections to their owners, one message per owner (down owners wait). */
  flushHandoffs(): void {
    this.handoffsPending = false;
    if (this.tunnels.pending) this.tunnels.flush();
    for (let s = 0; s < this.outHandoffs.length; s++) {
      const conns = this.outHandoffs[s];
      const port = this.s.peers[s];
      if (conns.length === 0 || !port) continue;
      this.outHandoffs[s] = [];
      this.s.counters.row[Counter.handoffsCrossShard] += conns.length;
      const seq = ++this.handoffSeq;
      this.sentHandoffs[s].set(seq, conns.map(socketInode));
      port.postMessage({ t: 'adopt', conns, seq } satisfies ShardToShard);
    }
  }

  /** The owner answered an `adopt`: from then on the fds are its own. */
  onAdopted(owner: number, seq: number): void {
    this.sentHandoffs[owner].delete(seq);
  }

  /**
   * Handoffs a dead owner never answered: an fd still open on the same socket inode was never
   * read (what the owner adopted closed with its thread; a reused fd number has another inode),
   * so it is closed here and the client sees the connection close instead of hanging.
   */
  closeUnadopted(owner: number): void {
    this.tunnels.peerDown(owner);
    const sent = this.sentHandoffs[owner];
    let closed = 0;
    for (const pairs of sent.values()) {
      for (const [fd, ino] of pairs) {
        if (ino !== 0 && socketInode({ fd })[1] === ino) {
          closeFd(fd);
          closed++;
        }
      }
    }
    sent.clear();
    if (closed > 0) {
      this.s.counters.row[Counter.handoffsLost] += closed;
      this.s.log.warn(
        { owner, closed },
        'closed connections handed to a shard that died before adopting them',
      );
    }
  }

  /**
   * Adopts each handed-off fd. One that fails is closed (by us while no Socket owns it, else by
   * destroying the Socket: never both, a second close could hit a reused fd); the rest go ahead.
   */
  adoptAll(conns: Handoff[]): void {
    for (const h of conns) {
      let socket: Socket;
      try {
        socket = this.adoptSocket(h);
      } catch (err) {
        this.d.threadMessageError(err, 'adopt', { t: 'adopt' });
        closeFd(h.fd);
        continue;
      }
      try {
        this.d.attach(socket, h);
      } catch (err) {
        this.d.threadMessageError(err, 'adopt', { t: 'adopt' });
        socket.destroy();
      }
    }
  }

  /** The socket of a connection another shard accepted for us. */
  private adoptSocket(h: Handoff): Socket {
    // Stream high-water mark = ours: whenever the connection is congested, a write has seen the
    // buffer at the mark, so 'drain' (which moves the session queue) is sure to follow.
    const socketOpts: ConstructorParameters<typeof Socket>[0] & { writableHighWaterMark: number } = {
      fd: h.fd,
      readable: true,
      writable: true,
      writableHighWaterMark: this.s.config['mqtt.output_high_watermark'],
    };
    // No setNoDelay here: the acceptor (noDelay) set TCP_NODELAY on the accepted socket, and
    // the dup()ed fd is the same socket — a second setsockopt per connection would change nothing.
    return new Socket(socketOpts);
  }

  /** No new clients; accepted for a peer but not posted yet: closed (they reconnect elsewhere). */
  stopAccepting(): void {
    for (const a of this.acceptors) a.close();
    this.acceptors = [];
    for (const list of this.outHandoffs) {
      for (const h of list) fdutil.close(h.fd);
      list.length = 0;
    }
  }
}

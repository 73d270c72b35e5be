import type { Socket } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import type { Logger } from '../log.js';
import { Counter, type Counters } from '../metrics/counters.js';
import { grown } from '../routing/batch.js';
import type { ConnectionOrigin, ShardToShard, TunnelOpen } from '../threads/messages.js';
import { joinChunks, SocketLike } from './socket-like.js';

/**
 * Tunnels: a TLS or WebSocket connection accepted by one shard (the *terminating* shard, where
 * its TLS/WebSocket state lives and must stay) whose client id belongs to another (the *owner*).
 * The terminating shard keeps the socket and carries the decrypted MQTT bytes to the owner; the
 * owner's Connection reads and writes a `VirtualSocket`, a Duplex that behaves like the socket
 * (data, end, close, cork, back-pressure). Bytes of both directions travel on the pair's peer
 * port next to the routing batches, as records in one transferred ArrayBuffer per peer per
 * event-loop turn (a postMessage per chunk would cost 11-33 µs; design notes):
 *   u32 tunnel id · u8 op (| TO_TERMINATOR from the owner) · u32 length · bytes (DATA only)
 * Ids are the terminating shard's; the owner keys them by (peer, id). Two shards can each
 * terminate tunnels owned by the other, with the same ids: the direction bit tells them apart.
 */
export const TunnelOp = {
  /** MQTT bytes: from the client (to the owner) or to the client (to the terminator) */
  DATA: 1,
  /** The sender's side ended its output (client FIN / owner's end()) */
  END: 2,
  /** Closed: destroy the other end */
  CLOSE: 3,
  /** Stop sending DATA: the sender of PAUSE is backed up (a paused reader or a full socket) */
  PAUSE: 4,
  RESUME: 5,
} as const;

const HEADER = 9;
/** Set on records the owner sends to the terminating shard */
const TO_TERMINATOR = 0x80;

class TunnelWriter {
  private buf: Buffer = Buffer.allocUnsafeSlow(16 * 1024);
  pos = 0;
  opens: TunnelOpen[] = [];

  record(id: number, op: number, data: Uint8Array | null): void {
    const n = data ? data.length : 0;
    if (this.pos + HEADER + n > this.buf.length) this.buf = grown(this.buf, this.pos, HEADER + n);
    const b = this.buf;
    b.writeUInt32LE(id, this.pos);
    b[this.pos + 4] = op;
    b.writeUInt32LE(n, this.pos + 5);
    if (data) b.set(data, this.pos + HEADER);
    this.pos += HEADER + n;
  }

  get empty(): boolean {
    return this.pos === 0 && this.opens.length === 0;
  }

  take(): { opens: TunnelOpen[]; buf: ArrayBuffer; len: number } {
    const out = { opens: this.opens, buf: this.buf.buffer as ArrayBuffer, len: this.pos };
    this.opens = [];
    this.buf = Buffer.allocUnsafeSlow(16 * 1024);
    this.pos = 0;
    return out;
  }
}

/** What the tunnels need of their shard. */
export interface TunnelHost {
  readonly peers: (MessagePort | null)[];
  readonly counters: Counters;
  readonly log: Logger;
  /** Records wait: flush at the end of this turn */
  markPending(): void;
  /** A tunnel opened to us: make its Connection (as for a socket adopted by fd) */
  attach(socket: Socket, origin: ConnectionOrigin): void;
}

/** The terminating shard's end of one tunnel: the real socket. */
interface Terminated {
  socket: Socket;
  /** The socket's output is over its mark: the owner was told PAUSE */
  full: boolean;
}

export class Tunnels {
  private readonly writers: TunnelWriter[];
  /** Terminating side, per owner shard: tunnel id → socket */
  private readonly terminated: Map<number, Terminated>[];
  /** Owner side, per terminating shard: tunnel id → virtual socket */
  private readonly owned: Map<number, VirtualSocket>[];
  private seq = 0;
  pending = false;
  /** Sockets corked while a batch from one peer is written out */
  private readonly corked: Socket[] = [];

  constructor(readonly host: TunnelHost) {
    const n = host.peers.length;
    this.writers = Array.from({ length: n }, () => new TunnelWriter());
    this.terminated = Array.from({ length: n }, () => new Map());
    this.owned = Array.from({ length: n }, () => new Map());
  }

  send(peer: number, id: number, op: number, data: Uint8Array | null): void {
    this.writers[peer].record(id, op, data);
    if (!this.pending) {
      this.pending = true;
      this.host.markPending();
    }
  }

  /**
   * Terminating side: `socket` (TLS or WebSocket, CONNECT read, paused) belongs to `owner`.
   * The CONNECT and the bytes after it go with the open; from here on the socket's bytes are
   * carried as they arrive.
   */
  open(owner: number, socket: Socket, origin: ConnectionOrigin): void {
    const id = ++this.seq;
    const t: Terminated = { socket, full: false };
    this.terminated[owner].set(id, t);
    this.host.counters.row[Counter.tunnelsOpened]++;
    this.writers[owner].opens.push({ ...origin, id });
    const row = this.host.counters.row;
    socket.on('data', (chunk: Buffer) => {
      row[Counter.tunnelBytesToOwner] += chunk.length;
      this.send(owner, id, TunnelOp.DATA, chunk);
    });
    socket.on('end', () => this.send(owner, id, TunnelOp.END, null));
    socket.on('drain', () => {
      if (!t.full) return;
      t.full = false;
      this.send(owner, id, TunnelOp.RESUME, null);
    });
    socket.on('error', () => {}); // 'close' follows
    socket.once('close', () => {
      if (this.terminated[owner].delete(id)) this.send(owner, id, TunnelOp.CLOSE, null);
    });
    socket.resume();
    if (!this.pending) {
      this.pending = true;
      this.host.markPending();
    }
  }

  /** Posts each peer's records (one message per peer with traffic); a peer that is down waits. */
  flush(): void {
    this.pending = false;
    for (let p = 0; p < this.writers.length; p++) {
      const w = this.writers[p];
      const port = this.host.peers[p];
      if (w.empty || !port) continue;
      const { opens, buf, len } = w.take();
      this.host.counters.row[Counter.tunnelBatches]++;
      port.postMessage({ t: 'tunnel', opens, buf, len } satisfies ShardToShard, [buf]);
    }
  }

  /** A batch of tunnel records from `peer`: opens first, then the records in order. */
  onBatch(peer: number, opens: TunnelOpen[], buf: ArrayBuffer, len: number): void {
    for (const o of opens) {
      const vs = new VirtualSocket(this, peer, o);
      this.owned[peer].set(o.id, vs);
      try {
        this.host.attach(vs as unknown as Socket, o);
      } catch (err) {
        this.host.log.error({ err, clientId: o.connect.clientId }, 'tunnelled connection failed to attach');
        vs.destroy();
      }
    }
    const b = Buffer.from(buf, 0, len);
    for (let p = 0; p + HEADER <= len; ) {
      const id = b.readUInt32LE(p);
      const op = b[p + 4];
      const n = b.readUInt32LE(p + 5);
      if (p + HEADER + n > len) throw new Error('truncated tunnel record');
      const data = n > 0 ? b.subarray(p + HEADER, p + HEADER + n) : null;
      p += HEADER + n;
      if (op & TO_TERMINATOR) this.onTerminatedRecord(peer, id, op & ~TO_TERMINATOR, data);
      else this.owned[peer].get(id)?.onRecord(op, data);
    }
    for (const s of this.corked) s.uncork();
    this.corked.length = 0;
  }

  /** Records from the owner for a socket this shard terminates. Unknown ids have closed. */
  private onTerminatedRecord(owner: number, id: number, op: number, data: Buffer | null): void {
    const t = this.terminated[owner].get(id);
    if (!t) return;
    const s = t.socket;
    switch (op) {
      case TunnelOp.DATA:
        if (!s.writable) return;
        // Corked until the whole batch is written: one TLS record / WebSocket message per turn.
        if (!s.writableCorked) {
          s.cork();
          this.corked.push(s);
        }
        if (!s.write(data!) && !t.full) {
          t.full = true;
          this.send(owner, id, TunnelOp.PAUSE, null);
        }
        break;
      case TunnelOp.END:
        s.end();
        break;
      case TunnelOp.CLOSE:
        this.terminated[owner].delete(id);
        s.destroy();
        break;
      case TunnelOp.PAUSE:
        s.pause();
        break;
      case TunnelOp.RESUME:
        s.resume();
        break;
    }
  }

  /** Owner side: a record for the terminating shard's end of tunnel `id`. */
  toTerminator(peer: number, id: number, op: number, data: Uint8Array | null): void {
    this.send(peer, id, op | TO_TERMINATOR, data);
  }

  /** Owner side: a virtual socket was destroyed here. */
  forget(peer: number, id: number): boolean {
    return this.owned[peer].delete(id);
  }

  /**
   * The shard at the other end died (or restarts): the sockets it owned are closed here (the
   * client reconnects), and the connections it terminated close here (wills, session offline).
   */
  peerDown(peer: number): void {
    let lost = 0;
    for (const t of this.terminated[peer].values()) {
      t.socket.destroy();
      lost++;
    }
    this.terminated[peer].clear();
    const owned = [...this.owned[peer].values()];
    this.owned[peer].clear();
    for (const vs of owned) vs.destroy();
    lost += owned.length;
    this.writers[peer] = new TunnelWriter();
    if (lost > 0) {
      this.host.counters.row[Counter.tunnelsLost] += lost;
      this.host.log.warn(
        { peer, closed: lost },
        'closed tunnelled connections: the shard at the other end died',
      );
    }
  }
}

/**
 * The owner's view of a tunnelled connection. Reads come from DATA records; writes become DATA
 * records (a corked turn's writes one record). A write's callback waits while the terminating
 * shard's socket is full (PAUSE), so that writableLength — what the congestion checks read —
 * includes what the client has not taken yet; a paused reader sends PAUSE the other way.
 */
export class VirtualSocket extends SocketLike {
  private remoteFull = false;
  private held: ((err?: Error | null) => void) | null = null;
  private readPaused = false;
  private closedByPeer = false;

  constructor(
    private readonly tunnels: Tunnels,
    private readonly peer: number,
    private readonly origin: TunnelOpen,
  ) {
    super(origin.remoteAddress, origin.remotePort, origin.localPort ?? 0, 16 * 1024);
  }

  onRecord(op: number, data: Buffer | null): void {
    switch (op) {
      case TunnelOp.DATA:
        if (!this.push(data) && !this.readPaused) {
          this.readPaused = true;
          this.tunnels.toTerminator(this.peer, this.origin.id, TunnelOp.PAUSE, null);
        }
        break;
      case TunnelOp.END:
        this.push(null);
        break;
      case TunnelOp.CLOSE:
        this.closedByPeer = true;
        this.destroy();
        break;
      case TunnelOp.PAUSE:
        this.remoteFull = true;
        break;
      case TunnelOp.RESUME: {
        this.remoteFull = false;
        const cb = this.held;
        this.held = null;
        cb?.();
        break;
      }
    }
  }

  override _read(): void {
    if (!this.readPaused) return;
    this.readPaused = false;
    this.tunnels.toTerminator(this.peer, this.origin.id, TunnelOp.RESUME, null);
  }

  private sendData(data: Uint8Array, cb: (err?: Error | null) => void): void {
    this.tunnels.host.counters.row[Counter.tunnelBytesFromOwner] += data.length;
    this.tunnels.toTerminator(this.peer, this.origin.id, TunnelOp.DATA, data);
    if (this.remoteFull) this.held = cb;
    else cb();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.sendData(chunk, cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    this.sendData(joinChunks(chunks), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.tunnels.toTerminator(this.peer, this.origin.id, TunnelOp.END, null);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.tunnels.forget(this.peer, this.origin.id) && !this.closedByPeer) {
      this.tunnels.toTerminator(this.peer, this.origin.id, TunnelOp.CLOSE, null);
    }
    const held = this.held;
    this.held = null;
    held?.(err ?? new Error('tunnel closed'));
    cb(err);
  }
}

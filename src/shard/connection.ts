import type { Socket } from 'node:net';
import type { ClientAuth } from '../authz/authorize.js';
import { HANDLERS } from '../handlers/index.js';
import type { HandlerShard } from '../handlers/types.js';
import type { Logger } from '../log.js';
import { Counter, PACKETS_RECEIVED_BY_TYPE, PACKETS_SENT_BY_TYPE } from '../metrics/counters.js';
import { FrameReader, type FrameSink, ProtocolError, REQUIRED_FLAGS } from '../protocol/codec.js';
import { PacketType, type QoS } from '../protocol/constants.js';
import type { DeliveryProps } from '../protocol/v5.js';
import { encodeDisconnectV5 } from '../protocol/v5-control.js';
import type { Message } from '../session/message.js';
import type { Session } from '../session/session.js';
import type { ConnectionOrigin } from '../threads/messages.js';

import { acquireHeldAck, type HeldAck, releaseHeldAck } from './held-ack.js';

export type { HeldAck } from './held-ack.js';

/** What a connection asks of its shard (Shard implements it): the handlers' part and its own. */
export interface ConnectionShard extends HandlerShard {
  readonly log: Logger;
  onConnectionClosed(conn: Connection, reason: string): void;
  scheduleUncork(conn: Connection): void;
  /** The connection read READ_BUDGET bytes: paused, read again at the end of this turn */
  yieldRead(conn: Connection): void;
}

/**
 * Bytes a connection is read before it yields to the others (paused, read again at the end of
 * the event-loop turn). libuv reads a socket up to 32 times per poll while it fills its 64 KiB
 * buffer, so without this one flooding publisher could be read 2 MiB — some 28k QoS 0 PUBLISHes,
 * tens of ms of routing — before anyone else in the same turn, and all of it went into that
 * turn's cross-shard batches ahead of everyone else's messages.
 */
export const READ_BUDGET = 64 * 1024;

/**
 * One client's network connection, owned by its shard. It splits frames, checks the fixed
 * header and dispatches each packet to its handler (`handlers/*.ts`); it batches writes per
 * event-loop turn (cork/uncork) and applies the output high-water mark.
 */
const NO_IDS: number[] = [];
const CONNECTION = Symbol('connection');
type OwnedSocket = Socket & { [CONNECTION]: Connection };

function onSocketData(this: OwnedSocket, chunk: Buffer): void {
  this[CONNECTION].onData(chunk);
}
function onSocketDrain(this: OwnedSocket): void {
  this[CONNECTION].onDrain();
}
function forceClose(conn: Connection): void {
  conn.close('output over force_shutdown.max_output_bytes');
}

function onSocketError(this: OwnedSocket, err: Error): void {
  const conn = this[CONNECTION];
  if (!conn.closed) conn.log.debug({ err: err.message }, 'socket error');
}
function onSocketClose(this: OwnedSocket): void {
  this[CONNECTION].close('connection closed by peer');
}
function onSocketEnd(this: OwnedSocket): void {
  this[CONNECTION].onPeerEnd();
}
/**
 * Per-delivery property holder, reused (one per thread; used only while a frame is encoded): no
 * allocation per delivery, and none per connection.
 */
const DELIVERY: DeliveryProps = { expiry: -1, subIds: NO_IDS, topicAlias: 0, omitTopic: false };

export class Connection implements FrameSink {
  readonly reader: FrameReader;
  private logger: Logger | null = null;
  closed = false;
  /** Force-shut: closed on the next tick, writes are discarded until then */
  /** DISCONNECT received: the will is not published [MQTT-3.14.4-3] */
  gracefulDisconnect = false;
  /** When the last whole packet arrived, for keep-alive [MQTT-3.1.2-24] (partial ones do not count) */
  lastReceivedAt = Date.now();
  /** Arrival time of the chunk being parsed */
  private chunkAt = 0;
  corked = false;
  /** Bytes written since this turn's cork: about to be flushed, not a backlog */
  private turnBytes = 0;
  /** Acks queued behind a held ack, so acks leave in PUBLISH order [MQTT-4.6.0-2] */
  heldAcks: (Buffer | HeldAck)[] | null = null;
  /** Bytes of the frames in heldAcks: output too, counted against mqtt.max_output_buffer */
  private heldBytes = 0;
  /** Not read until 'drain': its own unsent output passed mqtt.max_output_buffer */
  private readPaused = false;
  /** Subscribers whose congestion holds this publisher: not read while > 0 (delivery/flow-control.ts) */
  private readHolds = 0;
  /** Bytes read since this connection last yielded (READ_BUDGET) */
  private budgetRead = 0;
  /** Paused by the read budget until the end of the turn */
  private yielded = false;
  readonly keepaliveMs: number;
  readonly protocolVersion: number;
  readonly clientId: string;
  // For the REST API and $SYS client events (read when asked, never per packet).
  readonly connectedAt = Date.now();
  readonly remoteAddress: string;
  readonly remotePort: number;
  /** The listener it came in on (`tcp:default`…; cell index for its connection count) */
  readonly listener: string;
  readonly listenerIndex: number;
  private readonly originPort: number;
  readonly username: string | null;
  readonly protocolName: string;
  readonly keepalive: number;

  // MQTT 5 per-connection state [MQTT-3.1.2-?]
  readonly v5: boolean;
  /** Client's Receive Maximum: QoS 1/2 deliveries unacknowledged at once */
  readonly clientReceiveMax: number;
  /** Client's Maximum Packet Size; 0 = no limit beyond the protocol's */
  readonly clientMaxPacket: number;
  /** Client's Topic Alias Maximum for broker → client aliases */
  readonly clientAliasMax: number;
  /** Reason strings and user properties allowed on acks (Request Problem Information) */
  readonly problemInfo: boolean;
  /** Session Expiry Interval the client asked for in CONNECT (before the server's cap) */
  readonly connectExpiry: number;
  /** Inbound topic aliases (client → broker), valid for this connection only [MQTT-3.3.2-7] */
  inAliases: Map<number, Buffer> | null = null;
  /** Who authenticated, and their authorization cache (src/auth, src/authz); set at attach */
  auth: ClientAuth | null = null;
  /** Outbound topic aliases (broker → client) */
  private outAliases: Map<string, number> | null = null;

  constructor(
    readonly shard: ConnectionShard,
    readonly socket: Socket,
    readonly session: Session,
    handoff: ConnectionOrigin,
  ) {
    this.clientId = handoff.connect.clientId;
    this.protocolVersion = handoff.connect.protocolVersion;
    this.remoteAddress = handoff.remoteAddress;
    this.remotePort = handoff.remotePort;
    this.listener = handoff.listener ?? 'tcp:default';
    this.listenerIndex = handoff.listenerIndex ?? 0;
    this.originPort = handoff.localPort ?? 0;
    this.username = handoff.connect.username;
    this.protocolName = handoff.connect.protocolName;
    const c = handoff.connect;
    this.v5 = c.protocolVersion === 5;
    const p = c.properties ?? {};
    this.clientReceiveMax = p.receiveMaximum ?? 65535;
    this.clientMaxPacket = p.maximumPacketSize ?? 0;
    this.clientAliasMax = p.topicAliasMaximum ?? 0;
    this.problemInfo = p.requestProblemInformation !== 0;
    this.connectExpiry = p.sessionExpiryInterval ?? 0;
    // Server Keep Alive overrides the client's for MQTT 5 [MQTT-3.2.2-21].
    const serverKeepalive = shard.config['mqtt.server_keepalive'];
    this.keepalive = this.v5 && serverKeepalive > 0 ? serverKeepalive : c.keepalive;
    this.keepaliveMs = this.keepalive * 1000 * shard.config['mqtt.keepalive_multiplier'];
    this.reader = new FrameReader(this, shard.config['mqtt.max_packet_size'], shard.counters.row);
  }

  /**
   * Logger bound to client id, shard and peer. Made on first use: a pino child per connection
   * costs CPU and about a KiB for each of what may be 100k mostly silent connections.
   */
  get log(): Logger {
    if (this.logger === null) {
      this.logger = this.shard.log.child({
        clientId: this.clientId,
        remote: `${this.remoteAddress}:${this.remotePort}`,
      });
    }
    return this.logger;
  }

  /** Log level changed (SIGHUP): a child made earlier keeps its own level. */
  setLogLevel(level: string): void {
    if (this.logger) this.logger.level = level;
  }

  /** Read when asked (REST API, $SYS events): a getsockname call each time (the acceptor's for a tunnel). */
  get localPort(): number {
    return this.socket.localPort ?? this.originPort;
  }

  /** Starts reading: first the bytes the acceptor read after CONNECT, then the socket. */
  start(leftover: Uint8Array): void {
    // Shared listeners that find the connection on the socket: no closures per connection.
    (this.socket as OwnedSocket)[CONNECTION] = this;
    this.socket.on('data', onSocketData);
    this.socket.on('drain', onSocketDrain);
    this.socket.on('error', onSocketError);
    this.socket.on('close', onSocketClose);
    this.socket.on('end', onSocketEnd);
    if (leftover.length > 0) this.onData(Buffer.from(leftover.buffer, leftover.byteOffset, leftover.length));
    // A socket accepted by this shard was paused after its CONNECT; reading resumes after the
    // leftover bytes above (resume() takes effect on a later tick).
    if (!this.readPaused && this.readHolds === 0 && !this.yielded) this.socket.resume();
  }

  /** A congested subscriber holds this publisher: not read until every holder lets go. */
  holdRead(): void {
    if (this.readHolds++ === 0) this.socket.pause();
  }

  releaseRead(): void {
    if (this.readHolds === 0 || --this.readHolds > 0) return;
    if (!this.readPaused && !this.closed && !this.yielded) this.socket.resume();
  }

  /** The socket wrote out everything it had buffered. */
  onDrain(): void {
    if (this.readPaused) {
      this.readPaused = false;
      if (!this.closed && this.readHolds === 0 && !this.yielded) this.socket.resume();
    }
    this.shard.drainSession(this.session);
  }

  /**
   * A write left the socket's buffer at or over its high-water mark (the only time output can be
   * over a cap, so the normal path pays nothing). Acks, PINGRESP and SUBACK are written whatever
   * the congestion, so a client that sends but never reads is stopped here: over
   * mqtt.max_output_buffer its packets are not read until 'drain'; over
   * force_shutdown.max_output_bytes it is closed (no DISCONNECT: it would not read one).
   */
  private outputFull(): void {
    const pending = this.socket.writableLength + this.heldBytes;
    const cfg = this.shard.config;
    if (pending > cfg['force_shutdown.max_output_bytes']) {
      this.forceShutdown(pending);
      return;
    }
    if (pending > cfg['mqtt.max_output_buffer'] && !this.readPaused) {
      this.shard.counters.row[Counter.outputReadPaused]++;
      this.readPaused = true;
      this.socket.pause(); // TCP then pushes back on the client
    }
  }

  private forceShutdown(pending: number): void {
    this.shard.counters.row[Counter.outputForceShutdown]++;
    this.log.warn(
      { pendingBytes: pending, max: this.shard.config['force_shutdown.max_output_bytes'] },
      'unsent output over force_shutdown.max_output_bytes; closing connection',
    );
    // Free the buffered output now; the session side of the close runs after the current
    // delivery loop or handler (which may still be iterating this session).
    this.socket.destroy(); // not writable from here on: write() skips it
    process.nextTick(forceClose, this);
  }

  onData(chunk: Buffer): void {
    if (this.closed) return;
    this.chunkAt = Date.now();
    this.shard.counters.row[Counter.bytesReceived] += chunk.length;
    try {
      this.reader.push(chunk);
    } catch (err) {
      this.onBadInput(err);
    }
    if ((this.budgetRead += chunk.length) >= READ_BUDGET && !this.closed && !this.yielded) {
      this.yielded = true;
      this.shard.counters.row[Counter.readBudgetYields]++;
      this.socket.pause();
      this.shard.yieldRead(this);
    }
  }

  /** The end of the turn in which it used up its read budget: read again unless held or paused. */
  resumeAfterYield(): void {
    this.yielded = false;
    this.budgetRead = 0;
    if (!this.closed && !this.readPaused && this.readHolds === 0) this.socket.resume();
  }

  /**
   * A malformed packet or protocol violation closes this connection (MQTT 5: after a DISCONNECT
   * with the reason code [MQTT-4.13.1-1]) and never escapes the shard.
   */
  private onBadInput(err: unknown): void {
    const row = this.shard.counters.row;
    if (err instanceof ProtocolError) {
      if (err.reason === 0x95) row[Counter.oversizedPackets]++;
      else if (err.reason === 0x81) row[Counter.malformedPackets]++;
      else row[Counter.protocolErrors]++;
      this.log.warn({ reason: err.message }, 'protocol violation; closing connection');
      this.disconnect(err.reason, err.message);
      return;
    }
    row[Counter.protocolErrors]++;
    this.log.error({ err }, 'error handling packet; closing connection');
    this.disconnect(0x80, 'unspecified error');
  }

  /**
   * Server-initiated close. MQTT 5 clients first get a DISCONNECT with the reason code (and the
   * reason string unless they opted out of problem information); MQTT 3 clients are just closed.
   */
  disconnect(reasonCode: number, reason: string): void {
    if (this.closed) return;
    if (this.v5) {
      let frame = encodeDisconnectV5(reasonCode, this.problemInfo ? { reasonString: reason } : undefined);
      // No Reason String where it would exceed the client's Maximum Packet Size [MQTT-3.14.2-3].
      if (this.clientMaxPacket > 0 && frame.length > this.clientMaxPacket)
        frame = encodeDisconnectV5(reasonCode);
      this.closed = true;
      if (this.corked) this.socket.uncork();
      // Counted as sent like every packet that goes through write() (packets.disconnect.sent).
      const row = this.shard.counters.row;
      row[Counter.packetsSent]++;
      row[PACKETS_SENT_BY_TYPE + PacketType.DISCONNECT]++;
      row[Counter.bytesSent] += frame.length;
      // end() flushes what is queued, then FIN; a peer that never reads is cut off shortly after.
      this.socket.end(frame);
      setTimeout(() => this.socket.destroy(), 2000).unref();
      this.shard.onConnectionClosed(this, reason);
      return;
    }
    this.close(reason);
  }

  /** QoS 1/2 deliveries allowed unacknowledged: ours, capped by the client's Receive Maximum. */
  get inflightLimit(): number {
    const own = this.shard.config['mqtt.max_inflight'];
    return Math.min(own, this.clientReceiveMax);
  }

  /**
   * Writes one PUBLISH to this client, encoded for its protocol version. Returns false (and
   * writes nothing) when it would exceed the client's Maximum Packet Size [MQTT-3.1.2-24].
   */
  sendPublish(
    msg: Message,
    qos: QoS,
    packetId: number,
    dup: boolean,
    retainFlag: boolean,
    subIds: number[] | null,
  ): boolean {
    if (!this.v5) {
      this.write(msg.frame(false, qos, packetId, dup, retainFlag, null));
      return true;
    }
    let d: DeliveryProps | null = null;
    let newAlias = '';
    if (subIds !== null || msg.expiryAt > 0 || this.clientAliasMax > 0) {
      d = DELIVERY;
      d.subIds = subIds ?? NO_IDS;
      // The remaining lifetime is sent, not the original interval [MQTT-3.3.2-6].
      d.expiry = msg.expiryAt > 0 ? Math.max(0, Math.ceil((msg.expiryAt - Date.now()) / 1000)) : -1;
      d.topicAlias = 0;
      d.omitTopic = false;
      if (this.clientAliasMax > 0) {
        if (!this.outAliases) this.outAliases = new Map();
        const topic = msg.topic;
        const known = this.outAliases.get(topic);
        if (known !== undefined) {
          d.topicAlias = known;
          d.omitTopic = true;
        } else if (this.outAliases.size < this.clientAliasMax) {
          d.topicAlias = this.outAliases.size + 1;
          this.outAliases.set(topic, d.topicAlias);
          newAlias = topic;
        }
      }
    }
    const frame = msg.frame(true, qos, packetId, dup, retainFlag, d);
    if (this.clientMaxPacket > 0 && frame.length > this.clientMaxPacket) {
      // Never send more than the client accepts: drop and count [MQTT-3.1.2-25].
      if (newAlias) this.outAliases!.delete(newAlias);
      this.shard.counters.row[Counter.deliveryDroppedTooLarge]++;
      return false;
    }
    this.write(frame);
    return true;
  }

  onFrame(type: number, flags: number, body: Buffer, start: number, end: number): void {
    if (this.closed) return;
    this.lastReceivedAt = this.chunkAt;
    const row = this.shard.counters.row;
    row[Counter.packetsReceived]++;
    row[PACKETS_RECEIVED_BY_TYPE + type]++;
    if (type !== PacketType.PUBLISH && flags !== REQUIRED_FLAGS[type]) {
      throw new ProtocolError(
        `invalid fixed-header flags ${flags} for packet type ${type} [MQTT-2.2.2-2]`,
        undefined,
        0x81,
      );
    }
    const handler = HANDLERS[type];
    if (!handler) throw new ProtocolError(`unexpected packet type ${type} from client`, undefined, 0x82);
    handler(this, flags, body, start, end);
  }

  /**
   * The peer sent FIN: the connection is over (as in mosquitto and EMQX), even if 'close' cannot
   * come yet because the peer does not read what we still have to flush. Without this, a peer
   * that half-closes and stops reading kept its connection and session online (forever with keep
   * alive 0), and each delivery to it threw inside the socket (write after end).
   */
  onPeerEnd(): void {
    if (this.closed) return;
    this.closed = true;
    this.shard.counters.row[Counter.peerClosed]++;
    if (this.corked) this.socket.uncork();
    // What is queued may still flush; a peer that never reads is cut off shortly after.
    setTimeout(() => this.socket.destroy(), 2000).unref();
    this.shard.onConnectionClosed(this, 'connection closed by peer');
  }

  /** Queues a frame for this turn's corked write. */
  write(frame: Buffer): void {
    // Not writable: destroyed by a socket error whose 'close' has not come yet (writing would
    // throw and build an Error per frame).
    if (this.closed || !this.socket.writable) return;
    if (!this.corked) {
      this.corked = true;
      this.turnBytes = 0;
      this.socket.cork();
      this.shard.scheduleUncork(this);
    }
    if (!this.socket.write(frame)) this.outputFull();
    this.turnBytes += frame.length;
    const row = this.shard.counters.row;
    row[Counter.packetsSent]++;
    row[PACKETS_SENT_BY_TYPE + (frame[0] >> 4)]++;
    row[Counter.bytesSent] += frame.length;
  }

  /** Writes an ack, or queues it behind a held ack to keep acks in order. */
  writeAck(frame: Buffer): void {
    if (this.heldAcks) this.queueAck(frame);
    else this.write(frame);
  }

  /** Holds an ack until its one part is done (`partDone()`). */
  holdAck(frame: Buffer): HeldAck {
    const held = acquireHeldAck(this, 1);
    this.queueHeld(held, frame);
    return held;
  }

  /** A held ack of this connection (shard/held-ack.ts) with its frame: queued, in order. */
  queueHeld(held: HeldAck, frame: Buffer): void {
    held.frame = frame;
    held.queued = true;
    if (!this.heldAcks) this.heldAcks = [];
    this.queueAck(held);
  }

  private queueAck(a: Buffer | HeldAck): void {
    this.heldAcks!.push(a);
    const n = Buffer.isBuffer(a) ? a.length : a.frame.length;
    this.heldBytes += n;
    // Checked every 64 KiB of held acks, not per ack.
    if (this.heldBytes >> 16 !== (this.heldBytes - n) >> 16) this.outputFull();
  }

  releaseAcks(): void {
    const q = this.heldAcks;
    // Closed: nothing is written, and the held acks stay out of the pool (parts may still end).
    if (!q || this.closed) return;
    let i = 0;
    for (; i < q.length; i++) {
      const a = q[i];
      if (Buffer.isBuffer(a)) {
        this.heldBytes -= a.length;
        this.write(a);
        continue;
      }
      if (!a.ready) break;
      this.heldBytes -= a.frame.length;
      this.write(a.frame);
      releaseHeldAck(a); // written: no part owner refers to it any more
    }
    q.splice(0, i);
    if (q.length === 0) this.heldAcks = null;
  }

  /**
   * Output the client has not taken, beyond the high-water mark: QoS 0 is dropped, QoS 1/2 waits
   * in the session queue. This turn's own corked writes are not a backlog: a burst to a client
   * that keeps up must not count as congestion.
   */
  get congested(): boolean {
    const backlog = this.socket.writableLength - (this.corked ? this.turnBytes : 0);
    // Never below the stream's own mark (fixed when the socket was made): congestion must imply
    // that a write saw the buffer at that mark, or no 'drain' would come to move the queue. A
    // reload that lowers the option thus applies to connections made after it.
    const mark = this.shard.config['mqtt.output_high_watermark'];
    const streamMark = this.socket.writableHighWaterMark;
    return backlog > Math.max(mark, streamMark);
  }

  /** Closes the connection; the shard decides about will and session (see Shard.onConnectionClosed). */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.shard.onConnectionClosed(this, reason);
  }
}

import type { Socket } from 'node:net';
import { HANDLERS } from '../handlers/index.js';
import type { Logger } from '../log.js';
import { Counter, PACKETS_RECEIVED_BY_TYPE, PACKETS_SENT_BY_TYPE } from '../metrics/counters.js';
import {
  FrameReader,
  type FrameSink,
  ProtocolError,
  type PublishFrame,
  REQUIRED_FLAGS,
} from '../protocol/codec.js';
import { PacketType } from '../protocol/constants.js';
import type { Session } from '../session/session.js';
import type { Handoff } from '../threads/messages.js';
import type { Shard } from './shard.js';

/** An acknowledgement that must wait (a retained PUBLISH's ack waits for the store). */
export interface HeldAck {
  frame: Buffer;
  ready: boolean;
}

/**
 * One client's network connection, owned by its shard. It splits frames, checks the fixed
 * header and dispatches each packet to its handler (`handlers/*.ts`); it batches writes per
 * event-loop turn (cork/uncork) and applies the output high-water mark.
 */
export class Connection implements FrameSink {
  readonly reader: FrameReader;
  readonly log: Logger;
  closed = false;
  /** DISCONNECT received: the will is not published [MQTT-3.14.4-3] */
  gracefulDisconnect = false;
  /** When the last whole packet arrived, for keep-alive [MQTT-3.1.2-24] (partial ones do not count) */
  lastReceivedAt = Date.now();
  /** Arrival time of the chunk being parsed */
  private chunkAt = 0;
  /** Reused by the PUBLISH handler: no allocation per parse */
  readonly publishFrame: PublishFrame = {
    qos: 0,
    dup: false,
    retain: false,
    topicStart: 0,
    topicEnd: 0,
    packetId: 0,
    payloadStart: 0,
  };
  corked = false;
  /** Bytes written since this turn's cork: about to be flushed, not a backlog */
  private turnBytes = 0;
  /** Acks queued behind a held ack, so acks leave in PUBLISH order [MQTT-4.6.0-2] */
  heldAcks: (Buffer | HeldAck)[] | null = null;
  readonly keepaliveMs: number;
  readonly protocolVersion: number;
  readonly clientId: string;
  // For the REST API and $SYS client events (read when asked, never per packet).
  readonly connectedAt = Date.now();
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localPort: number;
  readonly username: string | null;
  readonly protocolName: string;
  readonly keepalive: number;

  constructor(
    readonly shard: Shard,
    readonly socket: Socket,
    readonly session: Session,
    handoff: Handoff,
  ) {
    this.clientId = handoff.connect.clientId;
    this.protocolVersion = handoff.connect.protocolVersion;
    this.remoteAddress = handoff.remoteAddress;
    this.remotePort = handoff.remotePort;
    this.localPort = socket.localPort ?? 0;
    this.username = handoff.connect.username;
    this.protocolName = handoff.connect.protocolName;
    this.keepalive = handoff.connect.keepalive;
    this.keepaliveMs = handoff.connect.keepalive * 1000 * shard.config['mqtt.keepalive_multiplier'];
    this.reader = new FrameReader(this, shard.config['mqtt.max_packet_size']);
    this.log = shard.log.child({
      clientId: this.clientId,
      remote: `${handoff.remoteAddress}:${handoff.remotePort}`,
    });
  }

  /** Starts reading: first the bytes main read after CONNECT, then the socket. */
  start(leftover: Uint8Array): void {
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('drain', () => this.shard.drainSession(this.session));
    this.socket.on('error', (err) => {
      if (!this.closed) this.log.debug({ err: err.message }, 'socket error');
    });
    this.socket.on('close', () => this.close('connection closed by peer'));
    if (leftover.length > 0) this.onData(Buffer.from(leftover.buffer, leftover.byteOffset, leftover.length));
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.chunkAt = Date.now();
    this.shard.counters.row[Counter.bytesReceived] += chunk.length;
    try {
      this.reader.push(chunk);
    } catch (err) {
      this.onBadInput(err);
    }
  }

  /** A malformed packet or protocol violation closes this connection and never escapes the shard. */
  private onBadInput(err: unknown): void {
    const row = this.shard.counters.row;
    if (err instanceof ProtocolError) {
      if (err.reason === 0x95) row[Counter.oversizedPackets]++;
      else if (err.reason === 0x81) row[Counter.malformedPackets]++;
      else row[Counter.protocolErrors]++;
      this.log.warn({ reason: err.message }, 'protocol violation; closing connection');
    } else {
      row[Counter.protocolErrors]++;
      this.log.error({ err }, 'error handling packet; closing connection');
    }
    this.close(err instanceof Error ? err.message : 'error');
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

  /** Queues a frame for this turn's corked write. */
  write(frame: Buffer): void {
    if (this.closed) return;
    if (!this.corked) {
      this.corked = true;
      this.turnBytes = 0;
      this.socket.cork();
      this.shard.scheduleUncork(this);
    }
    this.socket.write(frame);
    this.turnBytes += frame.length;
    const row = this.shard.counters.row;
    row[Counter.packetsSent]++;
    row[PACKETS_SENT_BY_TYPE + (frame[0] >> 4)]++;
    row[Counter.bytesSent] += frame.length;
  }

  /** Writes an ack, or queues it behind a held ack to keep acks in order. */
  writeAck(frame: Buffer): void {
    if (this.heldAcks) this.heldAcks.push(frame);
    else this.write(frame);
  }

  holdAck(frame: Buffer): HeldAck {
    const held: HeldAck = { frame, ready: false };
    if (!this.heldAcks) this.heldAcks = [];
    this.heldAcks.push(held);
    return held;
  }

  releaseAcks(): void {
    const q = this.heldAcks;
    if (!q) return;
    let i = 0;
    for (; i < q.length; i++) {
      const a = q[i];
      if (Buffer.isBuffer(a)) this.write(a);
      else if (a.ready) this.write(a.frame);
      else break;
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
    return backlog > this.shard.config['mqtt.output_high_watermark'];
  }

  /** Closes the connection; the shard decides about will and session (see Shard.onConnectionClosed). */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.shard.onConnectionClosed(this, reason);
  }
}

import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import {
  Counter,
  type Counters,
  PACKETS_RECEIVED_BY_TYPE,
  PACKETS_SENT_BY_TYPE,
} from '../metrics/counters.js';
import {
  type ConnectPacket,
  encodeConnack,
  encodeConnackV5,
  ownBytes,
  ProtocolError,
  parseConnect,
} from '../protocol/codec.js';
import { ConnackCode, PacketType } from '../protocol/constants.js';
import { generateClientId } from './client-id.js';

export interface AcceptedConnect {
  connect: ConnectPacket;
  leftover: Buffer;
  assignedClientId: boolean;
}

export interface ConnectReaderOptions {
  maxPacketSize: number;
  maxClientIdLength: number;
  connectTimeoutMs: number;
  /** mqtt.max_qos_allowed and mqtt.retain_available: an MQTT 5 will beyond them is refused */
  maxQosAllowed?: number;
  retainAvailable?: boolean;
  log: Logger;
  counters: Counters;
  /** The client's address for the log when the socket's peer is a proxy (PROXY protocol) */
  remote?: string;
}

/**
 * Reads exactly the first packet of a new connection (in the accepting shard). It must be a valid
 * CONNECT [MQTT-3.1.0-1]; otherwise the connection is refused here (CONNACK with a return code
 * where the spec asks for one, else closed) and never reaches a session. On success the socket is
 * left paused and `onConnect` gets the parsed packet and any pipelined bytes after it.
 */
export function readConnect(
  socket: Socket,
  opts: ConnectReaderOptions,
  onConnect: (accepted: AcceptedConnect) => void,
): void {
  // Chunks so far, joined once when the CONNECT is complete (joining on every chunk was
  // quadratic for a large CONNECT in small reads); `end` is its length once the header is read.
  const chunks: Buffer[] = [];
  let have = 0;
  let end = -1;
  let start = 0;
  let done = false;

  /** `violation`: the counter of a malformed/oversized packet or protocol error, as on a shard. */
  const refuse = (reason: string, reply?: Buffer, violation?: number): void => {
    done = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    opts.counters.row[Counter.connectRejected]++;
    if (violation !== undefined) opts.counters.row[violation]++;
    if (reply) countReply(opts.counters.row, reply);
    const remote = opts.remote ?? `${socket.remoteAddress}:${socket.remotePort}`;
    opts.log.info({ remote, reason }, 'connection refused');
    if (reply) socket.end(reply);
    else socket.destroy();
    // The CONNACK gets a grace period to be read, then the connection is closed [MQTT-3.2.2-5]:
    // an absolute deadline, not an idle timeout, which a peer that keeps sending would never hit.
    if (reply) {
      const linger = setTimeout(() => socket.destroy(), Math.min(5000, opts.connectTimeoutMs));
      socket.once('close', () => clearTimeout(linger));
    }
  };

  const timer = setTimeout(() => {
    if (!done) refuse('no CONNECT within connect timeout');
  }, opts.connectTimeoutMs);

  const onData = (chunk: Buffer): void => {
    if (done) return;
    chunks.push(chunk);
    have += chunk.length;
    opts.counters.row[Counter.bytesReceived] += chunk.length;
    if (end < 0) {
      if (have < 2) return;
      // The fixed header is at most 5 bytes: only those (and one more, to see a 5th length byte) are
      // joined until it is complete.
      const h = chunks.length === 1 ? chunk : Buffer.concat(chunks, Math.min(have, 6));
      if (chunks.length > 1) opts.counters.row[Counter.frameBytesCopied] += h.length;
      const type = h[0] >> 4;
      if (type !== PacketType.CONNECT) {
        return refuse(`first packet is type ${type}, not CONNECT`, undefined, Counter.protocolErrors);
      }
      if ((h[0] & 0x0f) !== 0) {
        return refuse('CONNECT fixed-header flags not 0 [MQTT-2.2.2-2]', undefined, Counter.malformedPackets);
      }
      let len = 0;
      let mul = 1;
      let i = 1;
      for (; ; i++) {
        if (i >= h.length) return; // need more bytes
        if (i > 4) return refuse('malformed remaining length', undefined, Counter.malformedPackets);
        len += (h[i] & 0x7f) * mul;
        mul *= 128;
        if ((h[i] & 0x80) === 0) break;
      }
      start = i + 1;
      end = start + len;
      if (end > opts.maxPacketSize) {
        return refuse(
          `CONNECT of ${end} bytes exceeds maximum packet size`,
          undefined,
          Counter.oversizedPackets,
        );
      }
    }
    if (have < end) return;
    const buf = chunks.length === 1 ? chunk : Buffer.concat(chunks, have);
    if (chunks.length > 1) opts.counters.row[Counter.frameBytesCopied] += have;
    chunks.length = 0;
    opts.counters.row[Counter.packetsReceived]++;
    opts.counters.row[PACKETS_RECEIVED_BY_TYPE + PacketType.CONNECT]++;

    // The protocol level decides the form of a refusal CONNACK (3.1.1 return code or 5.0 reason).
    const nameLen = end - start >= 2 ? buf.readUInt16BE(start) : 0;
    const v5 = buf[start + 2 + nameLen] === 5 && end > start + 2 + nameLen;
    const connack = (v3code: number, v5reason: number): Buffer =>
      v5 ? encodeConnackV5(v5reason) : encodeConnack(false, v3code);

    let connect: ConnectPacket;
    try {
      connect = parseConnect(buf, start, end);
    } catch (e) {
      if (!(e instanceof ProtocolError)) {
        return refuse(String(e), v5 ? encodeConnackV5(0x81) : undefined, Counter.malformedPackets);
      }
      const malformed = e.reason === 0x81;
      const counter = malformed ? Counter.malformedPackets : Counter.protocolErrors;
      if (e.connackCode !== undefined) {
        // 3.1.1 names a return code (1: level, 2: identifier); MQTT 5 the matching reason.
        const reason = e.connackCode === ConnackCode.IDENTIFIER_REJECTED ? 0x85 : e.reason;
        return refuse(e.message, connack(e.connackCode, reason), counter);
      }
      // MQTT 5: a CONNACK with the reason code before closing [MQTT-4.13.1-1]; 3.1.1 just closes.
      return refuse(e.message, v5 ? encodeConnackV5(e.reason) : undefined, counter);
    }
    if (v5 && connect.will) {
      // A will the server could not publish as asked is refused [MQTT-3.2.2-12], [MQTT-3.2.2-13].
      if (connect.will.qos > (opts.maxQosAllowed ?? 2)) {
        return refuse(`will QoS ${connect.will.qos} above Maximum QoS`, encodeConnackV5(0x9b));
      }
      if (connect.will.retain && opts.retainAvailable === false) {
        return refuse('will RETAIN but retained messages are not available', encodeConnackV5(0x9a));
      }
    }
    if (connect.properties?.authenticationMethod !== undefined) {
      // Enhanced authentication is not implemented: refuse its methods [MQTT-4.12.0-1].
      return refuse(
        `unsupported authentication method ${connect.properties.authenticationMethod}`,
        encodeConnackV5(0x8c),
      );
    }
    let assignedClientId = false;
    if (connect.clientId.length === 0) {
      // 3.1.1: a zero-byte client id needs clean session 1 [MQTT-3.1.3-7], else return code 2
      // [MQTT-3.1.3-8]. MQTT 5 assigns one either way and says so in CONNACK [MQTT-3.1.3-7].
      // MQTT 3.1 has no empty client id at all (1-23 characters): return code 2.
      if ((!connect.clean && !v5) || connect.protocolVersion === 3) {
        return refuse(
          'empty client id with clean session 0',
          encodeConnack(false, ConnackCode.IDENTIFIER_REJECTED),
        );
      }
      connect.clientId = generateClientId();
      assignedClientId = true;
    } else if (connect.clientId.length > opts.maxClientIdLength) {
      return refuse('client id too long', connack(ConnackCode.IDENTIFIER_REJECTED, 0x85));
    }

    done = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('close', onEarlyClose);
    socket.pause();
    // Copied to an exact-size buffer: it may be posted to the owning shard, and must not keep
    // the whole read buffer alive (see ownBytes).
    onConnect({ connect, leftover: ownBytes(buf.subarray(end)), assignedClientId });
  };

  // A client that goes away before its CONNECT is complete was not refused: stop the timer.
  const onEarlyClose = (): void => {
    if (done) return;
    done = true;
    clearTimeout(timer);
  };
  socket.on('data', onData);
  socket.once('close', onEarlyClose);
}

/** Counts a refusal CONNACK as EMQX does: sent, error, and auth_error for credential codes. */
function countReply(row: Float64Array, reply: Buffer): void {
  row[Counter.packetsSent]++;
  row[Counter.bytesSent] += reply.length;
  row[PACKETS_SENT_BY_TYPE + (reply[0] >> 4)]++;
  if (reply[0] >> 4 !== PacketType.CONNACK || reply.length < 4) return;
  const code = reply[3];
  if (code !== 0) row[Counter.packetsConnackError]++;
  // 3.1.1: 4 bad user name or password, 5 not authorised; MQTT 5: 0x86, 0x87.
  if (code === 4 || code === 5 || code === 0x86 || code === 0x87) row[Counter.packetsConnackAuthError]++;
}

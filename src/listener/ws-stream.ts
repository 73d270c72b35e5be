import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';
import { joinChunks, SocketLike } from './socket-like.js';

/**
 * One MQTT-over-WebSocket connection as a byte stream, so that the CONNECT reader and the
 * owner's Connection use it as they use a TCP socket. Incoming binary messages are pushed as
 * they come: an MQTT packet split over several messages, or several packets in one, are
 * reassembled by the frame reader, as on TCP. The writes of one turn (corked by the Connection)
 * go out as one binary message (MQTT allows packets to share a WebSocket frame [MQTT-6.0.0-2]).
 * Back-pressure runs both ways: a paused reader pauses the WebSocket's socket; a write stays
 * in this stream's buffer (writableLength, which the congestion checks read) until the socket
 * has taken it.
 */
export class WsStream extends SocketLike {
  private wsPaused = false;

  constructor(
    private readonly ws: WebSocket,
    socket: Socket,
    highWaterMark: number,
    /** Text frame, bad frame, oversized message: counted and logged by the listener */
    onProtocolError: (reason: string) => void,
  ) {
    super(socket.remoteAddress ?? '', socket.remotePort ?? 0, socket.localPort ?? 0, highWaterMark);
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        // MQTT is carried in binary frames only; another kind closes the connection [MQTT-6.0.0-1].
        onProtocolError('text WebSocket frame (MQTT needs binary frames) [MQTT-6.0.0-1]');
        ws.close(1003, 'binary frames only');
        this.destroy();
        return;
      }
      if (!this.push(data) && !this.wsPaused) {
        this.wsPaused = true;
        ws.pause();
      }
    });
    // ws closes the connection itself after a protocol error (1002) or an oversized message (1009).
    ws.on('error', (err: Error & { code?: string }) =>
      onProtocolError(`${err.code ?? 'WebSocket error'}: ${err.message}`),
    );
    ws.on('close', () => {
      this.push(null);
      this.destroy();
    });
  }

  override _read(): void {
    if (this.wsPaused) {
      this.wsPaused = false;
      this.ws.resume();
    }
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.ws.send(chunk, { binary: true }, cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    this.ws.send(joinChunks(chunks), { binary: true }, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.ws.close(1000);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.ws.readyState !== this.ws.CLOSED) this.ws.terminate();
    cb(err);
  }
}

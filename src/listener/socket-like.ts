import { Duplex } from 'node:stream';

/**
 * A Duplex that stands in for a net.Socket where the bytes do not come from a TCP socket of
 * this thread (a WebSocket, a tunnel): the address fields and the few socket methods the CONNECT
 * reader, the session lifecycle and a Connection call.
 */
export abstract class SocketLike extends Duplex {
  constructor(
    readonly remoteAddress: string,
    readonly remotePort: number,
    readonly localPort: number,
    writableHighWaterMark: number,
  ) {
    super({ allowHalfOpen: false, decodeStrings: false, writableHighWaterMark });
  }

  /** As net.Socket's: end, then destroy once the output has been written. */
  destroySoon(): void {
    if (this.writable) this.end();
    if (this.writableFinished) this.destroy();
    else this.once('finish', () => this.destroy());
  }

  setNoDelay(): this {
    return this;
  }
}

/** The chunks of a corked turn as one buffer: one WebSocket message or tunnel record. */
export function joinChunks(chunks: { chunk: Buffer }[]): Buffer {
  if (chunks.length === 1) return chunks[0].chunk;
  let n = 0;
  for (const c of chunks) n += c.chunk.length;
  const data = Buffer.allocUnsafe(n);
  let at = 0;
  for (const c of chunks) {
    c.chunk.copy(data, at);
    at += c.chunk.length;
  }
  return data;
}

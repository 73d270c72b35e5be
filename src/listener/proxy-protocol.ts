import type { Socket } from 'node:net';

/** The client address a proxy reports; null for LOCAL (v2) / UNKNOWN (v1): the socket's own peer. */
export interface ProxyAddress {
  address: string;
  port: number;
}

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** v1 lines are at most 107 bytes (spec section 2.1) */
const V1_MAX = 107;
/** v2 addresses and TLVs beyond this are refused: no proxy sends that much, and it is unread memory */
const V2_MAX_BODY = 4096;

export class ProxyHeaderError extends Error {}

/**
 * Parses a PROXY protocol header (v1 text or v2 binary) at the start of `buf`. Returns undefined
 * while more bytes are needed, else the address (null when the proxy says LOCAL / UNKNOWN) and
 * the header's length. Throws ProxyHeaderError for anything that is not a valid header.
 */
export function parseProxyHeader(buf: Buffer): { addr: ProxyAddress | null; length: number } | undefined {
  const sigLen = Math.min(buf.length, V2_SIGNATURE.length);
  if (buf.subarray(0, sigLen).equals(V2_SIGNATURE.subarray(0, sigLen))) {
    if (buf.length < 16) return undefined;
    return parseV2(buf);
  }
  const prefix = 'PROXY ';
  const n = Math.min(buf.length, prefix.length);
  if (buf.toString('latin1', 0, n) !== prefix.slice(0, n)) throw new ProxyHeaderError('no PROXY header');
  const eol = buf.indexOf('\r\n');
  if (eol < 0) {
    if (buf.length >= V1_MAX) throw new ProxyHeaderError('PROXY v1 line too long');
    return undefined;
  }
  if (eol + 2 > V1_MAX) throw new ProxyHeaderError('PROXY v1 line too long');
  return { addr: parseV1(buf.toString('latin1', prefix.length, eol)), length: eol + 2 };
}

function parseV1(line: string): ProxyAddress | null {
  const parts = line.split(' ');
  if (parts[0] === 'UNKNOWN') return null;
  if ((parts[0] !== 'TCP4' && parts[0] !== 'TCP6') || parts.length !== 5) {
    throw new ProxyHeaderError(`malformed PROXY v1 line '${line}'`);
  }
  const [, src, , sport] = parts;
  const port = Number(sport);
  const v4 = /^\d{1,3}(\.\d{1,3}){3}$/.test(src);
  if ((parts[0] === 'TCP4' ? !v4 : !src.includes(':')) || !/^\d{1,5}$/.test(sport) || port > 65535) {
    throw new ProxyHeaderError(`malformed PROXY v1 address in '${line}'`);
  }
  return { address: src, port };
}

function parseV2(buf: Buffer): { addr: ProxyAddress | null; length: number } | undefined {
  const verCmd = buf[12];
  if (verCmd >> 4 !== 2) throw new ProxyHeaderError(`PROXY v2 version ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) throw new ProxyHeaderError(`PROXY v2 command ${cmd}`);
  const fam = buf[13];
  const len = buf.readUInt16BE(14);
  if (len > V2_MAX_BODY) throw new ProxyHeaderError(`PROXY v2 header of ${len} bytes`);
  if (buf.length < 16 + len) return undefined;
  const length = 16 + len;
  // LOCAL (health checks of the proxy itself) and non-TCP families: the socket's own address.
  if (cmd === 0) return { addr: null, length };
  if (fam === 0x11) {
    if (len < 12) throw new ProxyHeaderError('PROXY v2 TCP4 addresses truncated');
    const a = buf.subarray(16, 20);
    return { addr: { address: `${a[0]}.${a[1]}.${a[2]}.${a[3]}`, port: buf.readUInt16BE(24) }, length };
  }
  if (fam === 0x21) {
    if (len < 36) throw new ProxyHeaderError('PROXY v2 TCP6 addresses truncated');
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(16 + 2 * i).toString(16));
    return { addr: { address: compressV6(groups), port: buf.readUInt16BE(48) }, length };
  }
  return { addr: null, length };
}

/** RFC 5952 form (the longest run of zero groups as ::), as Node prints socket addresses. */
function compressV6(g: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return g.join(':');
  return `${g.slice(0, best).join(':')}::${g.slice(best + bestLen).join(':')}`;
}

/**
 * Reads the PROXY header of a new connection, then puts back what followed it (the start of
 * MQTT) with `unshift`, calls `onHeader` and resumes reading. A bad or late header
 * calls `onError` (the caller closes and counts).
 */
export function readProxyHeader(
  socket: Socket,
  timeoutMs: number,
  onHeader: (addr: ProxyAddress | null) => void,
  onError: (reason: string) => void,
): void {
  let buf: Buffer = Buffer.alloc(0);
  let done = false;
  const finish = (): void => {
    done = true;
    clearTimeout(timer);
    socket.removeListener('data', onData);
    socket.removeListener('close', onClose);
  };
  const timer = setTimeout(() => {
    if (done) return;
    finish();
    onError('no PROXY header within proxy_protocol_timeout');
  }, timeoutMs);
  const onClose = (): void => {
    if (!done) finish();
  };
  const onData = (chunk: Buffer): void => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
    let parsed: ReturnType<typeof parseProxyHeader>;
    try {
      parsed = parseProxyHeader(buf);
    } catch (e) {
      finish();
      onError((e as Error).message);
      return;
    }
    if (!parsed) return;
    finish();
    socket.pause();
    if (buf.length > parsed.length) socket.unshift(buf.subarray(parsed.length));
    // onHeader attaches the CONNECT reader's 'data' listener; resume() takes effect a tick later.
    onHeader(parsed.addr);
    socket.resume();
  };
  socket.on('data', onData);
  socket.once('close', onClose);
}

import { createHash, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

export function sendText(
  res: ServerResponse,
  status: number,
  text: string,
  type = 'text/plain; charset=utf-8',
): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export function sendError(res: ServerResponse, status: number, code: string, message: string): void {
  sendJson(res, status, { code, message });
}

export class BodyError extends Error {}

/** Reads a request body up to `limit` bytes. */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new BodyError(`request body larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** True when the request carries `Authorization: Basic base64(key:secret)` with these credentials. */
export function basicAuthOk(req: IncomingMessage, key: string, secret: string): boolean {
  const h = req.headers.authorization;
  if (!h?.startsWith('Basic ')) return false;
  const decoded = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return false;
  // Hash both sides so that the comparison is constant-time whatever the lengths.
  const keyOk = timingSafeEqual(digest(decoded.slice(0, colon)), digest(key));
  const secretOk = timingSafeEqual(digest(decoded.slice(colon + 1)), digest(secret));
  return keyOk && secretOk && key.length > 0 && secret.length > 0;
}

/** Starts an HTTP server; resolves once it listens (rejects on EADDRINUSE & co.). */
export async function listen(
  handler: RequestListener,
  host: string,
  port: number,
  what: string,
): Promise<Server> {
  const server = createServer(handler);
  server.keepAliveTimeout = 5000;
  server.listen({ host, port });
  try {
    await once(server, 'listening');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new Error(`cannot listen on ${host}:${port} for the ${what}: ${e.code ?? e.message}`, {
      cause: err,
    });
  }
  return server;
}

export function boundPort(server: Server | null): number {
  const addr = server?.address();
  return addr && typeof addr === 'object' ? (addr as AddressInfo).port : 0;
}

export async function closeServer(server: Server | null): Promise<void> {
  if (!server?.listening) return;
  const closed = once(server, 'close');
  server.close();
  server.closeAllConnections();
  await closed;
}

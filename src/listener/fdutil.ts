import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

interface FdUtil {
  dup(fd: number): number;
  close(fd: number): void;
}

/**
 * The fd of a `net.Socket` or `net.Server` (Node exposes no public accessor; this is the one
 * place that reads its handle). Throws when there is none (closed, or not fd-backed).
 */
export function handleFd(owner: object): number {
  const fd = (owner as { _handle?: { fd?: unknown } | null })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('no file descriptor');
  return fd;
}

/** The native dup(2)/close(2) addon built by node-gyp at `npm install` (native/fdutil.c). */
export const fdutil: FdUtil = createRequire(import.meta.url)(
  join(packageRoot(), 'build/Release/fdutil.node'),
);

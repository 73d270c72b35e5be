import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

interface FdUtil {
  dup(fd: number): number;
  close(fd: number): void;
}

/** The native dup(2)/close(2) addon built by node-gyp at `npm install` (native/fdutil.c). */
export const fdutil: FdUtil = createRequire(import.meta.url)(
  join(packageRoot(), 'build/Release/fdutil.node'),
);

import v8 from 'node:v8';
import vm from 'node:vm';

export type Gc = (o?: { type: 'minor' | 'major' }) => void;

/** V8's gc() (a scavenge with `{ type: 'minor' }`), without running the test under --expose-gc. */
export function v8Gc(): Gc {
  const own = (globalThis as { gc?: unknown }).gc;
  if (typeof own === 'function') return own as Gc;
  v8.setFlagsFromString('--expose-gc');
  try {
    return vm.runInNewContext('gc') as Gc;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
}

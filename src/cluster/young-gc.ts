import v8 from 'node:v8';
import vm from 'node:vm';

/**
 * Scavenges the cluster thread's young generation after every `everyBytes` of buffers it has
 * taken in, so that V8 does not answer them with a full mark-compact.
 *
 * Why (docs/PERFORMANCE.md, cluster, "Fifth stop"): the cluster thread takes in ~40–80 MB/s
 * of ArrayBuffers under load — the HTTP/2 socket reads of the forward streams it serves (one
 * per read, allocated by Node), and the entry buffers shards transfer to it — and drops each
 * within a turn. Their memory is *external* to V8's heap and is only given back when the young
 * generation that holds their (small) JS objects is scavenged. But the thread allocates little
 * else, so scavenges are rare, and V8 counts external memory allocated since the last
 * mark-compact against the old generation's limit: with ~12 MB of old generation that limit is
 * reached after ~8 MB of buffers, so the thread ran a full mark-compact every 150–300 ms (plus
 * concurrent marking on helper threads) to free buffers a scavenge frees for a fraction of the
 * cost. A scavenge of this thread's nearly empty young generation costs ~0.1–0.5 ms.
 *
 * The scavenge is V8's own `gc({ type: 'minor' })`: the function is taken once from a fresh
 * context with `--expose-gc` set just for that (and unset again, unless the process was
 * started with it, in which case the global one is used). Without it (a runtime that refuses
 * the flag) this does nothing and V8 schedules its collections as before.
 */
export class YoungGc {
  private bytes = 0;
  /** Scavenges run (tests, metrics) */
  runs = 0;

  constructor(
    private readonly everyBytes: number,
    private readonly gc: ((o: { type: 'minor' }) => void) | null = minorGc(),
  ) {}

  /** `n` bytes of buffers taken in; scavenges once `everyBytes` have been since the last one. */
  add(n: number): void {
    this.bytes += n;
    if (this.bytes < this.everyBytes || this.gc === null) return;
    this.bytes = 0;
    this.runs++;
    this.gc({ type: 'minor' });
  }
}

/** A scavenge every 4 MiB of buffers: ~10 a second at 40 MB/s. */
export const YOUNG_GC_BYTES = 4 << 20;

type GcFn = (o: { type: 'minor' }) => void;

/** V8's gc() (with its `type: 'minor'` option), or null when the runtime will not expose it. */
function minorGc(): GcFn | null {
  const own = (globalThis as { gc?: unknown }).gc;
  if (typeof own === 'function') return own as GcFn;
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? (gc as GcFn) : null;
  } catch {
    return null;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
}

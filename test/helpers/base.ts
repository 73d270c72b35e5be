/** Test harness basics: the hang guard, waiting for a condition or promise, reading lines, waiting for a process to exit. */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { TestContext } from 'node:test';

export type Ctx = Pick<TestContext, 'after'>;

/**
 * Default hang guard of every wait in these helpers: long enough that a loaded 2-core CI machine
 * never trips it on a working broker, short enough that a broker bug fails the test, not the run.
 */
export const HANG_GUARD_MS = 20_000;

/** Polls `cond` until true; rejects after timeoutMs (a hang guard, not a timing assertion). */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = HANG_GUARD_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Rejects with `what` if `p` does not settle within timeoutMs. */
export async function within<T>(p: Promise<T>, what: string, timeoutMs = HANG_GUARD_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The lines a child process writes on a stream, with a wait for a matching line. */
export class LineReader {
  readonly lines: string[] = [];
  private partial = '';
  private waiters: { pred: (line: string) => boolean; resolve: (line: string) => void }[] = [];

  constructor(stream: NodeJS.ReadableStream) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop() ?? '';
      for (const line of parts) this.push(line);
    });
    stream.on('end', () => {
      if (this.partial) this.push(this.partial);
      this.partial = '';
    });
  }

  private push(line: string): void {
    this.lines.push(line);
    this.waiters = this.waiters.filter((w) => {
      if (!w.pred(line)) return true;
      w.resolve(line);
      return false;
    });
  }

  /** The first line (already seen or coming) that satisfies `pred`; rejects after timeoutMs. */
  waitFor(pred: (line: string) => boolean, what: string, timeoutMs = HANG_GUARD_MS): Promise<string> {
    const seen = this.lines.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((resolve, reject) => {
      const waiter = {
        pred,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(
          new Error(`timed out after ${timeoutMs} ms waiting for ${what}; output so far:\n${this.text}`),
        );
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  get text(): string {
    return this.lines.join('\n') + (this.partial ? `\n${this.partial}` : '');
  }
}

/** Exit code and signal of a child process (resolves immediately if it has already exited). */
export function exited(
  child: ChildProcess,
  timeoutMs = HANG_GUARD_MS,
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return within(
    once(child, 'exit').then(([code, signal]) => ({
      code: code as number | null,
      signal: signal as NodeJS.Signals | null,
    })),
    `process ${child.pid} to exit`,
    timeoutMs,
  );
}

// ---------------------------------------------------------------------------------------------
// Hand-made (and deliberately malformed) frames for RawClient, and a broker health check

/** Waits until the wall clock has passed `at` (ms since epoch): for expiry deadlines under test. */
export function untilPast(at: number, what: string, timeoutMs = 15_000): Promise<void> {
  return waitFor(() => Date.now() > at, what, timeoutMs);
}

// ---------------------------------------------------------------------------------------------
// MQTT 5 (shared subscriptions, subscription options): mqtt.js helpers, a raw packet client,
// runtime reconfiguration

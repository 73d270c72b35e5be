import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { type HashAlgorithm, hashPassword, verifyPassword } from './hash.js';
import type { HashTask } from './hash-worker.js';

/**
 * Password verification off the event loop: a piscina pool per shard, started on first use
 * (pbkdf2 at 100k iterations is tens of ms of CPU; bcrypt in JS more), threads ended when idle.
 * Task-shaped CPU work is what piscina is for (docs/ARCHITECTURE.md). Running from TypeScript
 * sources (no compiled worker file next to this one) it verifies in-thread instead.
 */
export class HashPool {
  private pool: Piscina | null = null;
  private readonly file = fileURLToPath(new URL('./hash-worker.js', import.meta.url));
  private readonly inThread = !existsSync(this.file);

  constructor(private readonly threads: number) {}

  verify(password: Buffer, stored: string): Promise<boolean> {
    if (this.inThread) return Promise.resolve(verifyPassword(password, stored));
    return this.run({ password: new Uint8Array(password), stored }) as Promise<boolean>;
  }

  /** A new salted hash (REST user management on main). */
  hash(password: string, algorithm: HashAlgorithm): Promise<string> {
    if (this.inThread) return Promise.resolve(hashPassword(password, algorithm));
    return this.run({ op: 'hash', password, algorithm }) as Promise<string>;
  }

  private run(task: HashTask): Promise<unknown> {
    this.pool ??= new Piscina({
      filename: this.file,
      minThreads: 0,
      maxThreads: this.threads,
      idleTimeout: 30_000,
    });
    return this.pool.run(task);
  }

  async close(): Promise<void> {
    await this.pool?.destroy();
    this.pool = null;
  }
}

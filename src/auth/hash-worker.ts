/**
 * piscina task (see hash-pool.ts), off the caller's event loop: verifies one password against a
 * stored hash (shards, at CONNECT), or hashes a new one (main, REST user management).
 */
import { type HashAlgorithm, hashPassword, verifyPassword } from './hash.js';

export type HashTask =
  | { op?: 'verify'; password: Uint8Array; stored: string }
  | { op: 'hash'; password: string; algorithm: HashAlgorithm };

export default function run(task: HashTask): boolean | string {
  if (task.op === 'hash') return hashPassword(task.password, task.algorithm);
  return verifyPassword(
    Buffer.from(task.password.buffer, task.password.byteOffset, task.password.length),
    task.stored,
  );
}

/**
 * Salted password hashes, stored as one self-describing string:
 * - `$pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>` (the default)
 * - `$2b$<cost>$…` (bcrypt, via bcryptjs)
 * - `$sha256$<salt b64>$<hash b64>` (sha256 of salt ‖ password; for imports, not recommended)
 * These functions are CPU-bound and synchronous: the broker calls them in a piscina pool
 * (hash-pool.ts), the passwd CLI directly.
 */
import { createHash, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import bcrypt from 'bcryptjs';

export type HashAlgorithm = 'pbkdf2' | 'bcrypt' | 'sha256';
export const PBKDF2_ITERATIONS = 100_000;
const PBKDF2_KEYLEN = 32;

export function hashPassword(password: string, algorithm: HashAlgorithm = 'pbkdf2', cost?: number): string {
  if (algorithm === 'bcrypt') return bcrypt.hashSync(password, cost ?? 10);
  const salt = randomBytes(16);
  if (algorithm === 'sha256') {
    const h = createHash('sha256').update(salt).update(password, 'utf8').digest();
    return `$sha256$${salt.toString('base64')}$${h.toString('base64')}`;
  }
  const iterations = cost ?? PBKDF2_ITERATIONS;
  const h = pbkdf2Sync(password, salt, iterations, PBKDF2_KEYLEN, 'sha256');
  return `$pbkdf2-sha256$${iterations}$${salt.toString('base64')}$${h.toString('base64')}`;
}

function same(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Whether `password` matches `stored`; false (never a throw) for a stored hash it cannot read. */
export function verifyPassword(password: Buffer, stored: string): boolean {
  try {
    if (stored.startsWith('$2')) return bcrypt.compareSync(password.toString('utf8'), stored);
    const parts = stored.split('$');
    if (parts[1] === 'sha256' && parts.length === 4) {
      const salt = Buffer.from(parts[2], 'base64');
      const h = createHash('sha256').update(salt).update(password).digest();
      return same(h, Buffer.from(parts[3], 'base64'));
    }
    if (parts[1] === 'pbkdf2-sha256' && parts.length === 5) {
      const iterations = Number(parts[2]);
      if (!Number.isInteger(iterations) || iterations < 1 || iterations > 10_000_000) return false;
      const want = Buffer.from(parts[4], 'base64');
      const h = pbkdf2Sync(password, Buffer.from(parts[3], 'base64'), iterations, want.length || 1, 'sha256');
      return same(h, want);
    }
  } catch {}
  return false;
}

/** Whether a stored hash has a form verifyPassword reads (checked when the users file is loaded). */
export function isKnownHash(stored: string): boolean {
  return (
    /^\$2[aby]\$\d\d\$/.test(stored) ||
    /^\$sha256\$[^$]+\$[^$]+$/.test(stored) ||
    /^\$pbkdf2-sha256\$\d+\$[^$]+\$[^$]+$/.test(stored)
  );
}

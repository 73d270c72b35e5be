/** Shared bits of test/auth.test.ts and test/authz.test.ts. */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { IClientOptions, MqttClient } from 'mqtt';
import type { Packet } from 'mqtt-packet';
import { hashPassword } from '../../src/auth/hash.js';
import type { Broker } from '../../src/broker/broker.js';
import { HANG_GUARD_MS, openClient, publish5, waitFor } from './broker.js';

/** A fresh temporary directory for users/ACL/key files. */
export const authTempDir = (prefix: string): string => mkdtempSync(join(tmpdir(), prefix));

/** Path of a hook module under test/fixtures/hooks. */
export const hookFixture = (f: string): string =>
  fileURLToPath(new URL(`../fixtures/hooks/${f}`, import.meta.url));

/** Publishes each topic at QoS 1 (MQTT 5) in order and returns the PUBACK reason codes as sent. */
export async function pubackCodes(c: MqttClient, topics: string[]): Promise<number[]> {
  const acks: number[] = [];
  const onPacket = (p: Packet): void => {
    if (p.cmd === 'puback') acks.push(p.reasonCode ?? 0);
  };
  c.on('packetreceive', onPacket);
  // mqtt.js turns a failure reason code into an error: the code is read from the packet.
  for (const topic of topics) await publish5(c, topic, 'x', { qos: 1 }).catch(() => {});
  await waitFor(() => acks.length === topics.length, `${topics.length} PUBACKs`);
  c.removeListener('packetreceive', onPacket);
  return acks;
}

/** Retries an async check until it holds (a change posted to the shards takes effect soon after the REST call). */
export async function eventually(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Connects and returns the CONNACK code (0 = accepted): 3.x return code or MQTT 5 reason code. */
export function connectCode(broker: Broker, opts: IClientOptions): Promise<number> {
  const c = openClient(broker, opts);
  return new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no CONNACK')), HANG_GUARD_MS);
    c.once('connect', () => {
      clearTimeout(timer);
      c.end(true);
      resolve(0);
    });
    c.once('error', (err: Error & { code?: number }) => {
      clearTimeout(timer);
      c.end(true);
      if (typeof err.code === 'number') resolve(err.code);
      else reject(err);
    });
  });
}

/**
 * Writes a users file (JSON, or CSV for a .csv name) in `dir`: [username, password, hash
 * algorithm (pbkdf2), superuser]. Low hash costs keep tests fast.
 */
export function usersFile(dir: string, name: string, users: [string, string, string?, boolean?][]): string {
  const path = join(dir, name);
  if (name.endsWith('.csv')) {
    writeFileSync(
      path,
      `username,password_hash,is_superuser\n${users.map(([u, p, a, s]) => `${u},${hashPassword(p, (a ?? 'pbkdf2') as 'pbkdf2', a === 'bcrypt' ? 4 : 1000)},${s ?? false}`).join('\n')}\n`,
    );
  } else {
    writeFileSync(
      path,
      JSON.stringify(
        users.map(([u, p, a, s]) => ({
          username: u,
          password_hash: hashPassword(p, (a ?? 'pbkdf2') as 'pbkdf2', a === 'bcrypt' ? 4 : 1000),
          is_superuser: s ?? false,
        })),
      ),
    );
  }
  return path;
}

/** Shared bits of test/auth.test.ts and test/authz.test.ts. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MqttClient } from 'mqtt';
import type { Packet } from 'mqtt-packet';
import { publish5, waitFor } from './broker.js';

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

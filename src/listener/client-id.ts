import { randomBytes } from 'node:crypto';

/** Stable FNV-1a hash of a client id: the same id always lands on the same shard. */
export function shardOf(clientId: string, shards: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < clientId.length; i++) {
    h ^= clientId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % shards;
}

/** A server-assigned client id for a client that sent an empty one [MQTT-3.1.3-6]. */
export function generateClientId(): string {
  return `emqx-ts-${randomBytes(9).toString('base64url')}`;
}

/**
 * A queued QoS 1 message that is too large for the client's Maximum Packet Size when it is sent
 * is discarded as if its delivery were complete [MQTT-3.1.2-25]; a persistent session's stored
 * record of it goes too, so that a restart after `kill -9` does not bring it back. (Before, the
 * record stayed and the restarted broker delivered the discarded message to a client that then
 * allowed larger packets.) Real broker processes, sync mode (the default).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import mqtt, { type IClientOptions } from 'mqtt';
import { shardOf } from '../src/listener/client-id.js';
import {
  type Ctx,
  clientAt,
  endClient,
  HANG_GUARD_MS,
  Inbox,
  publish,
  subscribe,
  within,
} from './helpers/broker.js';
import { startProcess } from './helpers/durable-process.js';

function tempDir(t: Ctx): string {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-dropped-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function onShard(shard: number, prefix: string): string {
  for (let n = 0; ; n++) if (shardOf(`${prefix}-${n}`, 2) === shard) return `${prefix}-${n}`;
}

test('kill -9 after a queued message was discarded as too large: it is not delivered after the restart [MQTT-3.1.2-25]', {
  timeout: 120_000,
}, async (t) => {
  const dir = tempDir(t);
  const first = await startProcess(t, dir);
  const url = `mqtt://127.0.0.1:${first.port}`;
  const sub = onShard(1, 'drop-sub');
  const witness = onShard(1, 'drop-wit');
  const v5 = (clientId: string, props: IClientOptions['properties'] = {}): IClientOptions => ({
    clientId,
    clean: false,
    protocolVersion: 5,
    properties: { sessionExpiryInterval: 300, ...props },
  });
  for (const id of [sub, witness]) {
    const c = await clientAt(t, url, v5(id));
    await subscribe(c, id === sub ? 'drop/#' : 'wit/#', 1);
    await endClient(c);
  }
  const pub = await clientAt(t, url, { clientId: onShard(0, 'drop-pub'), protocolVersion: 5 });
  // Both acked, so both are stored for the offline session (sync: after the commit).
  await publish(pub, 'drop/big', Buffer.alloc(2000, 0x61), { qos: 1 });
  await publish(pub, 'drop/small', 'small', { qos: 1 });
  {
    const { c, inbox } = await withInbox(t, url, v5(sub, { maximumPacketSize: 500 }));
    const got = await inbox.wait(1);
    assert.deepEqual(
      got.map((m) => m.topic),
      ['drop/small'],
      'the large one is discarded, not sent',
    );
    // A record the next flush writes, acked after its commit: every earlier write (the removal
    // of the discarded message's record) is committed by then (flushes commit in order).
    await publish(pub, 'wit/x', 'w', { qos: 1 });
    await endClient(c);
  }
  first.p.child.kill('SIGKILL');
  await within(first.p.done, 'broker killed');
  const second = await startProcess(t, dir);
  const url2 = `mqtt://127.0.0.1:${second.port}`;
  const { inbox } = await withInbox(t, url2, v5(sub));
  // A marker after the restart: anything restored for the session comes before it.
  const pub2 = await clientAt(t, url2, { clientId: onShard(0, 'drop-pub2'), protocolVersion: 5 });
  await publish(pub2, 'drop/marker', 'm', { qos: 1 });
  await waitForTopic(inbox, 'drop/marker');
  assert.deepEqual(
    inbox.messages.map((m) => m.topic).filter((x) => x !== 'drop/small'),
    ['drop/marker'],
    'the discarded message is not back',
  );
  // The witness session has its message (the commit it waited for did happen).
  const { inbox: wi } = await withInbox(t, url2, v5(witness));
  assert.equal((await wi.wait(1))[0].topic, 'wit/x');
});

/** Connects with an Inbox that listens before CONNACK (a resumed session's queue comes with it). */
async function withInbox(
  t: Ctx,
  url: string,
  opts: IClientOptions,
): Promise<{ c: mqtt.MqttClient; inbox: Inbox }> {
  const c = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: HANG_GUARD_MS, ...opts });
  t.after(() => {
    c.end(true);
  });
  const inbox = new Inbox(c);
  await within(
    new Promise<void>((resolve, reject) => {
      c.once('connect', () => resolve());
      c.once('error', reject);
    }),
    'CONNACK',
  );
  return { c, inbox };
}

async function waitForTopic(inbox: Inbox, topic: string): Promise<void> {
  for (let n = 1; ; n++) {
    const got = await inbox.wait(n);
    if (got.some((m) => m.topic === topic)) return;
  }
}

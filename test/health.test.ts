/**
 * Kubernetes probes on the metrics port and the graceful shutdown they report: /healthz (live)
 * and /readyz (ready: listener up, every shard running, not shutting down), over real HTTP.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { client, closed, idOnShard, startBroker, waitFor } from './helpers/broker.js';
import { httpGet } from './helpers/ops.js';

/** Polls an endpoint until it answers `status` (a hang guard, not a timing assertion). */
async function waitForStatus(port: number, path: string, status: number, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await httpGet(port, path);
    if (r.status === status) return r;
    if (Date.now() > deadline) throw new Error(`${path} still ${r.status} (${r.text}), wanted ${status}`);
    await new Promise((res) => setTimeout(res, 5));
  }
}

test('/healthz and /readyz; not ready while a shard restarts, ready again after', async (t) => {
  const broker = await startBroker(t);
  const live = await httpGet(broker.metricsPort, '/healthz');
  assert.equal(live.status, 200);
  assert.deepEqual(JSON.parse(live.text), { status: 'ok' });
  const ready = await httpGet(broker.metricsPort, '/readyz');
  assert.equal(ready.status, 200);
  const body = JSON.parse(ready.text);
  assert.equal(body.status, 'ready');
  assert.equal(body.listener, true);
  assert.deepEqual(body.shards, [
    { shard: 0, running: true },
    { shard: 1, running: true },
  ]);

  broker.supervisor.post(0, { t: 'crash' });
  const down = await waitForStatus(broker.metricsPort, '/readyz', 503);
  const downBody = JSON.parse(down.text);
  assert.equal(downBody.status, 'not ready');
  assert.deepEqual(downBody.shards[0], { shard: 0, running: false });
  assert.equal((await httpGet(broker.metricsPort, '/healthz')).status, 200, 'still live');

  await waitForStatus(broker.metricsPort, '/readyz', 200);
  // And it serves again, on the restarted shard too.
  const c = await client(t, broker, { clientId: idOnShard(broker, 0, 'after-restart') });
  assert.ok(c.connected);
});

test('graceful shutdown: not ready at once, clients closed spread over the drain period', async (t) => {
  const broker = await startBroker(t, { 'node.shutdown_drain_period': 1 });
  const clients = await Promise.all(
    Array.from({ length: 10 }, (_, i) => client(t, broker, { clientId: idOnShard(broker, 0, `drain-${i}`) })),
  );
  const closedAt: number[] = [];
  for (const c of clients) c.once('close', () => closedAt.push(Date.now()));
  const port = broker.metricsPort;

  const stopping = broker.stop();
  const during = await waitForStatus(port, '/readyz', 503);
  assert.equal(JSON.parse(during.text).stopping, true);
  assert.equal((await httpGet(port, '/healthz')).status, 200, 'live while draining');
  await Promise.all(clients.map((c) => closed(c)));
  await stopping;

  // Ten clients on one shard over 1 s: one per 100 ms step, so the shard closes the last one at
  // least nine steps (900 ms) after the first. The times are taken here, when this process sees
  // each close, and this process is also the broker's main thread polling /readyz: on a loaded
  // machine one close can be seen tens of ms late (a run saw 0,41,142,248 ms for steps 100 ms
  // apart). So the bound leaves a 300 ms margin below the nominal 900 ms; closing all at once
  // (drain period 0) would be a few ms.
  closedAt.sort((a, b) => a - b);
  assert.equal(closedAt.length, 10);
  assert.ok(closedAt[9] - closedAt[0] >= 600, `closes spread: ${closedAt.map((x) => x - closedAt[0])}`);
  await assert.rejects(httpGet(port, '/healthz'), 'the metrics server is closed after the drain');
});

test('a drain period of 0 closes everything at once and returns promptly', async (t) => {
  const broker = await startBroker(t, { 'node.shutdown_drain_period': 0 });
  const c = await client(t, broker, { clientId: 'no-drain' });
  await broker.stop();
  await closed(c);
  await waitFor(() => !c.connected, 'client closed');
});

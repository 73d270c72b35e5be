/**
 * SIGHUP reaches the cluster thread: reloadable cluster options (static seeds, the forward ack
 * timeout, …) apply there at once; restart-only ones (cluster.port, cluster.k8s.*, …) are
 * reported and kept. A real node process, its config file rewritten, then SIGHUP.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { startNode } from './helpers/cluster.js';
import { connectTo as connect, Inbox as Sub, subscribeTo as sub } from './helpers/cluster-clients.js';

test('SIGHUP: new static seeds and forward_ack_timeout apply in the cluster thread; restart-only cluster options are reported', {
  timeout: 120_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-creload-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'emqx.json');
  const write = (c: unknown) => writeFileSync(file, JSON.stringify(c));
  write({ cluster: { forward_ack_timeout: 60 } });
  // No seeds on either side: n1 learns n2 only from the reloaded file.
  const n1 = await startNode(t, { name: 'rl1@127.0.0.1', downAfter: 60, config: file });
  const n2 = await startNode(t, { name: 'rl2@127.0.0.1', downAfter: 60 });
  assert.equal((await n1.nodes()).length, 1);

  write({
    cluster: {
      forward_ack_timeout: 1,
      static: { seeds: `127.0.0.1:${n2.clusterPort}` },
      k8s: { service: 'not-now' },
    },
  });
  n1.child.kill('SIGHUP');
  const json = (l: string) => JSON.parse(l) as { msg?: string; changed?: string[]; options?: string[] };
  const applied = json(
    await n1.out.waitFor(
      (l) => l.includes('"msg":"cluster configuration reloaded"'),
      'cluster thread reload',
    ),
  );
  assert.deepEqual(applied.changed?.sort(), ['cluster.forward_ack_timeout', 'cluster.static.seeds']);
  const restart = json(
    await n1.out.waitFor((l) => l.includes('change only with a restart'), 'restart-only report'),
  );
  assert.deepEqual(restart.options, ['cluster.k8s.service']);
  // The seeds reached the join round.
  await n1.waitPeer(n2.name, 'running');
  assert.equal((await n1.scrape()).get('emqx_ts_cluster_reloads_total'), 1);

  // The ack timeout reached the data plane: a frozen n2 (down_after 60 s) fails a held PUBACK after ~1 s.
  const s2 = new Sub(await connect(t, n2, 'rl-sub'));
  await sub(s2.c, 'rl/#', 1);
  await n1.waitPeer(n2.name, 'running', (r) => r === 1);
  const pub = await connect(t, n1, 'rl-pub', { protocolVersion: 5 });
  await pub.publishAsync('rl/1', 'ok', { qos: 1 });
  await s2.wait(1, 'forward before the freeze');
  n2.child.kill('SIGSTOP');
  t.after(() => void n2.child.kill('SIGCONT'));
  const t0 = Date.now();
  const code = await pub.publishAsync('rl/2', 'frozen', { qos: 1 }).then(
    () => 0,
    (e: { code?: number }) => e.code ?? -1,
  );
  const took = Date.now() - t0;
  assert.equal(code, 0x80);
  assert.ok(took < 20_000, `the held PUBACK took ${took} ms (the old timeout was 60 s)`);
});

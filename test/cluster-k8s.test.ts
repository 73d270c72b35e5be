/**
 * cluster.discovery = k8s: node processes find each other through the EndpointSlices of a
 * headless service, read by the real @kubernetes/client-node (list + watch) from a stand-in API
 * server over loopback HTTP (test/helpers/k8s-api.ts). No static seeds.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createH2Server, type ServerHttp2Session } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import { waitFor } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';
import { connectTo as connect, Inbox as Sub, subscribeTo as sub } from './helpers/cluster-clients.js';
import { FakeKubeApi } from './helpers/k8s-api.js';

test('k8s discovery: nodes find each other through watched EndpointSlices (and a listed one on start), with the RBAC verbs of k8s/', {
  timeout: 120_000,
}, async (t) => {
  const api = new FakeKubeApi('emqx-test', 'emqx-ts-headless', 'sa-token-123');
  await api.start();
  t.after(() => api.stop());
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-k8s-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const kubeconfig = api.writeKubeconfig(dir);
  const k8sNode = (name: string) =>
    startNode(t, {
      name,
      // No seeds: only the API tells where the others are. The namespace is the context's.
      args: ['--cluster.discovery=k8s', '--cluster.k8s.service=emqx-ts-headless'],
      env: { KUBECONFIG: kubeconfig },
    });

  // The first list fails: the client retries (backoff) instead of giving up.
  api.failLists = 1;
  const [n1, n2] = await Promise.all([k8sNode('k8s1@127.0.0.1'), k8sNode('k8s2@127.0.0.1')]);
  // Both have listed (empty) and watch; the slices arrive as watch events only.
  await waitFor(() => api.watches >= 2, 'both nodes to watch the endpointslices');
  const listsBefore = api.requests.filter((r) => r.query.watch !== 'true').length;
  api.putSlice('emqx-ts-headless-a', ['127.0.0.1'], n1.clusterPort);
  api.putSlice('emqx-ts-headless-b', ['127.0.0.1'], n2.clusterPort);
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  assert.equal(
    api.requests.filter((r) => r.query.watch !== 'true').length,
    listsBefore,
    'found through the watch, without another list',
  );

  // A third node starts after the slices exist: its first list has them.
  const n3 = await k8sNode('k8s3@127.0.0.1');
  await Promise.all([n3.waitPeer(n1.name, 'running'), n3.waitPeer(n2.name, 'running')]);
  api.putSlice('emqx-ts-headless-c', ['127.0.0.1'], n3.clusterPort);
  await n1.waitPeer(n3.name, 'running');

  // Clustered for real: a publish on n1 reaches subscribers on n2 and n3.
  const s2 = new Sub(await connect(t, n2, 'k8s-s2'));
  const s3 = new Sub(await connect(t, n3, 'k8s-s3'));
  await sub(s2.c, 'k8s/#', 1);
  await sub(s3.c, 'k8s/+', 1);
  await Promise.all([
    n1.waitPeer(n2.name, 'running', (r) => r === 1),
    n1.waitPeer(n3.name, 'running', (r) => r === 1),
  ]);
  const pub = await connect(t, n1, 'k8s-pub');
  await pub.publishAsync('k8s/x', 'via endpointslices', { qos: 1 });
  assert.equal((await s2.wait(1, 'n2'))[0].payload, 'via endpointslices');
  assert.equal((await s3.wait(1, 'n3'))[0].payload, 'via endpointslices');

  // What the broker asked of the API: only GET list/watch of endpointslices in the context's
  // namespace, by the service's label, with the service account's token (k8s/ grants just that).
  assert.ok(api.requests.length >= 6);
  for (const r of api.requests) {
    assert.equal(r.method, 'GET');
    assert.equal(r.path, '/apis/discovery.k8s.io/v1/namespaces/emqx-test/endpointslices');
    assert.equal(r.query.labelSelector, 'kubernetes.io/service-name=emqx-ts-headless');
    assert.equal(r.auth, 'Bearer sa-token-123');
  }
  assert.equal(api.failLists, 0, 'the failed list was made');
  const manifest = readFileSync(new URL('../k8s/emqx-ts.yaml', import.meta.url), 'utf8');
  assert.match(manifest, /resources: \["endpointslices"\]\s+verbs: \["get", "list", "watch"\]/);
  assert.match(manifest, /name: EMQX_CLUSTER__K8S__SERVICE\s+value: emqx-ts-headless/);
});

/** A stand-in API server for namespace `ns` (service `svc`), its kubeconfig, the nodes' options. */
async function standIn(t: TestContext, ns: string) {
  const api = new FakeKubeApi(ns, 'svc', 'tok');
  await api.start();
  t.after(() => api.stop());
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-k8s-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const env = { KUBECONFIG: api.writeKubeconfig(dir) };
  return { api, env, args: ['--cluster.discovery=k8s', '--cluster.k8s.service=svc'] };
}

test('k8s discovery: a terminating endpoint is not joined', { timeout: 60_000 }, async (t) => {
  const { api, env, args } = await standIn(t, 'emqx-test2');
  const n1 = await startNode(t, { name: 'kt1@127.0.0.1', args, env });
  const n2 = await startNode(t, { name: 'kt2@127.0.0.1', args, env });
  await waitFor(() => api.watches >= 2, 'both nodes to watch');
  // n2 is listed as terminating: n1 must not join it; once it is serving again, they cluster.
  api.putSlice('svc-b', ['127.0.0.1'], n2.clusterPort, { terminating: true, ready: false });
  api.putSlice('svc-a', ['127.0.0.1'], n1.clusterPort, { terminating: true, ready: false });
  // Three join rounds (1 s each) with nothing joined.
  const until = Date.now() + 3000;
  while (Date.now() < until) {
    assert.equal((await n1.nodes()).length, 1, 'n1 joined a terminating endpoint');
    await new Promise((r) => setTimeout(r, 200));
  }
  api.putSlice('svc-b', ['127.0.0.1'], n2.clusterPort);
  await n1.waitPeer(n2.name, 'running');
});

test('k8s discovery: a deleted EndpointSlice (watch DELETED) takes its address out of the seed set: it is not joined again', {
  timeout: 60_000,
}, async (t) => {
  const { api, env, args } = await standIn(t, 'emqx-test3');
  // A listed endpoint that is not a node: an HTTP/2 server answering every call with gRPC
  // status 14 (unavailable), counting the Join calls it gets.
  let joins = 0;
  const gone = createH2Server((req, res) => {
    if (req.url.endsWith('/Join')) joins++;
    res.writeHead(200, { 'content-type': 'application/grpc', 'grpc-status': '14' });
    res.end();
  });
  const sessions = new Set<ServerHttp2Session>();
  gone.on('session', (s) => sessions.add(s));
  await new Promise<void>((r) => gone.listen(0, '127.0.0.1', r));
  t.after(
    () =>
      new Promise<void>((r) => {
        for (const s of sessions) s.destroy();
        gone.close(() => r());
      }),
  );
  const gonePort = (gone.address() as AddressInfo).port;

  const n1 = await startNode(t, { name: 'kd1@127.0.0.1', args, env });
  const n2 = await startNode(t, { name: 'kd2@127.0.0.1', args, env });
  await waitFor(() => api.watches >= 2, 'both nodes to watch');
  api.putSlice('svc-a', ['127.0.0.1'], n1.clusterPort);
  api.putSlice('svc-b', ['127.0.0.1'], n2.clusterPort);
  api.putSlice('svc-gone', ['127.0.0.1'], gonePort);
  await Promise.all([n1.waitPeer(n2.name, 'running'), n2.waitPeer(n1.name, 'running')]);
  // Both nodes try the listed endpoint every join round (1 s) while it is listed.
  await waitFor(() => joins >= 4, 'joins of the listed endpoint');

  api.deleteSlice('svc-gone');
  // The DELETED event reaches both watches; a join already on its way may still arrive: wait
  // for a quiet 1.5 s (a join round is 1 s; while listed, each node joins it every round).
  let seen = joins;
  let quietSince = Date.now();
  await waitFor(
    () => {
      if (joins !== seen) {
        seen = joins;
        quietSince = Date.now();
      }
      return Date.now() - quietSince >= 1500;
    },
    'the deleted endpoint to be joined no more',
    15_000,
  );
  const after = joins;
  // Three more join rounds: nothing more for the deleted endpoint; the nodes stay clustered.
  const until = Date.now() + 3000;
  while (Date.now() < until) {
    assert.equal(joins, after, 'the deleted endpoint was joined again');
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.equal((await n1.nodes()).find((n) => n.node === n2.name)?.node_status, 'running');
});

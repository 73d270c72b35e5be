/**
 * The Kubernetes manifests in k8s/ (issue #11): every YAML file is parsed with a real YAML
 * library, and the fields k8s discovery and the probes depend on are checked against the code —
 * the configuration the StatefulSet gives the broker is resolved by the broker's own loader
 * (src/config/load.ts), so a renamed option, port or default shows up here, not in a cluster.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../src/config/load.js';

// biome-ignore lint/suspicious/noExplicitAny: manifests are untyped JSON-like documents
type Doc = Record<string, any>;

const dir = new URL('../k8s/', import.meta.url);

function manifests(): Doc[] {
  const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
  assert.ok(files.length > 0, 'k8s/ has YAML files');
  const docs: Doc[] = [];
  for (const f of files) {
    for (const d of parseAllDocuments(readFileSync(new URL(f, dir), 'utf8'))) {
      assert.deepEqual(d.errors, [], `${f} parses`);
      const js = d.toJS() as Doc | null;
      if (js) docs.push(js);
    }
  }
  return docs;
}

const docs = manifests();
const all = (kind: string) => docs.filter((d) => d.kind === kind);
function one(kind: string, pred: (d: Doc) => boolean = () => true): Doc {
  const found = all(kind).filter(pred);
  assert.equal(found.length, 1, `one ${kind}`);
  return found[0];
}
const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);

const sts = one('StatefulSet');
const pod = sts.spec.template;
const podLabels: Record<string, string> = pod.metadata.labels;
const container: Doc = pod.spec.containers[0];
// The broker's configuration as the pod starts it: literal env values (valueFrom ones resolve
// at run time: placeholders, as long as they name no discovery option).
const env: Record<string, string> = { POD_IP: '10.0.0.7', POD_NAME: 'emqx-ts-0' };
for (const e of container.env as Doc[]) {
  if (typeof e.value === 'string') env[e.name] = e.value.replace(/\$\((\w+)\)/g, (_, v) => env[v] ?? '');
  else env[e.name] ??= 'from-a-secret';
}
const config = loadConfig({ env });
const portOf = (ref: string | number): number =>
  typeof ref === 'number' ? ref : (container.ports as Doc[]).find((p) => p.name === ref)?.containerPort;

test('k8s/: every manifest parses; the StatefulSet runs k8s discovery of its own headless service', () => {
  assert.equal(config['cluster.discovery'], 'k8s');
  const headless = one('Service', (s) => s.spec.clusterIP === 'None');
  assert.equal(
    config['cluster.k8s.service'],
    headless.metadata.name,
    'cluster.k8s.service is the headless service',
  );
  assert.equal(sts.spec.serviceName, headless.metadata.name, 'the StatefulSet is governed by it');
  // Same namespace: the broker's (empty = the service account's) and the service's.
  assert.equal(config['cluster.k8s.namespace'] || undefined, headless.metadata.namespace);
  assert.equal(headless.spec.publishNotReadyAddresses, true, 'pods cluster before they are ready');
  assert.ok(matches(headless.spec.selector, podLabels), 'it selects the pods');
  // Its EndpointSlices carry the port named cluster.k8s.port_name: the cluster service's port.
  const cp = (headless.spec.ports as Doc[]).find((p) => p.name === config['cluster.k8s.port_name']);
  assert.ok(cp, `the headless service has a port named ${config['cluster.k8s.port_name']}`);
  assert.equal(portOf(cp.targetPort ?? cp.port), config['cluster.port'], 'that port is cluster.port');
  assert.equal(portOf('cluster'), config['cluster.port']);
  assert.equal(portOf('mqtt'), config['listener.port']);
  assert.equal(portOf('metrics'), config['metrics.port']);
  assert.equal(portOf('api'), config['api.port']);
  // Peers reach each pod at its own IP (downward API), which discovery advertises.
  const podIp = (container.env as Doc[]).find((e) => e.name === 'POD_IP');
  assert.equal(podIp?.valueFrom?.fieldRef?.fieldPath, 'status.podIP');
  assert.equal(config['cluster.advertise'], '', 'advertise left to POD_IP');
});

test('k8s/: RBAC grants only what discovery uses: get/list/watch endpointslices (discovery.k8s.io) in its namespace', () => {
  const sa = one('ServiceAccount');
  assert.equal(pod.spec.serviceAccountName, sa.metadata.name);
  assert.equal(all('ClusterRole').length + all('ClusterRoleBinding').length, 0, 'namespaced only');
  const role = one('Role');
  assert.deepEqual(role.rules, [
    { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] },
  ]);
  const binding = one('RoleBinding');
  assert.deepEqual(binding.roleRef, {
    apiGroup: 'rbac.authorization.k8s.io',
    kind: 'Role',
    name: role.metadata.name,
  });
  assert.deepEqual(
    (binding.subjects as Doc[]).map((s) => [s.kind, s.name]),
    [['ServiceAccount', sa.metadata.name]],
  );
});

test('k8s/: probes on /healthz and /readyz of the metrics port, a preStop pause before the SIGTERM drain, resource limits', () => {
  assert.equal(container.livenessProbe.httpGet.path, '/healthz');
  assert.equal(container.readinessProbe.httpGet.path, '/readyz');
  assert.equal(portOf(container.livenessProbe.httpGet.port), config['metrics.port']);
  assert.equal(portOf(container.readinessProbe.httpGet.port), config['metrics.port']);
  const preStop = container.lifecycle?.preStop;
  assert.ok(preStop, 'a preStop hook');
  const pause = preStop.sleep?.seconds ?? Number(preStop.exec?.command?.at(-1));
  assert.ok(pause > 0, 'it pauses');
  const grace = pod.spec.terminationGracePeriodSeconds ?? 30;
  assert.ok(
    grace >= pause + config['node.shutdown_drain_period'] + 5,
    'the grace period covers the pause, the drain and the stop',
  );
  // The shard pool follows the CPU limit (node.shards 0 reads the cgroup quota).
  assert.equal(config['node.shards'], 0);
  assert.ok(container.resources?.limits?.cpu && container.resources.limits.memory, 'cpu and memory limits');
  assert.ok(container.resources?.requests?.cpu && container.resources.requests.memory, 'requests');
});

test('k8s/: node.data_dir is on a PersistentVolumeClaim of the StatefulSet (issue #14), not an emptyDir', () => {
  const mount = (container.volumeMounts as Doc[]).find((m) => m.mountPath === config['node.data_dir']);
  assert.ok(mount, `a volume mounted at node.data_dir (${config['node.data_dir']})`);
  const claim = ((sts.spec.volumeClaimTemplates ?? []) as Doc[]).find((c) => c.metadata.name === mount.name);
  assert.ok(claim, 'the volume is a claim template of the StatefulSet: one PersistentVolumeClaim per pod');
  assert.ok(claim.spec.accessModes.includes('ReadWriteOnce'));
  assert.ok(claim.spec.resources.requests.storage, 'a size is requested');
  const podVolumes = (pod.spec.volumes ?? []) as Doc[];
  assert.ok(!podVolumes.some((v) => v.name === mount.name), 'no pod volume of that name shadows the claim');
});

test('k8s/: a PodDisruptionBudget and an MQTT Service select the pods', () => {
  const pdb = one('PodDisruptionBudget');
  assert.ok(matches(pdb.spec.selector.matchLabels, podLabels), 'the budget selects the pods');
  assert.ok(matches(sts.spec.selector.matchLabels, podLabels));
  assert.ok(pdb.spec.maxUnavailable !== undefined || pdb.spec.minAvailable !== undefined);
  const mqtt = one('Service', (s) => s.spec.clusterIP !== 'None');
  assert.ok(matches(mqtt.spec.selector, podLabels));
  const p = (mqtt.spec.ports as Doc[]).find((x) => x.name === 'mqtt');
  assert.equal(portOf(p?.targetPort ?? p?.port), config['listener.port']);
});

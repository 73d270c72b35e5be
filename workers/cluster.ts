/** Cluster worker thread entry: the Connect/gRPC service and the clients to every peer (src/cluster/). */
import { parentPort, workerData } from 'node:worker_threads';
import { ClusterNode } from '../src/cluster/node.js';
import { createLogger } from '../src/log.js';
import { Counters } from '../src/metrics/counters.js';
import { TopicIndex } from '../src/routing/topic-index.js';
import type { ClusterInit, ClusterToMain, MainToCluster } from '../src/threads/messages.js';

if (!parentPort) throw new Error('workers/cluster must run in a worker thread');
const port = parentPort;
const init = workerData as ClusterInit;
const post = (m: ClusterToMain) => port.postMessage(m);
const log = createLogger(init.config['log.level'], { thread: 'cluster', gen: init.generation });
const node = new ClusterNode(
  init.config,
  TopicIndex.attach(init.index),
  TopicIndex.attach(init.remoteIndex),
  Counters.attach(init.counters, init.counterRow),
  init.shards,
  log,
  (members) => post({ t: 'members', members }),
  post,
);
node.boot = init.boot;
node.onSynced = (peers) => post({ t: 'synced', peers });
for (const p of init.shards) if (p) node.listenShard(p);
// A durable first start: the shards hold the wills they restored until the first join round
// has asked the peers which of them the cluster published (a restarted thread's shards do not).
node.askFiredWills = init.generation === 1 && init.config['durability.mode'] !== 'none';
port.on('message', (m: MainToCluster) => {
  if (m.t === 'shard') node.addShard(m.shard, m.port);
  else if (m.t === 'shutdown') void node.stop().then(() => post({ t: 'shutdownDone' }));
  else if (m.t === 'reconfigure') {
    log.level = m.config['log.level'];
    const changed = node.reconfigure(m.config);
    log.info({ changed }, 'cluster configuration reloaded');
    post({ t: 'reconfigured' });
  } else node.state.onMain(m);
});
node.listen().then(
  (p) => post({ t: 'ready', generation: init.generation, port: p }),
  (err: Error) => post({ t: 'listenFailed', error: err.message }),
);

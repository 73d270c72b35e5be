import { randomInt } from 'node:crypto';
import { createServer, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import { Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Counter, type Counters } from '../metrics/counters.js';
import { topicFilterError } from '../protocol/topic.js';
import type { TopicIndex } from '../routing/topic-index.js';
import type { ClusterMember, ClusterToShard, ShardForward, ShardToCluster } from '../threads/messages.js';
import { VERSION } from '../version.js';
import { entryEnd } from './codec.js';
import { advertiseHost, discover, hostPort } from './discovery.js';
import { ForwardStream } from './forward.js';
import type { ForwardBatch, NodeInfo } from './gen/emqx_ts/cluster/v1/cluster_pb.js';
import { ClusterService } from './gen/emqx_ts/cluster/v1/cluster_pb.js';
import { ClusterStateService } from './gen/emqx_ts/cluster/v1/state_pb.js';
import { LocalRoutes } from './local-routes.js';
import { clientTo, type Peer, PeerTable } from './peers.js';
import { ClusterState } from './state.js';
import type { ClusterStateToMain } from './state-messages.js';

/** A NodeInfo as we send it */
type NodeInit = { name: string; address: string; incarnation: bigint; version?: string };

/** Most route changes per PushRoutes call (EMQX batches at most 1000 route ops). */
const MAX_DELTA = 1000;
const ROUTE_SCAN_MS = 20;
export const H2_WINDOW = 8 << 20;
const JOIN_EVERY_MS = 1000;

/**
 * The cluster thread's state: this node's identity, its peers (membership by join and
 * heartbeats), the route slices (ours read from the local index, theirs written to the remote
 * index) and the forward streams. Control plane: unary Connect/gRPC calls; data plane: one
 * bidi stream per peer (forward.ts).
 */
export class ClusterNode {
  readonly name: string;
  readonly incarnation = BigInt(Date.now()) * 1000n + BigInt(randomInt(1000));
  address = '';
  private server: Http2Server | null = null;
  private readonly peers: PeerTable;
  private readonly local: LocalRoutes;
  /** Addresses to join: discovered, or learnt from peers; self once recognised */
  private readonly contacts = new Set<string>();
  private readonly selfAddresses = new Set<string>();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly downAfterMs: number;
  private stopping = false;
  private lastMembers = '';
  /** Cluster II: retained store, wills, shared groups, sessions across nodes (state.ts) */
  readonly state: ClusterState;

  constructor(
    private readonly config: Config,
    localIndex: TopicIndex,
    remoteIndex: TopicIndex,
    private readonly counters: Counters,
    private readonly shards: (MessagePort | null)[],
    private readonly log: Logger,
    private readonly onMembers: (members: ClusterMember[]) => void,
    onMain: (m: ClusterStateToMain) => void,
  ) {
    this.name = config['node.name'];
    this.peers = new PeerTable(remoteIndex);
    this.local = new LocalRoutes(localIndex);
    this.downAfterMs = config['cluster.down_after'] * 1000;
    this.state = new ClusterState({
      name: this.name,
      incarnation: this.incarnation,
      config,
      log,
      counters,
      peers: this.peers,
      shards,
      postMain: (m) => onMain(m),
    });
  }

  /** Listens; resolves with the bound port. */
  async listen(): Promise<number> {
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(ClusterService, this.service());
        router.service(ClusterStateService, this.state.service());
      },
    });
    // HTTP/2's default 64 KiB flow-control windows stall a stream of ~100 KB batches on every
    // window update: open them wide (the forward window bounds memory instead).
    const server = createServer({ settings: { initialWindowSize: H2_WINDOW } }, handler);
    server.on('session', (session) => session.setLocalWindowSize(4 * H2_WINDOW));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.config['cluster.port'], this.config['cluster.listen_host'], () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as AddressInfo).port;
    this.address = hostPort(advertiseHost(this.config), port);
    this.selfAddresses.add(this.address);
    this.local.scan();
    const every = (ms: number, fn: () => void) => this.timers.push(setInterval(fn, ms));
    this.scheduleScan(ROUTE_SCAN_MS);
    every(JOIN_EVERY_MS, () => void this.joinRound());
    every(Math.max(50, Math.min(1000, this.downAfterMs / 5)), () => this.heartbeatRound());
    every(1000, () => this.reportMembers(true));
    void this.joinRound();
    this.log.info({ node: this.name, address: this.address }, 'cluster service listening');
    return port;
  }

  addShard(shard: number, port: MessagePort): void {
    this.shards[shard]?.close();
    this.shards[shard] = port;
    this.listenShard(port);
  }

  listenShard(port: MessagePort): void {
    port.on('message', (m: ShardToCluster) => {
      try {
        if (m.t === 'forward') this.onShardForward(m, port);
        else this.state.onShard(m, this.shards.indexOf(port), port);
      } catch (err) {
        this.counters.row[Counter.clusterErrors]++;
        this.log.error({ err }, 'shard forward batch dropped');
      }
    });
  }

  private info(): NodeInit {
    return { name: this.name, address: this.address, incarnation: this.incarnation, version: VERSION };
  }

  private membersInfo(): NodeInit[] {
    const out: NodeInit[] = [this.info()];
    for (const p of this.peers.byName.values()) {
      if (p.status === 'running') out.push({ name: p.name, address: p.address, incarnation: p.incarnation });
    }
    return out;
  }

  private learn(members: readonly NodeInfo[]): void {
    for (const m of members) {
      if (m.name !== this.name && m.address && !this.selfAddresses.has(m.address))
        this.contacts.add(m.address);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Server side

  private service(): ServiceImpl<typeof ClusterService> {
    return {
      join: (req) => {
        const n = req.node;
        if (!n?.name || !n.address)
          throw new ConnectError('node name and address required', Code.InvalidArgument);
        if (n.name === this.name) {
          if (n.incarnation !== this.incarnation)
            this.log.error({ address: n.address }, 'another node uses this node name: not joined');
          this.selfAddresses.add(n.address);
          throw new ConnectError('same node name', Code.AlreadyExists);
        }
        const filters = req.routes?.filters ?? [];
        for (const f of filters) {
          if (topicFilterError(f) !== null) {
            this.counters.row[Counter.clusterErrors]++;
            throw new ConnectError(`bad route filter '${f}'`, Code.InvalidArgument);
          }
        }
        const p = this.peers.get(n.name);
        if (p.incarnation !== n.incarnation) this.restarted(p, n.incarnation);
        p.address = n.address;
        p.version = n.version;
        if (!this.peers.replaceRoutes(p, filters, req.routes?.version ?? 0n)) {
          throw new ConnectError('cluster full (32 peers)', Code.ResourceExhausted);
        }
        p.lastSeen = Date.now();
        if (p.status !== 'running') this.log.info({ peer: p.name, address: p.address }, 'cluster peer up');
        p.status = 'running';
        this.contacts.add(p.address);
        if (!p.synced) void this.join(p.address); // it knows us: make sure it has our slice too
        this.reportMembers(false);
        return { node: this.info(), members: this.membersInfo() };
      },
      heartbeat: (req) => {
        const p = this.peers.byName.get(req.name);
        const known =
          p !== undefined &&
          p.status === 'running' &&
          p.incarnation === req.incarnation &&
          (req.routeVersion === 0n || req.routeVersion === p.routeVersion);
        if (known) p.lastSeen = Date.now();
        return { node: this.info(), known, members: this.membersInfo() };
      },
      leave: (req) => {
        const p = this.peers.byName.get(req.name);
        if (p && p.incarnation === req.incarnation) this.down(p, 'left');
        return {};
      },
      pushRoutes: (req) => {
        const p = this.peers.byName.get(req.name);
        if (
          p?.status !== 'running' ||
          p.incarnation !== req.incarnation ||
          p.routeVersion !== req.fromVersion
        )
          return { applied: false };
        for (const f of [...req.add, ...req.delete]) {
          if (topicFilterError(f) !== null) {
            this.counters.row[Counter.clusterErrors]++;
            throw new ConnectError(`bad route filter '${f}'`, Code.InvalidArgument);
          }
        }
        for (const f of req.add) this.peers.addRoute(p, f);
        for (const f of req.delete) this.peers.deleteRoute(p, f);
        p.routeVersion = req.version;
        p.lastSeen = Date.now();
        return { applied: true };
      },
      forward: (reqs) => this.receive(reqs),
    };
  }

  /** Incoming forward stream: each batch goes to one shard (the same for a peer: order kept). */
  private async *receive(reqs: AsyncIterable<ForwardBatch>): AsyncGenerator<{ seq: bigint }> {
    let from: Peer | undefined;
    for await (const b of reqs) {
      if (b.from) from = this.peers.byName.get(b.from);
      if (from && from.status === 'running' && from.incarnation === b.incarnation && b.count > 0) {
        this.deliver(from, b.entries, b.count);
      } else if (b.count > 0) {
        this.counters.row[Counter.forwardDropped] += b.count;
      }
      yield { seq: b.seq };
    }
  }

  private deliver(from: Peer, entries: Uint8Array, count: number): void {
    const len = entries.length;
    const ab = new ArrayBuffer(len);
    const buf = Buffer.from(ab);
    buf.set(entries);
    try {
      let p = 0;
      let n = 0;
      while (p < len) {
        p = entryEnd(buf, p, len);
        n++;
      }
      if (n !== count) throw new RangeError(`batch count ${count}, found ${n} entries`);
    } catch (err) {
      this.counters.row[Counter.clusterErrors]++;
      this.log.warn({ peer: from.name, err: (err as Error).message }, 'malformed forward batch dropped');
      return;
    }
    const shard = this.shards[from.slot % this.shards.length];
    if (!shard) {
      this.counters.row[Counter.forwardDropped] += count;
      return;
    }
    shard.postMessage({ t: 'forwarded', buf: ab, len, count } satisfies ClusterToShard, [ab]);
  }

  // ---------------------------------------------------------------------------------------------
  // Membership, our side

  private async joinRound(): Promise<void> {
    if (this.stopping) return;
    try {
      for (const a of await discover(this.config)) if (!this.selfAddresses.has(a)) this.contacts.add(a);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cluster discovery failed');
    }
    const synced = new Set<string>();
    for (const p of this.peers.byName.values()) if (p.synced || p.joining) synced.add(p.address);
    for (const a of this.contacts) if (!synced.has(a) && !this.selfAddresses.has(a)) void this.join(a);
  }

  private readonly joiningAddresses = new Set<string>();
  /** Versions of our slice as sent to peers: every join and every delta gets the next one */
  private pushSeq = 0;

  private async join(address: string): Promise<void> {
    if (this.joiningAddresses.has(address)) return;
    this.joiningAddresses.add(address);
    const snapshot = [...this.local.filters];
    const version = ++this.pushSeq;
    try {
      const client = clientTo(address);
      const res = await client.join(
        { node: this.info(), routes: { filters: snapshot, version: BigInt(version) } },
        { timeoutMs: Math.min(2000, this.downAfterMs) },
      );
      const n = res.node;
      if (!n?.name || n.name === this.name) {
        this.selfAddresses.add(address);
        return;
      }
      const p = this.peers.get(n.name);
      if (p.incarnation !== n.incarnation) this.restarted(p, n.incarnation);
      if (!p.address) p.address = n.address || address;
      p.client = client;
      p.synced = true;
      p.ackedVersion = version;
      // Changes made while the join was in flight.
      p.pending = new Map();
      const sent = new Set(snapshot);
      for (const f of this.local.filters) if (!sent.has(f)) p.pending.set(f, true);
      for (const f of sent) if (!this.local.filters.has(f)) p.pending.set(f, false);
      this.learn(res.members);
      this.openStream(p);
      this.pushRoutes(p);
      this.state.synced(p);
      this.log.info({ peer: p.name, address }, 'joined cluster peer');
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code === Code.AlreadyExists) this.selfAddresses.add(address);
      else this.log.debug({ address, err: e.message }, 'cluster join failed');
    } finally {
      this.joiningAddresses.delete(address);
    }
  }

  /** A peer we knew came back with a new incarnation: what we held of it is stale. */
  private restarted(p: Peer, incarnation: bigint): void {
    if (p.incarnation !== 0n) {
      this.log.info({ peer: p.name }, 'cluster peer restarted');
      if (p.status === 'running') this.state.gone(p, 'restarted');
    }
    this.peers.dropRoutes(p);
    this.unsync(p);
    p.status = 'stopped';
    p.incarnation = incarnation;
  }

  private unsync(p: Peer): void {
    p.synced = false;
    p.pending.clear();
    p.stream?.close();
    p.stream = null;
  }

  private heartbeatRound(): void {
    const now = Date.now();
    for (const p of this.peers.byName.values()) {
      if (p.status === 'running' && now - p.lastSeen > this.downAfterMs) this.down(p, 'no heartbeat');
    }
    for (const p of this.peers.byName.values()) {
      if (!p.synced || !p.client) continue;
      const routeVersion = p.pushing || p.pending.size > 0 ? 0n : BigInt(p.ackedVersion);
      p.client
        .heartbeat(
          { name: this.name, incarnation: this.incarnation, routeVersion },
          { timeoutMs: Math.max(100, this.downAfterMs / 2) },
        )
        .then((res) => {
          if (!p.synced) return;
          if (res.node?.incarnation !== p.incarnation) {
            // It restarted: drop what we held; its join (and ours) resync both slices.
            this.restarted(p, res.node?.incarnation ?? 0n);
            this.reportMembers(false);
            return;
          }
          if (p.status === 'running') p.lastSeen = Date.now();
          if (!res.known) this.unsync(p); // it lost our slice: the next join round sends it again
          this.learn(res.members);
        })
        .catch(() => {
          // Missed: down detection above decides.
        });
    }
  }

  private down(p: Peer, reason: string): void {
    if (p.status !== 'running') return;
    p.status = 'stopped';
    this.state.gone(p, reason === 'left' ? 'left' : 'down');
    this.peers.dropRoutes(p);
    this.unsync(p);
    this.log.warn({ peer: p.name, reason }, 'cluster peer down');
    this.reportMembers(false);
  }

  // ---------------------------------------------------------------------------------------------
  // Routes, our side

  /**
   * The scan is O(index nodes): with a large index it waits 10× as long as it took, so that it
   * costs at most ~10 % of this thread (1 M nodes: a few ms per scan, route latency ~50 ms).
   */
  private scheduleScan(ms: number): void {
    const t = setTimeout(() => {
      const start = performance.now();
      this.scanRoutes();
      if (!this.stopping) this.scheduleScan(Math.max(ROUTE_SCAN_MS, 10 * (performance.now() - start)));
    }, ms);
    this.scanTimer = t;
  }

  private scanTimer: NodeJS.Timeout | null = null;

  private scanRoutes(): void {
    const changes = this.local.scan();
    if (!changes) return;
    for (const p of this.peers.byName.values()) {
      if (!p.synced) continue;
      for (const [f, present] of changes) p.pending.set(f, present);
      this.pushRoutes(p);
    }
  }

  private pushRoutes(p: Peer): void {
    if (p.pushing || !p.synced || p.pending.size === 0 || !p.client) return;
    const add: string[] = [];
    const del: string[] = [];
    const pending = p.pending;
    for (const [f, present] of pending) {
      (present ? add : del).push(f);
      pending.delete(f);
      if (add.length + del.length >= MAX_DELTA) break;
    }
    const to = ++this.pushSeq;
    p.pushing = true;
    const from = p.ackedVersion;
    p.client
      .pushRoutes(
        {
          name: this.name,
          incarnation: this.incarnation,
          fromVersion: BigInt(from),
          version: BigInt(to),
          add,
          delete: del,
        },
        { timeoutMs: Math.min(5000, Math.max(1000, this.downAfterMs)) },
      )
      .then((res) => {
        p.pushing = false;
        if (!p.synced) return;
        if (!res.applied) return this.unsync(p);
        p.ackedVersion = to;
        this.pushRoutes(p);
      })
      .catch((err) => {
        p.pushing = false;
        this.log.debug({ peer: p.name, err: (err as Error).message }, 'route push failed: will rejoin');
        this.unsync(p);
      });
  }

  // ---------------------------------------------------------------------------------------------
  // Forwarding, our side

  private openStream(p: Peer): void {
    if (p.stream || !p.client) return;
    const s = new ForwardStream(
      p.client,
      this.name,
      this.incarnation,
      this.config['cluster.max_inflight_bytes'],
      this.config['cluster.max_queue_bytes'],
      (lost, err) => {
        if (lost > 0) this.counters.row[Counter.forwardDropped] += lost;
        if (p.stream === s) p.stream = null;
        if (err && !this.stopping)
          this.log.warn({ peer: p.name, lost, err: String(err) }, 'forward stream ended');
        // Still synced: open a new one (order restarts with it).
        if (p.synced && !this.stopping) setTimeout(() => this.openStream(p), 100).unref();
      },
    );
    p.stream = s;
    s.start();
  }

  private readonly touched: Peer[] = [];

  /**
   * A shard's batch: each entry is copied to the writer of every peer in its mask. With a
   * `seq`, the shard holds QoS 1/2 acks until every peer it went to has accepted its part
   * (or is gone): one `forwardAcked` when the last part is done.
   */
  private onShardForward(m: ShardForward, port: MessagePort): void {
    const b = Buffer.from(m.buf, 0, m.len);
    const slots = this.peers.bySlot;
    let p = 0;
    while (p < m.len) {
      let mask = b.readUInt32LE(p);
      p += 4;
      const end = entryEnd(b, p, m.len);
      while (mask !== 0) {
        const bit = 31 - Math.clz32(mask & -mask);
        mask &= mask - 1;
        const peer = slots[bit];
        if (!peer?.stream) {
          this.counters.row[Counter.forwardDropped]++;
          continue;
        }
        if (peer.out.count === 0) this.touched.push(peer);
        peer.out.addRaw(b, p, end);
      }
      p = end;
    }
    let parts = this.touched.length + 1;
    const seq = m.seq;
    const done =
      seq > 0
        ? () => {
            if (--parts === 0) port.postMessage({ t: 'forwardAcked', seq } satisfies ClusterToShard);
          }
        : null;
    for (const peer of this.touched) {
      const { buf, count } = peer.out.take();
      if (!peer.stream?.push(buf, count, done)) {
        this.counters.row[Counter.forwardDropped] += count;
        done?.();
      }
    }
    this.touched.length = 0;
    done?.();
  }

  // ---------------------------------------------------------------------------------------------

  members(): ClusterMember[] {
    const out: ClusterMember[] = [
      {
        name: this.name,
        address: this.address,
        status: 'running',
        self: true,
        lastSeen: Date.now(),
        routes: this.local.filters.size,
        inflightBytes: 0,
        queuedBytes: 0,
      },
    ];
    for (const p of this.peers.byName.values()) {
      if (!p.address) continue;
      out.push({
        name: p.name,
        address: p.address,
        status: p.status,
        self: false,
        lastSeen: p.lastSeen,
        routes: p.routes.size,
        inflightBytes: p.stream?.inflightBytes ?? 0,
        queuedBytes: p.stream?.queuedBytes ?? 0,
      });
    }
    return out;
  }

  private reportMembers(always: boolean): void {
    const members = this.members();
    const key = members.map((m) => `${m.name}=${m.status}`).join(',');
    if (!always && key === this.lastMembers) return;
    this.lastMembers = key;
    this.onMembers(members);
  }

  /** Tells running peers we leave (best effort, bounded), then closes everything. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    if (this.scanTimer) clearTimeout(this.scanTimer);
    const leaves: Promise<unknown>[] = [];
    for (const p of this.peers.byName.values()) {
      p.stream?.close();
      if (p.synced && p.client)
        leaves.push(
          p.client
            .leave({ name: this.name, incarnation: this.incarnation }, { timeoutMs: 1000 })
            .catch(() => {}),
        );
    }
    await Promise.all(leaves);
    await new Promise<void>((resolve) => {
      if (!this.server) return resolve();
      this.server.close(() => resolve());
      setTimeout(resolve, 1000).unref();
    });
  }
}

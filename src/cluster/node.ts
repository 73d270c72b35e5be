import { randomInt } from 'node:crypto';
import { createServer, type Http2Server } from 'node:http2';
import type { AddressInfo } from 'node:net';
import type { MessagePort } from 'node:worker_threads';
import { type Client, Code, ConnectError, type ServiceImpl } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { RESTART_ONLY } from '../config/reload.js';
import type { Config, OptionKey } from '../config/schema.js';
import type { Logger } from '../log.js';
import { Counter, type Counters, sampleMemory } from '../metrics/counters.js';
import { topicFilterError } from '../protocol/topic.js';
import type { TopicIndex } from '../routing/topic-index.js';
import type { ClusterMember, ShardToCluster } from '../threads/messages.js';
import { VERSION } from '../version.js';
import { DataPlane } from './data-plane.js';
import { advertiseHost, createDiscovery, type Discovery, hostPort } from './discovery.js';
import { ACCEPTED, H2_FRAME, H2_WINDOW, LOST } from './forward.js';
import type { NodeInfo } from './gen/emqx_ts/cluster/v1/cluster_pb.js';
import { ClusterService } from './gen/emqx_ts/cluster/v1/cluster_pb.js';
import { ClusterStateService } from './gen/emqx_ts/cluster/v1/state_pb.js';
import { LocalRoutes } from './local-routes.js';
import { watchPartition } from './partition.js';
import { clientTo, type Peer, PeerTable, touch } from './peers.js';
import { ClusterState } from './state.js';
import type { ClusterStateToMain } from './state-messages.js';
import { FORWARD_PATH, isGrpc } from './wire.js';

/**
 * Tests only (test/cluster-liveness.test.ts): this node sends no heartbeats and refuses those
 * it gets, so its peers see it alive through its other traffic alone.
 */
const MUTE_HEARTBEATS = process.env.EMQX_TS_TEST_MUTE_HEARTBEATS === '1';
/** A NodeInfo as we send it */
type NodeInit = { name: string; address: string; incarnation: bigint; version?: string; boot?: bigint };

/** Most route changes per PushRoutes call (EMQX batches at most 1000 route ops). */
const MAX_DELTA = 1000;
const ROUTE_SCAN_MS = 20;
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
  /** The process's start id (workers/cluster.ts sets it before listening): NodeInfo.boot */
  boot = 0n;
  address = '';
  private server: Http2Server | null = null;
  private readonly peers: PeerTable;
  private readonly local: LocalRoutes;
  /** Addresses to join learnt from peers (their members, and peers that joined us) */
  private readonly contacts = new Set<string>();
  /**
   * What the last discovery round gave (replaced every round): an address it stops listing
   * (a deleted EndpointSlice, a seed gone from DNS) is not joined again unless a peer names it.
   */
  private discovered = new Set<string>();
  private readonly selfAddresses = new Set<string>();
  private readonly timers: NodeJS.Timeout[] = [];
  private downAfterMs: number;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  private lastMembers = '';
  private readonly discovery: Discovery;
  private readonly data: DataPlane;
  /** Cluster II: retained store, wills, shared groups, sessions across nodes (state.ts) */
  readonly state: ClusterState;

  constructor(
    private readonly config: Config,
    private readonly localIndex: TopicIndex,
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
    this.discovery = createDiscovery(config, log);
    this.data = new DataPlane(config, this.name, this.incarnation, this.peers, shards, counters, log);
    this.state = new ClusterState({
      name: this.name,
      incarnation: this.incarnation,
      config,
      log,
      counters,
      peers: this.peers,
      shards,
      postMain: (m) => onMain(m),
      pinRoutes: (f) => this.local.pin(f),
      unpinRoutes: (f) => this.local.unpin(f),
    });
    this.local.onPinned = () => this.scanRoutes();
    this.data.admit = (buf, off, len, run) => this.state.tombstones.admit(buf, off, len, run);
    this.data.onReceived = (buf, off, len) => this.state.tombstones.scan(buf, off, len);
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
    // Large DATA frames too: a ~60 KB batch then arrives as one chunk, not four 16 KiB ones that
    // the gRPC envelope decoder concatenates one by one (and iterates asynchronously).
    // The data plane's Forward stream over gRPC is framed by hand (wire.ts); everything else,
    // and Forward in the Connect or gRPC-Web protocols, goes through connect-node.
    const server = createServer(
      { settings: { initialWindowSize: H2_WINDOW, maxFrameSize: H2_FRAME } },
      (req, res) => {
        if (req.url === FORWARD_PATH && req.method === 'POST' && isGrpc(req.headers['content-type']))
          this.data.serveForward(req, res);
        else handler(req, res);
      },
    );
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
    // Not awaited: a slow API server (k8s) must not hold up the cluster service.
    void this.discovery.start().catch((err: Error) => {
      this.log.error({ err: err.message }, 'cluster discovery failed to start');
    });
    const every = (ms: number, fn: () => void) => this.timers.push(setInterval(fn, ms));
    this.scheduleScan(ROUTE_SCAN_MS);
    every(JOIN_EVERY_MS, () => void this.joinRound());
    this.armHeartbeats();
    every(1000, () => {
      this.reportMembers(true);
      sampleMemory(this.counters.row);
    });
    this.data.start();
    watchPartition(
      (name) => {
        const p = this.peers.byName.get(name);
        return p ? [p.address, p.clientAddress] : [];
      },
      (cut) => {
        for (const n of cut) this.peers.byName.get(n)?.stream?.close(LOST);
      },
    );
    void this.firstJoinRound();
    this.log.info({ node: this.name, address: this.address }, 'cluster service listening');
    return port;
  }

  /** Heartbeats every down_after/5 (≤ 1 s), re-armed when a reload changes down_after. */
  private armHeartbeats(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    const every = Math.max(50, Math.min(1000, this.downAfterMs / 5));
    this.heartbeatEvery = every;
    this.lastRound = Date.now();
    this.heartbeatTimer = setInterval(() => this.heartbeatRound(), every);
  }

  private heartbeatEvery = 1000;
  /** When the last heartbeat round ran: a late one means this thread was stalled */
  private lastRound = 0;
  private skippedRound = false;

  /**
   * SIGHUP reached this thread: main sends its whole config with only the reloadable options
   * changed (config/reload.ts keeps cluster.discovery, port, listen_host, advertise and k8s.*
   * for a restart). What applies at once: down_after (heartbeat period and down detection),
   * forward_ack_timeout, max_inflight_bytes and max_queue_bytes (open streams too), static
   * seeds and dns name/record type (read by the next join round), log.level. Returns the
   * options that changed here.
   */
  reconfigure(next: Config): string[] {
    const changed: string[] = [];
    const cfg = this.config as Record<string, unknown>;
    for (const [k, v] of Object.entries(next)) {
      // Restart-only options stay as this thread started (a restarted thread's own port too).
      if (cfg[k] !== v && !RESTART_ONLY.has(k as OptionKey)) {
        changed.push(k);
        cfg[k] = v;
      }
    }
    this.downAfterMs = this.config['cluster.down_after'] * 1000;
    if (this.heartbeatTimer) this.armHeartbeats();
    this.data.reconfigure(this.config);
    this.counters.row[Counter.clusterReloads]++;
    return changed;
  }

  addShard(shard: number, port: MessagePort): void {
    this.shards[shard]?.close();
    this.shards[shard] = port;
    this.listenShard(port);
  }

  listenShard(port: MessagePort): void {
    port.on('message', (m: ShardToCluster) => {
      try {
        if (m.t === 'forward') this.data.onShardForward(m, port);
        else this.state.onShard(m, this.shards.indexOf(port), port);
      } catch (err) {
        this.counters.row[Counter.clusterErrors]++;
        this.log.error({ err }, 'shard forward batch dropped');
      }
    });
  }

  private info(): NodeInit {
    return {
      name: this.name,
      address: this.address,
      incarnation: this.incarnation,
      version: VERSION,
      boot: this.boot,
    };
  }

  private membersInfo(): NodeInit[] {
    const out: NodeInit[] = [this.info()];
    for (const p of this.peers.byName.values()) {
      if (p.status === 'running')
        out.push({ name: p.name, address: p.address, incarnation: p.incarnation, boot: p.boot });
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
        // Leaving: a peer's join round must not make it running again after our Leave.
        if (this.stopping) throw new ConnectError('node stopping', Code.Unavailable);
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
        // A join it sent before its Leave, arriving after: the incarnation that left stays
        // stopped (a node that comes back has a new one).
        if (p.left && p.incarnation === n.incarnation)
          throw new ConnectError('this incarnation left the cluster', Code.FailedPrecondition);
        if (p.incarnation !== n.incarnation) this.restarted(p, n.incarnation, n.boot);
        p.address = n.address;
        p.version = n.version;
        if (!this.peers.replaceRoutes(p, filters, req.routes?.version ?? 0n)) {
          throw new ConnectError('cluster full (32 peers)', Code.ResourceExhausted);
        }
        p.lastSeen = Date.now();
        if (p.status !== 'running') this.log.info({ peer: p.name, address: p.address }, 'cluster peer up');
        p.status = 'running';
        p.left = false;
        this.contacts.add(p.address);
        if (!p.synced) void this.join(p.address); // it knows us: make sure it has our slice too
        this.reportMembers(false);
        this.maybeHealed(p);
        // A restarted durable node: which of its restored wills the cluster published (after
        // `restarted` above, which publishes the wills of its previous incarnation if it was running).
        const firedWills = req.wantFiredWills ? this.state.wills.firedFor(n.name) : [];
        return { node: this.info(), members: this.membersInfo(), firedWills };
      },
      heartbeat: (req) => {
        const p = this.peers.byName.get(req.name);
        // Alive even when its view of our slice is stale (`known` false: it joins again).
        const known =
          touch(p, req.incarnation) && (req.routeVersion === 0n || req.routeVersion === p.routeVersion);
        if (MUTE_HEARTBEATS) throw new ConnectError('heartbeats muted (test)', Code.Unavailable);
        return { node: this.info(), known, members: this.membersInfo() };
      },
      leave: (req) => {
        const p = this.peers.byName.get(req.name);
        if (p && p.incarnation === req.incarnation) {
          if (p.status === 'running') this.down(p, 'left');
          else {
            // Not running here (yet): a join of that incarnation arriving after its Leave is
            // refused all the same (join above).
            p.left = true;
            p.downAt = 0;
          }
        }
        return {};
      },
      pushRoutes: (req) => {
        const p = this.peers.byName.get(req.name);
        if (!touch(p, req.incarnation) || p.routeVersion !== req.fromVersion) return { applied: false };
        for (const f of [...req.add, ...req.delete]) {
          if (topicFilterError(f) !== null) {
            this.counters.row[Counter.clusterErrors]++;
            throw new ConnectError(`bad route filter '${f}'`, Code.InvalidArgument);
          }
        }
        for (const f of req.add) this.peers.addRoute(p, f);
        for (const f of req.delete) this.peers.deleteRoute(p, f);
        p.routeVersion = req.version;
        return { applied: true };
      },
      forward: (reqs) => this.data.receive(reqs),
    };
  }

  // ---------------------------------------------------------------------------------------------
  // Membership, our side

  /**
   * Durable start (this process's first cluster thread, durability on): the shards hold the
   * wills they restored until this round is over. Every join of it asks its peer which of them
   * the cluster published for our previous incarnation; peers learnt from the answers are
   * joined too. Bounded: a peer that does not answer within the join timeout is not there (a
   * node alone, or a whole cluster restarting, publishes its restored wills itself).
   */
  private async firstJoinRound(): Promise<void> {
    const fired = this.askFiredWills ? new Set<string>() : null;
    this.fired = fired;
    const limit = 2 * this.joinTimeout() + 1000;
    const deadline = Date.now() + limit;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.joinAll(),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, limit);
      }),
    ]);
    clearTimeout(timer);
    this.fired = null;
    if (this.stopping) return;
    if (fired) this.state.wills.verdict(fired);
    // Each peer we joined joins us back with its route slice: ready (/readyz) once the slice of
    // every peer we joined or that joined us is here, within the same bound. Polled: this runs
    // once, at start.
    const missing = () =>
      [...this.peers.byName.values()].some(
        (p) => (p.synced || p.status === 'running') && p.routeVersion === 0n,
      );
    while (missing() && !this.stopping && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    if (this.stopping) return;
    const peers = [...this.peers.byName.values()].filter((p) => p.status === 'running').length;
    this.reportMembers(true); // main's view of the members (and their routes) first, in order
    this.onSynced(peers);
  }

  /** Joins every contact, then those their answers taught us, until no new one comes. */
  private async joinAll(): Promise<void> {
    const tried = new Set<string>();
    for (;;) {
      await this.discover();
      const todo = this.toJoin().filter((a) => !tried.has(a));
      if (todo.length === 0 || this.stopping) return;
      for (const a of todo) tried.add(a);
      await Promise.all(todo.map((a) => this.join(a)));
    }
  }

  /** The first join round is over and every running peer's routes are here (or its bound ran out) */
  onSynced: (peers: number) => void = () => {};
  /** Set on a durable first start (workers/cluster.ts): the first join round asks for fired wills */
  askFiredWills = false;
  /** While the first join round runs: the fired wills its answers list */
  private fired: Set<string> | null = null;

  private joinTimeout(): number {
    return Math.min(2000, this.downAfterMs);
  }

  private async discover(): Promise<void> {
    try {
      const found = new Set<string>();
      for (const a of await this.discovery.addresses()) if (!this.selfAddresses.has(a)) found.add(a);
      this.discovered = found;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cluster discovery failed'); // the last list stays
    }
  }

  /** Addresses to join: discovered now, or learnt from peers; never our own. */
  private toJoin(): string[] {
    const out = new Set(this.discovered);
    for (const a of this.contacts) out.add(a);
    for (const a of this.selfAddresses) out.delete(a);
    return [...out];
  }

  private async joinRound(): Promise<void> {
    if (this.stopping) return;
    await this.discover();
    const synced = new Set<string>();
    for (const p of this.peers.byName.values()) if (p.synced || p.joining) synced.add(p.address);
    for (const a of this.toJoin()) if (!synced.has(a)) void this.join(a);
  }

  /**
   * Joins in flight, by address (a second join of the same address waits for the first), with
   * their client (stop() sends its Leave there too)
   */
  private readonly joiningAddresses = new Map<
    string,
    { client: Client<typeof ClusterService>; done: Promise<void> }
  >();
  /** Versions of our slice as sent to peers: every join and every delta gets the next one */
  private pushSeq = 0;

  private join(address: string): Promise<void> {
    let j = this.joiningAddresses.get(address);
    if (!j) {
      const client = clientTo(address);
      j = {
        client,
        done: this.joinOnce(address, client).finally(() => this.joiningAddresses.delete(address)),
      };
      this.joiningAddresses.set(address, j);
    }
    return j.done;
  }

  private async joinOnce(address: string, client: Client<typeof ClusterService>): Promise<void> {
    const snapshot = [...this.local.filters];
    const version = ++this.pushSeq;
    try {
      const fired = this.fired;
      const res = await client.join(
        {
          node: this.info(),
          routes: { filters: snapshot, version: BigInt(version) },
          wantFiredWills: fired !== null,
        },
        { timeoutMs: this.joinTimeout() },
      );
      if (fired) for (const id of res.firedWills) fired.add(id);
      if (this.stopping) return; // stop() told that address we leave
      const n = res.node;
      if (!n?.name || n.name === this.name) {
        this.selfAddresses.add(address);
        return;
      }
      const p = this.peers.get(n.name);
      if (p.incarnation !== n.incarnation) this.restarted(p, n.incarnation, n.boot);
      if (!p.address) p.address = n.address || address;
      p.client = client;
      p.clientAddress = address;
      p.synced = true;
      p.ackedVersion = version;
      // Changes made while the join was in flight.
      p.pending = new Map();
      const sent = new Set(snapshot);
      for (const f of this.local.filters) if (!sent.has(f)) p.pending.set(f, true);
      for (const f of sent) if (!this.local.filters.has(f)) p.pending.set(f, false);
      this.learn(res.members);
      this.data.openStream(p);
      this.pushRoutes(p);
      this.state.synced(p);
      this.log.info({ peer: p.name, address }, 'joined cluster peer');
      this.maybeHealed(p);
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code === Code.AlreadyExists) this.selfAddresses.add(address);
      else this.log.debug({ address, err: e.message }, 'cluster join failed');
    }
  }

  /** A peer we knew came back with a new incarnation: what we held of it is stale. */
  private restarted(p: Peer, incarnation: bigint, boot: bigint): void {
    if (p.incarnation !== 0n) {
      // The same process (boot) with a new cluster thread: its shards and clients lived on.
      const threadOnly = boot !== 0n && boot === p.boot;
      this.log.info({ peer: p.name, threadOnly }, 'cluster peer restarted');
      if (p.status === 'running') this.state.gone(p, threadOnly ? 'threadRestarted' : 'restarted');
    }
    p.boot = boot;
    this.peers.dropRoutes(p);
    this.unsync(p, ACCEPTED); // its old incarnation is gone: known down
    p.status = 'stopped';
    p.incarnation = incarnation;
    p.downAt = 0; // what its old incarnation held is gone: nothing to heal
  }

  /**
   * A peer we had declared down (not left) is running again with the same incarnation and we
   * are synced both ways: a netsplit (or a stall) healed. The registry claims back what this
   * node claimed meanwhile, so that a client id owned on both sides ends with one owner.
   */
  private maybeHealed(p: Peer): void {
    if (p.downAt === 0 || p.status !== 'running' || !p.synced) return;
    const since = p.downAt;
    p.downAt = 0;
    this.state.healed(p, since);
  }

  /** `code`: how the batches still in its stream end (ACCEPTED when the peer is known down). */
  private unsync(p: Peer, code?: number): void {
    p.synced = false;
    p.pending.clear();
    p.stream?.close(code);
    p.stream = null;
  }

  private heartbeatRound(): void {
    const now = Date.now();
    // This thread was stalled (event loop or CPU starved): what peers sent meanwhile (acks,
    // batches, heartbeat answers) still waits in its sockets, so their silence proves nothing.
    // No peer is declared down in this round; the next one, after that I/O, decides (one round
    // skipped at most, so that a thread always late still detects a dead peer).
    const stalled = now - this.lastRound > 2 * this.heartbeatEvery && !this.skippedRound;
    this.skippedRound = stalled;
    this.lastRound = now;
    for (const p of this.peers.byName.values()) {
      if (!stalled && p.status === 'running' && now - p.lastSeen > this.downAfterMs)
        this.down(p, 'no heartbeat');
    }
    for (const p of this.peers.byName.values()) {
      if (!p.synced || !p.client || MUTE_HEARTBEATS) continue;
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
            this.restarted(p, res.node?.incarnation ?? 0n, res.node?.boot ?? 0n);
            this.reportMembers(false);
            return;
          }
          touch(p, res.node.incarnation);
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
    p.left = reason === 'left';
    if (p.left) p.downAt = 0;
    else if (p.downAt === 0) p.downAt = p.lastSeen;
    this.state.gone(p, reason === 'left' ? 'left' : 'down');
    this.peers.dropRoutes(p);
    // `Leave` is known down: held acks go as if it had no subscribers. Missed heartbeats are only
    // a suspicion: a starved but live peer may hold online subscribers that never got what its
    // stream held (chaos with down_after 2 s). Those acks fail (0x80 to MQTT 5 publishers, who
    // may publish again: a duplicate, not a loss); a dead peer's subscribers lose nothing more.
    this.unsync(p, reason === 'left' ? ACCEPTED : LOST);
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
      const seen = this.localIndex.changes();
      this.scanRoutes();
      if (this.stopping) return;
      const gap = Math.max(ROUTE_SCAN_MS, 10 * (performance.now() - start));
      // No polling while nobody subscribes or unsubscribes: the next scan waits for a write to
      // the index (any shard's), then for the gap, so that a burst of changes is one scan.
      this.localIndex.whenChanged(seen, () => {
        if (!this.stopping) this.scheduleScan(gap);
      });
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
    this.data.stop();
    for (const t of this.timers) clearInterval(t);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    void this.discovery.stop();
    if (this.scanTimer) clearTimeout(this.scanTimer);
    const leaves: Promise<unknown>[] = [];
    const told = new Set<string>();
    const leave = (address: string, client: Client<typeof ClusterService>) => {
      if (told.has(address)) return;
      told.add(address);
      leaves.push(
        client.leave({ name: this.name, incarnation: this.incarnation }, { timeoutMs: 2000 }).catch(() => {}),
      );
    };
    for (const p of this.peers.byName.values()) {
      p.stream?.close();
      if (p.client && p.incarnation !== 0n) leave(p.clientAddress, p.client);
    }
    // A join still in flight: that peer may already list this node running (it handled the
    // join and its answer is on the way), so it is told too, on the join's own connection. Were
    // it left out, the peer would see this node running until down_after.
    for (const [address, j] of this.joiningAddresses) leave(address, j.client);
    await Promise.all(leaves);
    await new Promise<void>((resolve) => {
      if (!this.server) return resolve();
      this.server.close(() => resolve());
      setTimeout(resolve, 1000).unref();
    });
  }
}

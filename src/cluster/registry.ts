import { Code, ConnectError } from '@connectrpc/connect';
import { shardOf } from '../listener/client-id.js';
import { Counter } from '../metrics/counters.js';
import type { ClaimRequest, TakeoverRequest } from './gen/emqx_ts/cluster/v1/state_pb.js';
import { type Peer, touch } from './peers.js';
import { decodeSession } from './session-codec.js';
import { callTimeout, fnv, postShard, runningPeers, type StateHost, stateClient } from './state-host.js';
import type { SessionBlob } from './state-messages.js';
import type { Tombstones } from './tombstones.js';
import type { WillSync } from './will-sync.js';

type Found = {
  found: boolean;
  session: Uint8Array;
  from: string;
  /** Heal takeover: the receiver claimed the client later and keeps it */
  newer?: boolean;
  /** Heal claim: lost to `owner`, which claimed the client later */
  lost?: boolean;
  owner?: string;
};
/** A client id claimed by a CONNECT on this node: when (wall clock, ms), and whether the claim reached its lock node */
type Held = { at: number; claimId: string; unsure: boolean };
const NONE: Found = { found: false, session: new Uint8Array(0), from: '' };
/** Imported sessions whose store commit we have not confirmed to their old node yet */
const MAX_IMPORTING = 10_000;
/** Owners a lock node remembers (oldest forgotten first: a forgotten one costs a broadcast) */
const MAX_OWNERS = 1_000_000;

/**
 * Cluster-wide client registry and session takeover. A client id has one **lock node**: the
 * running node with the highest hash of (client id, node name) — rendezvous hashing, so every
 * node with the same membership view picks the same one, and a node joining or leaving moves
 * only its share of client ids. A CONNECT's shard asks its cluster thread to *claim* the id;
 * the claim goes to the lock node, which handles the claims of one client id one at a time:
 * it records the new owner and asks the previous owner (or, when it does not know it — it just
 * became the lock node — every running node) to take the client over: close its connection
 * (MQTT 5: DISCONNECT 0x8E) and ship the session, or discard it for a clean start. Two racing
 * connects are two claims in a row at the lock node: the second takes the session from the
 * first, so exactly one owner remains. See docs/ARCHITECTURE.md for the netsplit case.
 */
export class Registry {
  private readonly owners = new Map<string, { node: string; claimId: string }>();
  /** Our claims whose answer has not arrived yet: claim id → the shard's request id */
  private readonly outstanding = new Map<string, number>();
  private claimSeq = 0;
  private readonly chains = new Map<string, Promise<unknown>>();
  private reqSeq = 0;
  private readonly exports = new Map<number, (blob: SessionBlob | null) => void>();
  /** Client id → the node that shipped its session to us, until the shard has stored it */
  private readonly importing = new Map<string, string>();
  /**
   * Client ids claimed here (until another node takes them over): what a heal claims back
   * (`healed`). An entry may outlive its session (a clean disconnect, an expiry): a heal asks
   * the shard first (`stillHeld`) and forgets it then.
   */
  private readonly held = new Map<string, Held>();
  /** Client ids of `held` whose claim did not reach its lock node (`retryUnsure`) */
  private readonly unsure = new Set<string>();
  private readonly retryTimer: NodeJS.Timeout;

  constructor(
    private readonly host: StateHost,
    private readonly wills: WillSync,
    private readonly tombstones: Tombstones,
  ) {
    this.retryTimer = setInterval(() => this.retryUnsure(), 5000);
    this.retryTimer.unref();
  }

  /** The lock node of a client id among `names` (this node's view of the running members). */
  static lockNode(clientId: string, names: string[]): string {
    let best = '';
    let bestHash = -1;
    for (const n of names) {
      const h = fnv(`${clientId}\u0000${n}`);
      if (h > bestHash || (h === bestHash && n > best)) {
        best = n;
        bestHash = h;
      }
    }
    return best;
  }

  /**
   * cluster.claim_quorum = majority: the lock node among the *known* members (every node seen
   * since start, minus those that left with Leave: every side of a split computes the same one),
   * if it and a majority of the known members are reachable from here; '' otherwise (no quorum:
   * two disjoint majorities cannot exist, so at most one side of any split grants a claim).
   */
  private quorumLock(clientId: string, running: Peer[]): string {
    const known = [this.host.name];
    for (const p of this.host.peers.byName.values()) if (p.incarnation !== 0n && !p.left) known.push(p.name);
    const up = new Set([this.host.name, ...running.map((p) => p.name)]);
    let reachable = 0;
    for (const n of known) if (up.has(n)) reachable++;
    const lock = Registry.lockNode(clientId, known);
    return up.has(lock) && 2 * reachable > known.length ? lock : '';
  }

  private get majority(): boolean {
    return this.host.config['cluster.claim_quorum'] === 'majority';
  }

  /** A claim refused for want of a quorum: counted, logged (once per 1000), CONNACK 0x88 / 3. */
  private refuse(shard: number, reqId: number, clientId: string, why: string): void {
    const n = ++this.host.counters.row[Counter.claimsRefused];
    if (n % 1000 === 1)
      this.host.log.warn(
        { clientId, why, refused: n },
        'CONNECT refused: no claim quorum (cluster.claim_quorum = majority; logged once per 1000)',
      );
    postShard(this.host, shard, { t: 'claimed', reqId, session: null, refused: true });
  }

  /** A shard's claim for a CONNECT; answered with `claimed` (the shipped session, if any). */
  onClaim(shard: number, reqId: number, clientId: string, clean: boolean): void {
    const answer = (session: SessionBlob | null) =>
      postShard(this.host, shard, { t: 'claimed', reqId, session });
    const peers = runningPeers(this.host.peers);
    const majority = this.majority;
    const qlock = majority ? this.quorumLock(clientId, peers) : '';
    if (majority && qlock === '')
      return this.refuse(shard, reqId, clientId, 'no majority or lock node unreachable');
    this.wills.cancel(clientId);
    const claimId = `${this.host.incarnation}:${++this.claimSeq}`;
    const held: Held = { at: Date.now(), claimId, unsure: false };
    this.held.delete(clientId); // re-inserted: the map stays in age order
    this.held.set(clientId, held);
    if (this.held.size > MAX_OWNERS) this.held.delete(this.held.keys().next().value as string);
    if (peers.length === 0) {
      answer(null); // alone (majority: a cluster of one)
      return;
    }
    const lock = majority
      ? qlock
      : Registry.lockNode(clientId, [this.host.name, ...peers.map((p) => p.name)]);
    const done = (r: Found) => {
      this.outstanding.delete(claimId);
      if (r.found && r.from && r.from !== this.host.name) {
        this.importing.delete(clientId);
        this.importing.set(clientId, r.from);
        if (this.importing.size > MAX_IMPORTING)
          this.importing.delete(this.importing.keys().next().value as string);
      }
      answer(r.found ? r.session : null);
    };
    const failed = (err: unknown) => {
      this.outstanding.delete(claimId);
      if (majority) {
        if (this.held.get(clientId) === held) this.held.delete(clientId);
        this.refuse(shard, reqId, clientId, `claim failed: ${String(err)}`);
        return;
      }
      held.unsure = true; // a heal (or the retry) claims it back
      this.unsure.add(clientId);
      this.host.counters.row[Counter.claimFailures]++;
      this.host.log.warn({ clientId, lock, err: String(err) }, 'session claim failed: session starts here');
      answer(null);
    };
    if (lock === this.host.name) {
      // Answered through the same port as any later takeover: in order, nothing to wait for.
      this.claimAt(clientId, this.host.name, claimId, clean).then(done, failed);
      return;
    }
    this.outstanding.set(claimId, reqId);
    const p = peers.find((q) => q.name === lock)!;
    stateClient(p.address)
      .claim(
        { clientId, node: this.host.name, clean, claimId, incarnation: this.host.incarnation },
        { timeoutMs: 4 * callTimeout(this.host.config) },
      )
      .then(done, failed);
  }

  /** Lock node side: claims of one client id run one after another. */
  private claimAt(
    clientId: string,
    node: string,
    claimId: string,
    clean: boolean,
    healAt = 0,
  ): Promise<Found> {
    const prev = this.chains.get(clientId) ?? Promise.resolve();
    const run = () =>
      healAt > 0
        ? this.healAtLock(clientId, node, claimId, healAt)
        : this.takeFromOwner(clientId, node, claimId, clean);
    const next = prev.then(run, run);
    this.chains.set(clientId, next);
    void next.finally(() => {
      if (this.chains.get(clientId) === next) this.chains.delete(clientId);
    });
    return next;
  }

  private async takeFromOwner(
    clientId: string,
    node: string,
    claimId: string,
    clean: boolean,
  ): Promise<Found> {
    const grant = this.owners.get(clientId);
    const prev = grant?.node;
    const revokes = grant?.claimId ?? '';
    this.owners.delete(clientId); // re-inserted: the map stays in age order
    this.owners.set(clientId, { node, claimId });
    if (this.owners.size > MAX_OWNERS) this.owners.delete(this.owners.keys().next().value as string);
    const running = runningPeers(this.host.peers);
    const names = new Set([this.host.name, ...running.map((p) => p.name)]);
    let targets: string[];
    if (prev === node) targets = [];
    else if (prev !== undefined && names.has(prev)) targets = [prev];
    else targets = [...names].filter((n) => n !== node); // not known here: ask everyone
    const results = await Promise.all(
      targets.map((n) => {
        if (n === this.host.name) return this.takeoverHere(clientId, node, clean, revokes);
        const p = running.find((q) => q.name === n)!;
        return stateClient(p.address)
          .takeover(
            { clientId, to: node, clean, revokes, from: this.host.name, incarnation: this.host.incarnation },
            { timeoutMs: 3 * callTimeout(this.host.config) },
          )
          .then(
            (r): Found => (r.found ? { found: true, session: r.session, from: n } : NONE),
            (err) => {
              this.host.log.warn({ clientId, peer: n, err: String(err) }, 'takeover call failed');
              return NONE;
            },
          );
      }),
    );
    return results.find((r) => r.found) ?? NONE;
  }

  /** Server side of Claim: the caller asks this node, its lock node, to make it the owner. */
  claim(req: ClaimRequest): Promise<Found> {
    const p = this.host.peers.byName.get(req.node);
    touch(p, req.incarnation); // proof of life (a caller without one is still served while running)
    if (p?.status !== 'running' || !req.clientId)
      throw new ConnectError('claim from an unknown node', Code.FailedPrecondition);
    // Majority: the lock node grants only while it sees a quorum itself (its view may be older).
    if (
      this.majority &&
      req.healAt === 0n &&
      this.quorumLock(req.clientId, runningPeers(this.host.peers)) !== this.host.name
    )
      throw new ConnectError('no claim quorum here', Code.Unavailable);
    return this.claimAt(req.clientId, req.node, req.claimId, req.clean, Number(req.healAt));
  }

  /** Server side of Takeover: close and ship (or discard) the client's session here. */
  takeover(req: TakeoverRequest): Promise<Found> {
    if (!req.clientId) throw new ConnectError('client id required', Code.InvalidArgument);
    touch(this.host.peers.byName.get(req.from), req.incarnation);
    if (req.healAt > 0n) return this.healHere(req.clientId, req.to, Number(req.healAt));
    return this.takeoverHere(req.clientId, req.to, req.clean, req.revokes);
  }

  // ---------------------------------------------------------------------------------------------
  // Netsplit heal

  /**
   * A peer that this node had declared down (missed heartbeats, not Leave) runs again with the
   * same incarnation: a netsplit healed (or a stall ended). Either side may have granted a client
   * id while they did not see each other. Every client id claimed here since `since` (the last
   * traffic from that peer before it was declared down), or whose claim failed, is claimed back
   * through its lock node in the healed view (a *heal claim*); the lock node asks every other
   * running node, and the one whose claim is the later ((time, node name) order) keeps the
   * session; every other copy is closed (MQTT 5: DISCONNECT 0x8E) and discarded, as a
   * takeover with clean start would (the winner's connection is live, with its own
   * subscriptions, inflight and packet ids since the split: two diverged sessions have no
   * correct merge). Each side applies the order itself (`healHere`), so the result does not
   * depend on which heal claim arrives first, nor on the lock node's view.
   * Owner records are forgotten (either side's may be stale): the next claims ask every node.
   */
  healed(peer: string, since: number): void {
    this.owners.clear();
    const ids: string[] = [];
    for (const [clientId, h] of this.held) if (h.unsure || h.at >= since) ids.push(clientId);
    this.reclaim(ids, peer, since);
  }

  /**
   * Heal claims for those of `ids` whose session is still here (a record can outlive its
   * session: a clean disconnect, an expiry — claiming it back would close a live client elsewhere
   * for nothing); records without one are forgotten.
   */
  private reclaim(ids: string[], peer: string, since: number): void {
    if (ids.length === 0) return;
    const asked = new Map(ids.map((id) => [id, this.held.get(id)]));
    void this.stillHeld(ids).then((here) => {
      let n = 0;
      for (const [clientId, h] of asked) {
        if (h === undefined || this.held.get(clientId) !== h) continue; // claimed again or taken over meanwhile
        if (!here.has(clientId)) {
          this.held.delete(clientId);
          this.unsure.delete(clientId);
          continue;
        }
        n++;
        this.healClaim(clientId, h, peer);
      }
      this.host.log.info(
        { peer, since, reclaimed: n },
        'netsplit healed: client ids claimed meanwhile claimed back',
      );
    });
  }

  private holdSeq = 0;
  private readonly holdWaits = new Map<number, (ids: string[] | null) => void>();

  /**
   * Which of `ids` still have a session (or a CONNECT) in their shard. A shard that does not
   * answer within a call timeout (restarting) counts as holding all of its ids: claiming back
   * too much closes nothing that is not also held elsewhere later.
   */
  private stillHeld(ids: string[]): Promise<Set<string>> {
    const byShard = new Map<number, string[]>();
    for (const id of ids) {
      const s = shardOf(id, this.host.shards.length);
      let list = byShard.get(s);
      if (!list) byShard.set(s, (list = []));
      list.push(id);
    }
    const out = new Set<string>();
    return Promise.all(
      [...byShard].map(
        ([shard, list]) =>
          new Promise<void>((resolve) => {
            const reqId = ++this.holdSeq;
            const timer = setTimeout(() => done(null), callTimeout(this.host.config));
            const done = (got: string[] | null) => {
              clearTimeout(timer);
              this.holdWaits.delete(reqId);
              for (const id of got ?? list) out.add(id);
              resolve();
            };
            this.holdWaits.set(reqId, done);
            if (!postShard(this.host, shard, { t: 'holds', reqId, clientIds: list })) done(null);
          }),
      ),
    ).then(() => out);
  }

  onHolding(reqId: number, clientIds: string[]): void {
    this.holdWaits.get(reqId)?.(clientIds);
  }

  /**
   * Claims `clientId` back through its lock node (which records the winner and asks every node
   * it sees) and, directly, from the healed peer `peer`: the lock node's view may not include
   * it yet (each pair of nodes heals on its own), and the pair decides between them alone.
   */
  private healClaim(clientId: string, h: Held, peer: string): void {
    const peers = runningPeers(this.host.peers);
    if (peers.length === 0) return;
    const lock = Registry.lockNode(clientId, [this.host.name, ...peers.map((p) => p.name)]);
    const settle = (r: Found) => {
      if (this.held.get(clientId) !== h) return; // connected again meanwhile: that claim decides
      if (!r.lost) {
        h.unsure = false;
        this.unsure.delete(clientId);
        return;
      }
      this.closeForHeal(clientId, r.owner ?? '');
    };
    const failed = (err: unknown) => {
      if (this.held.get(clientId) !== h) return;
      h.unsure = true;
      this.unsure.add(clientId);
      this.host.log.warn({ clientId, lock, err: String(err) }, 'heal claim failed: retried');
    };
    const direct = peer !== lock ? peers.find((q) => q.name === peer) : undefined;
    if (direct)
      void this.healTakeover(direct, clientId, h.at).then((newer) => {
        if (newer && this.held.get(clientId) === h) this.closeForHeal(clientId, newer);
      });
    if (lock === this.host.name) {
      this.claimAt(clientId, this.host.name, h.claimId, true, h.at).then(settle, failed);
      return;
    }
    const p = peers.find((q) => q.name === lock)!;
    stateClient(p.address)
      .claim(
        {
          clientId,
          node: this.host.name,
          clean: true,
          claimId: h.claimId,
          incarnation: this.host.incarnation,
          healAt: BigInt(h.at),
        },
        { timeoutMs: 4 * callTimeout(this.host.config) },
      )
      .then(settle, failed);
  }

  /** Lock node side of a heal claim: every other node keeps its copy if it claimed later, else closes it. */
  private async healAtLock(clientId: string, node: string, claimId: string, healAt: number): Promise<Found> {
    const running = runningPeers(this.host.peers);
    const targets = [this.host.name, ...running.map((p) => p.name)].filter((n) => n !== node);
    const results = await Promise.all(
      targets.map((n): Promise<string> => {
        if (n === this.host.name)
          return this.healHere(clientId, node, healAt).then((r) => (r.newer ? n : ''));
        return this.healTakeover(running.find((q) => q.name === n)!, clientId, healAt, node);
      }),
    );
    const newer = results.find((n) => n !== '');
    this.owners.delete(clientId);
    this.owners.set(clientId, { node: newer ?? node, claimId: newer ? '' : claimId });
    return newer ? { ...NONE, lost: true, owner: newer } : NONE;
  }

  /** Asks `p` to close its copy of `clientId` unless it claimed it after `healAt`: its name if it keeps it, else ''. */
  private healTakeover(p: Peer, clientId: string, healAt: number, to = this.host.name): Promise<string> {
    return stateClient(p.address)
      .takeover(
        {
          clientId,
          to,
          clean: true,
          revokes: '',
          from: this.host.name,
          incarnation: this.host.incarnation,
          healAt: BigInt(healAt),
        },
        { timeoutMs: 3 * callTimeout(this.host.config) },
      )
      .then(
        (r) => (r.newer ? p.name : ''),
        (err) => {
          this.host.log.warn({ clientId, peer: p.name, err: String(err) }, 'heal takeover call failed');
          return '';
        },
      );
  }

  /**
   * Claims whose lock node was unreachable (their CONNECT started the session here) or whose
   * heal claim failed: claimed back every 5 s while peers run, so that one that never saw a
   * peer declared down (no heal) is still resolved.
   */
  private retryUnsure(): void {
    if (this.unsure.size === 0 || runningPeers(this.host.peers).length === 0) return;
    const ids: string[] = [];
    for (const clientId of this.unsure) if (this.held.get(clientId)?.unsure) ids.push(clientId);
    this.unsure.clear();
    this.reclaim(ids, '', 0);
  }

  /** A heal takeover here: keep the session if it was claimed here later than `healAt`, else close it. */
  private async healHere(clientId: string, to: string, healAt: number): Promise<Found> {
    const h = this.held.get(clientId);
    if (h && (h.at > healAt || (h.at === healAt && this.host.name > to))) {
      // Newer only if its session is still here (else the record is stale: forgotten).
      if ((await this.stillHeld([clientId])).has(clientId) || this.held.get(clientId) !== h)
        return { ...NONE, newer: true };
      this.held.delete(clientId);
      this.unsure.delete(clientId);
      return NONE;
    }
    // Not claimed here (a session restored here, or its record forgotten): closed all the same.
    if (!h) return this.takeoverHere(clientId, to, true, '').then(() => NONE);
    this.closeForHeal(clientId, to);
    return NONE;
  }

  private closeForHeal(clientId: string, owner: string): void {
    this.held.delete(clientId);
    this.host.counters.row[Counter.healClosed]++;
    this.host.log.warn(
      { clientId, owner },
      'netsplit healed: the client id was claimed later on another node; its session here is closed and discarded',
    );
    void this.takeoverHere(clientId, owner, true, '');
  }

  /**
   * Closes and exports the session here. When it revokes a claim of ours whose answer is still
   * on its way, the shard runs it after that claim's connection has attached (the later one wins).
   */
  private takeoverHere(clientId: string, to: string, clean: boolean, revokes: string): Promise<Found> {
    this.wills.cancel(clientId);
    // Taken over by another node: no longer ours (unless it revokes an older claim and a newer
    // one of ours is still on its way).
    const h = this.held.get(clientId);
    if (h && to !== this.host.name && (h.claimId === revokes || !this.outstanding.has(h.claimId)))
      this.held.delete(clientId);
    const afterClaim = this.outstanding.get(revokes) ?? 0;
    const reqId = ++this.reqSeq;
    // Forward batches that arrive meanwhile wait; after the export, a tombstone forwards those
    // for the session to its new node (tombstones.ts).
    const token = this.tombstones.begin();
    return new Promise<Found>((resolve) => {
      // Bounded: a claim we wait for is itself bounded by its call timeout. Timeouts nest
      // (export here < takeover call < claim call < the shard's wait), so that a session
      // shipped late is not dropped by a claimer that gave up first.
      const timer = setTimeout(() => finish(null), 2.5 * callTimeout(this.host.config));
      let ended = false;
      const finish = (blob: SessionBlob | null) => {
        clearTimeout(timer);
        this.exports.delete(reqId);
        if (!ended) {
          ended = true;
          const moved = blob !== null && to !== this.host.name;
          this.tombstones.end(clientId, to, moved ? routedFilters(blob) : null, moved ? blob : null, token);
        }
        resolve(blob ? { found: true, session: blob, from: this.host.name } : NONE);
      };
      this.exports.set(reqId, finish);
      const shard = shardOf(clientId, this.host.shards.length);
      // Messages this node accepted (acked to their senders) before now may still be on their
      // way to the client's shard: in another shard's port (the one a peer's forwarded batches
      // go to) or in its batch to this one. Every other shard routes what it holds and posts a
      // `drained` behind it; the session is exported once all of them arrived (none is lost).
      let drains = 0;
      for (let i = 0; i < this.host.shards.length; i++)
        if (i !== shard && postShard(this.host, i, { t: 'takeoverDrain', reqId, to: shard })) drains++;
      if (!postShard(this.host, shard, { t: 'takeover', reqId, clientId, clean, afterClaim, drains }))
        finish(null);
    });
  }

  /** The shard stored the session it imported: its old node may forget the copy it kept. */
  onImported(clientId: string): void {
    const from = this.importing.get(clientId);
    if (from === undefined) return;
    this.importing.delete(clientId);
    this.tombstones.confirm(from, clientId);
  }

  /**
   * A node is down or restarted: the owners it held are forgotten, so that the next claim of
   * those clients asks every node (one may have restored a session it had shipped to it).
   */
  gone(name: string): void {
    for (const [clientId, o] of this.owners) if (o.node === name) this.owners.delete(clientId);
  }

  onExported(reqId: number, session: SessionBlob | null): void {
    if (session) this.host.counters.row[Counter.sessionsShipped]++;
    this.exports.get(reqId)?.(session);
  }
}

/** The filters of a shipped session that routes carry (shared subscriptions go by their group). */
function routedFilters(blob: SessionBlob): string[] | null {
  try {
    return decodeSession(blob)
      .subs.filter(([, s]) => !s.shared)
      .map(([f]) => f);
  } catch {
    return null;
  }
}

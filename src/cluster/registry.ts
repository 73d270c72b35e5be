import { Code, ConnectError } from '@connectrpc/connect';
import { shardOf } from '../listener/client-id.js';
import { Counter } from '../metrics/counters.js';
import type { ClaimRequest, TakeoverRequest } from './gen/emqx_ts/cluster/v1/state_pb.js';
import { touch } from './peers.js';
import { decodeSession } from './session-codec.js';
import { callTimeout, fnv, postShard, runningPeers, type StateHost, stateClient } from './state-host.js';
import type { SessionBlob } from './state-messages.js';
import type { Tombstones } from './tombstones.js';
import type { WillSync } from './will-sync.js';

type Found = { found: boolean; session: Uint8Array; from: string };
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

  constructor(
    private readonly host: StateHost,
    private readonly wills: WillSync,
    private readonly tombstones: Tombstones,
  ) {}

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

  /** A shard's claim for a CONNECT; answered with `claimed` (the shipped session, if any). */
  onClaim(shard: number, reqId: number, clientId: string, clean: boolean): void {
    const answer = (session: SessionBlob | null) =>
      postShard(this.host, shard, { t: 'claimed', reqId, session });
    const peers = runningPeers(this.host.peers);
    this.wills.cancel(clientId);
    if (peers.length === 0) {
      answer(null);
      return;
    }
    const lock = Registry.lockNode(clientId, [this.host.name, ...peers.map((p) => p.name)]);
    const claimId = `${this.host.incarnation}:${++this.claimSeq}`;
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
  private claimAt(clientId: string, node: string, claimId: string, clean: boolean): Promise<Found> {
    const prev = this.chains.get(clientId) ?? Promise.resolve();
    const run = () => this.takeFromOwner(clientId, node, claimId, clean);
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
    return this.claimAt(req.clientId, req.node, req.claimId, req.clean);
  }

  /** Server side of Takeover: close and ship (or discard) the client's session here. */
  takeover(req: TakeoverRequest): Promise<Found> {
    if (!req.clientId) throw new ConnectError('client id required', Code.InvalidArgument);
    touch(this.host.peers.byName.get(req.from), req.incarnation);
    return this.takeoverHere(req.clientId, req.to, req.clean, req.revokes);
  }

  /**
   * Closes and exports the session here. When it revokes a claim of ours whose answer is still
   * on its way, the shard runs it after that claim's connection has attached (the later one wins).
   */
  private takeoverHere(clientId: string, to: string, clean: boolean, revokes: string): Promise<Found> {
    this.wills.cancel(clientId);
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

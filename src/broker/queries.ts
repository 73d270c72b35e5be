import type { ShardQuery, ShardQueryResults, ShardToMain } from '../threads/messages.js';
import type { Supervisor } from './supervisor.js';

export class ShardUnavailableError extends Error {}

type Result<Q extends ShardQuery> = ShardQueryResults[Q['q']];

interface Pending {
  resolve(result: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * Request/response over the shard ports for the REST API: main keeps no copy of the shards'
 * state, it asks. A shard that is restarting is skipped by `askAll` (its clients are gone with
 * it) and makes `ask` fail with ShardUnavailableError; an answer that does not come within the
 * timeout (the shard died mid-question) fails the request the same way.
 */
export class ShardQueries {
  private seq = 0;
  private readonly pending = new Map<number, Pending>();

  constructor(
    private readonly supervisor: Supervisor,
    private readonly timeoutMs = 10_000,
  ) {}

  ask<Q extends ShardQuery>(shard: number, query: Q): Promise<Result<Q>> {
    const handle = this.supervisor.shards[shard];
    if (!handle?.ready || !handle.worker) {
      return Promise.reject(new ShardUnavailableError(`shard ${shard} is restarting`));
    }
    const reqId = ++this.seq;
    return new Promise<Result<Q>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(reqId);
        reject(new ShardUnavailableError(`shard ${shard} did not answer`));
      }, this.timeoutMs);
      timer.unref();
      this.pending.set(reqId, { resolve: resolve as (r: unknown) => void, reject, timer });
      this.supervisor.post(shard, { t: 'query', reqId, query });
    });
  }

  /** Asks every running shard; the answers in shard order. */
  askAll<Q extends ShardQuery>(query: Q): Promise<Result<Q>[]> {
    const live = this.supervisor.shards.filter((s) => s.ready && s.worker);
    return Promise.all(live.map((s) => this.ask(s.id, query)));
  }

  onResult(msg: Extract<ShardToMain, { t: 'queryResult' }>): void {
    const p = this.pending.get(msg.reqId);
    if (!p) return;
    this.pending.delete(msg.reqId);
    clearTimeout(p.timer);
    p.resolve(msg.result);
  }

  /** Fails whatever is still waiting (broker stopping). */
  close(): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new ShardUnavailableError('broker stopping'));
    }
    this.pending.clear();
  }
}

import type { TopicIndex } from '../routing/topic-index.js';

/**
 * This node's slice of the route table: the topic filters with at least one local subscriber
 * (EMQX: one route per filter and node, not per subscriber). It is read from the local topic
 * index, whose node masks the shards already maintain, so subscribing costs the shards nothing
 * extra: the cluster thread scans the masks on a timer and turns changes into deltas.
 * A scan is one Atomics.load per index node; filter text is decoded only for nodes that change.
 * Shared subscriptions ($share/…) live in another index and are not routed across nodes yet.
 */
export class LocalRoutes {
  /** 1 where the node had subscribers at the last scan */
  private active = new Uint8Array(1024);
  private readonly filterById = new Map<number, string>();
  readonly filters = new Set<string>();
  /** Bumped by every scan that changed something; peers hold a version of this slice */
  version = 0;

  constructor(private readonly index: TopicIndex) {}

  /** Net changes since the last scan (filter → now present), or null when none. */
  scan(): Map<string, boolean> | null {
    const count = this.index.stats().nodes;
    if (count > this.active.length) {
      let size = this.active.length * 2;
      while (size < count) size *= 2;
      const next = new Uint8Array(size);
      next.set(this.active);
      this.active = next;
    }
    let changes: Map<string, boolean> | null = null;
    const active = this.active;
    for (let id = 1; id < count; id++) {
      const now = this.index.maskOf(id) !== 0 ? 1 : 0;
      if (now === active[id]) continue;
      active[id] = now;
      let filter = this.filterById.get(id);
      if (filter === undefined) {
        filter = this.index.filterOf(id);
        this.filterById.set(id, filter);
      }
      if (now) this.filters.add(filter);
      else this.filters.delete(filter);
      changes ??= new Map();
      changes.set(filter, now === 1);
    }
    if (changes) this.version++;
    return changes;
  }
}

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
  /** Per node slot: the reference (slot + generation) that had subscribers at the last scan, or 0 */
  private activeRef = new Float64Array(1024);
  private readonly filterById = new Map<number, string>();
  readonly filters = new Set<string>();
  /** Bumped by every scan that changed something; peers hold a version of this slice */
  version = 0;

  constructor(private readonly index: TopicIndex) {}

  /**
   * Net changes since the last scan (filter → now present), or null when none. Index slots are
   * reused after unsubscribes (topic-index reclamation), so a slot is compared by its reference
   * (which carries the generation), and removals are applied before additions: a filter that
   * moved to another slot between two scans stays present.
   */
  scan(): Map<string, boolean> | null {
    const count = this.index.stats().nodesHighWater;
    if (count > this.activeRef.length) {
      let size = this.activeRef.length * 2;
      while (size < count) size *= 2;
      const next = new Float64Array(size);
      next.set(this.activeRef);
      this.activeRef = next;
    }
    let removed: string[] | null = null;
    let added: string[] | null = null;
    const activeRef = this.activeRef;
    for (let id = 1; id < count; id++) {
      const ref = this.index.liveRef(id);
      const now = ref > 0 && this.index.maskOf(id) !== 0 ? ref : 0;
      const prev = activeRef[id]!;
      if (now === prev) continue;
      activeRef[id] = now;
      if (prev !== 0) {
        const old = this.filterById.get(id);
        this.filterById.delete(id);
        if (old !== undefined) (removed ??= []).push(old);
      }
      if (now !== 0) {
        const filter = this.index.filterOf(now);
        this.filterById.set(id, filter);
        (added ??= []).push(filter);
      }
    }
    if (!removed && !added) return null;
    const changes = new Map<string, boolean>();
    for (const f of removed ?? []) {
      this.filters.delete(f);
      changes.set(f, false);
    }
    for (const f of added ?? []) {
      this.filters.add(f);
      changes.set(f, true);
    }
    this.version++;
    return changes;
  }
}

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
  /** The slice: filters with a local subscriber, and pinned ones */
  readonly filters = new Set<string>();
  /** Filters with a local subscriber at the last scan */
  private readonly fromIndex = new Set<string>();
  /**
   * Filters kept in the slice without a local subscriber (refcount): a session that moved to
   * another node keeps its routes here until the new node's are known (tombstones.ts)
   */
  private readonly pins = new Map<string, number>();
  /** Pin changes since the last scan (filter → now present) */
  private pinChanges: Map<string, boolean> | null = null;
  /** Called when pins changed the slice (the owner scans and pushes) */
  onPinned: () => void = () => {};
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
    const pinned = this.pinChanges;
    this.pinChanges = null;
    if (!removed && !added && !pinned) return null;
    const changes = pinned ?? new Map<string, boolean>();
    for (const f of removed ?? []) {
      this.fromIndex.delete(f);
      if (this.pins.has(f)) continue;
      this.filters.delete(f);
      changes.set(f, false);
    }
    for (const f of added ?? []) {
      this.fromIndex.add(f);
      this.filters.add(f);
      changes.set(f, true);
    }
    if (changes.size === 0) return null;
    this.version++;
    return changes;
  }

  /** Keeps `filters` in the slice (even with no local subscriber) until unpinned. */
  pin(filters: readonly string[]): void {
    let changed = false;
    for (const f of filters) {
      const n = this.pins.get(f) ?? 0;
      this.pins.set(f, n + 1);
      if (n === 0 && !this.filters.has(f)) {
        this.filters.add(f);
        (this.pinChanges ??= new Map()).set(f, true);
        changed = true;
      }
    }
    if (changed) this.onPinned();
  }

  unpin(filters: readonly string[]): void {
    let changed = false;
    for (const f of filters) {
      const n = this.pins.get(f);
      if (n === undefined) continue;
      if (n > 1) {
        this.pins.set(f, n - 1);
        continue;
      }
      this.pins.delete(f);
      if (!this.fromIndex.has(f)) {
        this.filters.delete(f);
        (this.pinChanges ??= new Map()).set(f, false);
        changed = true;
      }
    }
    if (changed) this.onPinned();
  }
}

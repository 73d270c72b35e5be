/**
 * A session's QoS 1/2 deliveries by packet id, in send order: the subset of `Map` the broker
 * uses (get, set, has, delete, size, iteration in insertion order), kept so that a dead copy of
 * its hash table holds no pointer to a delivery.
 *
 * Why not a `Map<number, InflightEntry>` (docs/PERFORMANCE.md, cluster, "Sixth stop"): with a
 * window of ~1000 messages and one set/delete pair per message, V8 rehashes the Map's table every
 * ~1000 messages (deleted entries fill it), allocating a new table and leaving the old one as it
 * was — still pointing to every delivery that was inflight then. Once a full GC has moved the
 * table to the old generation, each new table is allocated there too, and every dead one keeps
 * its ~1000 deliveries (message, copy, frames) alive through each scavenge until the next full
 * GC: at 150-300k msg/s that is 5-7 MB surviving every scavenge, promoted, and a mark-compact
 * every ~70 ms — a shard stuck in that regime spent about twice the CPU per QoS 1 message. Here
 * the Map holds only slot numbers (small integers, no pointers), the deliveries sit in one array
 * whose slots are cleared on delete, and the array grows by doubling (the old one is cleared).
 */
export class InflightTable<V> {
  /** packet id -> slot in `slots`; insertion order is send order */
  private readonly ids = new Map<number, number>();
  /** Deliveries by slot; `undefined` in free slots */
  private slots: (V | undefined)[] = [];
  /** Slots handed out so far (the rest of `slots` has never been used) */
  private used = 0;
  /** Free slots below `used` (a stack) */
  private readonly free: number[] = [];

  get size(): number {
    return this.ids.size;
  }

  has(id: number): boolean {
    return this.ids.has(id);
  }

  get(id: number): V | undefined {
    const s = this.ids.get(id);
    return s === undefined ? undefined : this.slots[s];
  }

  set(id: number, v: V): this {
    const s = this.ids.get(id);
    if (s !== undefined) {
      this.slots[s] = v;
      return this;
    }
    let slot = this.free.pop();
    if (slot === undefined) {
      if (this.used === this.slots.length) this.grow();
      slot = this.used++;
    }
    this.slots[slot] = v;
    this.ids.set(id, slot);
    return this;
  }

  delete(id: number): boolean {
    const s = this.ids.get(id);
    if (s === undefined) return false;
    this.ids.delete(id);
    this.slots[s] = undefined;
    this.free.push(s);
    return true;
  }

  /** [id, delivery] in send order (not on the per-message path: resend, snapshots) */
  *[Symbol.iterator](): IterableIterator<[number, V]> {
    for (const [id, s] of this.ids) yield [id, this.slots[s] as V];
  }

  *values(): IterableIterator<V> {
    for (const s of this.ids.values()) yield this.slots[s] as V;
  }

  keys(): IterableIterator<number> {
    return this.ids.keys();
  }

  /**
   * Room for twice as many: a new array, and the old one cleared, so that if it already lives in
   * the old generation it keeps nothing alive.
   */
  private grow(): void {
    const old = this.slots;
    const next: (V | undefined)[] = new Array(Math.max(16, old.length * 2)).fill(undefined);
    for (let i = 0; i < old.length; i++) next[i] = old[i];
    old.fill(undefined);
    this.slots = next;
  }
}

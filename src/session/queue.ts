/**
 * A session's queued deliveries, oldest first: a ring (an array of power-of-two length, a head
 * index and a count), so that taking one off the front (a PUBACK moves the next queued message
 * into the inflight window) does not move the rest — `Array.prototype.shift` on a queue of
 * ≈ 1000 (fan-in's subscriber) moved the whole array whenever V8 could not trim its front.
 *
 * No dead copy of the ring points to a delivery: it grows by doubling, and the array it leaves
 * is cleared, as is every slot a delivery leaves. A JS array that grows by `push`, or is
 * replaced by a `slice` of its live part, leaves its old backing store as it was; once that
 * store is in the old generation, each dead copy keeps the deliveries it saw alive through every
 * scavenge until the next full GC (docs/PERFORMANCE.md, cluster, "Sixth stop", and Durability,
 * fourth pass; test/delivery-queue.test.ts).
 */
/** The storage of every empty queue that never held anything: no write reaches it (mask -1). */
const NONE: never[] = [];

export class DeliveryQueue<T> {
  // Storage on first push: most sessions (idle connections) never queue, and a 16-slot array
  // each would cost ~150 bytes per connection.
  private a: (T | undefined)[] = NONE;
  private mask = -1;
  private h = 0;
  private n = 0;

  get length(): number {
    return this.n;
  }

  /** The i-th queued (0 = oldest); i < length */
  get(i: number): T {
    return this.a[(this.h + i) & this.mask] as T;
  }

  push(x: T): void {
    if (this.n > this.mask) this.grow(this.n + 1);
    this.a[(this.h + this.n) & this.mask] = x;
    this.n++;
  }

  /** Takes the oldest off (undefined when empty). */
  shift(): T | undefined {
    if (this.n === 0) return undefined;
    const a = this.a;
    const x = a[this.h];
    a[this.h] = undefined;
    this.h = (this.h + 1) & this.mask;
    if (--this.n === 0) this.shrink();
    return x;
  }

  /** Takes the n oldest off (n ≤ length). */
  drop(n: number): void {
    const a = this.a;
    for (let i = 0; i < n; i++) {
      a[this.h] = undefined;
      this.h = (this.h + 1) & this.mask;
    }
    this.n -= n;
    if (this.n === 0) this.shrink();
  }

  /** Empty: a ring grown past 1024 slots gives its storage back (every slot is clear already). */
  private shrink(): void {
    this.h = 0;
    if (this.mask < 1024) return;
    this.a = NONE;
    this.mask = -1;
  }

  /** A ring of at least `need` slots holding the same items, oldest at 0; the old one cleared. */
  private grow(need: number): void {
    let cap = Math.max(16, this.mask + 1);
    while (cap < need) cap *= 2;
    const old = this.a;
    const a: (T | undefined)[] = new Array(cap).fill(undefined);
    for (let i = 0; i < this.n; i++) a[i] = old[(this.h + i) & this.mask];
    old.fill(undefined);
    this.a = a;
    this.mask = cap - 1;
    this.h = 0;
  }

  /** Replaces the contents (oldest first; the items are copied, `items` is not kept). */
  replace(items: T[]): void {
    this.a.fill(undefined);
    this.h = 0;
    this.n = 0;
    if (items.length > this.mask + 1) this.grow(items.length);
    for (let i = 0; i < items.length; i++) this.a[i] = items[i];
    this.n = items.length;
  }

  some(f: (x: T) => boolean): boolean {
    for (let i = 0; i < this.n; i++) if (f(this.get(i))) return true;
    return false;
  }

  map<U>(f: (x: T) => U): U[] {
    const out: U[] = [];
    for (let i = 0; i < this.n; i++) out.push(f(this.get(i)));
    return out;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = 0; i < this.n; i++) yield this.get(i);
  }
}

/**
 * A session's queued deliveries, oldest first: an array with a head index, so that taking one
 * off the front (a PUBACK moves the next queued message into the inflight window) does not
 * move the rest. `Array.prototype.shift` on a queue of ≈ 1000 (fan-in's subscriber) moves the
 * whole array whenever V8 cannot trim its front (while the GC marks). The used front is dropped
 * once it is at least half of the array.
 */
export class DeliveryQueue<T> {
  private a: (T | undefined)[] = [];
  private h = 0;

  get length(): number {
    return this.a.length - this.h;
  }

  /** The i-th queued (0 = oldest); i < length */
  get(i: number): T {
    return this.a[this.h + i] as T;
  }

  push(x: T): void {
    this.a.push(x);
  }

  /** Takes the oldest off (undefined when empty). */
  shift(): T | undefined {
    if (this.h >= this.a.length) return undefined;
    const x = this.a[this.h];
    this.a[this.h++] = undefined;
    this.trim();
    return x;
  }

  /** Takes the n oldest off (n ≤ length). */
  drop(n: number): void {
    const a = this.a;
    for (let i = 0; i < n; i++) a[this.h++] = undefined;
    this.trim();
  }

  private trim(): void {
    const a = this.a;
    if (this.h === a.length) {
      a.length = 0;
      this.h = 0;
    } else if (this.h >= 64 && this.h * 2 >= a.length) {
      this.a = a.slice(this.h);
      this.h = 0;
    }
  }

  /** Replaces the contents (oldest first). */
  replace(items: T[]): void {
    this.a = items;
    this.h = 0;
  }

  some(f: (x: T) => boolean): boolean {
    for (let i = this.h; i < this.a.length; i++) if (f(this.a[i] as T)) return true;
    return false;
  }

  map<U>(f: (x: T) => U): U[] {
    const out: U[] = [];
    for (let i = this.h; i < this.a.length; i++) out.push(f(this.a[i] as T));
    return out;
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.h; i < this.a.length; i++) yield this.a[i] as T;
  }
}

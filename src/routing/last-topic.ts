/**
 * The last topic matched against a topic index, and the index's change count at that match: a
 * publisher (or a batch forwarded from another node) mostly repeats a topic, so a caller that
 * keeps the last match's result may reuse it while `hit` says so. Valid because the count is
 * read before matching and every writer bumps it after writing (TopicIndex.changes): a result
 * cached under a count that is still current is what a new match would give.
 */
export class LastTopic {
  private readonly bytes = Buffer.allocUnsafeSlow(128);
  private len = -1;
  private changes = -1;

  /** True if `topic` is the last topic stored and the index has not changed since. */
  hit(topic: Uint8Array, changes: number): boolean {
    const n = topic.length;
    if (changes !== this.changes || n !== this.len) return false;
    const b = this.bytes;
    // Topics are short: a loop beats a native compare for them.
    for (let i = 0; i < n; i++) if (topic[i] !== b[i]) return false;
    return true;
  }

  /** Remembers `topic`, matched under change count `changes` (a long topic is not cached). */
  store(topic: Uint8Array, changes: number): void {
    const n = topic.length;
    const b = this.bytes;
    if (n > b.length) {
      this.len = -1;
      return;
    }
    for (let i = 0; i < n; i++) b[i] = topic[i];
    this.len = n;
    this.changes = changes;
  }
}

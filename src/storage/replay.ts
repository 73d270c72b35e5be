import type { QoS } from '../protocol/constants.js';
import type { BatchVisitor } from '../routing/batch.js';
import { MatchResult } from '../routing/topic-index.js';
import type { Message } from '../session/message.js';
import type { ShardState } from '../shard/state.js';

/**
 * Reads a batch re-sent from a peer's outbox: its node ids were matched before a restart and
 * may name freed or reused index nodes, so the topic is matched again here (against this
 * shard's restored subscriptions). Shared-group members and redispatches go by client id and
 * group, which stay valid.
 */
export class ReplayVisitor implements BatchVisitor {
  private readonly m = new MatchResult();

  constructor(
    private readonly s: ShardState,
    private readonly target: BatchVisitor,
  ) {}

  onRoutedMessage(msg: Message): void {
    const t = msg.topicBytes;
    const n = this.s.index.match(t, 0, t.length, this.m);
    if (n > 0 && this.m.mask & (1 << this.s.id)) this.target.onRoutedMessage(msg, this.m.nodeIds, n);
  }

  onSharedMessage(msg: Message): void {
    const t = msg.topicBytes;
    const n = this.s.sharedIndex.match(t, 0, t.length, this.m);
    if (n > 0 && this.m.mask & (1 << this.s.id)) this.target.onSharedMessage(msg, this.m.nodeIds, n);
  }

  onDirectMessage(msg: Message, clientId: string, qos: QoS, subId: number, group: string): void {
    this.target.onDirectMessage(msg, clientId, qos, subId, group);
  }

  onRedispatch(msg: Message, group: string, exclude: string): void {
    this.target.onRedispatch(msg, group, exclude);
  }
}

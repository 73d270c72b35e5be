import type { Logger } from '../log.js';
import { Counter } from '../metrics/counters.js';
import { Message } from '../session/message.js';
import type { ClientInfo, DropReason, Hook, HookEvent, PublishInfo, WillInfo } from './types.js';

/** Whether a hook provides an event: its own `provides`, else whether it defines the method. */
function provides(h: Hook, e: HookEvent): boolean {
  if (typeof h.provides === 'function') return h.provides(e) && typeof h[e] === 'function';
  return typeof h[e] === 'function';
}

/**
 * The hooks of one shard, with one list per event computed once: call sites test the list's
 * length (or a boolean), so an event that no hook provides costs nothing more. A hook that
 * throws is logged and counted (`hookErrors`) and the event goes on as if it had not answered.
 */
export class Hooks {
  readonly auth: Hook[];
  readonly acl: Hook[];
  readonly publish: Hook[];
  readonly subscribe: Hook[];
  readonly disconnect: Hook[];
  readonly sessionCreated: Hook[];
  readonly sessionResumed: Hook[];
  readonly sessionDiscarded: Hook[];
  readonly delivered: Hook[];
  readonly dropped: Hook[];
  readonly will: Hook[];
  /** Any session/disconnect/subscribe event hook: call sites for those test this first */
  readonly lifecycle: boolean;

  constructor(
    readonly all: readonly Hook[],
    private readonly log: Logger,
    private readonly row: Float64Array,
  ) {
    const of = (e: HookEvent): Hook[] => all.filter((h) => provides(h, e));
    this.auth = of('onConnectAuthenticate');
    this.acl = of('onAclCheck');
    this.publish = of('onPublish');
    this.subscribe = of('onSubscribe');
    this.disconnect = of('onDisconnect');
    this.sessionCreated = of('onSessionCreated');
    this.sessionResumed = of('onSessionResumed');
    this.sessionDiscarded = of('onSessionDiscarded');
    this.delivered = of('onMessageDelivered');
    this.dropped = of('onMessageDropped');
    this.will = of('onWill');
    this.lifecycle =
      this.subscribe.length + this.disconnect.length + this.sessionCreated.length > 0 ||
      this.sessionResumed.length + this.sessionDiscarded.length > 0;
  }

  static none(log: Logger, row: Float64Array): Hooks {
    return new Hooks([], log, row);
  }

  failed(h: Hook, event: HookEvent, err: unknown): void {
    this.row[Counter.hookErrors]++;
    this.log.error({ err, hook: h.id, event }, 'hook threw; ignored');
  }

  /**
   * onPublish: each hook may change topic or payload, or drop the message (false). Returns the
   * message to route (the same one when unchanged) or null when dropped.
   */
  runPublish(client: ClientInfo, msg: Message): Message | null {
    const info: PublishInfo = { topic: msg.topic, payload: msg.payload, qos: msg.qos, retain: msg.retain };
    for (const h of this.publish) {
      try {
        if (h.onPublish!(client, info) === false) {
          this.row[Counter.hookDropped]++;
          this.messageDropped(client.clientId, info.topic, 'hook');
          return null;
        }
      } catch (err) {
        this.failed(h, 'onPublish', err);
      }
    }
    if (info.topic === msg.topic && info.payload === msg.payload) return msg;
    if (typeof info.topic !== 'string' || info.topic.length === 0 || /[+#\u0000]/.test(info.topic)) {
      this.log.warn({ topic: info.topic }, 'onPublish set an invalid topic name; message dropped');
      this.row[Counter.hookDropped]++;
      return null;
    }
    const out = Message.fromStrings(info.topic, Buffer.from(info.payload), msg.qos, msg.retain, msg.from);
    out.props = msg.props;
    out.expiryAt = msg.expiryAt;
    return out;
  }

  subscribed(client: ClientInfo, filter: string, qos: number): void {
    for (const h of this.subscribe)
      try {
        h.onSubscribe!(client, filter, qos);
      } catch (err) {
        this.failed(h, 'onSubscribe', err);
      }
  }

  disconnected(client: ClientInfo, reason: string): void {
    for (const h of this.disconnect)
      try {
        h.onDisconnect!(client, reason);
      } catch (err) {
        this.failed(h, 'onDisconnect', err);
      }
  }

  session(event: 'onSessionCreated' | 'onSessionResumed' | 'onSessionDiscarded', clientId: string): void {
    const list =
      event === 'onSessionCreated'
        ? this.sessionCreated
        : event === 'onSessionResumed'
          ? this.sessionResumed
          : this.sessionDiscarded;
    for (const h of list)
      try {
        h[event]!(clientId);
      } catch (err) {
        this.failed(h, event, err);
      }
  }

  messageDelivered(clientId: string, msg: Message, qos: number): void {
    const topic = msg.topic;
    for (const h of this.delivered)
      try {
        h.onMessageDelivered!(clientId, topic, qos);
      } catch (err) {
        this.failed(h, 'onMessageDelivered', err);
      }
  }

  messageDropped(clientId: string | null, topic: string, reason: DropReason): void {
    for (const h of this.dropped)
      try {
        h.onMessageDropped!(clientId, topic, reason);
      } catch (err) {
        this.failed(h, 'onMessageDropped', err);
      }
  }

  /** Returns false when a hook suppresses the will. */
  willAllowed(clientId: string, will: WillInfo): boolean {
    for (const h of this.will)
      try {
        if (h.onWill!(clientId, will) === false) return false;
      } catch (err) {
        this.failed(h, 'onWill', err);
      }
    return true;
  }
}

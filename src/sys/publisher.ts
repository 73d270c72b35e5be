import type { BrokerView } from '../broker/view.js';
import { metricsSnapshot } from '../metrics/emqx.js';
import type { BrokerPublish } from '../threads/messages.js';
import { sysTopicPrefix } from './events.js';

/**
 * EMQX's periodic `$SYS` messages, built on the main thread and routed by a shard like any
 * publish (so they reach subscribers on every shard, and the retained ones are stored):
 * - every `sys_topics.sys_msg_interval`: `$SYS/brokers` (retained), `.../version` and
 *   `.../sysdescr` (retained), `.../stats/<name>` and `.../metrics/<name>` (dots as slashes);
 * - every `sys_topics.sys_heartbeat_interval`: `.../uptime` (ms) and `.../datetime` (RFC 3339).
 * Both also once at start. `$SYS` topics are not matched by a leading `#` or `+` [MQTT-4.7.2-1].
 */
export class SysPublisher {
  private tickTimer: NodeJS.Timeout | null = null;
  private heartbeatTimer: NodeJS.Timeout | null = null;

  constructor(private readonly broker: BrokerView) {}

  start(): void {
    this.schedule();
    if (this.broker.config['sys_topics.sys_msg_interval'] > 0) this.tick();
    if (this.broker.config['sys_topics.sys_heartbeat_interval'] > 0) this.heartbeat();
  }

  /** (Re)arms the timers from the current config (after a reload). */
  schedule(): void {
    this.stop();
    const cfg = this.broker.config;
    const tick = cfg['sys_topics.sys_msg_interval'] * 1000;
    const beat = cfg['sys_topics.sys_heartbeat_interval'] * 1000;
    if (tick > 0) this.tickTimer = setInterval(() => this.tick(), tick).unref();
    if (beat > 0) this.heartbeatTimer = setInterval(() => this.heartbeat(), beat).unref();
  }

  stop(): void {
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.tickTimer = this.heartbeatTimer = null;
  }

  tick(): void {
    const b = this.broker;
    const sys = sysTopicPrefix(b.config['node.name']);
    const out: BrokerPublish[] = [
      msg('$SYS/brokers', runningNodes(b).join(','), true),
      msg(`${sys}/version`, b.version, true),
      msg(`${sys}/sysdescr`, b.sysdescr, true),
    ];
    for (const [name, v] of Object.entries(b.stats.sample())) {
      out.push(msg(`${sys}/stats/${name.replaceAll('.', '/')}`, String(Math.round(v)), false));
    }
    for (const [name, v] of Object.entries(metricsSnapshot(b.counters))) {
      out.push(msg(`${sys}/metrics/${name.replaceAll('.', '/')}`, String(Math.round(v)), false));
    }
    b.publishInternal(out);
  }

  heartbeat(): void {
    const b = this.broker;
    const sys = sysTopicPrefix(b.config['node.name']);
    b.publishInternal([
      msg(`${sys}/uptime`, String(Date.now() - b.startedAt), false),
      msg(`${sys}/datetime`, rfc3339(new Date()), false),
    ]);
  }
}

const utf8 = new TextEncoder();

function msg(topic: string, payload: string, retain: boolean): BrokerPublish {
  // An exact-size buffer of its own: posting a view of Buffer's shared pool would copy the pool.
  return { topic, payload: utf8.encode(payload), qos: 0, retain, sys: true };
}

/** Local time with its UTC offset, as EMQX's datetime: 2024-05-01T12:00:00.123+02:00 */
export function rfc3339(d: Date): string {
  const off = -d.getTimezoneOffset();
  const pad = (n: number, w = 2) => String(Math.trunc(Math.abs(n))).padStart(w, '0');
  const sign = off >= 0 ? '+' : '-';
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}` +
    `:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}${sign}${pad(off / 60)}:${pad(off % 60)}`
  );
}

/** Running cluster nodes (this one first); this node alone without a cluster. */
function runningNodes(b: BrokerView): string[] {
  const self = b.config['node.name'];
  const others = b.clusterMembers().filter((m) => !m.self && m.status === 'running');
  return [self, ...others.map((m) => m.name)];
}

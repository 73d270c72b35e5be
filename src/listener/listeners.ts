import type { Config } from '../config/schema.js';

/** The four transports, as EMQX names its listener types. */
export type ListenerType = 'tcp' | 'ssl' | 'ws' | 'wss';
export const LISTENER_TYPES: readonly ListenerType[] = ['tcp', 'ssl', 'ws', 'wss'];

/** One configured listener (EMQX's `listeners.<type>.default`). */
export interface ListenerSpec {
  /** `tcp:default`, as EMQX shows it in the REST API */
  id: string;
  type: ListenerType;
  /** 0..3: the listener's cell in the shared connection counts (LISTENER_CONNECTIONS + index) */
  index: number;
  host: string;
  port: number;
}

/** Parses `host:port`, `[v6]:port` or a bare port; throws on anything else. */
export function parseBind(bind: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]:|([^:[\]]*):)?(\d{1,5})$/.exec(bind.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) throw new Error(`bind '${bind}' is not host:port, [ipv6]:port or a port`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/** The key of a listener's option, e.g. `key('ssl', 'ssl_options.certfile')`. */
export function listenerKey<T extends ListenerType>(type: T, option: string): keyof Config {
  return `listeners.${type}.default.${option}` as keyof Config;
}

/**
 * The listeners that run: enabled, and for ssl/wss only when a certificate and key are set.
 * The tcp listener's address is listener.host:listener.port unless its bind is set.
 */
export function enabledListeners(cfg: Config): ListenerSpec[] {
  const out: ListenerSpec[] = [];
  LISTENER_TYPES.forEach((type, index) => {
    if (!cfg[listenerKey(type, 'enable')]) return;
    if (type === 'ssl' || type === 'wss') {
      if (!cfg[listenerKey(type, 'ssl_options.certfile')] || !cfg[listenerKey(type, 'ssl_options.keyfile')])
        return;
    }
    const bind = String(cfg[listenerKey(type, 'bind')]);
    const { host, port } =
      type === 'tcp' && bind === ''
        ? { host: cfg['listener.host'], port: cfg['listener.port'] }
        : parseBind(bind);
    out.push({ id: `${type}:default`, type, index, host, port });
  });
  return out;
}

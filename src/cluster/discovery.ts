import { promises as dns } from 'node:dns';
import { networkInterfaces } from 'node:os';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';

/** host:port with IPv6 hosts in brackets. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The host peers reach this node on: cluster.advertise, else POD_IP (Kubernetes downward API),
 * else the first non-loopback IPv4 address; 127.0.0.1 only when the machine has no other.
 */
export function advertiseHost(config: Config, env: NodeJS.ProcessEnv = process.env): string {
  if (config['cluster.advertise']) return config['cluster.advertise'];
  if (env.POD_IP) return env.POD_IP;
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

/** Parses `host:port,host,[::1]:port` (a missing port is cluster.port). */
export function parseSeeds(seeds: string, defaultPort: number): string[] {
  const out: string[] = [];
  for (const raw of seeds.split(',')) {
    const s = raw.trim();
    if (!s) continue;
    const m = s.match(/^\[([^\]]+)\](?::(\d+))?$/) ?? s.match(/^([^:]+)(?::(\d+))?$/);
    if (!m) throw new Error(`bad cluster seed '${s}': expected host:port`);
    out.push(hostPort(m[1], m[2] ? Number(m[2]) : defaultPort));
  }
  return out;
}

/** Where the seeds come from; asked for addresses every join round. */
export interface Discovery {
  start(): Promise<void>;
  addresses(): Promise<string[]>;
  stop(): Promise<void>;
}

/** static and dns resolve every round; k8s keeps a watched list (k8s.ts, loaded only for it). */
export function createDiscovery(config: Config, log: Logger): Discovery {
  if (config['cluster.discovery'] === 'k8s') {
    let k: import('./k8s.js').K8sDiscovery | null = null;
    return {
      start: async () => {
        const { K8sDiscovery } = await import('./k8s.js');
        k = new K8sDiscovery(config, log);
        await k.start();
      },
      addresses: async () => k?.addresses() ?? [],
      stop: async () => k?.stop(),
    };
  }
  return { start: async () => {}, addresses: () => discover(config), stop: async () => {} };
}

/** Addresses (host:port) of the cluster services to try joining, asked again every round. */
export async function discover(config: Config): Promise<string[]> {
  const port = config['cluster.port'];
  switch (config['cluster.discovery']) {
    case 'static':
      return parseSeeds(config['cluster.static.seeds'], port);
    case 'dns': {
      const name = config['cluster.dns.name'];
      if (!name) return [];
      if (config['cluster.dns.record_type'] === 'srv') {
        const records = await dns.resolveSrv(name);
        return records.map((r) => hostPort(r.name, r.port));
      }
      const [v4, v6] = await Promise.all([
        dns.resolve4(name).catch(() => [] as string[]),
        dns.resolve6(name).catch(() => [] as string[]),
      ]);
      return [...v4, ...v6].map((h) => hostPort(h, port));
    }
    default:
      return [];
  }
}

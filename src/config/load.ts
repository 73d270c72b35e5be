import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { type Config, defaults, type OptionKey, type OptionSpec, SCHEMA } from './schema.js';

export class ConfigError extends Error {}

const SPECS: Record<string, OptionSpec> = SCHEMA;

/** Coerces and checks one value; throws ConfigError naming the key and the source. */
function coerce(key: string, raw: unknown, source: string): number | string | boolean {
  const spec = SPECS[key];
  if (!spec) throw new ConfigError(`unknown option '${key}' (from ${source})`);
  let v: unknown = raw;
  if (spec.type === 'number') {
    if (typeof v === 'string' && v.trim() !== '') v = Number(v);
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      throw new ConfigError(`option '${key}' must be a number, got ${JSON.stringify(raw)} (from ${source})`);
    }
    if (spec.integer && !Number.isInteger(v)) {
      throw new ConfigError(`option '${key}' must be an integer, got ${v} (from ${source})`);
    }
    if ((spec.min !== undefined && v < spec.min) || (spec.max !== undefined && v > spec.max)) {
      throw new ConfigError(
        `option '${key}' must be between ${spec.min} and ${spec.max}, got ${v} (from ${source})`,
      );
    }
  } else if (spec.type === 'boolean') {
    if (v === 'true') v = true;
    else if (v === 'false') v = false;
    if (typeof v !== 'boolean') {
      throw new ConfigError(
        `option '${key}' must be true or false, got ${JSON.stringify(raw)} (from ${source})`,
      );
    }
  } else {
    if (typeof v !== 'string') {
      throw new ConfigError(`option '${key}' must be a string, got ${JSON.stringify(raw)} (from ${source})`);
    }
    if (spec.choices && !spec.choices.includes(v)) {
      throw new ConfigError(
        `option '${key}' must be one of ${spec.choices.join(', ')}, got '${v}' (from ${source})`,
      );
    }
  }
  return v as number | string | boolean;
}

/** Flattens `{listener: {port: 1}}` into `listener.port`. */
function flatten(obj: unknown, prefix: string, out: Record<string, unknown>): void {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    out[prefix] = obj;
    return;
  }
  for (const [k, v] of Object.entries(obj as Record<string, unknown>)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && !(key in SPECS)) flatten(v, key, out);
    else out[key] = v;
  }
}

/** Options given programmatically (embedding, tests): nested or flat keys. */
export type ConfigInput = Partial<Config> | Record<string, unknown>;

export interface LoadSources {
  argv?: readonly string[];
  env?: NodeJS.ProcessEnv;
  overrides?: ConfigInput;
}

/**
 * Resolves the configuration: defaults < config file (--config or EMQX_CONFIG) < environment
 * (EMQX_LISTENER__PORT=1884: `EMQX_` prefix, `__` for nesting, as EMQX does) < CLI flags
 * (--port, --listener.port=…) < programmatic overrides.
 */
export function loadConfig(sources: LoadSources = {}): Config {
  const cfg = defaults() as Record<string, unknown>;
  const env = sources.env ?? {};
  const argv = sources.argv ?? [];

  const cli: [string, string][] = [];
  let file = env.EMQX_CONFIG;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new ConfigError(`unexpected argument '${arg}'`);
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    let value: string | undefined = eq > 0 ? arg.slice(eq + 1) : undefined;
    if (value === undefined) {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) value = 'true';
      else value = argv[++i];
    }
    if (name === 'config') file = value;
    else cli.push([name, value]);
  }

  if (file) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new ConfigError(`cannot read config file ${file}: ${(e as Error).message}`);
    }
    const flat: Record<string, unknown> = {};
    flatten(parsed, '', flat);
    for (const [k, v] of Object.entries(flat)) cfg[k] = coerce(k, v, file);
  }

  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith('EMQX_') || name === 'EMQX_CONFIG' || value === undefined) continue;
    const key = name.slice(5).toLowerCase().split('__').join('.');
    // Kubernetes injects EMQX_SERVICE_HOST & co. for a Service named "emqx": variables that
    // name no option are not ours, so they are ignored rather than fatal.
    if (!(key in SPECS)) continue;
    cfg[key] = coerce(key, value, `environment ${name}`);
  }

  const byFlag = new Map<string, string>();
  for (const [k, spec] of Object.entries(SPECS)) if (spec.flag) byFlag.set(spec.flag, k);
  for (const [name, value] of cli) {
    const key = byFlag.get(name) ?? name;
    cfg[key] = coerce(key, value, `flag --${name}`);
  }

  if (sources.overrides) {
    const flat: Record<string, unknown> = {};
    flatten(sources.overrides, '', flat);
    for (const [k, v] of Object.entries(flat)) cfg[k] = coerce(k, v, 'options');
  }
  return cfg as Config;
}

/** CPUs this process may use: the cgroup v2/v1 CPU quota (a Kubernetes limit) or the CPU count. */
export function usableCpus(): number {
  const cpus = availableParallelism();
  let quota = Number.POSITIVE_INFINITY;
  try {
    const [max, period] = readFileSync('/sys/fs/cgroup/cpu.max', 'utf8').trim().split(/\s+/);
    if (max !== 'max') quota = Number(max) / Number(period);
  } catch {
    try {
      const q = Number(readFileSync('/sys/fs/cgroup/cpu/cpu.cfs_quota_us', 'utf8'));
      const p = Number(readFileSync('/sys/fs/cgroup/cpu/cpu.cfs_period_us', 'utf8'));
      if (q > 0 && p > 0) quota = q / p;
    } catch {
      // no cgroup limit visible
    }
  }
  return Math.max(1, Math.min(cpus, Math.ceil(quota)));
}

export function shardCount(cfg: Config): number {
  return cfg['node.shards'] > 0 ? cfg['node.shards'] : usableCpus();
}

export type { Config, OptionKey };

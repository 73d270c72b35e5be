/**
 * HTTP helpers for the operating tests (metrics, health, REST API): real requests to the
 * broker's servers, and a parser for the Prometheus text format.
 */
import type { Broker } from '../../src/broker/broker.js';

/** Parsed Prometheus exposition: `name` or `name{label="v",...}` → value, plus TYPE lines. */
export interface Scrape {
  values: Map<string, number>;
  types: Map<string, string>;
  /** value of a series; throws if it is not exposed */
  get(series: string): number;
}

export function parsePrometheus(text: string): Scrape {
  const values = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name, type);
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    const v = line.slice(sp + 1);
    values.set(line.slice(0, sp), v === '+Inf' ? Number.POSITIVE_INFINITY : Number(v));
  }
  return {
    values,
    types,
    get(series: string): number {
      const v = values.get(series);
      if (v === undefined) throw new Error(`series ${series} is not exposed`);
      return v;
    },
  };
}

export async function scrape(broker: Broker, path = '/metrics'): Promise<Scrape> {
  const res = await fetch(`http://127.0.0.1:${broker.metricsPort}${path}`);
  if (res.status !== 200) throw new Error(`scrape ${path}: HTTP ${res.status}`);
  return parsePrometheus(await res.text());
}

export function basicAuth(key: string, secret: string): string {
  return `Basic ${Buffer.from(`${key}:${secret}`).toString('base64')}`;
}

export interface ApiResponse {
  status: number;
  headers: Headers;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: JSON bodies are checked field by field in tests
  json: any;
}

/** A REST API call with the broker's API key unless `auth` says otherwise (null: no header). */
export async function api(
  broker: Broker,
  method: string,
  path: string,
  opts: { body?: unknown; auth?: string | null } = {},
): Promise<ApiResponse> {
  const headers: Record<string, string> = {};
  const auth =
    opts.auth === undefined ? basicAuth(broker.credentials.key, broker.credentials.secret) : opts.auth;
  if (auth !== null) headers.authorization = auth;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`http://127.0.0.1:${broker.apiPort}/api/v5${path}`, {
    method,
    headers,
    body:
      opts.body === undefined
        ? undefined
        : typeof opts.body === 'string'
          ? opts.body
          : JSON.stringify(opts.body),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

export async function httpGet(port: number, path: string): Promise<{ status: number; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, text: await res.text() };
}

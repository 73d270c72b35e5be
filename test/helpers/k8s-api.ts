/**
 * A small stand-in for the Kubernetes API server over loopback HTTP, serving what
 * `@kubernetes/client-node`'s EndpointSlice informer calls: the namespaced EndpointSlice list
 * and its watch (`?watch=true&resourceVersion=…`, newline-delimited JSON events), with bearer
 * token auth. The nodes run the real client against it (KUBECONFIG points here). Every request
 * is recorded so tests can check what the broker asks of the API (its RBAC needs).
 */

import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export interface ApiRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  auth: string;
}

interface Event {
  rv: number;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: Record<string, unknown>;
}

export class FakeKubeApi {
  readonly requests: ApiRequest[] = [];
  /** Lists answered 503 before a real answer (the client must retry) */
  failLists = 0;
  private readonly slices = new Map<string, Record<string, unknown>>();
  private readonly events: Event[] = [];
  private readonly watchers = new Set<{ res: ServerResponse }>();
  private rv = 100;
  private server: Server | null = null;
  port = 0;

  constructor(
    readonly namespace: string,
    readonly service: string,
    readonly token: string,
  ) {}

  get path(): string {
    return `/apis/discovery.k8s.io/v1/namespaces/${this.namespace}/endpointslices`;
  }

  get watches(): number {
    return this.watchers.size;
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => this.handle(req, res));
    this.server = server;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    this.port = (server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const w of this.watchers) w.res.destroy();
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  /**
   * A kubeconfig for this server whose context carries the namespace (as in-cluster config does).
   * The client refuses plain http unless TLS verification is off (there is no TLS to verify).
   */
  writeKubeconfig(dir: string): string {
    const file = join(dir, 'kubeconfig.yaml');
    writeFileSync(
      file,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        `- name: stand-in\n  cluster:\n    server: http://127.0.0.1:${this.port}\n    insecure-skip-tls-verify: true`,
        'users:',
        `- name: broker\n  user:\n    token: ${this.token}`,
        'contexts:',
        `- name: test\n  context:\n    cluster: stand-in\n    user: broker\n    namespace: ${this.namespace}`,
        'current-context: test',
        '',
      ].join('\n'),
    );
    return file;
  }

  /** Adds or replaces one EndpointSlice of the service: `addresses` on cluster port `port`. */
  putSlice(name: string, addresses: string[], port: number, conditions: Record<string, boolean> = {}): void {
    const type = this.slices.has(name) ? 'MODIFIED' : 'ADDED';
    const rv = ++this.rv;
    const slice = {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name,
        namespace: this.namespace,
        resourceVersion: String(rv),
        labels: { 'kubernetes.io/service-name': this.service },
      },
      addressType: 'IPv4',
      endpoints: addresses.map((a) => ({ addresses: [a], conditions: { ready: true, ...conditions } })),
      ports: [
        { name: 'mqtt', port: 1883, protocol: 'TCP' },
        { name: 'cluster', port, protocol: 'TCP' },
      ],
    };
    this.slices.set(name, slice);
    this.emit({ rv, type, object: slice });
  }

  deleteSlice(name: string): void {
    const slice = this.slices.get(name);
    if (!slice) return;
    this.slices.delete(name);
    const rv = ++this.rv;
    const object = { ...slice, metadata: { ...(slice.metadata as object), resourceVersion: String(rv) } };
    this.emit({ rv, type: 'DELETED', object });
  }

  private emit(e: Event): void {
    this.events.push(e);
    for (const w of this.watchers) w.res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const query = Object.fromEntries(url.searchParams);
    const auth = req.headers.authorization ?? '';
    this.requests.push({ method: req.method ?? '', path: url.pathname, query, auth });
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (auth !== `Bearer ${this.token}`)
      return json(401, { kind: 'Status', code: 401, reason: 'Unauthorized' });
    const selector = `kubernetes.io/service-name=${this.service}`;
    if (req.method !== 'GET' || url.pathname !== this.path || query.labelSelector !== selector) {
      return json(404, { kind: 'Status', code: 404, reason: 'NotFound' });
    }
    if (query.watch === 'true') {
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
      res.flushHeaders(); // as the API server: the watch is open before any event
      const from = Number(query.resourceVersion || 0);
      for (const e of this.events) {
        if (e.rv > from) res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
      }
      const w = { res };
      this.watchers.add(w);
      res.on('close', () => this.watchers.delete(w));
      return;
    }
    if (this.failLists > 0) {
      this.failLists--;
      return json(503, { kind: 'Status', code: 503, reason: 'ServiceUnavailable' });
    }
    json(200, {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSliceList',
      metadata: { resourceVersion: String(this.rv) },
      items: [...this.slices.values()],
    });
  }
}

import type { DiscoveryV1Api, KubeConfig, V1EndpointSlice } from '@kubernetes/client-node';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { hostPort } from './discovery.js';

/** Restart delay after a failed list or watch: doubles from 500 ms to 10 s. */
const MIN_RETRY_MS = 500;
const MAX_RETRY_MS = 10_000;

/**
 * `cluster.discovery = k8s`: the peers are the endpoints of the EndpointSlices of a (headless)
 * service, `kubernetes.io/service-name=<cluster.k8s.service>`, kept current by list + watch
 * (an informer of @kubernetes/client-node), so the RBAC it needs is `get/list/watch` on
 * `discovery.k8s.io` `endpointslices` in its namespace. Credentials and API server come from
 * the pod's service account (in cluster) or KUBECONFIG; the namespace from
 * `cluster.k8s.namespace`, else the service account's (the kubeconfig context's), else
 * `default`. EndpointSlices, not the core/v1 Endpoints EMQX reads: Endpoints is deprecated since
 * Kubernetes 1.33.
 *
 * A terminating endpoint is left out; a not-ready one is not (the headless service publishes
 * not-ready addresses, so that pods can cluster before they are ready).
 */
export class K8sDiscovery {
  private readonly slices = new Map<string, string[]>();
  private informer: { start(): Promise<void>; stop(): Promise<void> } | null = null;
  private retryMs = MIN_RETRY_MS;
  private retryTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  namespace = '';

  constructor(
    private readonly config: Config,
    private readonly log: Logger,
  ) {}

  /** Starts list + watch; resolves once started (the first list may still fail and retry). */
  async start(): Promise<void> {
    const service = this.config['cluster.k8s.service'];
    if (!service) {
      this.log.error('cluster.discovery is k8s but cluster.k8s.service is empty: no peers');
      return;
    }
    // Loaded only for k8s discovery: the client is large and other modes never need it.
    const k8s = await import('@kubernetes/client-node');
    const kc: KubeConfig = new k8s.KubeConfig();
    kc.loadFromDefault();
    this.namespace =
      this.config['cluster.k8s.namespace'] ||
      kc.getContextObject(kc.getCurrentContext())?.namespace ||
      'default';
    const api: DiscoveryV1Api = kc.makeApiClient(k8s.DiscoveryV1Api);
    const labelSelector = `kubernetes.io/service-name=${service}`;
    const namespace = this.namespace;
    const informer = k8s.makeInformer<V1EndpointSlice>(
      kc,
      `/apis/discovery.k8s.io/v1/namespaces/${namespace}/endpointslices`,
      () => api.listNamespacedEndpointSlice({ namespace, labelSelector }),
      labelSelector,
    );
    const put = (s: V1EndpointSlice) => {
      this.retryMs = MIN_RETRY_MS; // a list or a watch event arrived: the API is reachable
      this.slices.set(s.metadata?.name ?? '', this.addressesOf(s));
    };
    informer.on('add', put);
    informer.on('update', put);
    informer.on('delete', (s) => this.slices.delete(s.metadata?.name ?? ''));
    informer.on('error', (err) => {
      if (this.stopped) return;
      this.log.warn(
        { err: String((err as Error)?.message ?? err), retryInMs: this.retryMs },
        'kubernetes endpointslices list/watch failed',
      );
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (!this.stopped) informer.start().catch(() => {});
      }, this.retryMs);
      this.retryTimer.unref();
      this.retryMs = Math.min(MAX_RETRY_MS, this.retryMs * 2);
    });
    this.informer = informer;
    this.log.info(
      { namespace, service, server: kc.getCurrentCluster()?.server },
      'kubernetes discovery started',
    );
    await informer.start().catch(() => {}); // a failure is reported through 'error' (retried)
  }

  /** host:port of every endpoint seen in the service's slices. */
  addresses(): string[] {
    const out: string[] = [];
    for (const list of this.slices.values()) out.push(...list);
    return out;
  }

  private addressesOf(s: V1EndpointSlice): string[] {
    const wanted = this.config['cluster.k8s.port_name'];
    const port = s.ports?.find((p) => p.name === wanted)?.port ?? this.config['cluster.port'];
    const out: string[] = [];
    for (const e of s.endpoints ?? []) {
      if (e.conditions?.terminating === true) continue;
      for (const a of e.addresses ?? []) out.push(hostPort(a, port));
    }
    return out;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    await this.informer?.stop().catch(() => {});
  }
}

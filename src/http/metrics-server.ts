import type { IncomingMessage, ServerResponse } from 'node:http';
import type { BrokerView } from '../broker/view.js';
import { sendJson, sendText } from './util.js';

/**
 * The metrics port (`metrics.port`, 8082): Prometheus text at `/metrics` and at EMQX's
 * `/api/v5/prometheus/stats`, and the Kubernetes probes `/healthz` (live: the main thread
 * answers) and `/readyz` (ready: MQTT listener up, every shard running, not shutting down).
 * Unauthenticated, as scrapers and kubelets expect; it exposes counts, never client data.
 */
export function metricsHandler(broker: BrokerView) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    void handle(broker, req, res).catch((err) => {
      broker.log.error({ err, url: req.url }, 'metrics endpoint failed');
      if (!res.headersSent) sendText(res, 500, 'internal error\n');
      else res.destroy();
    });
  };
}

async function handle(broker: BrokerView, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    sendText(res, 405, 'method not allowed\n');
    return;
  }
  switch (path) {
    case '/metrics':
    case '/api/v5/prometheus/stats': {
      const text = await broker.registry.metrics();
      sendText(res, 200, text, broker.registry.contentType);
      return;
    }
    case '/healthz':
      sendJson(res, 200, { status: 'ok' });
      return;
    case '/readyz': {
      const r = broker.readiness();
      sendJson(res, r.ready ? 200 : 503, { status: r.ready ? 'ready' : 'not ready', ...r });
      return;
    }
    default:
      sendText(res, 404, 'not found\n');
  }
}

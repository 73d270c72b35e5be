import { Gauge, type Registry } from 'prom-client';
import { Counter, type Counters, LISTENER_GAUGES } from './counters.js';

/** The transports' counters (src/listener/): name, help, counter cell; prometheus.ts registers them. */
export const TRANSPORT_COUNTERS: [string, string, number][] = [
  [
    'emqx_ts_tls_handshake_errors_total',
    'TLS handshakes that failed (not TLS, bad or missing client certificate, timeout)',
    Counter.tlsHandshakeErrors,
  ],
  [
    'emqx_ts_tls_peer_cert_refused_total',
    'Client certificates refused after the handshake (verify_peer)',
    Counter.tlsPeerCertRefused,
  ],
  [
    'emqx_ts_tls_cert_reloads_total',
    'TLS certificate files re-read on SIGHUP (per shard and listener)',
    Counter.tlsCertReloads,
  ],
  [
    'emqx_ts_tls_cert_reload_errors_total',
    'SIGHUP certificate reloads that failed (the old certificates kept)',
    Counter.tlsCertReloadErrors,
  ],
  [
    'emqx_ts_ws_upgrade_refused_total',
    'HTTP requests on a WebSocket listener refused (path, bad upgrade)',
    Counter.wsUpgradeRefused,
  ],
  [
    'emqx_ts_ws_protocol_errors_total',
    'WebSocket connections closed for bad or text frames or oversized messages',
    Counter.wsProtocolErrors,
  ],
  [
    'emqx_ts_proxy_protocol_errors_total',
    'Connections closed for a missing, malformed or late PROXY header',
    Counter.proxyProtocolErrors,
  ],
  [
    'emqx_ts_tunnels_opened_total',
    'TLS/WebSocket connections carried to their owner shard through a tunnel',
    Counter.tunnelsOpened,
  ],
  [
    'emqx_ts_tunnel_bytes_to_owner_total',
    'Bytes carried from terminating shards to owner shards',
    Counter.tunnelBytesToOwner,
  ],
  [
    'emqx_ts_tunnel_bytes_from_owner_total',
    'Bytes carried from owner shards back to terminating shards',
    Counter.tunnelBytesFromOwner,
  ],
  ['emqx_ts_tunnel_batches_total', 'Tunnel batches posted between shards', Counter.tunnelBatches],
  [
    'emqx_ts_tunnels_lost_total',
    'Tunnelled connections closed because the shard at the other end died',
    Counter.tunnelsLost,
  ],
  [
    'emqx_ts_listener_connections_refused_max_total',
    "Connections refused by a listener's own max_connections",
    Counter.listenerConnectionsRefusedMax,
  ],
];

/** Live connections per listener, read at scrape time. */
export function listenerGauge(counters: Counters, registers: Registry[]): void {
  new Gauge({
    name: 'emqx_ts_listener_connections',
    help: 'Live connections per listener',
    labelNames: ['listener'],
    registers,
    collect() {
      ['tcp', 'ssl', 'ws', 'wss'].forEach((type, i) => {
        this.set({ listener: `${type}:default` }, counters.total(LISTENER_GAUGES + i));
      });
    },
  });
}

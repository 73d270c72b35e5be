/**
 * The one place where every option, its type and its default live. The README's table is
 * generated from this (`npm run config:docs`) and a test checks they agree.
 */
export type OptionType = 'number' | 'string' | 'boolean';

export interface OptionSpec {
  type: OptionType;
  default: number | string | boolean;
  doc: string;
  /** Whole numbers only (ports, counts, sizes) */
  integer?: boolean;
  /** Inclusive bounds for numbers */
  min?: number;
  max?: number;
  /** Allowed values for strings */
  choices?: readonly string[];
  /** Short CLI flag name, e.g. `--port` */
  flag?: string;
}

export const SCHEMA = {
  'listener.host': {
    type: 'string',
    default: '0.0.0.0',
    doc: 'Address of the MQTT TCP listener',
    flag: 'host',
  },
  'listener.port': {
    type: 'number',
    integer: true,
    default: 1883,
    min: 0,
    max: 65535,
    doc: 'MQTT TCP port (0 = ephemeral)',
    flag: 'port',
  },
  'listener.backlog': {
    type: 'number',
    integer: true,
    default: 1024,
    min: 1,
    max: 65535,
    doc: 'TCP accept backlog',
  },
  'listener.connect_timeout': {
    type: 'number',
    default: 10,
    min: 1,
    max: 3600,
    doc: 'Seconds a new connection may take to send CONNECT',
  },
  'node.shards': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 32,
    doc: 'Shard worker threads; 0 = CPUs this process may use (cgroup quota aware)',
    flag: 'shards',
  },
  'node.name': {
    type: 'string',
    default: 'emqx-ts@127.0.0.1',
    doc: 'Node name (used in $SYS and cluster)',
    flag: 'name',
  },
  'node.shard_restart_intensity': {
    type: 'number',
    integer: true,
    default: 10,
    min: 1,
    max: 1000,
    doc: 'Shard restarts allowed within shard_restart_period before the broker gives up',
  },
  'node.shard_restart_period': {
    type: 'number',
    default: 60,
    min: 1,
    max: 86400,
    doc: 'Seconds of the restart-intensity window',
  },
  'node.shard_young_generation_mb': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 1024,
    doc: "Cap on each shard thread's V8 young generation, MiB (0 = V8's default, up to 48). A few MiB save about 1.5 KiB per idle connection and cost 10-40 % more CPU per QoS 1 message under load (docs/PERFORMANCE.md)",
  },
  'mqtt.max_packet_size': {
    type: 'number',
    integer: true,
    default: 1048576,
    min: 64,
    max: 268435455,
    doc: 'Largest accepted MQTT packet in bytes',
  },
  'mqtt.max_clientid_len': {
    type: 'number',
    integer: true,
    default: 65535,
    min: 23,
    max: 65535,
    doc: 'Longest accepted client id',
  },
  'mqtt.max_inflight': {
    type: 'number',
    integer: true,
    default: 32,
    min: 1,
    max: 65535,
    doc: 'QoS 1/2 messages sent to a client and not yet acknowledged',
  },
  'mqtt.max_awaiting_rel': {
    type: 'number',
    integer: true,
    default: 100,
    min: 1,
    max: 65535,
    doc: 'Inbound QoS 2 messages awaiting PUBREL per client',
  },
  'mqtt.max_mqueue_len': {
    type: 'number',
    integer: true,
    default: 1000,
    min: 0,
    max: 10000000,
    doc: 'Queued messages per session (offline or beyond inflight); oldest dropped when full',
  },
  'mqtt.mqueue_store_qos0': {
    type: 'boolean',
    default: true,
    doc: 'Queue QoS 0 messages for offline persistent sessions',
  },
  'mqtt.session_expiry_interval': {
    type: 'number',
    default: 7200,
    min: 0,
    max: 4294967295,
    doc: 'Seconds a disconnected persistent session is kept: MQTT 3 clean session 0, and the cap on an MQTT 5 Session Expiry Interval (returned in CONNACK when lower; 4294967295 lets 0xFFFFFFFF mean never)',
  },
  'mqtt.keepalive_multiplier': {
    type: 'number',
    default: 1.5,
    min: 1,
    max: 10,
    doc: 'Close after this many keep-alive intervals without a packet',
  },
  'mqtt.output_high_watermark': {
    type: 'number',
    integer: true,
    default: 1048576,
    min: 1024,
    max: 1073741824,
    doc: 'Bytes buffered for a slow client before QoS 0 is dropped and QoS 1/2 queued',
  },
  'mqtt.slow_consumer_timeout': {
    type: 'number',
    default: 1,
    min: 0,
    max: 3600,
    doc: 'Seconds a subscriber over mqtt.output_high_watermark may take no output before QoS 0 to it is dropped; until then its QoS 0 publishers are not read until it drains (0 = drop at once, no back-pressure)',
  },
  'mqtt.max_output_buffer': {
    type: 'number',
    integer: true,
    default: 4194304,
    min: 1024,
    max: 1073741824,
    doc: "Bytes of a connection's own unsent output (acks, PINGRESP, SUBACK, deliveries) beyond which its packets are no longer read until the output drains",
  },
  'force_shutdown.max_output_bytes': {
    type: 'number',
    integer: true,
    default: 67108864,
    min: 1024,
    max: 4294967296,
    doc: "Bytes of a connection's unsent output beyond which it is closed without DISCONNECT and counted (as EMQX's force_shutdown)",
  },
  'mqtt.max_qos_allowed': {
    type: 'number',
    default: 2,
    min: 0,
    max: 2,
    doc: 'Highest QoS accepted from publishers (MQTT 5 Maximum QoS)',
  },
  'mqtt.retain_available': {
    type: 'boolean',
    default: true,
    doc: 'Accept retained messages (MQTT 5 Retain Available)',
  },
  'mqtt.wildcard_subscription': { type: 'boolean', default: true, doc: 'Allow wildcard subscriptions' },
  'mqtt.shared_subscription': {
    type: 'boolean',
    default: true,
    doc: 'Allow shared subscriptions ($share/…, $queue/…)',
  },
  'mqtt.shared_subscription_strategy': {
    type: 'string',
    default: 'round_robin',
    choices: ['round_robin', 'random', 'sticky', 'hash_clientid', 'hash_topic'],
    doc: 'How a shared group picks the member for a message',
  },
  'mqtt.max_topic_alias': {
    type: 'number',
    default: 65535,
    min: 0,
    max: 65535,
    doc: 'Topic aliases a MQTT 5 client may use towards the broker (Topic Alias Maximum)',
  },
  'mqtt.receive_maximum': {
    type: 'number',
    default: 32,
    min: 1,
    max: 65535,
    doc: 'Unacknowledged QoS 1/2 PUBLISH a MQTT 5 client may send (Receive Maximum); more is 0x93',
  },
  'mqtt.server_keepalive': {
    type: 'number',
    default: 0,
    min: 0,
    max: 65535,
    doc: "Keep alive the broker imposes on MQTT 5 clients (Server Keep Alive); 0 = the client's",
  },
  'mqtt.response_information': {
    type: 'string',
    default: '',
    doc: 'Response Information prefix returned to MQTT 5 clients that request it; empty = none',
  },
  'log.level': {
    type: 'string',
    default: 'info',
    choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
    doc: 'Log level',
    flag: 'log-level',
  },
  'node.data_dir': {
    type: 'string',
    default: './data',
    doc: 'Directory for state the broker keeps between starts (the generated REST API key)',
  },
  'node.shutdown_drain_period': {
    type: 'number',
    default: 5,
    min: 0,
    max: 3600,
    doc: 'Seconds over which a graceful shutdown closes client connections (spread, not all at once)',
  },
  'mqtt.await_rel_timeout': {
    type: 'number',
    default: 300,
    min: 1,
    max: 4294967,
    doc: 'Seconds an inbound QoS 2 packet id waits for PUBREL before it is dropped',
  },
  'metrics.host': {
    type: 'string',
    default: '0.0.0.0',
    doc: 'Address of the HTTP server for Prometheus metrics and health probes',
  },
  'metrics.port': {
    type: 'number',
    integer: true,
    default: 8082,
    min: 0,
    max: 65535,
    doc: 'Port for /metrics, /api/v5/prometheus/stats, /healthz and /readyz (0 = ephemeral)',
  },
  'prometheus.enable_basic_auth': {
    type: 'boolean',
    default: false,
    doc: 'Require the API key for /api/v5/prometheus/stats on the REST API port (the metrics port never does)',
  },
  'api.host': { type: 'string', default: '0.0.0.0', doc: 'Address of the REST API (/api/v5)' },
  'api.port': {
    type: 'number',
    integer: true,
    default: 18083,
    min: 0,
    max: 65535,
    doc: 'REST API port (0 = ephemeral)',
  },
  'api.key': {
    type: 'string',
    default: '',
    doc: 'REST API key (basic-auth user); empty = generated at first start and kept in node.data_dir/api_key',
  },
  'api.secret': {
    type: 'string',
    default: '',
    doc: 'REST API secret (basic-auth password); set together with api.key',
  },
  'sys_topics.sys_msg_interval': {
    type: 'number',
    default: 60,
    min: 0,
    max: 86400,
    doc: 'Seconds between $SYS version/brokers/stats/metrics messages (0 = off; fractions allowed)',
  },
  'sys_topics.sys_heartbeat_interval': {
    type: 'number',
    default: 30,
    min: 0,
    max: 86400,
    doc: 'Seconds between $SYS uptime/datetime messages (0 = off; fractions allowed)',
  },
  'sys_topics.sys_event_messages.client_connected': {
    type: 'boolean',
    default: true,
    doc: 'Publish $SYS/brokers/{node}/clients/{clientid}/connected events',
  },
  'sys_topics.sys_event_messages.client_disconnected': {
    type: 'boolean',
    default: true,
    doc: 'Publish $SYS/brokers/{node}/clients/{clientid}/disconnected events',
  },
  // Hardening limits (issue #9): bounds that keep one client from exhausting a thread or the broker.
  'mqtt.max_topic_levels': {
    type: 'number',
    integer: true,
    default: 128,
    min: 1,
    max: 65536,
    doc: 'Most levels in a PUBLISH topic or a topic filter (as EMQX); more is DISCONNECT 0x90 / SUBACK 0x8F (MQTT 3: close / SUBACK 0x80)',
  },
  'retainer.max_retained_messages': {
    type: 'number',
    integer: true,
    default: 1000000,
    min: 0,
    max: 1000000000,
    doc: 'Most retained topics kept (0 = unlimited); a new retained topic beyond it is routed, not stored, and counted',
  },
  'retainer.flow_control.batch_read_number': {
    type: 'number',
    integer: true,
    default: 128,
    min: 1,
    max: 65535,
    doc: "Retained messages read from the store per batch for a new subscription (at most 64 KiB of payload); the next batch is read only once the subscriber's socket or inflight window took this one (EMQX's option; here never unbounded)",
  },
  'retainer.max_payload_size': {
    type: 'number',
    integer: true,
    default: 1048576,
    min: 0,
    max: 268435455,
    doc: 'Largest retained payload stored, bytes (0 = unlimited); a larger one is routed, not stored, and counted',
  },
  'listener.max_connections': {
    type: 'number',
    integer: true,
    default: 1024000,
    min: 0,
    max: 100000000,
    doc: 'Most concurrent MQTT connections over all shards (0 = unlimited); beyond it CONNACK 0x97 (MQTT 3: 0x03) and close',
  },
  'mqtt.max_subscriptions': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 100000000,
    doc: 'Most subscriptions per client (0 = unlimited, as EMQX); a new filter beyond it gets SUBACK 0x97 (MQTT 3: 0x80), counted',
  },
  'node.topic_index_max_nodes': {
    type: 'number',
    integer: true,
    default: 1048576,
    min: 16,
    max: 67108864,
    doc: 'Capacity of the shared topic index in trie nodes (one per distinct filter level; freed on unsubscribe); read at start',
  },
  'node.topic_index_arena_bytes': {
    type: 'number',
    integer: true,
    default: 33554432,
    min: 65536,
    max: 2147483640,
    doc: 'Bytes for the text of literal filter levels in the shared topic index (freed on unsubscribe); when full, SUBACK 0x97 (MQTT 3: 0x80); read at start',
  },
  // Cluster (issue #10): the cluster thread (src/cluster/) runs only when discovery is not none.
  'cluster.discovery': {
    type: 'string',
    default: 'none',
    choices: ['none', 'static', 'dns'],
    doc: 'How nodes find each other: none (single node, no cluster thread), static (cluster.static.seeds), dns (A or SRV records of cluster.dns.name). k8s is not implemented yet',
  },
  'cluster.static.seeds': {
    type: 'string',
    default: '',
    doc: 'Seed nodes for static discovery: comma-separated host:port of their cluster ports (a missing port means cluster.port); this node may be among them',
  },
  'cluster.dns.name': {
    type: 'string',
    default: '',
    doc: 'DNS name resolved for dns discovery, e.g. the headless service emqx-headless.default.svc.cluster.local',
  },
  'cluster.dns.record_type': {
    type: 'string',
    default: 'a',
    choices: ['a', 'srv'],
    doc: 'dns discovery: A/AAAA records (peers on cluster.port) or SRV records (target and port)',
  },
  'cluster.port': {
    type: 'number',
    integer: true,
    default: 8081,
    min: 0,
    max: 65535,
    doc: 'Port of the cluster service (Connect/gRPC over cleartext HTTP/2)',
  },
  'cluster.listen_host': {
    type: 'string',
    default: '0.0.0.0',
    doc: 'Address the cluster service listens on',
  },
  'cluster.advertise': {
    type: 'string',
    default: '',
    doc: 'Host peers use to reach this node; empty = the POD_IP environment variable, else the first non-loopback IPv4 address (127.0.0.1 only when there is none)',
  },
  'cluster.down_after': {
    type: 'number',
    default: 5,
    min: 0.2,
    max: 3600,
    doc: 'Seconds without a heartbeat after which a peer is down: its routes are dropped until it rejoins',
  },
  'cluster.max_inflight_bytes': {
    type: 'number',
    integer: true,
    default: 4194304,
    min: 65536,
    max: 1073741824,
    doc: 'Forwarded bytes sent to one peer and not yet acknowledged; beyond it batches wait in the queue',
  },
  'cluster.max_queue_bytes': {
    type: 'number',
    integer: true,
    default: 67108864,
    min: 65536,
    max: 4294967295,
    doc: 'Forwarded bytes waiting for one peer (its window full, or it is joining); beyond it new forwards are dropped and counted',
  },
} as const satisfies Record<string, OptionSpec>;

export type OptionKey = keyof typeof SCHEMA;

type ValueOf<S> = S extends { type: 'number' } ? number : S extends { type: 'boolean' } ? boolean : string;

/** Flat, fully-resolved configuration. Plain data: it is posted to every thread. */
export type Config = { -readonly [K in OptionKey]: ValueOf<(typeof SCHEMA)[K]> };

export function defaults(): Config {
  const out: Record<string, unknown> = {};
  for (const [k, spec] of Object.entries(SCHEMA)) out[k] = spec.default;
  return out as Config;
}

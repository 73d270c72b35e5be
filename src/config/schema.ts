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
    doc: 'Directory for state the broker keeps between starts: the durable store (sessions, queues, inflight, retained messages) and the generated REST API key',
  },
  'durability.mode': {
    type: 'string',
    default: 'sync',
    choices: ['sync', 'batched', 'none'],
    doc: 'sync: a QoS 1/2 PUBLISH is acked after it is committed for its persistent subscribers (one commit per event-loop turn); batched: committed within durability.flush_interval, acked at once; none: memory only (docs/DURABILITY.md)',
  },
  'durability.flush_interval': {
    type: 'number',
    default: 10,
    min: 0,
    max: 10000,
    doc: 'batched mode: ms writes wait to be committed together (the loss window on a crash)',
  },
  'durability.store': {
    type: 'string',
    default: 'lmdb',
    doc: 'Storage backend: lmdb (embedded, in node.data_dir), or a module path exporting openStore (src/storage/types.ts)',
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
    choices: ['none', 'static', 'dns', 'k8s'],
    doc: 'How nodes find each other: none (single node, no cluster thread), static (cluster.static.seeds), dns (A or SRV records of cluster.dns.name), k8s (EndpointSlices of the service cluster.k8s.service, list + watch)',
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
  'cluster.k8s.service': {
    type: 'string',
    default: '',
    doc: 'k8s discovery: the (headless) service whose EndpointSlices list the nodes (label kubernetes.io/service-name); needs get/list/watch on discovery.k8s.io endpointslices (k8s/emqx-ts.yaml)',
  },
  'cluster.k8s.namespace': {
    type: 'string',
    default: '',
    doc: "k8s discovery: the service's namespace; empty = the pod's service account namespace (or the KUBECONFIG context's), else default",
  },
  'cluster.k8s.port_name': {
    type: 'string',
    default: 'cluster',
    doc: 'k8s discovery: name of the EndpointSlice port that is the cluster service; a slice without it means cluster.port',
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
  'cluster.forward_ack_timeout': {
    type: 'number',
    default: 5,
    min: 0.1,
    max: 3600,
    doc: 'Seconds a forwarded batch may wait for the peer to accept it; past it the stream is deemed stalled and reopened, and the held acks of its QoS 1/2 publishes go as failed (MQTT 5: reason 0x80). Reloadable',
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
  // Hooks, authentication and authorization (issue #12: src/hooks, src/auth, src/authz).
  'hooks.modules': {
    type: 'string',
    default: '',
    doc: 'Comma-separated hook modules (paths or package names) loaded in every shard; see README "Hooks"',
  },
  'auth.allow_anonymous': {
    type: 'boolean',
    default: true,
    doc: 'Let in clients no authentication provider decided about (a warning is logged at start when true; set false in production)',
  },
  'auth.chain': {
    type: 'string',
    default: '',
    doc: 'Authentication providers in order, comma-separated: built_in_database, jwt, http; empty = those configured, in that order',
  },
  'auth.timeout': {
    type: 'number',
    default: 5,
    min: 0.01,
    max: 300,
    doc: 'Seconds the authentication chain may take for one CONNECT; beyond it the client is refused and counted',
  },
  'auth.users_file': {
    type: 'string',
    default: '',
    doc: 'Built-in users: a JSON or CSV file of username, password_hash, is_superuser (write it with `npm run passwd`)',
  },
  'auth.password_hash': {
    type: 'string',
    default: 'pbkdf2',
    choices: ['pbkdf2', 'bcrypt', 'sha256'],
    doc: 'Hash for new passwords (`npm run passwd`); verification reads the algorithm from each stored hash',
  },
  'auth.hash_threads': {
    type: 'number',
    integer: true,
    default: 1,
    min: 1,
    max: 16,
    doc: 'Password-hash threads per shard (a piscina pool, started on first use)',
  },
  'auth.jwt.secret': {
    type: 'string',
    default: '',
    doc: 'JWT authentication: HMAC secret (HS256/384/512)',
  },
  'auth.jwt.public_key_file': {
    type: 'string',
    default: '',
    doc: 'JWT authentication: PEM public key file (RS*, ES*, PS*, EdDSA per auth.jwt.algorithm)',
  },
  'auth.jwt.jwks_file': {
    type: 'string',
    default: '',
    doc: "JWT authentication: a JWKS JSON file; the key is picked by the token's kid",
  },
  'auth.jwt.algorithm': {
    type: 'string',
    default: 'RS256',
    doc: 'JWT authentication: the algorithm of auth.jwt.public_key_file',
  },
  'auth.jwt.from': {
    type: 'string',
    default: 'password',
    choices: ['password', 'username'],
    doc: 'JWT authentication: the CONNECT field that carries the token',
  },
  'auth.http.url': {
    type: 'string',
    default: '',
    doc: 'HTTP authentication: URL POSTed {clientid, username, password, peerhost}; the JSON answer {result: allow|deny|ignore, is_superuser} decides',
  },
  'auth.http.timeout': {
    type: 'number',
    default: 5,
    min: 0.01,
    max: 300,
    doc: 'HTTP authentication: seconds to wait for the answer; no answer = deny',
  },
  'auth.clientid_must_match_username': {
    type: 'boolean',
    default: false,
    doc: "Refuse (CONNACK 0x87 / 5) a client whose client id differs from its username: no one can take over another user's session",
  },
  'authz.acl_file': {
    type: 'string',
    default: '',
    doc: 'An ACL file in EMQX acl.conf syntax ({allow|deny, Who, Action, Topics}.); first match wins',
  },
  'authz.no_match': {
    type: 'string',
    default: 'allow',
    choices: ['allow', 'deny'],
    doc: 'Authorization when no rule matched',
  },
  'authz.deny_action': {
    type: 'string',
    default: 'ignore',
    choices: ['ignore', 'disconnect'],
    doc: 'On a denied PUBLISH/SUBSCRIBE: refuse it (ignore) or also disconnect the client',
  },
  'authz.cache.enable': {
    type: 'boolean',
    default: true,
    doc: 'Cache authorization results per client',
  },
  'authz.cache.max_size': {
    type: 'number',
    integer: true,
    default: 32,
    min: 1,
    max: 1048576,
    doc: 'Cached authorization results per client (oldest dropped)',
  },
  'authz.cache.ttl': {
    type: 'number',
    default: 60,
    min: 0,
    max: 86400,
    doc: 'Seconds a cached authorization result is used',
  },
  // Listeners (issue #13): one module per transport in src/listener/ (tcp, ssl, ws, wss).
  'listeners.tcp.default.enable': {
    type: 'boolean',
    default: true,
    doc: 'Run the plain MQTT TCP listener',
  },
  'listeners.tcp.default.bind': {
    type: 'string',
    default: '',
    doc: 'Address and port of the tcp listener: host:port, [ipv6]:port or a port; empty = listener.host:listener.port (the older keys, kept)',
  },
  'listeners.tcp.default.max_connections': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 100000000,
    doc: 'Most concurrent connections on the tcp listener (0 = only listener.max_connections); beyond it CONNACK 0x97 (MQTT 3: 0x03)',
  },
  'listeners.tcp.default.proxy_protocol': {
    type: 'boolean',
    default: false,
    doc: 'Expect a PROXY protocol v1 or v2 header (HAProxy, AWS NLB, …) before MQTT: the address it carries is the client address in logs, $SYS events, the REST API and ACLs',
  },
  'listeners.tcp.default.proxy_protocol_timeout': {
    type: 'number',
    default: 3,
    min: 0.1,
    max: 3600,
    doc: 'Seconds a connection on a proxy_protocol listener may take to send its PROXY header',
  },
  'listeners.ssl.default.enable': {
    type: 'boolean',
    default: true,
    doc: 'Run the MQTT over TLS listener (it starts only when its certfile and keyfile are set)',
  },
  'listeners.ssl.default.bind': {
    type: 'string',
    default: '0.0.0.0:8883',
    doc: 'Address and port of the ssl listener: host:port, [ipv6]:port or a port (all addresses); port 0 = ephemeral',
  },
  'listeners.ssl.default.max_connections': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 100000000,
    doc: 'Most concurrent connections on the ssl listener (0 = only listener.max_connections); beyond it CONNACK 0x97 (MQTT 3: 0x03)',
  },
  'listeners.ssl.default.ssl_options.certfile': {
    type: 'string',
    default: '',
    doc: 'PEM certificate chain of the ssl listener (re-read on SIGHUP)',
  },
  'listeners.ssl.default.ssl_options.keyfile': {
    type: 'string',
    default: '',
    doc: 'PEM private key of the ssl listener (re-read on SIGHUP)',
  },
  'listeners.ssl.default.ssl_options.cacertfile': {
    type: 'string',
    default: '',
    doc: 'PEM CA bundle that client certificates of the ssl listener are verified against; empty = the system CAs',
  },
  'listeners.ssl.default.ssl_options.versions': {
    type: 'string',
    default: 'tlsv1.3,tlsv1.2',
    doc: 'TLS versions the ssl listener accepts, comma-separated (tlsv1.2, tlsv1.3)',
  },
  'listeners.ssl.default.ssl_options.ciphers': {
    type: 'string',
    default: '',
    doc: "TLS 1.2 cipher list (OpenSSL names, comma- or colon-separated) of the ssl listener; empty = Node's default",
  },
  'listeners.ssl.default.ssl_options.verify': {
    type: 'string',
    default: 'verify_none',
    choices: ['verify_none', 'verify_peer'],
    doc: 'verify_peer asks clients of the ssl listener for a certificate and refuses one the CA does not sign (mutual TLS)',
  },
  'listeners.ssl.default.ssl_options.fail_if_no_peer_cert': {
    type: 'boolean',
    default: false,
    doc: 'With verify_peer: also refuse ssl clients that send no certificate',
  },
  'listeners.ssl.default.ssl_options.handshake_timeout': {
    type: 'number',
    default: 15,
    min: 1,
    max: 3600,
    doc: 'Seconds a ssl client may take to complete the TLS handshake',
  },
  'listeners.ws.default.enable': {
    type: 'boolean',
    default: false,
    doc: 'Run the MQTT over WebSocket listener (off by default so that a second broker on the host does not fight for 8083)',
  },
  'listeners.ws.default.bind': {
    type: 'string',
    default: '0.0.0.0:8083',
    doc: 'Address and port of the ws listener: host:port, [ipv6]:port or a port (all addresses); port 0 = ephemeral',
  },
  'listeners.ws.default.max_connections': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 100000000,
    doc: 'Most concurrent connections on the ws listener (0 = only listener.max_connections); beyond it CONNACK 0x97 (MQTT 3: 0x03)',
  },
  'listeners.ws.default.websocket.mqtt_path': {
    type: 'string',
    default: '/mqtt',
    doc: 'HTTP path the ws listener upgrades to MQTT over WebSocket; other paths get 404',
  },
  'listeners.ws.default.websocket.max_frame_size': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 268435455,
    doc: 'Largest WebSocket message the ws listener accepts, bytes (0 = mqtt.max_packet_size); larger is close 1009',
  },
  'listeners.wss.default.enable': {
    type: 'boolean',
    default: true,
    doc: 'Run the MQTT over secure WebSocket listener (it starts only when its certfile and keyfile are set)',
  },
  'listeners.wss.default.bind': {
    type: 'string',
    default: '0.0.0.0:8084',
    doc: 'Address and port of the wss listener: host:port, [ipv6]:port or a port (all addresses); port 0 = ephemeral',
  },
  'listeners.wss.default.max_connections': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 100000000,
    doc: 'Most concurrent connections on the wss listener (0 = only listener.max_connections); beyond it CONNACK 0x97 (MQTT 3: 0x03)',
  },
  'listeners.wss.default.websocket.mqtt_path': {
    type: 'string',
    default: '/mqtt',
    doc: 'HTTP path the wss listener upgrades to MQTT over WebSocket; other paths get 404',
  },
  'listeners.wss.default.websocket.max_frame_size': {
    type: 'number',
    integer: true,
    default: 0,
    min: 0,
    max: 268435455,
    doc: 'Largest WebSocket message the wss listener accepts, bytes (0 = mqtt.max_packet_size); larger is close 1009',
  },
  'listeners.wss.default.ssl_options.certfile': {
    type: 'string',
    default: '',
    doc: 'PEM certificate chain of the wss listener (re-read on SIGHUP)',
  },
  'listeners.wss.default.ssl_options.keyfile': {
    type: 'string',
    default: '',
    doc: 'PEM private key of the wss listener (re-read on SIGHUP)',
  },
  'listeners.wss.default.ssl_options.cacertfile': {
    type: 'string',
    default: '',
    doc: 'PEM CA bundle that client certificates of the wss listener are verified against; empty = the system CAs',
  },
  'listeners.wss.default.ssl_options.versions': {
    type: 'string',
    default: 'tlsv1.3,tlsv1.2',
    doc: 'TLS versions the wss listener accepts, comma-separated (tlsv1.2, tlsv1.3)',
  },
  'listeners.wss.default.ssl_options.ciphers': {
    type: 'string',
    default: '',
    doc: "TLS 1.2 cipher list (OpenSSL names, comma- or colon-separated) of the wss listener; empty = Node's default",
  },
  'listeners.wss.default.ssl_options.verify': {
    type: 'string',
    default: 'verify_none',
    choices: ['verify_none', 'verify_peer'],
    doc: 'verify_peer asks clients of the wss listener for a certificate and refuses one the CA does not sign (mutual TLS)',
  },
  'listeners.wss.default.ssl_options.fail_if_no_peer_cert': {
    type: 'boolean',
    default: false,
    doc: 'With verify_peer: also refuse wss clients that send no certificate',
  },
  'listeners.wss.default.ssl_options.handshake_timeout': {
    type: 'number',
    default: 15,
    min: 1,
    max: 3600,
    doc: 'Seconds a wss client may take to complete the TLS handshake',
  },
  'mqtt.peer_cert_as_username': {
    type: 'string',
    default: 'disabled',
    choices: ['disabled', 'cn', 'dn'],
    doc: "TLS listeners: use the client certificate's Common Name (cn) or whole subject (dn) as the username, replacing the CONNECT's",
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

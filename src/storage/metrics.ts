import { Counter } from '../metrics/counters.js';

/** Prometheus names of the durable-store counters (slots 200..219), summed over threads. */
export const DURABLE_COUNTERS: [string, string, number][] = [
  ['emqx_ts_store_writes_total', 'Records put or removed in the durable store', Counter.storeWrites],
  [
    'emqx_ts_store_commits_total',
    'Store commits waited for (sync mode: at most one per event-loop turn)',
    Counter.storeCommits,
  ],
  ['emqx_ts_store_errors_total', 'Failed durable-store writes or commits', Counter.storeErrors],
  [
    'emqx_ts_sessions_restored_total',
    'Persistent sessions loaded from the store at start',
    Counter.sessionsRestored,
  ],
  [
    'emqx_ts_sessions_purged_total',
    'Expired sessions removed from the store at start',
    Counter.sessionsPurged,
  ],
  [
    'emqx_ts_messages_restored_total',
    'Queued and inflight deliveries loaded from the store at start',
    Counter.messagesRestored,
  ],
  ['emqx_ts_messages_purged_total', 'Expired stored deliveries removed', Counter.messagesPurged],
  [
    'emqx_ts_outbox_replayed_total',
    'Cross-shard batches re-sent from the outbox to a restarted shard',
    Counter.outboxReplayed,
  ],
  [
    'emqx_ts_outbox_duplicates_total',
    'Replayed cross-shard batches that the receiving shard had committed already (skipped)',
    Counter.outboxDuplicates,
  ],
  [
    'emqx_ts_store_acks_held_total',
    'QoS 1/2 acks held until their commit (sync mode)',
    Counter.storeAcksHeld,
  ],
  [
    'emqx_ts_store_writes_skipped_total',
    'Delivery and outbox puts and removes never made: the record was done before its flush',
    Counter.storeWritesSkipped,
  ],
  [
    'emqx_ts_outbox_skipped_total',
    'QoS 1/2 cross-shard batches sent without an outbox record: the receiving shard had no persistent session',
    Counter.outboxSkipped,
  ],
  [
    'emqx_ts_store_held_acked_total',
    'QoS 1 deliveries to connected persistent sessions acknowledged within durability.online_ack_wait (never written)',
    Counter.storeHeldAcked,
  ],
  [
    'emqx_ts_store_held_written_total',
    'QoS 1 deliveries held for durability.online_ack_wait and written once it was over',
    Counter.storeHeldWritten,
  ],
  [
    'emqx_ts_outbox_held_confirmed_total',
    'Outbox entries held for durability.online_ack_wait that the receiving shard confirmed first (never written)',
    Counter.outboxHeldConfirmed,
  ],
  [
    'emqx_ts_batches_confirmed_unwritten_total',
    'Cross-shard batches confirmed to their sender without a commit: every persistent delivery of them was acknowledged, nothing stored',
    Counter.outboxConfirmedUnwritten,
  ],
];

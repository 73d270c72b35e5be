/**
 * Test harness: a real broker (main thread + real shard worker threads) on an ephemeral port,
 * real TCP clients (`mqtt` from npm, raw sockets for malformed input). Nothing is mocked.
 * The helpers live by concern in base.ts, process.ts, raw.ts, raw5.ts, mqttjs.ts (and paho.ts); this
 * re-exports them so that tests import from one place.
 */
export * from './base.js';
export * from './mqttjs.js';
export * from './process.js';
export * from './raw.js';
export * from './raw5.js';

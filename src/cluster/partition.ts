import { readFileSync } from 'node:fs';
import { Code, ConnectError, type Interceptor } from '@connectrpc/connect';

/**
 * Tests only (test/cluster-netsplit.test.ts): a netsplit between node processes on loopback.
 * EMQX_TS_TEST_PARTITION_FILE names a file that lists node names (one per line); this node
 * sends nothing to those peers — every cluster call to their address fails as unreachable and
 * forward streams to them close — until they are removed from the file (polled every 100 ms).
 * A split is both sides cutting each other (each node gets its own file). Unset: no cost
 * beyond one `if` per new client or stream.
 */
const FILE = process.env.EMQX_TS_TEST_PARTITION_FILE ?? '';
export const PARTITION_TEST = FILE !== '';

let names = new Set<string>();
let addresses = new Set<string>();
let resolve: (name: string) => string[] = () => [];
let onChange: (cut: Set<string>) => void = () => {};

function read(): void {
  let text = '';
  try {
    text = readFileSync(FILE, 'utf8');
  } catch {
    // No file: no partition.
  }
  const next = new Set(
    text
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== ''),
  );
  const changed = next.size !== names.size || [...next].some((n) => !names.has(n));
  names = next;
  const addrs = new Set<string>();
  for (const n of names) for (const a of resolve(n)) if (a) addrs.add(a);
  addresses = addrs;
  if (changed) onChange(names);
}

/** Starts polling (the cluster thread, once): `addressesOf` maps a peer name to its addresses. */
export function watchPartition(
  addressesOf: (name: string) => string[],
  changed: (cut: Set<string>) => void,
): void {
  if (!PARTITION_TEST) return;
  resolve = addressesOf;
  onChange = changed;
  read();
  setInterval(read, 100).unref();
}

/** Whether traffic to `address` is cut (test partition). */
export function isCut(address: string): boolean {
  return PARTITION_TEST && addresses.has(address);
}

/** For Connect clients to `address`: calls fail as unreachable while it is cut. */
export function partitionInterceptors(address: string): Interceptor[] {
  if (!PARTITION_TEST) return [];
  return [
    (next) => async (req) => {
      if (isCut(address)) throw new ConnectError('partitioned (test)', Code.Unavailable);
      return next(req);
    },
  ];
}

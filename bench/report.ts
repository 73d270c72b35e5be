// Aggregates rounds per broker and prints the comparison tables (ratios vs mosquitto).

import { mergeHistograms, type Outcome } from './scenarios.js';

export interface Summary {
  broker: string;
  key: string;
  rounds: number;
  // throughput scenarios
  msgsPerS: number;
  brokerUsPerMsg: number;
  genUsPerMsg: number;
  brokerCpuPct: number;
  genCpuPct: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  sent: number;
  received: number;
  lost: number;
  dups: number;
  writeOffs: number;
  // conn scenario
  connections: number;
  connectsPerS: number;
  kibPerConn: number;
  brokerUsPerConn: number;
  genUsPerConn: number;
  connectP50Ms: number;
  connectP99Ms: number;
  errors: number;
}

function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const m = v.length >> 1;
  return v.length % 2 === 1 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

export function summarize(outcomes: Outcome[]): Summary[] {
  const groups = new Map<string, Outcome[]>();
  for (const o of outcomes) {
    const k = `${o.key}\u0000${o.broker}`;
    const g = groups.get(k);
    if (g) g.push(o);
    else groups.set(k, [o]);
  }
  const out: Summary[] = [];
  for (const g of groups.values()) {
    const lat = mergeHistograms(g.flatMap((o) => o.latency));
    const con = mergeHistograms(g.flatMap((o) => o.connectLatency));
    const ok = g.filter((o) => o.errors.length === 0);
    const pct = (h: typeof lat, p: number): number =>
      h.totalCount > 0 ? h.getValueAtPercentile(p) / 1000 : Number.NaN;
    out.push({
      broker: g[0]!.broker,
      key: g[0]!.key,
      rounds: g.length,
      msgsPerS: median(ok.map((o) => o.msgsPerS)),
      brokerUsPerMsg: median(ok.map((o) => o.brokerCpuUs / o.windowDelivered)),
      genUsPerMsg: median(ok.map((o) => o.genCpuUs / o.windowDelivered)),
      brokerCpuPct: median(ok.map((o) => o.brokerCpuUs / (o.windowS * 1e4))),
      genCpuPct: median(ok.map((o) => o.genCpuUs / (o.windowS * 1e4))),
      p50Ms: pct(lat, 50),
      p99Ms: pct(lat, 99),
      p999Ms: pct(lat, 99.9),
      sent: sum(g.map((o) => o.sent)),
      received: sum(g.map((o) => o.received)),
      lost: sum(g.map((o) => o.lost)),
      dups: sum(g.map((o) => o.dups)),
      writeOffs: sum(g.map((o) => o.writeOffs)),
      connections: median(ok.map((o) => o.connections)),
      connectsPerS: median(ok.map((o) => o.connectsPerS)),
      kibPerConn: median(ok.map((o) => (o.rssAfter - o.rssBefore) / o.connections / 1024)),
      brokerUsPerConn: median(ok.map((o) => o.brokerCpuUs / o.connections)),
      genUsPerConn: median(ok.map((o) => o.genCpuUs / o.connections)),
      connectP50Ms: pct(con, 50),
      connectP99Ms: pct(con, 99),
      errors: sum(g.map((o) => o.errors.length)),
    });
  }
  return out;
}

function fmt(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return '-';
  if (Math.abs(x) >= 1000) return Math.round(x).toString();
  return x.toFixed(digits);
}

function ratio(x: number, base: number | undefined): string {
  if (base === undefined || !Number.isFinite(x) || !Number.isFinite(base) || base === 0) return '-';
  return `${(x / base).toFixed(2)}x`;
}

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(header), line(w.map((n) => '-'.repeat(n))), ...rows.map(line)].join('\n');
}

/** One table per case, brokers in the order given; ratios are broker / mosquitto. */
export function render(summaries: Summary[], brokerOrder: string[]): string {
  const keys = [...new Set(summaries.map((s) => s.key))];
  const parts: string[] = [];
  for (const key of keys) {
    const rows = summaries
      .filter((s) => s.key === key)
      .sort((a, b) => brokerOrder.indexOf(a.broker) - brokerOrder.indexOf(b.broker));
    const m = rows.find((s) => s.broker === 'mosquitto');
    parts.push(`## ${key}  (${rows[0]!.rounds} round(s) per broker)`);
    if (key.startsWith('conn')) {
      parts.push(
        table(
          [
            'broker',
            'conns',
            'conn/s',
            'vs mosq',
            'KiB/conn',
            'vs mosq',
            'brk µs/conn',
            'vs mosq',
            'p50 ms',
            'p99 ms',
            'gen µs/conn',
            'errors',
          ],
          rows.map((s) => [
            s.broker,
            fmt(s.connections, 0),
            fmt(s.connectsPerS, 0),
            ratio(s.connectsPerS, m?.connectsPerS),
            fmt(s.kibPerConn),
            ratio(s.kibPerConn, m?.kibPerConn),
            fmt(s.brokerUsPerConn),
            ratio(s.brokerUsPerConn, m?.brokerUsPerConn),
            fmt(s.connectP50Ms, 2),
            fmt(s.connectP99Ms, 2),
            fmt(s.genUsPerConn),
            String(s.errors),
          ]),
        ),
      );
    } else {
      parts.push(
        table(
          [
            'broker',
            'msg/s',
            'vs mosq',
            'brk µs/msg',
            'vs mosq',
            'brk CPU%',
            'p50 ms',
            'p99 ms',
            'p999 ms',
            'sent',
            'received',
            'lost',
            'dup',
            'gen µs/msg',
            'gen CPU%',
          ],
          rows.map((s) => [
            s.broker,
            fmt(s.msgsPerS, 0),
            ratio(s.msgsPerS, m?.msgsPerS),
            fmt(s.brokerUsPerMsg, 2),
            ratio(s.brokerUsPerMsg, m?.brokerUsPerMsg),
            fmt(s.brokerCpuPct, 0),
            fmt(s.p50Ms, 2),
            fmt(s.p99Ms, 2),
            fmt(s.p999Ms, 2),
            String(s.sent),
            String(s.received),
            String(s.lost),
            String(s.dups),
            fmt(s.genUsPerMsg, 2),
            fmt(s.genCpuPct, 0),
          ]),
        ),
      );
    }
    parts.push('');
  }
  return parts.join('\n');
}

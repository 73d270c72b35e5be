/**
 * What the broker holds over a fuzz run, sampled from its metrics endpoint about once a second:
 * RSS, each thread's V8 heap / external / ArrayBuffer bytes (`emqx_ts_thread_memory_bytes`) and
 * the state gauges (sessions, connections, subscriptions, retained, topic-index nodes). The
 * table printed at the end tells a leak (a count or a thread's live heap that keeps rising) from
 * allocator high water (RSS that rises while live memory does not).
 */

export interface ThreadMemory {
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
}

export interface StateSample {
  /** Seconds since fuzzing started */
  seconds: number;
  /** Frames written so far */
  frames: number;
  rss: number;
  /** RSS split as /proc/<pid>/status does: anonymous memory, and file-backed (the node binary, lmdb's map) */
  rssAnon: number;
  rssFile: number;
  threads: Record<string, ThreadMemory>;
  sessions: number;
  connections: number;
  subscriptions: number;
  retained: number;
  /** Live nodes of the topic index (topics + shared) */
  indexNodes: number;
}

const KIND: Record<string, keyof ThreadMemory> = {
  heap_used: 'heapUsed',
  heap_total: 'heapTotal',
  external: 'external',
  array_buffers: 'arrayBuffers',
};

/** Parses a Prometheus exposition into a sample (RSS and the frame count are the caller's). */
export function parseSample(
  text: string,
  seconds: number,
  frames: number,
  rss: { rss: number; anon: number; file: number },
): StateSample {
  const s: StateSample = {
    seconds,
    frames,
    rss: rss.rss,
    rssAnon: rss.anon,
    rssFile: rss.file,
    threads: {},
    sessions: 0,
    connections: 0,
    subscriptions: 0,
    retained: 0,
    indexNodes: 0,
  };
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const [, name, labels = '', raw] = m;
    const v = Number(raw);
    if (name === 'emqx_ts_thread_memory_bytes') {
      const thread = /thread="([^"]*)"/.exec(labels)?.[1] ?? '?';
      const kind = KIND[/kind="([^"]*)"/.exec(labels)?.[1] ?? ''];
      if (!kind) continue;
      s.threads[thread] ??= { heapUsed: 0, heapTotal: 0, external: 0, arrayBuffers: 0 };
      s.threads[thread][kind] = v;
    } else if (name === 'emqx_sessions_count') s.sessions = v;
    else if (name === 'emqx_live_connections_count') s.connections = v;
    else if (name === 'emqx_subscriptions_count') s.subscriptions = v;
    else if (name === 'emqx_retained_count') s.retained = v;
    else if (name === 'emqx_ts_topic_index_nodes') s.indexNodes += v;
  }
  return s;
}

const mib = (b: number): string => (b / 2 ** 20).toFixed(0);

/**
 * About `rows` samples spread evenly by frames written (the first and the last included), one
 * line each: RSS, then per thread heap used/reserved, external and ArrayBuffers (MiB).
 */
export function sampleTable(samples: StateSample[], rows = 11): string {
  if (samples.length === 0) return 'no state samples';
  const last = samples[samples.length - 1];
  const picked: StateSample[] = [];
  for (let i = 0; i < rows; i++) {
    const want = (last.frames * i) / (rows - 1);
    const s = samples.find((x) => x.frames >= want) ?? last;
    if (picked[picked.length - 1] !== s) picked.push(s);
  }
  // The last sample is the one after the idle settle, when there is one.
  if (picked[picked.length - 1] !== last) picked.push(last);
  const threads = Object.keys(last.threads);
  const head = [
    'frames',
    's',
    'RSS (anon file)',
    ...threads.map((t) => `${t} heap used/total ext ab`),
    'sessions',
    'conns',
    'subs',
    'retained',
    'index nodes',
  ];
  const lines = [`state samples (MiB): ${head.join(' | ')}`];
  for (const s of picked) {
    const per = threads.map((t) => {
      const m = s.threads[t];
      return m ? `${mib(m.heapUsed)}/${mib(m.heapTotal)} ${mib(m.external)} ${mib(m.arrayBuffers)}` : '-';
    });
    lines.push(
      `  ${[s.frames, s.seconds.toFixed(0), `${mib(s.rss)} (${mib(s.rssAnon)} ${mib(s.rssFile)})`, ...per, s.sessions, s.connections, s.subscriptions, s.retained, s.indexNodes].join(' | ')}`,
    );
  }
  return lines.join('\n');
}

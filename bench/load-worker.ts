// Load-generator thread: owns many MQTT connections (publishers, subscribers, idle) on one event loop.
// Started through load-worker.mjs because workers do not inherit tsx's hooks.

import net from 'node:net';
import tls from 'node:tls';
import { type MessagePort, parentPort } from 'node:worker_threads';
import hdr from 'hdr-histogram-js';
import { createWebSocketStream, WebSocket } from 'ws';
import {
  CONNACK,
  DISCONNECT_FRAME,
  encodeConnect,
  encodePublishTemplate,
  encodeSubscribe,
  type FrameSink,
  FrameSplitter,
  OFF_PUB,
  OFF_SEQ,
  OFF_TS,
  PAYLOAD_HEADER,
  PINGREQ_FRAME,
  PINGRESP,
  PUBACK,
  PUBCOMP,
  PUBLISH,
  PUBREC,
  PUBREL,
  type PublishTemplate,
  SUBACK,
} from './proto.js';
import {
  type FromWorker,
  PHASE,
  PHASE_GO,
  PHASE_MEASURE,
  PHASE_STOP,
  type RunSpec,
  type SharedBuffers,
  STALLED_BASE,
  STAT_CONNECTED,
  STAT_DUPS,
  STAT_FIELDS,
  STAT_SENT,
  STAT_UNIQUE,
  type ToWorker,
  type WorkerResult,
} from './types.js';

const parent = parentPort!;
let workerId = 0;
let peers: (MessagePort | null)[] = [];
let current: Run | null = null;

const nowNs = (): number => Number(process.hrtime.bigint());
const MAX_BATCH_BYTES = 64 * 1024;
const MAX_ERRORS = 10;
const READ_BUFFER = Buffer.allocUnsafe(64 * 1024);

function post(msg: FromWorker): void {
  parent.postMessage(msg);
}

interface Track {
  next: number;
  missing: Set<number> | null;
}

interface Pub {
  conn: Conn;
  idx: number;
  tpl: PublishTemplate;
  sent: number;
  acked: number;
  // Added when a stalled delivery window is written off, so a lossy broker cannot freeze the loop.
  offDelivered: number;
  nextPid: number;
  waitDrain: boolean;
  progressMark: number;
  progressMs: number;
}

/**
 * The connection to the broker by transport. tcp: `onread` reads into one reused buffer (no
 * Readable stream machinery and no Buffer allocation per read; frames must therefore be fully
 * handled before the callback returns: the splitter copies any partial frame). tls and ws: the
 * stream's 'data' chunks (ws: one per WebSocket message, through ws's stream adapter).
 */
function openSocket(run: Run, onData: (chunk: Buffer) => void, onOpen: () => void): net.Socket {
  const { host, port, transport } = run.spec;
  if (transport === 'tls') {
    // The bench's own throw-away certificate: not verified.
    const s = tls.connect({ host, port, rejectUnauthorized: false });
    s.setNoDelay(true);
    s.on('secureConnect', onOpen);
    s.on('data', onData);
    return s;
  }
  if (transport === 'ws') {
    const ws = new WebSocket(`ws://${host}:${port}/mqtt`, ['mqtt'], { perMessageDeflate: false });
    const s = createWebSocketStream(ws);
    ws.on('open', onOpen);
    s.on('data', onData);
    // A Duplex offers what Conn uses of a socket (write, end, destroy, drain, close).
    return s as unknown as net.Socket;
  }
  const s = net.connect({
    host,
    port,
    onread: {
      buffer: READ_BUFFER,
      callback: (n: number): boolean => {
        onData(READ_BUFFER.subarray(0, n));
        return true;
      },
    },
  });
  s.setNoDelay(true);
  s.on('connect', onOpen);
  return s;
}

class Conn implements FrameSink {
  readonly sock: net.Socket;
  private readonly splitter = new FrameSplitter();
  onConnack: ((rc: number) => void) | null = null;
  onSuback: ((rc: number) => void) | null = null;
  closed = false;
  /** CONNACK received: only then may anything but CONNECT be sent. */
  connected = false;
  lastWriteMs = 0;
  pub: Pub | null = null;
  tracks: Map<number, Track> | null = null;
  /** Pending acks as (first byte << 16 | packet id); flushed in one write per read chunk. */
  acks: number[] = [];
  gotAck = false;

  constructor(
    readonly run: Run,
    readonly clientId: string,
    clean = true,
  ) {
    const sock = openSocket(
      run,
      (chunk) => run.onData(this, chunk),
      () => this.write(encodeConnect(clientId, run.spec.keepaliveS, clean)),
    );
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on('drain', () => {
      if (this.pub !== null) {
        this.pub.waitDrain = false;
        run.schedulePump();
      }
    });
    // Resets after our DISCONNECT are normal; before it they are a broker failure.
    sock.on('error', (err) => {
      if (!run.finishing) run.error(`${clientId}: ${err.message}`);
    });
    sock.on('close', () => {
      this.closed = true;
      run.onClose(this);
    });
  }

  feed(chunk: Buffer): void {
    this.splitter.push(chunk, this);
  }

  write(buf: Buffer): boolean {
    // Acks for data still arriving after our DISCONNECT are dropped (the session ends anyway).
    if (this.sock.writableEnded || this.closed) return true;
    this.lastWriteMs = this.run.nowMs;
    this.run.writes++;
    return this.sock.write(buf);
  }

  onFrame(first: number, buf: Buffer, s: number, e: number): void {
    const type = first >> 4;
    if (type === PUBLISH) {
      this.run.onPublish(this, first, buf, s, e);
      return;
    }
    const pid = e - s >= 2 ? (buf[s]! << 8) | buf[s + 1]! : 0;
    switch (type) {
      case PUBACK:
      case PUBCOMP:
        if (this.pub !== null) this.pub.acked++;
        this.gotAck = true;
        break;
      case PUBREC:
        this.acks.push((0x62 << 16) | pid);
        break;
      case PUBREL:
        this.acks.push((0x70 << 16) | pid);
        break;
      case CONNACK:
        this.onConnack?.(buf[s + 1]!);
        break;
      case SUBACK:
        this.onSuback?.(buf[s + 2]!);
        break;
      case PINGRESP:
        break;
      default:
        this.run.error(`${this.clientId}: unexpected packet type ${type}`);
    }
  }

  flushAcks(): void {
    const n = this.acks.length;
    const out = Buffer.allocUnsafe(n * 4);
    for (let i = 0; i < n; i++) {
      const a = this.acks[i]!;
      out[i * 4] = a >>> 16;
      out[i * 4 + 1] = 2;
      out[i * 4 + 2] = (a >>> 8) & 0xff;
      out[i * 4 + 3] = a & 0xff;
    }
    this.acks.length = 0;
    this.write(out);
  }
}

class Run {
  readonly ctrl: Int32Array;
  readonly delivered: Int32Array;
  readonly stats: Float64Array;
  readonly statBase: number;
  readonly conns: Conn[] = [];
  readonly pubs: Pub[] = [];
  readonly hist = hdr.build({ numberOfSignificantValueDigits: 3 });
  readonly connectHist = hdr.build({ numberOfSignificantValueDigits: 3 });
  nowMs = Date.now();
  sent = 0;
  reads = 0;
  writes = 0;
  unique = 0;
  dups = 0;
  stray = 0;
  reordered = 0;
  writeOffs = 0;
  connected = 0;
  connectStartNs = 0;
  connectEndNs = 0;
  errors: string[] = [];
  errorCount = 0;
  finishing = false;
  private stopped = false;
  private closedCount = 0;
  private onAllClosed: (() => void) | null = null;
  private pumpScheduled = false;
  private goNs = 0;
  private rateTimer: NodeJS.Timeout | null = null;
  private readonly housekeeping: NodeJS.Timeout;
  private lastPingCheck = 0;
  private recording = false;
  private chunkNs = 0;
  private localDelivered = false;
  private remoteMask = 0;
  private readonly maxBatch: number;
  /** Closed loop refills only when half the window is free: a few large writes instead of many tiny
   *  ones (a syscall per message would make the generator cost more CPU than the broker). */
  private readonly refill: number;

  constructor(
    readonly spec: RunSpec,
    shared: SharedBuffers,
  ) {
    this.ctrl = new Int32Array(shared.ctrl);
    this.delivered = new Int32Array(shared.delivered);
    this.stats = new Float64Array(shared.stats);
    this.statBase = spec.workerId * STAT_FIELDS;
    this.housekeeping = setInterval(() => this.tick(), 50);
    const frameLen = encodePublishTemplate('bench/x', spec.qos, spec.payload, 0, 0).frame.length;
    this.maxBatch = Math.max(1, Math.floor(MAX_BATCH_BYTES / frameLen));
    const window = spec.qos > 0 ? Math.min(spec.window, spec.ackWindow) : spec.window;
    this.refill = spec.ratePerPub > 0 ? 1 : Math.max(1, Math.floor(window / 2));
  }

  error(msg: string): void {
    this.errorCount++;
    if (this.errors.length < MAX_ERRORS) this.errors.push(msg);
  }

  /** Connects everything, subscribers first so no publish can precede its subscription. */
  async setup(): Promise<void> {
    const { spec } = this;
    this.connectStartNs = nowNs();
    await this.pool(
      spec.subs.map((s) => async () => {
        // BENCH_PERSISTENT_SUBS=1: subscribers keep persistent sessions (durability bench).
        const c = await this.connect(s.clientId, process.env.BENCH_PERSISTENT_SUBS !== '1');
        c.tracks = new Map();
        await this.subscribe(c, s.filter);
      }),
    );
    await this.pool(
      spec.pubs.map((p) => async () => {
        const c = await this.connect(p.clientId);
        const pub: Pub = {
          conn: c,
          idx: p.pubIdx,
          tpl: encodePublishTemplate(p.topic, spec.qos, spec.payload, spec.runId, p.pubIdx),
          sent: 0,
          acked: 0,
          offDelivered: 0,
          nextPid: 1,
          waitDrain: false,
          progressMark: 0,
          progressMs: this.nowMs,
        };
        c.pub = pub;
        this.pubs.push(pub);
      }),
    );
    const idle: (() => Promise<void>)[] = [];
    for (let i = 0; i < spec.idle; i++) {
      idle.push(async () => {
        await this.connect(`${spec.idlePrefix}${i}`);
      });
    }
    await this.pool(idle);
    this.connectEndNs = nowNs();
  }

  /** Runs tasks with bounded concurrency (a connection storm must not overflow the listen backlog). */
  private async pool(tasks: (() => Promise<void>)[]): Promise<void> {
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < tasks.length && !this.finishing) await tasks[next++]!();
    };
    const lanes: Promise<void>[] = [];
    for (let i = 0; i < Math.min(this.spec.connectConcurrency, tasks.length); i++) lanes.push(lane());
    await Promise.all(lanes);
  }

  private connect(clientId: string, clean = true): Promise<Conn> {
    const t0 = nowNs();
    const c = new Conn(this, clientId, clean);
    this.conns.push(c);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${clientId}: no CONNACK within 30 s`)), 30_000);
      c.onConnack = (rc) => {
        clearTimeout(timer);
        c.onConnack = null;
        if (rc !== 0) return reject(new Error(`${clientId}: CONNACK return code ${rc}`));
        c.connected = true;
        this.connected++;
        this.stats[this.statBase + STAT_CONNECTED] = this.connected;
        this.connectHist.recordValue(Math.max(1, Math.round((nowNs() - t0) / 1000)));
        resolve(c);
      };
      c.sock.once('close', () => {
        clearTimeout(timer);
        if (c.onConnack !== null) reject(new Error(`${clientId}: closed before CONNACK`));
      });
    });
  }

  private subscribe(c: Conn, filter: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${c.clientId}: no SUBACK within 30 s`)), 30_000);
      c.onSuback = (rc) => {
        clearTimeout(timer);
        c.onSuback = null;
        if (rc === 0x80) reject(new Error(`${c.clientId}: subscription to ${filter} refused`));
        else resolve();
      };
      c.write(encodeSubscribe(1, filter, this.spec.qos));
    });
  }

  go(): void {
    this.goNs = nowNs();
    if (this.spec.ratePerPub > 0) this.rateTimer = setInterval(() => this.pump(), 1);
    this.schedulePump();
  }

  /** No message is sent after this returns, so `sent` is final before the drain starts. */
  stop(): number {
    this.stopped = true;
    if (this.rateTimer !== null) clearInterval(this.rateTimer);
    this.rateTimer = null;
    this.stats[this.statBase + STAT_SENT] = this.sent;
    return this.sent;
  }

  schedulePump(): void {
    if (this.pumpScheduled || this.pubs.length === 0) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private room(p: Pub): number {
    const d = Math.floor(Atomics.load(this.delivered, p.idx) / this.spec.fanout);
    const room = this.spec.window - (p.sent - d - p.offDelivered);
    // QoS 1/2 in-flight is a protocol limit, never written off: brokers close clients that exceed
    // theirs (emqx-ts and EMQX: 100 awaiting PUBREL; aedes: 1000).
    return this.spec.qos > 0 ? Math.min(room, this.spec.ackWindow - (p.sent - p.acked)) : room;
  }

  /** Sends as many messages as windows (and the rate, if any) allow: one pre-built batch write per publisher. */
  pump(): void {
    const phase = Atomics.load(this.ctrl, PHASE);
    if (phase < PHASE_GO || this.stopped) return;
    if (phase >= PHASE_STOP) {
      if (this.rateTimer !== null) clearInterval(this.rateTimer);
      this.rateTimer = null;
      return;
    }
    const ts = nowNs();
    const elapsedS = (ts - this.goNs) / 1e9;
    const { ratePerPub } = this.spec;
    let blocked = false;
    let more = false;
    for (const p of this.pubs) {
      if (p.waitDrain || p.conn.closed) continue;
      let n = this.room(p);
      if (n < this.refill) {
        blocked = true;
        continue;
      }
      if (ratePerPub > 0) n = Math.min(n, Math.floor(ratePerPub * elapsedS) + 1 - p.sent);
      if (n <= 0) continue;
      if (n > this.maxBatch) {
        n = this.maxBatch;
        more = true;
      }
      const { frame, pidOffset, payloadOffset } = p.tpl;
      const len = frame.length;
      const out = Buffer.allocUnsafe(n * len);
      let o = 0;
      for (let j = 0; j < n; j++, o += len) {
        frame.copy(out, o);
        if (pidOffset >= 0) {
          const pid = p.nextPid;
          p.nextPid = pid === 65535 ? 1 : pid + 1;
          out[o + pidOffset] = pid >> 8;
          out[o + pidOffset + 1] = pid & 0xff;
        }
        out.writeUInt32LE(p.sent + j, o + payloadOffset + OFF_SEQ);
        out.writeDoubleLE(ts, o + payloadOffset + OFF_TS);
      }
      p.sent += n;
      this.sent += n;
      if (!p.conn.write(out)) p.waitDrain = true;
    }
    this.stats[this.statBase + STAT_SENT] = this.sent;
    if (more && ratePerPub === 0) this.schedulePump();
    if (blocked) {
      // Ask subscriber threads to wake us, then re-check to close the race with a delivery that
      // landed before the flag was visible.
      Atomics.store(this.ctrl, STALLED_BASE + workerId, 1);
      for (const p of this.pubs) {
        if (!p.waitDrain && !p.conn.closed && this.room(p) >= this.refill) {
          this.schedulePump();
          break;
        }
      }
    }
  }

  onData(c: Conn, chunk: Buffer): void {
    this.reads++;
    this.chunkNs = 0;
    this.recording = Atomics.load(this.ctrl, PHASE) === PHASE_MEASURE;
    try {
      c.feed(chunk);
    } catch (err) {
      this.error(`${c.clientId}: ${(err as Error).message}`);
      c.sock.destroy();
      return;
    }
    if (c.acks.length > 0) c.flushAcks();
    if (c.gotAck || this.localDelivered) {
      c.gotAck = false;
      this.localDelivered = false;
      this.schedulePump();
    }
    if (this.remoteMask !== 0) {
      const mask = this.remoteMask;
      this.remoteMask = 0;
      for (let w = 0; w < peers.length; w++) {
        if ((mask & (1 << w)) !== 0 && Atomics.compareExchange(this.ctrl, STALLED_BASE + w, 1, 0) === 1) {
          peers[w]?.postMessage(0);
        }
      }
    }
    const b = this.statBase;
    this.stats[b + STAT_UNIQUE] = this.unique;
    this.stats[b + STAT_DUPS] = this.dups;
  }

  onPublish(c: Conn, first: number, buf: Buffer, s: number, e: number): void {
    const qos = (first >> 1) & 3;
    let p = s + 2 + ((buf[s]! << 8) | buf[s + 1]!);
    if (qos > 0) {
      c.acks.push(((qos === 1 ? 0x40 : 0x50) << 16) | (buf[p]! << 8) | buf[p + 1]!);
      p += 2;
    }
    if (c.tracks === null || e - p < PAYLOAD_HEADER || buf.readUInt32LE(p) !== this.spec.runId) {
      this.stray++;
      return;
    }
    const pubIdx = buf.readUInt32LE(p + OFF_PUB);
    const seq = buf.readUInt32LE(p + OFF_SEQ);
    let tr = c.tracks.get(pubIdx);
    if (tr === undefined) {
      tr = { next: 0, missing: null };
      c.tracks.set(pubIdx, tr);
    }
    // Gap-set de-duplication: O(1) in order, remembers only the holes.
    if (seq === tr.next) {
      tr.next++;
    } else if (seq > tr.next) {
      tr.missing ??= new Set();
      for (let k = tr.next; k < seq; k++) tr.missing.add(k);
      tr.next = seq + 1;
    } else if (tr.missing?.delete(seq)) {
      this.reordered++;
    } else {
      this.dups++;
      return;
    }
    this.unique++;
    Atomics.add(this.delivered, pubIdx, 1);
    const owner = this.spec.pubOwner[pubIdx]!;
    if (owner === workerId) this.localDelivered = true;
    else this.remoteMask |= 1 << owner;
    if (this.recording) {
      if (this.chunkNs === 0) this.chunkNs = nowNs();
      const us = (this.chunkNs - buf.readDoubleLE(p + OFF_TS)) / 1000;
      this.hist.recordValue(us < 1 ? 1 : Math.round(us));
    }
  }

  private tick(): void {
    this.nowMs = Date.now();
    if (Atomics.load(this.ctrl, PHASE) >= PHASE_GO) this.writeOffStalls();
    if (this.nowMs - this.lastPingCheck > 1000) {
      this.lastPingCheck = this.nowMs;
      const idleMs = (this.spec.keepaliveS * 1000) / 2;
      for (const c of this.conns) {
        if (c.connected && !c.closed && this.nowMs - c.lastWriteMs > idleMs) c.write(PINGREQ_FRAME);
      }
    }
  }

  /** A window that made no progress for stallMs is written off: the messages count as lost at the end
   *  (unless they arrive late) and the publisher continues, so loss shows up instead of a hang. */
  private writeOffStalls(): void {
    for (const p of this.pubs) {
      const mark = Atomics.load(this.delivered, p.idx) + p.acked;
      if (mark !== p.progressMark) {
        p.progressMark = mark;
        p.progressMs = this.nowMs;
        continue;
      }
      if (this.room(p) >= this.refill || this.nowMs - p.progressMs < this.spec.stallMs) continue;
      const d = Math.floor(Atomics.load(this.delivered, p.idx) / this.spec.fanout);
      if (p.sent - d - p.offDelivered === 0) continue; // blocked on acks only: nothing to write off
      p.offDelivered = p.sent - d;
      p.progressMs = this.nowMs;
      this.writeOffs++;
      this.schedulePump();
    }
  }

  onClose(c: Conn): void {
    this.closedCount++;
    if (!this.finishing) {
      this.error(`${c.clientId}: connection closed by broker`);
      return;
    }
    if (this.onAllClosed !== null && this.closedCount === this.conns.length) this.onAllClosed();
  }

  async finish(): Promise<WorkerResult> {
    this.finishing = true;
    clearInterval(this.housekeeping);
    if (this.rateTimer !== null) clearInterval(this.rateTimer);
    const allClosed = new Promise<void>((resolve) => {
      this.onAllClosed = resolve;
    });
    for (const c of this.conns) {
      if (c.closed) continue;
      if (c.sock.readyState === 'open' || (c.run.spec.transport === 'ws' && c.connected))
        c.sock.end(DISCONNECT_FRAME);
      else c.sock.destroy();
    }
    if (this.closedCount < this.conns.length) {
      const timer = setTimeout(() => {
        for (const c of this.conns) c.sock.destroy();
      }, 3000);
      await allClosed;
      clearTimeout(timer);
    }
    return {
      sent: this.sent,
      unique: this.unique,
      dups: this.dups,
      stray: this.stray,
      acked: this.pubs.reduce((a, p) => a + p.acked, 0),
      writeOffs: this.writeOffs,
      reads: this.reads,
      writes: this.writes,
      reordered: this.reordered,
      latency: this.hist.totalCount > 0 ? hdr.encodeIntoCompressedBase64(this.hist) : null,
      connectLatency:
        this.connectHist.totalCount > 0 ? hdr.encodeIntoCompressedBase64(this.connectHist) : null,
      connectStartNs: this.connectStartNs,
      connectEndNs: this.connectEndNs,
      connected: this.connected,
      errors:
        this.errorCount > this.errors.length
          ? [...this.errors, `… ${this.errorCount} errors in all`]
          : this.errors,
    };
  }
}

parent.on('message', (msg: ToWorker) => {
  switch (msg.type) {
    case 'init':
      workerId = msg.id;
      peers = msg.ports;
      for (const p of peers) p?.on('message', () => current?.schedulePump());
      break;
    case 'run': {
      const run = new Run(msg.spec, msg.shared);
      current = run;
      run.setup().then(
        () => post({ type: 'ready', connectStartNs: run.connectStartNs, connectEndNs: run.connectEndNs }),
        (err: Error) => post({ type: 'fatal', message: err.message }),
      );
      break;
    }
    case 'go':
      current?.go();
      break;
    case 'stop':
      if (current !== null) post({ type: 'stopped', sent: current.stop() });
      break;
    case 'finish': {
      const run = current;
      if (run === null) return;
      run.finish().then(
        (result) => {
          current = null;
          post({ type: 'result', result });
        },
        (err: Error) => post({ type: 'fatal', message: err.message }),
      );
      break;
    }
  }
});

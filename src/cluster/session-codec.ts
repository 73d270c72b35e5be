import type { WillMessage } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import { Message } from '../session/message.js';
import {
  type DeliveryOptions,
  type InflightEntry,
  newDelivery,
  type Session,
  type Subscription,
} from '../session/session.js';

/**
 * A session as shipped to another node on takeover: subscriptions, inflight QoS 1/2 (with
 * their packet ids, so the new node resends them with DUP [MQTT-4.4.0-1]), QoS 2 ids awaiting
 * PUBREL, the offline queue, and a will still waiting for its delay. JSON with base64 bytes:
 * this is the connect path of one client, not the message path.
 */
interface MsgSnap {
  t: string;
  p: string;
  q: QoS;
  r: boolean;
  f: string;
  pr: string | null;
  x: number;
  dr: boolean;
}

type DeliverySnap = Omit<DeliveryOptions, 'qos'> & { qos: QoS; m: MsgSnap };

interface WillSnap extends Omit<WillMessage, 'payload' | 'props'> {
  payload: string;
  props: string | null;
}

export interface SessionSnapshot {
  clientId: string;
  expiryInterval: number;
  createdAt: number;
  nextPacketId: number;
  subs: [string, Omit<Subscription, 'nodeId'>][];
  inflight: [number, DeliverySnap & { released: boolean }][];
  rel: [number, number][];
  queue: DeliverySnap[];
  pendingWill: WillSnap | null;
  willAt: number;
}

const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.length).toString('base64');

function msgSnap(m: Message): MsgSnap {
  return {
    t: m.topic,
    p: b64(m.payload),
    q: m.qos,
    r: m.retain,
    f: m.from,
    pr: m.props ? b64(m.props) : null,
    x: m.expiryAt,
    dr: m.deliverRetained,
  };
}

function msgFrom(s: MsgSnap): Message {
  const m = Message.fromStrings(s.t, Buffer.from(s.p, 'base64'), s.q, s.r, s.f, s.dr);
  if (s.pr) m.props = Buffer.from(s.pr, 'base64');
  m.expiryAt = s.x;
  return m;
}

export function encodeSession(s: Session): Uint8Array {
  const snap: SessionSnapshot = {
    clientId: s.clientId,
    expiryInterval: s.expiryInterval,
    createdAt: s.createdAt,
    nextPacketId: s.nextPacketId,
    subs: [...s.subscriptions].map(([f, sub]) => {
      const { nodeId: _n, ...rest } = sub;
      return [f, rest];
    }),
    inflight: [...s.inflight].map(([id, e]) => [
      id,
      {
        qos: e.qos,
        released: e.released,
        retainFlag: e.retainFlag,
        subIds: e.subIds,
        group: e.group,
        m: msgSnap(e.msg),
      },
    ]),
    rel: [...s.awaitingRel],
    queue: s.queue.map((d) => ({
      qos: d.qos,
      retainFlag: d.retainFlag,
      subIds: d.subIds,
      group: d.group,
      m: msgSnap(d.msg),
    })),
    pendingWill: s.pendingWill
      ? {
          ...s.pendingWill,
          payload: b64(s.pendingWill.payload),
          props: s.pendingWill.props ? b64(s.pendingWill.props) : null,
        }
      : null,
    willAt: s.willAt,
  };
  return Buffer.from(JSON.stringify(snap));
}

export function decodeSession(bytes: Uint8Array): SessionSnapshot {
  const snap = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8'));
  if (typeof snap?.clientId !== 'string' || !Array.isArray(snap.subs) || !Array.isArray(snap.inflight))
    throw new TypeError('malformed session snapshot');
  return snap as SessionSnapshot;
}

/**
 * Fills a fresh session with a snapshot's state except subscriptions (the caller subscribes
 * them through the routing tables). Messages are rebuilt in storage of their own.
 */
export function restoreSession(session: Session, snap: SessionSnapshot): void {
  session.expiryInterval = snap.expiryInterval;
  session.createdAt = snap.createdAt;
  session.nextPacketId = snap.nextPacketId;
  for (const [id, e] of snap.inflight) {
    session.inflight.set(
      id,
      newDelivery(
        msgFrom(e.m),
        e.qos as 1 | 2,
        e.retainFlag,
        e.subIds,
        e.group,
        session.deliverySeq++,
        e.released,
      ) as InflightEntry,
    );
  }
  for (const [id, at] of snap.rel) session.awaitingRel.set(id, at);
  session.queue.replace(
    snap.queue.map((d) =>
      newDelivery(msgFrom(d.m), d.qos, d.retainFlag, d.subIds, d.group, session.deliverySeq++),
    ),
  );
  const w = snap.pendingWill;
  if (w) {
    session.pendingWill = {
      ...w,
      payload: Buffer.from(w.payload, 'base64'),
      props: w.props ? Buffer.from(w.props, 'base64') : null,
    };
    session.willAt = snap.willAt;
  }
}

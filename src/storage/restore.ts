import { Counter } from '../metrics/counters.js';
import type { WillMessage } from '../protocol/codec.js';
import type { QoS } from '../protocol/constants.js';
import type { SubscribeOptions } from '../routing/subscriptions.js';
import { Message } from '../session/message.js';
import { type InflightEntry, NEVER_EXPIRES, newDelivery, Session } from '../session/session.js';
import type { EndedWill, ShardState } from '../shard/state.js';
import type { DurableStore, LoadedSession, StoredDelivery } from './types.js';

/** What restoring needs of the shard: subscribing a restored session's plain filters. */
export interface RestoreDeps {
  subscribe(session: Session, filter: string, o: SubscribeOptions): unknown;
}

/** A Buffer view of stored bytes (msgpack gives Uint8Array/Buffer). */
function buf(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.length);
}

function will(w: WillMessage | null): WillMessage | null {
  if (!w) return null;
  return { ...w, payload: buf(w.payload), props: w.props ? buf(w.props) : null };
}

function message(d: StoredDelivery): Message {
  const m = Message.fromStrings(d.t, buf(d.p), d.q as QoS, d.r, d.f, d.dr);
  if (d.pr) m.props = buf(d.pr);
  m.expiryAt = d.e;
  return m;
}

/**
 * Loads the persistent sessions of the client ids that hash to this shard, offline: their
 * subscriptions back in the topic index, inflight deliveries (resent with DUP on reconnect
 * [MQTT-4.4.0-1]) and queues in arrival order, inbound QoS 2 ids awaiting PUBREL. Expired
 * sessions and messages are purged. A session that was connected when the broker stopped lost
 * its connection without DISCONNECT: its will becomes due (after its delay) as on any such
 * close [MQTT-3.1.2-8]. Returns the wills of sessions that expired while the broker was down,
 * to publish once the shard runs [MQTT-3.1.3-9]: such a session is not restored, but its record
 * (with the will) stays stored until then (its deliveries and QoS 2 ids go now).
 */
export function restoreSessions(
  s: ShardState,
  store: DurableStore,
  mine: (clientId: string) => boolean,
  deps: RestoreDeps,
): EndedWill[] {
  const now = Date.now();
  const row = s.counters.row;
  const wills: EndedWill[] = [];
  for (const l of store.loadSessions(mine)) {
    const r = l.session;
    if (r.x > 0 && now >= r.x) {
      // Expired while the broker was down: its delayed will is still owed [MQTT-3.1.3-9]. The
      // record stays (written again after the removal of all its keys, in the same
      // transaction) until the will is published: a kill before that must not lose it.
      store.deleteSession(l.clientId);
      row[Counter.sessionsPurged]++;
      if (r.pw) {
        store.putSession(l.clientId, { ...r, w: null, subs: [] });
        wills.push({ clientId: l.clientId, will: will(r.pw)!, stored: true });
      }
      continue;
    }
    const session = build(s, store, l, now, deps);
    s.sessions.set(l.clientId, session);
    row[Counter.sessions]++;
    row[Counter.sessionsRestored]++;
  }
  return wills;
}

function build(
  s: ShardState,
  store: DurableStore,
  l: LoadedSession,
  now: number,
  deps: RestoreDeps,
): Session {
  const r = l.session;
  const session = new Session(l.clientId, false);
  session.createdAt = r.c;
  session.expiryInterval = r.e;
  session.expiresAt = r.x > 0 ? r.x : r.e === NEVER_EXPIRES ? 0 : now + r.e * 1000;
  const w = will(r.w) ?? will(r.pw);
  if (w) {
    session.pendingWill = w;
    session.willAt = r.w ? now + (w.delay ?? 0) * 1000 : r.wa;
  }
  for (const sub of r.subs) {
    if (sub.g) {
      // Shared: an offline member is in no group; it joins again when it resumes (lifecycle).
      session.subscriptions.set(sub.f, {
        qos: sub.q as QoS,
        nodeId: -1,
        noLocal: sub.nl,
        retainAsPublished: sub.rap,
        retainHandling: sub.rh,
        subId: sub.id,
        shared: { group: sub.g, filter: sub.sf },
      });
      continue;
    }
    deps.subscribe(session, sub.f, {
      qos: sub.q as QoS,
      noLocal: sub.nl,
      retainAsPublished: sub.rap,
      retainHandling: sub.rh,
      subId: sub.id,
    });
  }
  const row = s.counters.row;
  let maxSeq = 0;
  for (const { seq, d } of l.deliveries) {
    if (seq > maxSeq) maxSeq = seq;
    if (!d.rel && d.e > 0 && now > d.e) {
      store.deleteDelivery(l.clientId, seq);
      row[Counter.messagesPurged]++;
      continue;
    }
    row[Counter.messagesRestored]++;
    // Stored: their removal is written when they are done.
    const e = newDelivery(message(d), d.q as QoS, d.r, d.s, d.g, seq, d.rel, true);
    if (d.i > 0 && d.q > 0) session.inflight.set(d.i, e as InflightEntry);
    else session.queue.push(e);
  }
  session.deliverySeq = Math.max(session.deliverySeq, maxSeq + 1);
  for (const [id, at] of l.awaitingRel) session.awaitingRel.set(id, at);
  return session;
}

import { isUtf8 } from 'node:buffer';

/** Why a topic name or filter is invalid, or null when it is valid. */
export type TopicError = string | null;

const MAX_TOPIC_BYTES = 65535;

/** Validates raw UTF-8 string bytes of an MQTT string field: well-formed and no U+0000 [MQTT-1.5.3-1], [MQTT-1.5.3-2]. */
export function validUtf8(bytes: Uint8Array): boolean {
  return bytes.indexOf(0) === -1 && isUtf8(bytes);
}

/** Topic name rules for PUBLISH: non-empty [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2]. */
export function topicNameError(topic: string): TopicError {
  if (topic.length === 0) return 'empty topic name';
  // The limit is on UTF-8 bytes (the wire's u16 length), not UTF-16 units [MQTT-1.5.4-1].
  if (topic.length > MAX_TOPIC_BYTES || Buffer.byteLength(topic) > MAX_TOPIC_BYTES)
    return 'topic name too long';
  for (let i = 0; i < topic.length; i++) {
    const c = topic.charCodeAt(i);
    if (c === 0x2b /* + */ || c === 0x23 /* # */) return 'wildcard in topic name';
    if (c === 0) return 'U+0000 in topic name';
  }
  return null;
}

/**
 * Topic filter rules: non-empty [MQTT-4.7.3-1]; '#' alone in its level and last [MQTT-4.7.1-2];
 * '+' occupies an entire level [MQTT-4.7.1-3].
 */
export function topicFilterError(filter: string): TopicError {
  const n = filter.length;
  if (n === 0) return 'empty topic filter';
  if (n > MAX_TOPIC_BYTES || Buffer.byteLength(filter) > MAX_TOPIC_BYTES) return 'topic filter too long';
  for (let i = 0; i < n; i++) {
    const c = filter.charCodeAt(i);
    if (c === 0) return 'U+0000 in topic filter';
    if (c === 0x23) {
      if (i !== n - 1) return "'#' not last in topic filter";
      if (i > 0 && filter.charCodeAt(i - 1) !== 0x2f) return "'#' not alone in its level";
    } else if (c === 0x2b) {
      if (i > 0 && filter.charCodeAt(i - 1) !== 0x2f) return "'+' not alone in its level";
      if (i < n - 1 && filter.charCodeAt(i + 1) !== 0x2f) return "'+' not alone in its level";
    }
  }
  return null;
}

/** Levels of a topic name or filter ('a/b' has 2, '/' has 2): for mqtt.max_topic_levels. */
export function topicLevels(topic: string): number {
  let n = 1;
  for (let i = topic.indexOf('/'); i !== -1; i = topic.indexOf('/', i + 1)) n++;
  return n;
}

/** True if a valid topic filter contains a wildcard. */
export function hasWildcard(filter: string): boolean {
  return filter.includes('+') || filter.includes('#');
}

/** Reference matcher for cold paths (retained lookup on subscribe). */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.charCodeAt(0) === 0x24 /* $ */) {
    const f0 = filter.charCodeAt(0);
    if (f0 === 0x2b || f0 === 0x23) return false; // [MQTT-4.7.2-1]
  }
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    const level = f[i];
    if (level === '#') return true;
    if (i >= t.length) return false;
    if (level !== '+' && level !== t[i]) return false;
  }
  return f.length === t.length;
}

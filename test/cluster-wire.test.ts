/**
 * The Forward stream's gRPC framing is written by hand (src/cluster/wire.ts) for the CPU it
 * saves; its bytes must stay exactly what protobuf-es makes of proto/ (cluster_pb.ts), both
 * ways, so that any gRPC peer reads and writes the same stream (a @grpc/grpc-js client does in
 * test/cluster-grpc.test.ts).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create, toBinary } from '@bufbuild/protobuf';
import { EntryWriter, readEntries } from '../src/cluster/codec.js';
import { ForwardAckSchema, ForwardBatchSchema } from '../src/cluster/gen/emqx_ts/cluster/v1/cluster_pb.js';
import {
  EnvelopeReader,
  forwardAck,
  forwardHeader,
  readForwardAck,
  readForwardBatch,
} from '../src/cluster/wire.js';
import { Message } from '../src/session/message.js';

/** A gRPC length-prefixed message (uncompressed). */
function envelope(body: Uint8Array): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt32BE(body.length, 1);
  return Buffer.concat([h, body]);
}

const cases = [
  {
    from: 'node1@127.0.0.1',
    incarnation: 1_765_000_000_000_123n,
    seq: 1,
    count: 3,
    entries: Buffer.alloc(300, 7),
  },
  { from: '', incarnation: 1_765_000_000_000_123n, seq: 2, count: 1, entries: Buffer.from([1, 2, 3]) },
  {
    from: 'ü-node',
    incarnation: 2n ** 53n - 1n,
    seq: 2 ** 40,
    count: 100_000,
    entries: Buffer.alloc(70_000, 1),
  },
  { from: '', incarnation: 0n, seq: 0, count: 0, entries: Buffer.alloc(0) },
];

/** What protobuf-es makes of a case */
function encoded(c: (typeof cases)[number]): Buffer {
  const m = create(ForwardBatchSchema, { ...c, seq: BigInt(c.seq) });
  return Buffer.from(toBinary(ForwardBatchSchema, m));
}

test('forwardHeader + entries is the ForwardBatch protobuf-es encodes, in a gRPC envelope', () => {
  for (const c of cases) {
    const ours = Buffer.concat([
      forwardHeader(Buffer.from(c.from), c.incarnation, c.seq, c.count, c.entries.length),
      c.entries,
    ]);
    const theirs = envelope(encoded(c));
    assert.ok(ours.equals(theirs), `batch seq ${c.seq}`);
  }
});

test('readForwardBatch reads what protobuf-es writes, unknown fields skipped', () => {
  for (const c of cases) {
    const body = encoded(c);
    // A field a newer sender might add (field 15, varint; field 16, bytes): ignored.
    const extended = Buffer.concat([body, Buffer.from([0x78, 0x96, 0x01, 0x82, 0x01, 0x02, 0xaa, 0xbb])]);
    for (const b of [body, extended]) {
      const v = readForwardBatch(b, 0, b.length);
      assert.equal(v.from, c.from);
      assert.equal(v.incarnation, c.incarnation);
      assert.equal(v.seq, BigInt(c.seq));
      assert.equal(v.count, c.count);
      assert.ok(b.subarray(v.entriesAt, v.entriesAt + v.entriesLen).equals(c.entries));
    }
  }
  // 64-bit values beyond 2^53 are read exactly.
  const big = Buffer.from(
    toBinary(ForwardBatchSchema, create(ForwardBatchSchema, { incarnation: 2n ** 64n - 1n })),
  );
  assert.equal(readForwardBatch(big, 0, big.length).incarnation, 2n ** 64n - 1n);
  // Truncated input is refused, not read past its end.
  const body = Buffer.from(
    toBinary(ForwardBatchSchema, create(ForwardBatchSchema, { entries: Buffer.alloc(10) })),
  );
  assert.throws(() => readForwardBatch(body, 0, body.length - 1), RangeError);
});

test('ForwardAck both ways', () => {
  for (const seq of [0, 1, 127, 128, 300_000, 2 ** 50]) {
    const theirs = envelope(toBinary(ForwardAckSchema, create(ForwardAckSchema, { seq: BigInt(seq) })));
    assert.ok(forwardAck(seq).equals(theirs), `ack ${seq}`);
    assert.equal(readForwardAck(theirs, 5, theirs.length), seq);
  }
});

test('EnvelopeReader: any split of the stream gives the same messages, each in a buffer of its own', () => {
  const bodies = [Buffer.alloc(0), Buffer.from('abc'), Buffer.alloc(5000, 9), Buffer.from([1])];
  const stream = Buffer.concat(bodies.map(envelope));
  for (const size of [1, 2, 4, 5, 6, 7, 100, 4999, 5005, stream.length]) {
    const got: Buffer[] = [];
    const r = new EnvelopeReader(1 << 20, (m) => got.push(m));
    for (let p = 0; p < stream.length; p += size) r.push(stream.subarray(p, p + size));
    assert.equal(r.partial, false);
    assert.deepEqual(got, bodies, `chunks of ${size}`);
    for (const m of got) assert.equal(m.buffer.byteLength, m.length, 'transferable as it is');
  }
  const r = new EnvelopeReader(1 << 20, () => {});
  r.push(stream.subarray(0, 7));
  assert.equal(r.partial, true, 'inside a message');
  // Compressed (no grpc-encoding was negotiated) and oversized messages are refused.
  assert.throws(() => new EnvelopeReader(100, () => {}).push(Buffer.from([1, 0, 0, 0, 1, 0])), RangeError);
  assert.throws(() => new EnvelopeReader(100, () => {}).push(Buffer.from([0, 0, 0, 1, 0])), RangeError);
});

test('readEntries: each entry gets its own topic and publisher, also when the previous one is reused', () => {
  // readEntries reuses the previous entry's publisher id while its bytes repeat (and any reuse
  // of a topic view must do the same): same-length topics and ids that differ are told apart.
  const sent: [string, string, string][] = [
    ['t/aa', 'c1', 'p0'],
    ['t/aa', 'c1', 'p1'],
    ['t/ab', 'c1', 'p2'],
    ['t/ab', 'c2', 'p3'],
    ['t/aa', 'c2', 'p4'],
    ['u/aa/long', 'c1', 'p5'],
    ['t/aa', 'c1', 'p6'],
  ];
  const w = new EntryWriter(16);
  for (const [topic, from, payload] of sent)
    w.add(Message.fromStrings(topic, Buffer.from(payload), 0, false, from), 0);
  const { buf, count } = w.take();
  assert.equal(count, sent.length);
  const got: [string, string, string][] = [];
  readEntries(buf, buf.length, Date.now(), (m) => {
    got.push([m.topicBytes.toString(), m.from, m.payload.toString()]);
  });
  assert.deepEqual(got, sent);
});

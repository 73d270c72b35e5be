/**
 * The cluster service speaks gRPC (connect-node's gRPC protocol over cleartext HTTP/2), so a
 * plain @grpc/grpc-js client can call it: here it plays a peer node by hand — heartbeat, join
 * with a route, a forward stream of batches — and sends bad input, which is refused, counted,
 * and leaves the node serving.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create, type DescMessage, fromBinary, type MessageShape, toBinary } from '@bufbuild/protobuf';
import * as grpc from '@grpc/grpc-js';
import mqtt from 'mqtt';
import { EntryWriter } from '../src/cluster/codec.js';
import {
  type ForwardAck,
  ForwardAckSchema,
  type ForwardBatch,
  ForwardBatchSchema,
  HeartbeatRequestSchema,
  HeartbeatResponseSchema,
  JoinRequestSchema,
  JoinResponseSchema,
} from '../src/cluster/gen/emqx_ts/cluster/v1/cluster_pb.js';
import { Message } from '../src/session/message.js';
import { within } from './helpers/broker.js';
import { startNode } from './helpers/cluster.js';

const SERVICE = '/emqx_ts.cluster.v1.ClusterService';

function unary<I extends DescMessage, O extends DescMessage>(
  client: grpc.Client,
  method: string,
  inSchema: I,
  outSchema: O,
  req: MessageShape<I>,
): Promise<MessageShape<O>> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      `${SERVICE}/${method}`,
      (m: MessageShape<I>) => Buffer.from(toBinary(inSchema, m)),
      (b: Buffer) => fromBinary(outSchema, b),
      req,
      (err, res) => (err ? reject(err) : resolve(res!)),
    );
  });
}

test('a @grpc/grpc-js client calls the cluster service: heartbeat, join, forward stream, bad input refused', {
  timeout: 90_000,
}, async (t) => {
  const node = await startNode(t, { name: 'grpc1@127.0.0.1' });
  const client = new grpc.Client(`127.0.0.1:${node.clusterPort}`, grpc.credentials.createInsecure());
  t.after(() => client.close());

  // An unknown caller is told to join.
  const hb = await unary(
    client,
    'Heartbeat',
    HeartbeatRequestSchema,
    HeartbeatResponseSchema,
    create(HeartbeatRequestSchema, { name: 'fake@x', incarnation: 1n }),
  );
  assert.equal(hb.known, false);
  assert.equal(hb.node?.name, 'grpc1@127.0.0.1');

  // Joins as the fake peer 'fake@x' with this route slice.
  const join = (filters: string[]) =>
    unary(
      client,
      'Join',
      JoinRequestSchema,
      JoinResponseSchema,
      create(JoinRequestSchema, {
        node: { name: 'fake@x', address: '127.0.0.1:1', incarnation: 7n },
        routes: { filters, version: 1n },
      }),
    );
  // A bad route filter is refused with INVALID_ARGUMENT and counted.
  await assert.rejects(
    join(['bad/#/filter']),
    (err: grpc.ServiceError) => err.code === grpc.status.INVALID_ARGUMENT,
  );
  assert.equal((await node.scrape()).get('emqx_ts_cluster_errors_total'), 1);

  // A proper join: the node now holds the fake peer's route and reports it running.
  const joined = await join(['from/fake/#']);
  assert.ok(joined.members.some((m) => m.name === 'grpc1@127.0.0.1'));
  await node.waitPeer('fake@x', 'running', (r) => r === 1);

  // Forwarded publishes reach the node's local subscriber, v5 properties included.
  const sub = mqtt.connect({
    host: '127.0.0.1',
    port: node.mqttPort,
    clientId: 'grpc-sub',
    protocolVersion: 5,
    reconnectPeriod: 0,
  });
  t.after(() => sub.end(true));
  await within(new Promise((r) => sub.once('connect', r)), 'subscriber connect');
  await sub.subscribeAsync('from/fake/#', { qos: 1 });
  const got: { topic: string; payload: string; qos: number; ct?: string }[] = [];
  sub.on('message', (topic, payload, packet) =>
    got.push({ topic, payload: payload.toString(), qos: packet.qos, ct: packet.properties?.contentType }),
  );

  const w = new EntryWriter();
  const m = Message.fromStrings('from/fake/a', Buffer.from('hi over grpc'), 1, false, 'remote-client');
  m.props = Buffer.from([0x03, 0x00, 0x04, ...Buffer.from('text')]); // Content Type "text"
  w.add(m, 0);
  const good = w.take();
  const stream = client.makeBidiStreamRequest(
    `${SERVICE}/Forward`,
    (b: ForwardBatch) => Buffer.from(toBinary(ForwardBatchSchema, b)),
    (b: Buffer) => fromBinary(ForwardAckSchema, b),
  );
  const acks: bigint[] = [];
  stream.on('data', (a: ForwardAck) => acks.push(a.seq));
  stream.on('error', () => {});
  stream.write(
    create(ForwardBatchSchema, { from: 'fake@x', incarnation: 7n, seq: 1n, count: 1, entries: good.buf }),
  );
  // Garbage entries: acknowledged (the stream goes on), dropped, counted.
  stream.write(
    create(ForwardBatchSchema, {
      incarnation: 7n,
      seq: 2n,
      count: 3,
      entries: Buffer.from([1, 255, 255, 255, 255]),
    }),
  );
  stream.write(create(ForwardBatchSchema, { incarnation: 7n, seq: 3n, count: 1, entries: good.buf }));
  const deadline = Date.now() + 20_000;
  while ((got.length < 2 || acks.length < 3) && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(acks, [1n, 2n, 3n]);
  assert.deepEqual(got, [
    { topic: 'from/fake/a', payload: 'hi over grpc', qos: 1, ct: 'text' },
    { topic: 'from/fake/a', payload: 'hi over grpc', qos: 1, ct: 'text' },
  ]);
  assert.equal((await node.scrape()).get('emqx_ts_cluster_errors_total'), 2);
  stream.end();

  // The node still serves MQTT.
  const pub = mqtt.connect({
    host: '127.0.0.1',
    port: node.mqttPort,
    clientId: 'grpc-pub',
    reconnectPeriod: 0,
  });
  t.after(() => pub.end(true));
  await within(new Promise((r) => pub.once('connect', r)), 'publisher connect');
  await pub.publishAsync('from/fake/local', 'local', { qos: 1 });
  while (got.length < 3 && Date.now() < deadline + 10_000) await new Promise((r) => setTimeout(r, 20));
  assert.equal(got[2]?.payload, 'local');
});

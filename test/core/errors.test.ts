import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Code, GrpcError, codeOf, messageOf, wrap } from '../../src-main/core/errors.js';

test('wrap keeps the code, details and the cause message of a GrpcError', () => {
  const detail = {
    type_url: 'type.googleapis.com/google.rpc.PreconditionFailure',
    value: Buffer.from([1]),
  };
  const err = wrap(
    new GrpcError(Code.NOT_FOUND, 'Blob "ab/3" not found', [detail]),
    'Failed to fetch',
  );
  assert.equal(err.code, Code.NOT_FOUND);
  assert.equal(err.message, 'Failed to fetch: Blob "ab/3" not found');
  assert.deepEqual(err.details, [detail]);
});

test('a grpc-js client error keeps its code and server message', () => {
  const clientErr = Object.assign(new Error('5 NOT_FOUND: gone'), { code: 5, details: 'gone' });
  assert.equal(codeOf(clientErr), Code.NOT_FOUND);
  assert.equal(messageOf(clientErr), 'gone');
  assert.equal(wrap(clientErr, 'Failed to read').message, 'Failed to read: gone');
});

test('anything else is UNKNOWN with its text', () => {
  assert.equal(codeOf(new Error('x')), Code.UNKNOWN);
  assert.equal(codeOf({ code: 'ENOENT' }), Code.UNKNOWN);
  assert.equal(messageOf('plain'), 'plain');
});

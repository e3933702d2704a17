import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { connectionHint, parseTarget } from '../../../src-main/core/executor/target.js';

describe('parseTarget', () => {
  test('grpcs without a port uses TLS on 443', () => {
    assert.deepEqual(parseTarget('grpcs://remote.buildbuddy.io'), {
      address: 'remote.buildbuddy.io:443',
      tls: true,
    });
  });

  test('grpc with a port is plaintext', () => {
    assert.deepEqual(parseTarget('grpc://127.0.0.1:1985'), {
      address: '127.0.0.1:1985',
      tls: false,
    });
  });

  test('a target without a scheme is treated as grpcs', () => {
    assert.deepEqual(parseTarget('bb.example.com:1986'), {
      address: 'bb.example.com:1986',
      tls: true,
    });
  });

  test('userinfo becomes authorization metadata and leaves the address', () => {
    assert.deepEqual(parseTarget('grpcs://alice:s3cret@bb.example.com'), {
      address: 'bb.example.com:443',
      tls: true,
      authorization: 'alice:s3cret',
    });
  });

  test('an IPv6 literal keeps its brackets', () => {
    assert.equal(parseTarget('grpc://[::1]:1985').address, '[::1]:1985');
  });

  test('unix sockets pass through as plaintext', () => {
    assert.deepEqual(parseTarget('unix:///run/bb.sock'), {
      address: 'unix:///run/bb.sock',
      tls: false,
    });
  });

  test('an unknown scheme or an empty target is INVALID_ARGUMENT', () => {
    for (const bad of ['http://example.com', '', 'grpc://']) {
      assert.throws(
        () => parseTarget(bad),
        (err: unknown) => err instanceof GrpcError && err.code === Code.INVALID_ARGUMENT,
        bad,
      );
    }
  });
});

test('connection failures come with what to do about them', () => {
  assert.match(
    connectionHint('14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED')!,
    /start the server/,
  );
  assert.match(
    connectionHint('SSL routines:ssl3_get_record:wrong version number')!,
    /use a grpc:\/\/ target/,
  );
  assert.match(connectionHint('getaddrinfo ENOTFOUND nowhere.invalid')!, /does not resolve/);
  assert.equal(connectionHint('Executor API key is missing or wrong'), undefined);
});

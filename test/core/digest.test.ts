import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Code, GrpcError } from '../../src-main/core/errors.js';
import { EMPTY_SHA256, checkDigest, digestOf, matchesDigest } from '../../src-main/core/digest.js';

test('digestOf hashes with SHA-256 and the empty blob has the well-known digest', () => {
  assert.deepEqual(digestOf(Buffer.alloc(0)), { hash: EMPTY_SHA256, size_bytes: 0 });
  assert.equal(
    digestOf(Buffer.from('abc')).hash,
    'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
  );
});

test('checkDigest rejects malformed digests with INVALID_ARGUMENT', () => {
  const bad = [
    null,
    { hash: 'ABC', size_bytes: 1 },
    { hash: EMPTY_SHA256.toUpperCase(), size_bytes: 0 },
    { hash: EMPTY_SHA256, size_bytes: -1 },
    { hash: EMPTY_SHA256, size_bytes: 1.5 },
    { hash: `${EMPTY_SHA256}00`, size_bytes: 0 },
  ];
  for (const d of bad) {
    assert.throws(
      () => checkDigest(d),
      (e: unknown) => e instanceof GrpcError && e.code === Code.INVALID_ARGUMENT,
    );
  }
  assert.deepEqual(checkDigest({ hash: EMPTY_SHA256, size_bytes: '0' }), {
    hash: EMPTY_SHA256,
    size_bytes: 0,
  });
});

test('matchesDigest checks both size and hash', () => {
  const d = digestOf(Buffer.from('hello'));
  assert.ok(matchesDigest(Buffer.from('hello'), d));
  assert.ok(!matchesDigest(Buffer.from('hellp'), d));
  assert.ok(!matchesDigest(Buffer.from('hello'), { ...d, size_bytes: 6 }));
});

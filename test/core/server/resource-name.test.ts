import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Code, type GrpcError } from '../../../src-main/core/errors.js';
import {
  parseReadResourceName,
  parseWriteResourceName,
} from '../../../src-main/core/server/resource-name.js';

const HASH = 'a'.repeat(64);
const UUID = '3f1d9a5e-7c2b-4e8f-9a1d-0b2c3d4e5f60';

function invalid(fn: () => unknown, pattern?: RegExp) {
  assert.throws(fn, (err: GrpcError) => {
    assert.equal(err.code, Code.INVALID_ARGUMENT);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

describe('ByteStream resource names', () => {
  test('a download name with an empty instance name', () => {
    assert.deepEqual(parseReadResourceName(`blobs/${HASH}/42`), {
      instanceName: '',
      digest: { hash: HASH, size_bytes: 42 },
    });
  });

  test('a download name with a multi-segment instance name', () => {
    assert.deepEqual(parseReadResourceName(`team/main/blobs/${HASH}/0`), {
      instanceName: 'team/main',
      digest: { hash: HASH, size_bytes: 0 },
    });
  });

  test('an upload name with and without metadata', () => {
    assert.deepEqual(parseWriteResourceName(`uploads/${UUID}/blobs/${HASH}/7`), {
      instanceName: '',
      uploadId: UUID,
      digest: { hash: HASH, size_bytes: 7 },
      metadata: '',
    });
    const withMeta = parseWriteResourceName(`ci/uploads/${UUID}/blobs/${HASH}/7/some/meta`);
    assert.equal(withMeta.instanceName, 'ci');
    assert.equal(withMeta.metadata, 'some/meta');
  });

  test('an explicit sha256 digest function segment is tolerated', () => {
    assert.equal(parseReadResourceName(`blobs/sha256/${HASH}/5`).digest.size_bytes, 5);
    assert.equal(
      parseWriteResourceName(`uploads/${UUID}/blobs/sha256/${HASH}/5`).digest.hash,
      HASH,
    );
  });

  test('other digest functions are unsupported', () => {
    invalid(() => parseReadResourceName(`blobs/blake3/${HASH}/5`), /digest function "blake3"/);
    invalid(
      () => parseWriteResourceName(`uploads/${UUID}/blobs/sha256tree/${HASH}/5`),
      /digest function "sha256tree".*SHA256/,
    );
  });

  test('compressed-blobs names say that no compressor is advertised', () => {
    invalid(() => parseReadResourceName(`compressed-blobs/zstd/${HASH}/5`), /no compressors/);
    invalid(
      () => parseWriteResourceName(`uploads/${UUID}/compressed-blobs/zstd/${HASH}/5`),
      /no compressors/,
    );
  });

  test('hostile names are INVALID_ARGUMENT', () => {
    const hostile = [
      '',
      `../blobs/${HASH}/1`,
      `blobs/../../etc/passwd/1`,
      `a/./blobs/${HASH}/1`,
      `/blobs/${HASH}/1`,
      `blobs//${HASH}/1`,
      `blobs/${HASH}/1/`,
      `blobs/${HASH}/1/extra`,
      `blobs/${HASH.toUpperCase()}/1`,
      `blobs/${HASH}/-1`,
      `blobs/${HASH}/01`,
      `blobs/${HASH}/1e3`,
      `blobs/${HASH}/99999999999999999999`,
      `blobs/${HASH}`,
      `blobs\\${HASH}\\1`,
      `blobs/${HASH}/1\u0000`,
      `uploads/x/blobs/${HASH}/1`,
      `operations/blobs/${HASH}/1`,
    ];
    for (const name of hostile) invalid(() => parseReadResourceName(name));

    const hostileUploads = [
      `uploads/../blobs/${HASH}/1`,
      `uploads/${UUID}/blobs/../${HASH}/1`,
      `uploads/${UUID}/blobs/${HASH}/1/../..`,
      `uploads/${UUID}/${HASH}/1`,
      `uploads/blobs/${HASH}/1`,
      `blobs/${HASH}/1`,
      `x/blobs/uploads/${UUID}/blobs/${HASH}/1`,
      `uploads/${UUID}`,
    ];
    for (const name of hostileUploads) invalid(() => parseWriteResourceName(name));
  });

  test('a bad name is quoted in the error message', () => {
    invalid(() => parseReadResourceName('nonsense'), /^Resource name "nonsense" is not valid/);
  });
});

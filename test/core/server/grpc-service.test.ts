import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Code, GrpcError } from '../../../src-main/core/errors.js';
import { decode, packAny } from '../../../src-main/core/proto/index.js';
import { checkDigestFunction, toServiceError } from '../../../src-main/core/server/grpc-service.js';

describe('gRPC service helpers', () => {
  test('a GrpcError keeps its code, message and details', () => {
    const detail = packAny('google.rpc.PreconditionFailure', {
      violations: [{ type: 'MISSING', subject: `blobs/${'a'.repeat(64)}/1` }],
    });
    const status = toServiceError(
      new GrpcError(Code.FAILED_PRECONDITION, 'Missing inputs', [detail]),
    );
    assert.equal(status.code, Code.FAILED_PRECONDITION);
    assert.equal(status.details, 'Missing inputs');
    const [bin] = status.metadata!.get('grpc-status-details-bin') as Buffer[];
    const decoded = decode('google.rpc.Status', bin);
    assert.equal(decoded.code, Code.FAILED_PRECONDITION);
    assert.equal(decoded.details[0].type_url, detail.type_url);
  });

  test('an unexpected error becomes INTERNAL', () => {
    const status = toServiceError(new Error('EIO: disk on fire'));
    assert.equal(status.code, Code.INTERNAL);
    assert.match(status.details!, /disk on fire/);
    assert.equal(status.metadata!.get('grpc-status-details-bin').length, 0);
  });

  test('SHA256 and unset digest functions pass; others are INVALID_ARGUMENT', () => {
    for (const ok of ['SHA256', 'UNKNOWN', '', undefined]) checkDigestFunction(ok);
    assert.throws(() => checkDigestFunction('MD5'), { code: Code.INVALID_ARGUMENT });
    assert.throws(() => checkDigestFunction('BLAKE3'), { code: Code.INVALID_ARGUMENT });
  });
});

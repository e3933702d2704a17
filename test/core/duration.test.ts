import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { formatDuration, parseDuration } from '../../src-main/core/duration.js';
import { Code, GrpcError } from '../../src-main/core/errors.js';

describe('parseDuration', () => {
  test('Go syntax in every unit and in combinations', () => {
    assert.equal(parseDuration('8h'), 8 * 3_600_000);
    assert.equal(parseDuration('60s'), 60_000);
    assert.equal(parseDuration('1m30s'), 90_000);
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('1.5h'), 5_400_000);
    assert.equal(parseDuration('1h2m3s4ms'), 3_723_004);
    assert.equal(parseDuration('2000us'), 2);
    assert.equal(parseDuration('3000000ns'), 3);
    assert.equal(parseDuration('-1s'), -1000);
    assert.equal(parseDuration('0'), 0);
  });

  test('numbers and plain numeric strings are seconds', () => {
    assert.equal(parseDuration(60), 60_000);
    assert.equal(parseDuration(0.5), 500);
    assert.equal(parseDuration('90'), 90_000);
  });

  test('bad input is INVALID_ARGUMENT quoting the text', () => {
    for (const bad of ['lots', '', '1 h', '1x', 'h', '1.2.3s', '5s5', Number.NaN]) {
      assert.throws(
        () => parseDuration(bad),
        (err: unknown) => {
          assert.ok(err instanceof GrpcError);
          assert.equal(err.code, Code.INVALID_ARGUMENT);
          assert.match(err.message, /^Invalid duration ".*": use Go syntax/);
          return true;
        },
        `input ${String(bad)}`,
      );
    }
  });

  test('formatDuration round-trips through parseDuration', () => {
    for (const ms of [0, 500, 60_000, 90_000, 5_400_000, 86_400_000, 1_500]) {
      assert.equal(parseDuration(formatDuration(ms)), ms, formatDuration(ms));
    }
    assert.equal(formatDuration(90_000), '1m30s');
  });
});

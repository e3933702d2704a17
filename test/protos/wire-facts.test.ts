// Checks our .proto files against the shared wire facts (wire-facts.tsv):
// every message, field number, type, label, enum value, rpc and reserved
// number listed for a file we ship must match what protobufjs compiles.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import protobuf from 'protobufjs';

import { loadProtoRoot, PROTO_DIR } from '../../src-main/core/proto/index.js';

const FACTS_PATH = join(PROTO_DIR, '..', '..', 'shared', 'reference', 'wire-facts.tsv');

// Proto files named in the facts that we ship, with the package each lives in.
// Both REAPI and BuildBuddy's fork of it map to our single merged file.
const UPSTREAM_REAPI = 'build/bazel/remote/execution/v2/remote_execution.proto';
const BUILDBUDDY_REAPI = 'proto/remote_execution.proto';
const PACKAGES: Record<string, string> = {
  [UPSTREAM_REAPI]: 'build.bazel.remote.execution.v2',
  [BUILDBUDDY_REAPI]: 'build.bazel.remote.execution.v2',
  'build/bazel/semver/semver.proto': 'build.bazel.semver',
  'google/bytestream/bytestream.proto': 'google.bytestream',
  'google/longrunning/operations.proto': 'google.longrunning',
  'google/rpc/code.proto': 'google.rpc',
  'google/rpc/error_details.proto': 'google.rpc',
  'google/rpc/status.proto': 'google.rpc',
  'proto/execution_stats.proto': 'execution_stats',
  'proto/scheduler.proto': 'scheduler',
  'proto/trace.proto': 'trace',
  // Not shipped by us but bundled with protobufjs, so they are loaded too.
  'google/protobuf/any.proto': 'google.protobuf',
  'google/protobuf/duration.proto': 'google.protobuf',
  'google/protobuf/timestamp.proto': 'google.protobuf',
  'google/protobuf/wrappers.proto': 'google.protobuf',
};

const SCALARS = new Set([
  'double',
  'float',
  'int32',
  'int64',
  'uint32',
  'uint64',
  'sint32',
  'sint64',
  'fixed32',
  'fixed64',
  'sfixed32',
  'sfixed64',
  'bool',
  'string',
  'bytes',
]);

interface Row {
  line: number;
  file: string;
  message: string;
  field: string;
  number: string;
  type: string;
  label: string;
}

interface Report {
  checked: number;
  mismatches: string[];
  conflicts: string[];
  skipped: Map<string, number>;
}

function readFacts(path: string): Row[] {
  const lines = readFileSync(path, 'utf8').split('\n');
  return lines.slice(1).flatMap((text, index) => {
    if (text.trim() === '') return [];
    const [file = '', message = '', field = '', number = '', type = '', label = ''] =
      text.split('\t');
    return [{ line: index + 2, file, message, field, number, type, label }];
  });
}

function describe(row: Row): string {
  return `line ${row.line} ${row.file} ${row.message} ${row.field} ${row.number}`;
}

/** Numbers named by a reserved row: "8", "3 to 5", "3..5", "2, 4, 5". */
function reservedNumbers(spec: string): number[] {
  return spec.split(',').flatMap((part) => {
    const range = /^\s*(\d+)\s*(?:to|\.\.|-)\s*(\d+)\s*$/.exec(part);
    if (range) {
      const numbers: number[] = [];
      for (let n = Number(range[1]); n <= Number(range[2]); n++) numbers.push(n);
      return numbers;
    }
    return /^\s*\d+\s*$/.test(part) ? [Number(part)] : [];
  });
}

function lookupIn(root: protobuf.Root, pkg: string, name: string): protobuf.ReflectionObject | null {
  return root.lookup(`.${pkg}.${name}`) ?? root.lookup(`.${name}`);
}

function lookupType(scope: protobuf.Namespace, name: string): protobuf.ReflectionObject | null {
  return scope.lookup(name, [protobuf.Type, protobuf.Enum]);
}

/** Returns a problem description, or undefined when the type matches. */
function checkType(scope: protobuf.Type, field: protobuf.Field, expected: string): string | undefined {
  const map = /^map<\s*(\w+)\s*,\s*([\w.]+)\s*>$/.exec(expected);
  if (map) {
    if (!(field instanceof protobuf.MapField)) return `expected ${expected}, got a non-map field`;
    if (field.keyType !== map[1]) return `map key ${field.keyType}, expected ${map[1]}`;
    return checkType(scope, field, map[2]!);
  }
  if (SCALARS.has(expected)) {
    return field.type === expected && field.resolvedType === null
      ? undefined
      : `type ${field.type}, expected ${expected}`;
  }
  const wanted = lookupType(scope, expected);
  if (wanted === null) return `expected type ${expected} does not exist`;
  return field.resolvedType === wanted
    ? undefined
    : `type ${field.resolvedType?.fullName ?? field.type}, expected ${wanted.fullName}`;
}

function checkLabel(field: protobuf.Field, label: string): string | undefined {
  const proto3Optional = field.options?.['proto3_optional'] === true;
  const oneof = /^oneof[: ](\w+)/.exec(label);
  const kind = oneof ? 'oneof' : (/^\w+/.exec(label)?.[0] ?? '');
  const actual = field.map
    ? 'map'
    : field.repeated
      ? 'repeated'
      : proto3Optional
        ? 'optional'
        : field.partOf
          ? `oneof ${field.partOf.name}`
          : 'singular';
  const expected = oneof ? `oneof ${oneof[1]}` : kind;
  if (actual !== expected) return `label ${actual}, expected ${expected}`;
  const deprecated = /,\s*deprecated(?![-\w])/.test(label);
  if (deprecated && field.options?.['deprecated'] !== true) return 'expected [deprecated = true]';
  return undefined;
}

function checkField(type: protobuf.Type, row: Row): string | undefined {
  const field = type.fields[row.field];
  if (field === undefined) return `field ${row.field} missing`;
  if (field.id !== Number(row.number)) return `number ${field.id}, expected ${row.number}`;
  return checkType(type, field, row.type) ?? checkLabel(field, row.label);
}

function checkRpc(root: protobuf.Root, pkg: string, row: Row): string | undefined {
  const service = lookupIn(root, pkg, row.message.replace(/^service\s+/, ''));
  if (!(service instanceof protobuf.Service)) return 'service missing';
  const method = service.methods[row.field];
  if (method === undefined) return `rpc ${row.field} missing`;
  const signature = /^(stream\s+)?([\w.]+)\s*->\s*(stream\s+)?([\w.]+)$/.exec(row.type.trim());
  if (!signature) return `unreadable signature ${row.type}`;
  const kind = /^\w+/.exec(row.label)?.[0] ?? '';
  const requestStream = !!signature[1] || kind === 'client_stream' || kind === 'bidi_stream';
  const responseStream = !!signature[3] || kind === 'server_stream' || kind === 'bidi_stream';
  const request = lookupType(service, signature[2]!);
  const response = lookupType(service, signature[4]!);
  if (request === null || method.resolvedRequestType !== request) {
    return `request ${method.requestType}, expected ${signature[2]}`;
  }
  if (response === null || method.resolvedResponseType !== response) {
    return `response ${method.responseType}, expected ${signature[4]}`;
  }
  if (!!method.requestStream !== requestStream) return `request streaming is ${!requestStream}`;
  if (!!method.responseStream !== responseStream) return `response streaming is ${!responseStream}`;
  return undefined;
}

function checkRow(root: protobuf.Root, pkg: string, row: Row): string | undefined {
  if (row.message.startsWith('service ')) return checkRpc(root, pkg, row);

  if (row.type === 'enum_value') {
    const target = lookupIn(root, pkg, row.message.replace(/^enum\s+/, ''));
    if (!(target instanceof protobuf.Enum)) return 'enum missing';
    const value = target.values[row.field];
    if (value === undefined) return `enum value ${row.field} missing`;
    return value === Number(row.number) ? undefined : `value ${value}, expected ${row.number}`;
  }

  const type = lookupIn(root, pkg, row.message);
  if (!(type instanceof protobuf.Type)) return 'message missing';
  if (row.field === '(no fields)') {
    return type.fieldsArray.length === 0 ? undefined : 'expected a message without fields';
  }
  if (row.field.startsWith('(reserved')) {
    const missing = reservedNumbers(row.number).filter((n) => !isReserved(type, n));
    return missing.length === 0 ? undefined : `numbers ${missing.join(', ')} not reserved`;
  }
  return checkField(type, row);
}

// protobufjs's own isReservedId treats range ends as exclusive; ours are inclusive.
function isReserved(type: protobuf.Type, id: number): boolean {
  return (type.reserved ?? []).some(
    (entry) => typeof entry !== 'string' && entry[0]! <= id && id <= entry[1]!,
  );
}

/** Why a row cannot be checked, or undefined when it can. */
function skipReason(row: Row): string | undefined {
  if (PACKAGES[row.file] === undefined) return 'not shipped';
  if (/not verified/.test(row.label)) return 'number not verified';
  if (/app-side only/.test(row.label)) return 'app-side only';
  if (row.message.startsWith('service ') || row.field === '(no fields)') return undefined;
  if (row.field.startsWith('(reserved')) {
    return reservedNumbers(row.number).length > 0 ? undefined : 'number not given';
  }
  return /^\d+$/.test(row.number) ? undefined : 'number not given';
}

/** The numbers a field or reserved row occupies within its message. */
function occupied(row: Row): number[] {
  if (row.field.startsWith('(reserved')) return reservedNumbers(row.number);
  return /^\d+$/.test(row.number) && row.type !== 'enum_value' ? [Number(row.number)] : [];
}

function checkFacts(root: protobuf.Root, rows: Row[]): Report {
  const report: Report = { checked: 0, mismatches: [], conflicts: [], skipped: new Map() };
  const results: { row: Row; problem: string | undefined }[] = [];

  // Check every row of a file we ship.
  for (const row of rows) {
    const reason = skipReason(row);
    if (reason !== undefined) {
      const key = reason === 'not shipped' ? `not shipped: ${row.file}` : reason;
      report.skipped.set(key, (report.skipped.get(key) ?? 0) + 1);
      continue;
    }
    report.checked++;
    results.push({ row, problem: checkRow(root, PACKAGES[row.file]!, row) });
  }

  // Upstream REAPI and BuildBuddy's fork share one merged file. A failing row
  // from one source is a resolved conflict, not a mismatch, when the other
  // source declares something else at the same number and that row passes.
  const merged = new Set([UPSTREAM_REAPI, BUILDBUDDY_REAPI]);
  for (const { row, problem } of results) {
    if (problem === undefined) continue;
    const numbers = occupied(row);
    const winner = results.find(
      (other) =>
        merged.has(row.file) &&
        merged.has(other.row.file) &&
        other.row.file !== row.file &&
        other.problem === undefined &&
        other.row.message === row.message &&
        other.row.field !== row.field &&
        occupied(other.row).some((n) => numbers.includes(n)),
    );
    if (winner) {
      report.conflicts.push(
        `${row.message} ${numbers.join(',')}: ${row.file} says ${row.field}, ` +
          `kept ${winner.row.field} from ${winner.row.file}`,
      );
    } else {
      report.mismatches.push(`${describe(row)}: ${problem}`);
    }
  }
  return report;
}

function summary(report: Report): string {
  let notShipped = 0;
  const files: string[] = [];
  const reasons: string[] = [];
  for (const [reason, count] of report.skipped) {
    if (reason.startsWith('not shipped: ')) {
      notShipped += count;
      files.push(reason.slice('not shipped: '.length));
    } else {
      reasons.push(`${count} ${reason}`);
    }
  }
  const skipped = [...report.skipped.values()].reduce((a, b) => a + b, 0);
  return (
    `wire-facts: ${report.checked} rows checked, ${report.mismatches.length} mismatches, ` +
    `${report.conflicts.length} upstream/BuildBuddy conflicts resolved, ${skipped} skipped ` +
    `(${[...reasons, `${notShipped} not shipped: ${files.join(', ')}`].join('; ')})`
  );
}

test('our protos match every wire fact for the files we ship', () => {
  const report = checkFacts(loadProtoRoot(), readFacts(FACTS_PATH));
  console.log(summary(report));
  for (const conflict of report.conflicts) console.log(`  conflict: ${conflict}`);
  for (const mismatch of report.mismatches) console.log(`  mismatch: ${mismatch}`);

  assert.ok(report.checked > 400, `only ${report.checked} rows were checked`);
  assert.deepEqual(report.mismatches, []);
});

test('a corrupted field number is reported as a mismatch', () => {
  const root = loadProtoRoot();
  root.lookupType('build.bazel.remote.execution.v2.Digest').fields['size_bytes']!.id = 3;
  root.lookupType('scheduler.LeaseTaskRequest').fields['reconnect_token']!.id = 18;

  const report = checkFacts(root, readFacts(FACTS_PATH));

  assert.ok(report.mismatches.some((m) => / Digest size_bytes 2: number 3, expected 2$/.test(m)));
  assert.ok(report.mismatches.some((m) => /LeaseTaskRequest reconnect_token 8: number 18/.test(m)));
});

test('a wrong label, type or missing rpc is reported as a mismatch', () => {
  const root = loadProtoRoot();
  const node = root.lookupType('scheduler.ExecutionNode');
  node.fields['xcode_versions']!.repeated = false;
  node.fields['pool']!.type = 'bytes';
  const scheduler = root.lookupService('scheduler.Scheduler');
  scheduler.remove(scheduler.methods['TaskExists']!);

  const report = checkFacts(root, readFacts(FACTS_PATH));

  assert.ok(report.mismatches.some((m) => /xcode_versions 16: label singular/.test(m)));
  assert.ok(report.mismatches.some((m) => /ExecutionNode pool 7: type bytes/.test(m)));
  assert.ok(report.mismatches.some((m) => /TaskExists .*rpc TaskExists missing/.test(m)));
});

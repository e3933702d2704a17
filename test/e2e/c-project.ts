import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Writes a Bazel workspace that exercises remote execution the way real C
 * builds do, without needing Bazel's C++ toolchain (which downloads): one
 * genrule per source file calling gcc -c, a link genrule, a Starlark rule with
 * a directory output, and a genrule that reads that directory.
 *
 * The linked program prints the sum of every module's value, so a wrong or
 * missing object changes what it prints.
 */
export interface CProject {
  dir: string;
  modules: number;
  /** What `prog` prints when every object was compiled correctly. */
  expectedOutput: string;
  /** Output files (relative to bazel-bin) to compare between builds. */
  outputs: string[];
  /** Actions Bazel runs as spawns: compiles + link + directory rule + directory reader. */
  spawnCount: number;
}

export async function writeCProject(dir: string, modules: number): Promise<CProject> {
  await mkdir(join(dir, 'src'), { recursive: true });
  await writeFile(join(dir, 'WORKSPACE'), 'workspace(name = "idlebuild_e2e")\n');

  // Step: sources. Module i returns i * 7 + 1; main sums them all.
  let sum = 0;
  const decls: string[] = [];
  const calls: string[] = [];
  for (let i = 0; i < modules; i++) {
    sum += i * 7 + 1;
    decls.push(`int module_${i}(void);`);
    calls.push(`  total += module_${i}();`);
    await writeFile(
      join(dir, 'src', `m${i}.c`),
      `#include "src/lib.h"\nint module_${i}(void) { return SCALE * ${i} + 1; }\n`,
    );
  }
  await writeFile(join(dir, 'src', 'lib.h'), '#define SCALE 7\n');
  // A 6 MB input and a 10 MB output: both larger than one gRPC message, so
  // they travel over ByteStream in both directions.
  await writeFile(join(dir, 'src', 'big.dat'), Buffer.alloc(6_000_000, 'idlebuild big input\n'));
  await writeFile(
    join(dir, 'src', 'main.c'),
    [
      '#include <stdio.h>',
      ...decls,
      'int main(void) {',
      '  long total = 0;',
      ...calls,
      '  printf("idlebuild e2e: %ld\\n", total);',
      '  return 0;',
      '}',
      '',
    ].join('\n'),
  );

  // Step: BUILD rules. Compiles, the link, and the directory-output rule.
  const rules: string[] = ['load("//:dir_rule.bzl", "file_tree")', ''];
  const objects: string[] = [];
  for (const name of [...Array.from({ length: modules }, (_, i) => `m${i}`), 'main']) {
    objects.push(`:${name}_o`);
    rules.push(
      `genrule(name = "${name}_o", srcs = ["src/${name}.c", "src/lib.h"], outs = ["obj/${name}.o"],`,
      `        cmd = "gcc -O1 -I. -c $(location src/${name}.c) -o $@")`,
    );
  }
  rules.push(
    `genrule(name = "link", srcs = [${objects.map((o) => `"${o}"`).join(', ')}], outs = ["prog"],`,
    '        cmd = "gcc -o $@ $(SRCS)", executable = True)',
    'file_tree(name = "tree", srcs = ["src/lib.h", "src/main.c"])',
    'genrule(name = "big_in", srcs = ["src/big.dat"], outs = ["big_in.sha256"],',
    '        cmd = "sha256sum $(location src/big.dat) | cut -d\' \' -f1 > $@")',
    'genrule(name = "big_out", outs = ["big_out.dat"], cmd = "head -c 10000000 /dev/zero > $@")',
    'genrule(name = "tree_listing", srcs = [":tree"], outs = ["tree_listing.txt"],',
    '        cmd = "cd $(location :tree) && find . -type f | sort | xargs sha256sum > $$OLDPWD/$@")',
    '',
  );
  await writeFile(join(dir, 'BUILD'), rules.join('\n'));
  await writeFile(
    join(dir, 'dir_rule.bzl'),
    [
      'def _file_tree_impl(ctx):',
      '    out = ctx.actions.declare_directory(ctx.attr.name + ".d")',
      '    ctx.actions.run_shell(',
      '        outputs = [out],',
      '        inputs = ctx.files.srcs,',
      '        arguments = [out.path] + [f.path for f in ctx.files.srcs],',
      '        command = "d=$1; shift; mkdir -p $d/nested/deeper && cp $@ $d/ && " +',
      '                  "echo leaf > $d/nested/deeper/leaf.txt && wc -c $@ > $d/nested/sizes.txt",',
      '        mnemonic = "FileTree",',
      '    )',
      '    return [DefaultInfo(files = depset([out]))]',
      '',
      'file_tree = rule(implementation = _file_tree_impl, attrs = {"srcs": attr.label_list(allow_files = True)})',
      '',
    ].join('\n'),
  );

  return {
    dir,
    modules,
    expectedOutput: `idlebuild e2e: ${sum}\n`,
    outputs: [
      ...Array.from({ length: modules }, (_, i) => `obj/m${i}.o`),
      'obj/main.o',
      'prog',
      'tree.d/lib.h',
      'tree.d/main.c',
      'tree.d/nested/deeper/leaf.txt',
      'tree.d/nested/sizes.txt',
      'tree_listing.txt',
      'big_in.sha256',
      'big_out.dat',
    ],
    // Compiles, main, link, the directory rule, its reader, big_in, big_out.
    spawnCount: modules + 1 + 1 + 1 + 1 + 2,
  };
}

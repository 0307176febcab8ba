// Run a script in real MicroPython (the WebAssembly build from npm) with firmware modules
// placed in its file system, the way they sit in a Pico's flash.
//
//   node run_mpy.mjs [--heap BYTES] [--file NAME=PATH]... SCRIPT
//
// Every --file is written to /NAME in the MicroPython VFS (the import path starts at /).
// The script's output goes to stdout; an uncaught Python exception prints its traceback
// to stderr and exits with status 1.
//
// Garbage collection: this build defers gc.collect() to the top level (between two
// runPython calls), since it cannot scan the wasm stack; inside one run nothing is ever
// freed and the heap just grows (so --heap limits nothing). A line `#:collect` in SCRIPT
// splits it: each part runs as its own runPython with the same globals, and the collection
// a part asked for with gc.collect() has happened when the next part starts. Live heap is
// measured as `gc.collect()`, `#:collect`, then `gc.mem_alloc()`.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, resolve } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const pkg = resolve(
  here,
  "../../node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs",
);

function parseArgs(argv) {
  const opts = { heap: 192 * 1024, files: [], script: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--heap") opts.heap = Number(argv[++i]);
    else if (a === "--file") {
      const spec = argv[++i];
      const eq = spec.indexOf("=");
      opts.files.push([spec.slice(0, eq), spec.slice(eq + 1)]);
    } else opts.script = a;
  }
  if (!opts.script) throw new Error("usage: run_mpy.mjs [--heap N] [--file NAME=PATH]... SCRIPT");
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const { loadMicroPython } = await import(pkg);
const mp = await loadMicroPython({
  heapsize: opts.heap,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
for (const [name, path] of opts.files) {
  const parts = name.split("/");
  for (let i = 1; i < parts.length; i++) {
    const dir = "/" + parts.slice(0, i).join("/");
    try {
      mp.FS.mkdir(dir);
    } catch {
      // already there
    }
  }
  mp.FS.writeFile("/" + name, readFileSync(path));
}
try {
  for (const part of readFileSync(opts.script, "utf8").split(/^#:collect[ \t]*$/m)) {
    mp.runPython(part);
  }
} catch (err) {
  process.stderr.write(String(err && err.message ? err.message : err) + "\n");
  process.exit(1);
}

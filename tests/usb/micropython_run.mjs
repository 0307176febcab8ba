// Run code in real MicroPython (the WebAssembly port) under Node: a test tool of ours.
// stdin: {"files": {"name.py": "source", ...}, "code": "python source", "cwd_files": {...}}
// Module files go to /lib (on sys.path); cwd_files to the working directory "/" (what a board
// sees as its file system). stdout: the program's output; exit 1 with the traceback on error.
import { loadMicroPython } from "../../node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs";

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const job = JSON.parse(Buffer.concat(chunks).toString("utf8"));

let out = "";
const mp = await loadMicroPython({
  stdout: (line) => { out += line + "\n"; },
  stderr: (line) => { out += line + "\n"; },
});
mp.FS.mkdirTree("/lib");
for (const [name, src] of Object.entries(job.files || {})) mp.FS.writeFile("/lib/" + name, src);
for (const [name, src] of Object.entries(job.cwd_files || {})) mp.FS.writeFile("/" + name, src);
try {
  await mp.runPythonAsync(job.code);
  process.stdout.write(out);
} catch (e) {
  process.stdout.write(out);
  process.stderr.write(String(e.message || e) + "\n");
  process.exit(1);
}

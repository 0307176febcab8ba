// The board's CPU: one boot of MicroPython (WebAssembly) in a worker thread. It loads the
// flash (a host directory) into the interpreter's file system, writes every committed change
// back to it, and runs boot.py then main.py as rp2 does. Calls into the host block this
// thread (Atomics.wait) so that they behave like rp2's blocking C calls; the host thread does
// the network I/O and may terminate this thread at any moment (watchdog, reset, power cut).
import { parentPort, receiveMessageOnPort, workerData } from "node:worker_threads";
import * as fs from "node:fs";
import * as path from "node:path";
import * as crypto from "node:crypto";

const { sab, port, flash, rom, mpy, heapsize, bootInfo } = workerData;
const ctl = new Int32Array(sab, 0, 8);
// ctl[0]: reply ready; ctl[2]: flash ops left before a power cut (-1 = none);
// ctl[3]: host wants attention (idle wakes early)
const REPLY = 0;
const CUT = 2;
const ATTN = 3;

function emit(ev) {
  parentPort.postMessage(ev);
}

function call(op, a, b, c, d) {
  Atomics.store(ctl, REPLY, 0);
  port.postMessage({ op, a, b, c, d });
  Atomics.wait(ctl, REPLY, 0);
  const m = receiveMessageOnPort(port);
  return m ? m.message : undefined;
}

function hang() {
  // the host terminates this thread now; never return into the interpreter
  for (;;) Atomics.wait(ctl, 7, 0);
}

const host = {
  call(op, a, b, c, d) {
    switch (op) {
      case "now":
        return Math.floor(performance.now());
      case "epoch":
        return Date.now() / 1000;
      case "idle":
        // a plain sleep (slot 6 is never notified)
        if (a > 0) Atomics.wait(ctl, 6, 0, a);
        return null;
      case "tarm":
        armTimers(a);
        return null;
      case "repl":
        emit({ ev: "repl", file: a, error: b });
        return null;
      case "urandom":
        return new Uint8Array(crypto.randomBytes(a));
      case "flash_blocks":
        return flashBlocks(flash, a) + 2;
      case "srecv": {
        const r = call(op, a, b, c, d);
        return new Uint8Array(r);
      }
      case "reset":
        call(op, a);
        return hang();
      default: {
        const r = call(op, a, b, c, d);
        return r === undefined ? null : r;
      }
    }
  },
};

// littlefs blocks the flash directory takes: a block per directory, at least one per file
function flashBlocks(dir, block) {
  let n = 0;
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.statSync(p);
    n += st.isDirectory() ? 1 + flashBlocks(p, block) : Math.max(1, Math.ceil(st.size / block));
  }
  return n;
}

// soft timers while Python is idle: the JS event loop calls _rt.run_timers() on time
let timerHandle = null;
let runTimers = null;

function armTimers(ms) {
  if (timerHandle !== null) clearTimeout(timerHandle);
  timerHandle = null;
  if (ms >= 0 && runTimers) {
    timerHandle = setTimeout(() => {
      timerHandle = null;
      runTimers();
    }, ms);
  }
}

// -- the flash ---------------------------------------------------------------------------
const OUTSIDE = ["/_rom", "/tmp", "/dev", "/proc", "/home"];

function onFlash(p) {
  return typeof p === "string" && p.startsWith("/") && !OUTSIDE.some((o) => p === o || p.startsWith(o + "/"));
}

function norm(p) {
  return path.posix.normalize(p);
}

function hostPath(p) {
  return path.join(flash, p);
}

function loadTree(FS, dir, into) {
  for (const name of fs.readdirSync(dir)) {
    if (name.startsWith(".board-")) continue;
    const src = path.join(dir, name);
    const dst = into === "/" ? "/" + name : into + "/" + name;
    if (fs.statSync(src).isDirectory()) {
      try {
        FS.mkdir(dst);
      } catch {
        // exists
      }
      loadTree(FS, src, dst);
    } else {
      FS.writeFile(dst, fs.readFileSync(src));
    }
  }
}

let ops = 0;

// One numbered flash operation; a pending power cut happens right before it.
function flashOp(what, p, p2) {
  ops += 1;
  const left = Atomics.sub(ctl, CUT, 1);
  if (left === 1) {
    call("powercut", what, norm(p), ops);
    hang();
  }
  if (left <= 0) Atomics.store(ctl, CUT, -1);
  emit({ ev: "flash", op: what, path: norm(p), to: p2 && norm(p2), n: ops });
}

function commit(FS, p) {
  // littlefs commits a file's data on close: write it to the host atomically
  const data = FS.readFile(p);
  const tmp = hostPath(path.dirname(p) + "/.board-tmp");
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, hostPath(p));
}

function hookFS(FS) {
  const orig = {
    open: FS.open,
    write: FS.write,
    close: FS.close,
    rename: FS.rename,
    unlink: FS.unlink,
    mkdir: FS.mkdir,
    rmdir: FS.rmdir,
  };
  FS.open = function (p, flags, mode) {
    const abs = typeof p === "string" ? path.posix.resolve(FS.cwd(), p) : p;
    if (onFlash(abs) && typeof flags === "number" && flags & 64 /* O_CREAT */) {
      let exists = true;
      try {
        FS.lookupPath(abs);
      } catch {
        exists = false;
      }
      if (!exists) {
        flashOp("create", abs);
        fs.writeFileSync(hostPath(abs), "");
      }
    }
    return orig.open.apply(FS, arguments);
  };
  FS.write = function (stream) {
    if (onFlash(stream.path)) {
      flashOp("write", stream.path);
      stream.boardDirty = true;
    }
    return orig.write.apply(FS, arguments);
  };
  FS.close = function (stream) {
    const r = orig.close.apply(FS, arguments);
    if (stream.boardDirty && onFlash(stream.path)) commit(FS, stream.path);
    return r;
  };
  FS.rename = function (a, b) {
    if (onFlash(a)) flashOp("rename", a, b);
    const r = orig.rename.apply(FS, arguments);
    if (onFlash(a)) fs.renameSync(hostPath(a), hostPath(b));
    return r;
  };
  FS.unlink = function (p) {
    if (onFlash(p)) flashOp("remove", p);
    const r = orig.unlink.apply(FS, arguments);
    if (onFlash(p)) fs.rmSync(hostPath(p), { force: true });
    return r;
  };
  FS.mkdir = function (p) {
    if (onFlash(p)) flashOp("mkdir", p);
    const r = orig.mkdir.apply(FS, arguments);
    if (onFlash(p)) fs.mkdirSync(hostPath(p), { recursive: true });
    return r;
  };
  FS.rmdir = function (p) {
    if (onFlash(p)) flashOp("rmdir", p);
    const r = orig.rmdir.apply(FS, arguments);
    if (onFlash(p)) fs.rmSync(hostPath(p), { recursive: true, force: true });
    return r;
  };
}

// -- boot ----------------------------------------------------------------------------------
const { loadMicroPython } = await import(mpy);
const mp = await loadMicroPython({
  heapsize,
  stdout: (line) => emit({ ev: "out", line }),
  stderr: (line) => emit({ ev: "out", line, err: true }),
});
const FS = mp.FS;
FS.mkdir("/_rom");
loadTree(FS, rom, "/_rom");
loadTree(FS, flash, "/");
mp.registerJsModule("_host", host);
hookFS(FS);

// rp2's sys.path is ['', '.frozen', '/lib']: the harness's modules stand where the frozen
// and built-in ones are; the wasm build's own frozen modules (rp2 has none of them) go away.
mp.runPython(`
import sys
sys.path.clear()
sys.path.extend(['', '/_rom', '/lib'])
import _rt
_rt.rtc_boot()
import os, time, select, machine, network, socket, rp2, ntptime, asyncio, asyncio.core, asyncio.funcs, asyncio.event, asyncio.lock
`);
// The "boot" heap sample: what the interpreter and the harness's own modules hold before
// any firmware runs (on rp2 these are C modules and frozen bytecode, outside the heap).
emit({ ev: "booted", cause: bootInfo.cause });

// "ok", "error" (printed, as rp2 prints it) or "exit" (SystemExit: rp2 skips main.py)
function runFile(name) {
  if (!fs.existsSync(hostPath("/" + name))) return "ok";
  try {
    mp.runPython(`execfile(${JSON.stringify(name)})`);
    return "ok";
  } catch (err) {
    const text = String(err && err.message ? err.message : err);
    for (const line of text.split("\n")) if (line) emit({ ev: "out", line, err: true });
    if (err && err.type === "SystemExit") return "exit";
    emit({ ev: "error", file: name, error: text });
    return "error";
  }
}

// This build collects garbage only when control returns from Python to JS (it cannot scan
// wasm locals): a heap figure is taken at the top level, right after a collection.
function heapSample(label) {
  mp.runPython("import gc\ngc.collect()");
  mp.runPython(`_rt.report_heap(${JSON.stringify(label)})`);
}

// Python from the test, run in the board's interpreter between asyncio iterations (the
// firmware's tasks wait meanwhile; the watchdog does not).
function execute(id) {
  const src = call("code", id);
  try {
    mp.runPython(src);
    emit({ ev: "exec", id, error: null });
  } catch (err) {
    emit({ ev: "exec", id, error: String(err && err.message ? err.message : err) });
  }
}

// Requests from the host (heap samples) are served between asyncio iterations.
async function attention() {
  for (;;) {
    const w = Atomics.waitAsync(ctl, ATTN, 0);
    if (w.async) await w.value;
    Atomics.store(ctl, ATTN, 0);
    const want = call("wants") || "";
    for (const item of want.split("\n")) {
      if (item.startsWith("heap:")) heapSample(item.slice(5));
      else if (item.startsWith("exec:")) execute(item.slice(5));
    }
  }
}

// boot.py then main.py, in __main__ as rp2 runs them. main.py's asyncio.run() schedules the
// app on this thread's event loop and returns; the board runs on from there.
heapSample("boot");
// gc.mem_free() as on a Pico W: a GC heap of `heapsize` bytes, less the firmware's allocations
mp.runPython(
  `import sys, gc, _boardgc\ngc.collect()\n_boardgc.heap = ${heapsize}\n_boardgc.baseline = gc.mem_alloc()\nsys.modules["gc"] = _boardgc`,
);
runTimers = mp.pyimport("_rt").run_timers;
if (runFile("boot.py") !== "exit") {
  heapSample("boot.py");
  if (runFile("main.py") !== "ok") emit({ ev: "repl", file: "main.py", error: "see output" });
}
attention();

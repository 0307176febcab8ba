// One Pico W board for tests: the world around the chip. It runs the CPU (cpu.mjs, the
// MicroPython interpreter) in a worker thread and gives it what the rest of the board gives
// rp2: TCP over Wi-Fi (real host sockets behind an access point the test can take down), DNS,
// NTP, pins and ADC, a watchdog that resets the CPU when it is not fed, resets that keep the
// flash (a host directory) and power cuts before any flash operation.
//
//   node host.mjs --flash DIR --mpy MICROPYTHON_MJS [--uid HEX] [--ap-ssid S --ap-password P]
//                 [--heapsize BYTES] [--off]
//
// Control: JSON lines on stdin ({"cmd": ...}); events: JSON lines on stdout ({"ev": ...}).
// Both are documented in README.md beside this file.
import { Worker, MessageChannel } from "node:worker_threads";
import * as net from "node:net";
import * as tls from "node:tls";
import { X509Certificate } from "node:crypto";
import * as dns from "node:dns";
import * as path from "node:path";
import * as readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const o = { heapsize: 176 * 1024, uid: "e661a4d41723262a", ssid: null, password: "", off: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--flash") o.flash = path.resolve(argv[++i]);
    else if (a === "--mpy") o.mpy = path.resolve(argv[++i]);
    else if (a === "--uid") o.uid = argv[++i];
    else if (a === "--ap-ssid") o.ssid = argv[++i];
    else if (a === "--ap-password") o.password = argv[++i];
    else if (a === "--heapsize") o.heapsize = Number(argv[++i]);
    else if (a === "--off") o.off = true;
    else throw new Error("unknown argument " + a);
  }
  if (!o.flash || !o.mpy) throw new Error("--flash and --mpy are required");
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const SNDBUF = 5840; // rp2 lwIP TCP_SND_BUF (4 * MSS)
const JOIN_MS = 300;
const NO_AP_MS = 3000;
const ORPHAN_MS = 90000;

function emit(ev) {
  ev.t = Math.round(performance.now());
  process.stdout.write(JSON.stringify(ev) + "\n");
}

// -- the board's state, kept across resets ------------------------------------------------
const sab = new SharedArrayBuffer(64);
const ctl = new Int32Array(sab, 0, 8);
Atomics.store(ctl, 2, -1);
const ap = { up: true, ssid: opts.ssid, password: opts.password };
const adc = { 0: 40000, 1: 0, 2: 0, 3: 33000, 4: 14020 };
const dnsTable = new Map(); // host -> { ip, delay_ms }
const code = new Map(); // exec id -> Python source waiting for the CPU
let ntpOk = true;
let cpu = null; // { worker, port, boot }
let boots = 0;
let cause = 1;

// per boot
let wifi = null;
let wdt = null;
let socks = new Map();
let wants = [];
let firstJoin = true;
let firstData = true;

// -- Wi-Fi -----------------------------------------------------------------------------
function linkUp() {
  return ap.up && wifi !== null && wifi.joined;
}

function wifiStatus() {
  if (wifi === null || wifi.joinAt === null) return 0;
  if (wifi.joined) return ap.up ? 3 : 0;
  const dt = performance.now() - wifi.joinAt;
  const seen = ap.up && (ap.ssid === null || wifi.ssid === ap.ssid);
  if (!seen) return dt < NO_AP_MS ? 1 : -2;
  if (ap.ssid !== null && wifi.password !== ap.password) return dt < 1000 ? 1 : -3;
  if (dt < JOIN_MS) return 1;
  wifi.joined = true;
  relink();
  return 3;
}

function relink() {
  const up = linkUp();
  for (const s of socks.values()) s.gate(up);
}

function setAp(up) {
  ap.up = up;
  if (!up && wifi !== null) {
    if (wifi.joined) wifi.joinAt = null;
    wifi.joined = false;
  }
  relink();
  emit({ ev: "ap", up });
}

// -- sockets ---------------------------------------------------------------------------
let nextId = 1;
const ERRNO = { ECONNRESET: 104, ECONNREFUSED: 104, EPIPE: 104, ETIMEDOUT: 110, EHOSTUNREACH: 113 };
// What the chip's mbedTLS (MicroPython's rp2 config) speaks: TLS 1.2 only; ECDHE-ECDSA or
// static-RSA key exchange (no ECDHE-RSA), AES-CBC (no GCM, no ChaCha20). A hub that offers
// none of these fails here as it would on a Pico W.
const CHIP_CIPHERS = [
  "ECDHE-ECDSA-AES128-SHA256",
  "ECDHE-ECDSA-AES256-SHA384",
  "ECDHE-ECDSA-AES128-SHA",
  "ECDHE-ECDSA-AES256-SHA",
  "AES128-SHA256",
  "AES256-SHA256",
  "AES128-SHA",
  "AES256-SHA",
].join(":");
// Node's verification errors as mbedTLS words them (x509_crt_verify_info): the firmware sees
// them as the ValueError text rp2 raises.
const BADCERT = {
  CERT_HAS_EXPIRED: "The certificate validity has expired",
  CERT_NOT_YET_VALID: "The certificate validity starts in the future",
  ERR_TLS_CERT_ALTNAME_INVALID: "The certificate Common Name (CN) does not match with the expected CN",
};
const NOT_TRUSTED = "The certificate is not correctly signed by the trusted CA";

// The server's certificate against the trusted CAs (it must be signed by one of them: the
// hub's CA signs it directly), its dates by the board's clock and the name the board asked
// for; null when good.
function earlyCheck(peer, cas, host, now) {
  if (!peer) return NOT_TRUSTED;
  const signed = cas.some((pem) => {
    const ca = new X509Certificate(pem);
    return peer.checkIssued(ca) && peer.verify(ca.publicKey);
  });
  if (!signed) return NOT_TRUSTED;
  if (now < Date.parse(peer.validFrom)) return BADCERT.CERT_NOT_YET_VALID;
  if (now > Date.parse(peer.validTo)) return BADCERT.CERT_HAS_EXPIRED;
  return nameCheck(peer, host);
}

function nameCheck(peer, host) {
  const named = net.isIP(host) ? peer.checkIP(host) : peer.checkHost(host);
  return named ? null : BADCERT.ERR_TLS_CERT_ALTNAME_INVALID;
}

class Sock {
  constructor() {
    this.id = nextId++;
    this.state = 0; // 0 new, 1 connecting, 2 connected, 3 peer closed, <0 -errno
    this.rx = [];
    this.rxLen = 0;
    this.held = [];
    this.heldLen = 0;
    this.net = null;
    this.raw = null;
    this.tls = null;
    this.closing = false;
    this.waiter = null;
  }

  room() {
    const queued = this.heldLen + (this.net ? this.net.writableLength : 0);
    return Math.max(0, SNDBUF - queued);
  }

  snapshot() {
    return [this.state, this.rxLen, this.state === 1 ? 0 : this.room()];
  }

  ready(what) {
    if (what === "conn") return this.state !== 1;
    if (what === "hs") return !this.tls || this.tls.state !== 0 || this.state < 0;
    if (what === "rx") return this.state !== 2 || this.rxLen > 0;
    return this.state < 0 || (this.state >= 2 && this.room() >= 16);
  }

  poke() {
    if (this.waiter && this.ready(this.waiter.what)) this.waiter.done();
  }

  connect(host, port) {
    this.state = 1;
    const s = net.connect({ host, port });
    this.net = s;
    this.raw = s;
    s.setNoDelay(true);
    s.on("connect", () => {
      this.state = 2;
      this.poke();
    });
    this.listen(s);
    if (!linkUp()) s.pause();
  }

  // TLS client on the connected socket (MicroPython's wrap_socket on rp2): from here on
  // this.net is the TLS socket and rx holds plaintext. tls: {state: 0 handshaking, 1 done,
  // -1 failed; why: mbedTLS's text for a refused certificate, errno: else}.
  startTls(cas, host, rtcMs) {
    const verify = rtcMs > 0;
    const raw = this.raw;
    raw.removeAllListeners("data");
    raw.removeAllListeners("end");
    raw.removeAllListeners("close");
    raw.removeAllListeners("error");
    raw.on("error", () => {});
    this.tls = { state: 0, why: null, errno: 0, notBefore: 0, notAfter: 0, cipher: null, peer: null };
    const opts = {
      socket: raw,
      ca: cas.map((h) => new X509Certificate(Buffer.from(h, "hex")).toString()),
      host,
      rejectUnauthorized: verify,
      minVersion: "TLSv1.2",
      maxVersion: "TLSv1.2",
      ciphers: CHIP_CIPHERS,
    };
    if (!net.isIP(host)) opts.servername = host; // rp2 sends SNI for names
    // mbedTLS checks the server's certificate as it arrives and aborts before its key
    // exchange; Node checks only once its handshake is over. The status-request callback
    // runs at mbedTLS's point (the server's first flight is in, nothing sent back yet), so
    // the check is made there too, and a refused server never sees a finished handshake.
    if (verify) opts.requestOCSP = true;
    // (the name again at the end; once the certificate was taken in the status callback,
    // Node hands checkServerIdentity an empty certificate object, hence this.tls.peer)
    opts.checkServerIdentity = (_name, cert) => {
      const peer = cert && cert.raw ? new X509Certificate(cert.raw) : this.tls.peer;
      const why = peer ? nameCheck(peer, host) : NOT_TRUSTED;
      return why ? Object.assign(new Error(why), { code: "ERR_TLS_CERT_ALTNAME_INVALID" }) : undefined;
    };
    const t = tls.connect(opts);
    this.net = t;
    t.on("OCSPResponse", () => {
      this.tls.peer = t.getPeerX509Certificate();
      const why = earlyCheck(this.tls.peer, opts.ca, host, rtcMs);
      if (why && this.tls.state === 0) {
        this.tls.state = -1;
        this.tls.why = why;
        t.destroy();
        raw.destroy();
        this.poke();
      }
    });
    t.on("secureConnect", () => {
      const c = this.tls.peer || t.getPeerX509Certificate();
      this.tls.notBefore = c ? Date.parse(c.validFrom) / 1000 : Infinity;
      this.tls.notAfter = c ? Date.parse(c.validTo) / 1000 : -Infinity;
      const ci = t.getCipher();
      this.tls.cipher = [ci.standardName || ci.name, ci.version];
      this.tls.state = 1;
      this.poke();
    });
    t.on("error", (e) => {
      if (this.tls.state === 0) {
        this.tls.state = -1;
        if (BADCERT[e.code]) this.tls.why = BADCERT[e.code];
        else if (e.code && /CERT|SIGNATURE|ISSUER|CHAIN/.test(e.code)) this.tls.why = NOT_TRUSTED;
        else this.tls.errno = ERRNO[e.code] || 0;
      }
    });
    this.listen(t);
  }

  listen(s) {
    s.on("data", (b) => {
      this.rx.push(b);
      this.rxLen += b.length;
      if (firstData && this.rxLen) {
        firstData = false;
        want("heap:connect");
      }
      this.poke();
    });
    s.on("end", () => {
      if (this.state >= 0) this.state = 3;
      this.poke();
    });
    s.on("drain", () => this.poke());
    s.on("error", (e) => {
      this.state = -(ERRNO[e.code] || 104);
      this.poke();
    });
    s.on("close", () => {
      if (this.state === 1 || this.state === 2) this.state = -104;
      if (this.tls && this.tls.state === 0) this.tls.state = -1;
      this.poke();
    });
  }

  gate(up) {
    if (!this.net) return;
    if (up) {
      this.net.resume();
      for (const b of this.held) this.net.write(b);
      this.held = [];
      this.heldLen = 0;
      if (this.closing) this.finish();
    } else {
      this.net.pause();
    }
  }

  recv(n, peek) {
    const out = [];
    let left = n;
    for (let i = 0; left > 0 && i < this.rx.length; ) {
      const b = this.rx[i];
      const take = Math.min(left, b.length);
      out.push(b.subarray(0, take));
      left -= take;
      if (peek) i++;
      else if (take === b.length) this.rx.shift();
      else this.rx[0] = b.subarray(take);
    }
    const data = Buffer.concat(out);
    if (!peek) this.rxLen -= data.length;
    return data;
  }

  send(hex) {
    const data = Buffer.from(hex, "hex");
    const k = Math.min(data.length, this.room());
    const part = data.subarray(0, k);
    if (linkUp()) this.net.write(part);
    else {
      this.held.push(Buffer.from(part));
      this.heldLen += k;
    }
    return k;
  }

  close() {
    // lwIP sends FIN once the queued data is out; while the link is down that waits
    this.closing = true;
    if (linkUp()) this.finish();
  }

  finish() {
    if (!this.net) return;
    const s = this.net;
    s.end();
    setTimeout(() => s.destroy(), 5000).unref();
  }

  abandon() {
    // the chip reset: its TCP state is gone and the peer hears nothing (it finds out by its
    // keepalive or when the next connection takes the session over)
    if (!this.net) return;
    const s = this.net;
    s.pause();
    s.removeAllListeners("data");
    s.on("error", () => {});
    setTimeout(() => s.destroy(), ORPHAN_MS).unref();
  }
}

// -- the CPU -------------------------------------------------------------------------------
function want(w) {
  wants.push(w);
  Atomics.store(ctl, 3, 1);
  Atomics.notify(ctl, 3);
}

function powerOn(why) {
  if (cpu) return;
  boots += 1;
  wifi = null;
  wdt = null;
  socks = new Map();
  wants = [];
  firstJoin = true;
  firstData = true;
  Atomics.store(ctl, 3, 0);
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(path.join(here, "cpu.mjs"), {
    workerData: {
      sab,
      port: port2,
      flash: opts.flash,
      rom: path.join(here, "rom"),
      mpy: opts.mpy,
      heapsize: opts.heapsize,
      bootInfo: { cause },
    },
    transferList: [port2],
    stdout: false,
    stderr: false,
  });
  const me = { worker, port: port1, boot: boots };
  cpu = me;
  emit({ ev: "boot", n: boots, why, cause });
  worker.on("message", (ev) => {
    if (cpu === me) emit(ev);
  });
  worker.on("error", (e) => {
    if (cpu === me) {
      emit({ ev: "crash", error: String(e && e.stack ? e.stack : e) });
      stop("crash");
    }
  });
  port1.on("message", (m) => {
    if (cpu !== me) return;
    Promise.resolve(handle(m))
      .then((r) => {
        if (cpu !== me) return;
        port1.postMessage(r === undefined ? null : r);
        Atomics.store(ctl, 0, 1);
        Atomics.notify(ctl, 0);
      })
      .catch((e) => emit({ ev: "crash", error: String(e && e.stack ? e.stack : e) }));
  });
}

function stop(why) {
  const c = cpu;
  if (!c) return;
  cpu = null;
  for (const s of socks.values()) s.abandon();
  socks = new Map();
  wifi = null;
  wdt = null;
  c.worker.terminate();
  c.port.close();
  emit({ ev: "off", why });
}

function reset(why) {
  emit({ ev: "reset", why });
  stop(why);
  cause = 3;
  powerOn(why);
}

const lookups = new Map();

async function lookup(host) {
  if (net.isIP(host)) return host;
  const over = dnsTable.get(host);
  if (over && over.delay_ms) await sleep(over.delay_ms);
  if (!linkUp()) return -2;
  if (over && over.ip !== undefined) return over.ip === null ? -2 : over.ip;
  return await new Promise((r) => dns.lookup(host, { family: 4 }, (err, addr) => r(err ? -2 : addr)));
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function handle(m) {
  const { op, a, b, c, d } = m;
  switch (op) {
    case "sopen": {
      const s = new Sock();
      socks.set(s.id, s);
      return s.id;
    }
    case "sconnect": {
      const s = socks.get(a);
      if (!linkUp()) return 113;
      s.connect(b, c);
      return 0;
    }
    case "swait": {
      const s = socks.get(a);
      if (!s) return [-9, 0, 0];
      if (c > 0 && !s.ready(b)) {
        await new Promise((resolve) => {
          const timer = setTimeout(() => {
            s.waiter = null;
            resolve();
          }, c);
          s.waiter = {
            what: b,
            done: () => {
              clearTimeout(timer);
              s.waiter = null;
              resolve();
            },
          };
        });
      }
      return s.snapshot();
    }
    case "stls": {
      // a: socket, b: CA certificates (hex DER, comma-separated), c: server name, d: the
      // board's RTC (Unix s) to check the certificate's dates against, 0: no verification
      const s = socks.get(a);
      if (!s || !s.raw || s.state !== 2) return 107;
      s.startTls(b ? b.split(",") : [], c, d ? d * 1000 : 0);
      return 0;
    }
    case "stlsinfo": {
      // [state, why, errno, bytes read off the wire, notBefore, notAfter, cipher, version]
      const s = socks.get(a);
      if (!s || !s.tls) return [-1, null, 9, 0, 0, 0, null, null];
      const t = s.tls;
      const ci = t.cipher || [null, null];
      return [t.state, t.why, t.errno, s.raw.bytesRead, t.notBefore, t.notAfter, ci[0], ci[1]];
    }
    case "tlsca": {
      // mbedtls_x509_crt_parse: 0 when the certificate (hex, DER or PEM) parses
      try {
        new X509Certificate(Buffer.from(a, "hex"));
        return 0;
      } catch {
        return -1;
      }
    }
    case "srecv": {
      const s = socks.get(a);
      return s ? s.recv(b, !!c) : Buffer.alloc(0);
    }
    case "ssend":
      return socks.get(a).send(b);
    case "sclose": {
      const s = socks.get(a);
      if (s) {
        socks.delete(a);
        s.close();
      }
      return 0;
    }
    case "resolve": {
      // lwIP resolves in the background while getaddrinfo polls (rwait)
      const q = { id: nextId++, result: null, waiter: null };
      lookups.set(q.id, q);
      lookup(a).then((r) => {
        q.result = r;
        if (q.waiter) q.waiter();
      });
      return q.id;
    }
    case "rwait": {
      const q = lookups.get(a);
      if (!q) return -2;
      if (q.result === null && b !== 0) {
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, b < 0 ? 1000 : b);
          q.waiter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        q.waiter = null;
      }
      if (q.result === null) return null;
      lookups.delete(a);
      return q.result;
    }
    case "wifi_join":
      if (firstJoin) {
        firstJoin = false;
        want("heap:imports");
      }
      wifi = { ssid: a, password: b, joinAt: performance.now(), joined: false };
      return 0;
    case "wifi_leave":
      if (wifi) {
        wifi.joined = false;
        wifi.joinAt = null;
      }
      relink();
      return 0;
    case "wifi_status":
      return wifiStatus();
    case "rssi":
      return -55;
    case "ntp":
      return ntpOk ? 1 : 0;
    case "adc":
      return adc[a] ?? 0;
    case "pin":
      emit({ ev: "pin", pin: a, v: b });
      return 0;
    case "uid":
      return opts.uid;
    case "cause":
      return cause;
    case "wdt":
      wdt = { timeout: a, fed: performance.now() };
      emit({ ev: "wdt", timeout: a });
      return 0;
    case "feed":
      if (wdt) wdt.fed = performance.now();
      return 0;
    case "heap":
      emit({ ev: "heap", label: a, alloc: b, free: c, peak: d ?? null });
      return 0;
    case "wants": {
      const w = wants.join("\n");
      wants = [];
      return w;
    }
    case "reset":
      setImmediate(() => reset(a || "machine.reset"));
      return 0;
    case "powercut":
      emit({ ev: "powercut", op: a, path: b, n: c });
      Atomics.store(ctl, 2, -1);
      setImmediate(() => stop("powercut"));
      return 0;
    case "code": {
      const c = code.get(a);
      code.delete(a);
      return c ?? "";
    }
    default:
      throw new Error("unknown op " + op);
  }
}

// the watchdog: resets the CPU wherever it is (a blocking call, a busy loop)
setInterval(() => {
  if (cpu && wdt && performance.now() - wdt.fed > wdt.timeout) reset("watchdog");
}, 20);

// -- control from the test -------------------------------------------------------------------
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const m = JSON.parse(line);
  switch (m.cmd) {
    case "power":
      if (m.on) {
        cause = 1;
        powerOn("power");
      } else stop("power");
      break;
    case "reset":
      cause = 1;
      stop("reset button");
      powerOn("reset button");
      break;
    case "ap":
      setAp(!!m.up);
      break;
    case "cut":
      Atomics.store(ctl, 2, m.n > 0 ? m.n : -1);
      break;
    case "heap":
      if (cpu) want("heap:" + (m.label || "now"));
      break;
    case "exec":
      if (cpu) {
        code.set(String(m.id), m.code);
        want("exec:" + m.id);
      }
      break;
    case "adc":
      adc[m.ch] = m.v;
      break;
    case "dns":
      if (m.ip === undefined && !m.delay_ms) dnsTable.delete(m.host);
      else dnsTable.set(m.host, { ip: m.ip, delay_ms: m.delay_ms || 0 });
      break;
    case "ntp":
      ntpOk = !!m.ok;
      break;
    case "quit":
      quit();
      break;
    default:
      emit({ ev: "error", error: "unknown command " + m.cmd });
  }
});
rl.on("close", quit);

function quit() {
  stop("quit");
  process.exit(0);
}

process.stdout.on("error", () => process.exit(0));
emit({ ev: "ready" });
if (!opts.off) powerOn("power");

"""The few lines of MicroPython that flashing and listing run on a board.

They stay small and use only what every MicroPython board has (os, json, binascii,
hashlib.sha256). The tests run them in real MicroPython as well as in the pty fake.

mpremote's writes are not atomic (a file is opened, then filled chunk by chunk), so a flash
copies into ``TMP_DIR`` and only renames into place after every copy's hash matched: a
board that goes away mid-copy keeps its previous files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TMP_DIR = ".picofleet-new"
CONFIG_FILE = "config.json"
VERSION_FILE = "version.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

_IDENTIFY = """\
import os,json,binascii,hashlib
try:
 import machine
 _u=binascii.hexlify(machine.unique_id()).decode().upper()
except Exception:
 _u=None
def _h(p):
 try:
  f=open(p,'rb')
 except OSError:
  return None
 h=hashlib.sha256()
 b=bytearray(256)
 while True:
  n=f.readinto(b)
  if not n:
   break
  h.update(b if n==256 else b[:n])
 f.close()
 return binascii.hexlify(h.digest()).decode()
def _j(p):
 try:
  with open(p) as f:
   return json.load(f)
 except Exception:
  return None
try:
 _s=os.statvfs('/')
 _f=_s[0]*_s[3]
except Exception:
 _f=None
print(json.dumps({'id':_u,'free':_f,'files':{n:_h(n) for n in %(names)s},\
'config':_j(%(config)r),'version':_j(%(version)r)}))
"""

_PREPARE = """\
import os
try:
 for _n in [e[0] for e in os.ilistdir(%(tmp)r)]:
  os.remove(%(tmp)r+'/'+_n)
 os.rmdir(%(tmp)r)
except OSError:
 pass
os.mkdir(%(tmp)r)
"""

# Every source is checked before anything moves, so a missing upload never costs the board
# the file it would have replaced. FAT refuses to rename over a file; littlefs replaces it.
_COMMIT = """\
import os
for _n in %(names)s:
 os.stat(%(tmp)r+'/'+_n)
for _n in %(names)s:
 try:
  os.rename(%(tmp)r+'/'+_n,_n)
 except OSError:
  os.remove(_n)
  os.rename(%(tmp)r+'/'+_n,_n)
os.rmdir(%(tmp)r)
print('committed')
"""


def _names(names: list[str]) -> str:
    for n in names:
        if not _NAME_RE.match(n):
            raise ValueError(f"{n!r} is not a plain board file name")
    return repr(tuple(names))


def identify_code(names: list[str]) -> str:
    return _IDENTIFY % {"names": _names(names), "config": CONFIG_FILE, "version": VERSION_FILE}


def prepare_code() -> str:
    return _PREPARE % {"tmp": TMP_DIR}


def commit_code(names: list[str]) -> str:
    return _COMMIT % {"names": _names(names), "tmp": TMP_DIR}


@dataclass(frozen=True, slots=True)
class BoardInfo:
    """What a board says about itself."""

    uid: str | None
    free: int | None
    files: dict[str, str | None]  # name -> sha256 hex, None when missing
    config: dict[str, Any] | None
    version: dict[str, Any] | None

    @property
    def device_key(self) -> str | None:
        cfg = self.config or {}
        key = cfg.get("device_key")
        return key if isinstance(key, str) else None

    @property
    def firmware(self) -> str | None:
        v = (self.version or {}).get("version")
        return v if isinstance(v, str) else None

    @property
    def app(self) -> str | None:
        v = (self.version or {}).get("app") or (self.config or {}).get("device_type")
        return v if isinstance(v, str) else None


def parse_identify(output: str) -> BoardInfo:
    """The identify snippet's JSON line (the last line that is one) as BoardInfo."""
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "files" in data:
            cfg, ver = data.get("config"), data.get("version")
            return BoardInfo(
                uid=data.get("id") if isinstance(data.get("id"), str) else None,
                free=data.get("free") if isinstance(data.get("free"), int) else None,
                files=dict(data.get("files") or {}),
                config=cfg if isinstance(cfg, dict) else None,
                version=ver if isinstance(ver, dict) else None,
            )
    raise ValueError(f"the board did not answer the identify snippet: {output[-200:]!r}")

#!/usr/bin/env python3
"""Run pip-audit or npm audit and fail on any finding not excepted in
.github/audit-exceptions.md (each exception there names the advisory and gives a reason).

    python release/audit.py pip -- --no-deps --disable-pip -r release/requirements.lock
    python release/audit.py pip -- --skip-editable          # the current environment
    python release/audit.py npm                              # package.json / package-lock.json

Exit 0: no unexcepted finding. Exit 1: findings (listed). Exit 2: the tool itself failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXCEPTIONS = ROOT / ".github" / "audit-exceptions.md"
_ADVISORY = re.compile(r"\b(GHSA(?:-[23456789cfghjmpqrvwx]{4}){3}|PYSEC-\d{4}-\d+|CVE-\d{4}-\d+)\b")


@dataclass(frozen=True, slots=True)
class Finding:
    package: str
    version: str
    ids: frozenset[str]
    summary: str


def excepted_ids(text: str) -> set[str]:
    """Advisory ids in the first cell of each table row of the exceptions file."""
    ids: set[str] = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 3:
            ids.update(_ADVISORY.findall(cells[0]))
    return ids


def pip_findings(report: dict[str, Any]) -> list[Finding]:
    found = []
    for dep in report.get("dependencies", []):
        for vuln in dep.get("vulns", []):
            ids = frozenset([vuln["id"], *vuln.get("aliases", [])])
            found.append(Finding(dep["name"], dep.get("version", "?"), ids, vuln["id"]))
    return found


def npm_findings(report: dict[str, Any]) -> list[Finding]:
    found = []
    for name, vuln in (report.get("vulnerabilities") or {}).items():
        for via in vuln.get("via", []):
            if isinstance(via, dict):  # a string names another vulnerable package
                ids = frozenset(_ADVISORY.findall(str(via.get("url", ""))))
                found.append(
                    Finding(name, str(vuln.get("range", "?")), ids, str(via.get("title", "")))
                )
    return found


def unexcepted(findings: list[Finding], excepted: set[str]) -> list[Finding]:
    return [f for f in findings if not (f.ids & excepted)]


def not_audited(tool: str, report: dict[str, Any]) -> list[str]:
    """Why the tool could not audit (unreachable service, package unknown to the database):
    an audit that skipped something must not pass as clean."""
    if tool == "npm":
        if "error" in report or "vulnerabilities" not in report:
            return [str(report.get("message") or report.get("error") or "no report")]
        return []
    return [
        f"{d.get('name')}: {d['skip_reason']}"
        for d in report.get("dependencies", [])
        if d.get("skip_reason")
    ]


def _run(tool: str, cmd: list[str]) -> dict[str, Any]:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    try:
        data = json.loads(res.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        sys.stderr.write(f"audit: {' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
        raise SystemExit(2)
    problems = not_audited(tool, data)
    if problems:
        sys.stderr.write("audit: could not audit everything:\n  " + "\n  ".join(problems) + "\n")
        raise SystemExit(2)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="audit", description=__doc__.split("\n")[0])
    parser.add_argument("tool", choices=["pip", "npm"])
    parser.add_argument("args", nargs="*", help="passed to the tool (after --)")
    args = parser.parse_args(argv)
    if args.tool == "pip":
        cmd = [sys.executable, "-m", "pip_audit", "-f", "json", "--progress-spinner", "off"]
        findings = pip_findings(_run("pip", [*cmd, *args.args]))
    else:
        findings = npm_findings(_run("npm", ["npm", "audit", "--json", *args.args]))
    excepted = excepted_ids(EXCEPTIONS.read_text()) if EXCEPTIONS.is_file() else set()
    left = unexcepted(findings, excepted)
    for f in left:
        sys.stdout.write(f"{f.package} {f.version}: {f.summary} ({', '.join(sorted(f.ids))})\n")
    sys.stdout.write(
        f"{args.tool} audit: {len(findings)} finding(s), {len(findings) - len(left)} excepted, "
        f"{len(left)} left\n"
    )
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())

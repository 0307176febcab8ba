"""The GitHub workflows: valid against the published workflow schema (and actionlint where it
is installed), wired the way release engineering needs, and the audit exception list."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from release import audit
from tests.conftest import need
from tests.helpers import check_schema
from tests.release.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
_EXPR = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
_NEEDS_OUT = re.compile(r"needs\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)")
_STEPS_OUT = re.compile(r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)")


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def triggers(wf: dict[Any, Any]) -> dict[str, Any]:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert isinstance(on, dict)
    return on


def run_text(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in job.get("steps", []))


def uses(job: dict[str, Any]) -> list[str]:
    return [str(s["uses"]) for s in job.get("steps", []) if "uses" in s]


def step_with(job: dict[str, Any], action: str) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith(action + "@")]
    return dict(step.get("with", {}))


def github_glob(pattern: str) -> re.Pattern[str]:
    """GitHub's branch/tag filter syntax (``*``, ``?``, ``+``, ``[...]``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "[":
            j = pattern.index("]", i)
            out += pattern[i : j + 1]
            i = j
        elif c == "*":
            out += "[^/]*"
        elif c in "?+":
            out += c
        else:
            out += re.escape(c)
        i += 1
    return re.compile(f"^{out}$")


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflow_is_valid(name: str) -> None:
    need(importlib.util.find_spec("check_jsonschema") is not None, "check-jsonschema")
    check_schema("vendor.github-workflows", WORKFLOWS / name)
    actionlint = shutil.which("actionlint")
    if actionlint:  # CI's workflow job runs it too; here only where it is installed
        res = subprocess.run(
            [actionlint, str(WORKFLOWS / name)], capture_output=True, text=True, check=False
        )
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_expressions_reference_what_exists(name: str) -> None:
    jobs: dict[str, Any] = load(name)["jobs"]
    for job_id, job in jobs.items():
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        assert set(needs) <= set(jobs), f"{job_id} needs unknown jobs"
        step_ids = {s["id"] for s in job.get("steps", []) if "id" in s}
        text = yaml.safe_dump(job)
        for expr in _EXPR.findall(text):
            for other, output in _NEEDS_OUT.findall(expr):
                assert other in needs, f"{job_id} reads needs.{other} without needing it"
                assert output in jobs[other].get("outputs", {}), f"{other} has no {output}"
            for step, _ in _STEPS_OUT.findall(expr):
                assert step in step_ids, f"{job_id} reads steps.{step}, which is not a step id"
        for value in job.get("outputs", {}).values():
            for step, _ in _STEPS_OUT.findall(str(value)):
                assert step in step_ids, f"{job_id} output reads unknown step {step}"


def test_ci_runs_the_same_gates_as_ci_run() -> None:
    wf = load("ci.yml")
    on = triggers(wf)
    assert {"push", "pull_request", "workflow_call"} <= set(on)
    jobs = wf["jobs"]
    everything = "\n".join(run_text(j) for j in jobs.values())
    assert "bash .ci/run" in run_text(jobs["test"])
    assert jobs["test"]["container"].startswith("debian:bookworm")
    for gate in (
        "ruff check",
        "ruff format --check",
        "mypy",
        "release/audit.py pip -- --no-deps --disable-pip -r release/requirements.lock",
        "release/audit.py pip -- --skip-editable",
        "release/audit.py npm",
        "actionlint",
        "check-jsonschema",
    ):
        assert gate in everything, gate
    assert wf["permissions"] == {"contents": "read"}


def test_release_runs_only_on_version_tags() -> None:
    wf = load("release.yml")
    on = triggers(wf)
    assert set(on) == {"push"} and set(on["push"]) == {"tags"}
    patterns = [github_glob(p) for p in on["push"]["tags"]]

    def matches(tag: str) -> bool:
        return any(p.match(tag) for p in patterns)

    assert matches("v0.1.0") and matches("v12.30.4")
    for tag in ("0.1.0", "v0.1", "v0.1.0-rc1", "release", "v0.1.0.1"):
        assert not matches(tag), tag


def test_release_builds_every_artifact() -> None:
    wf = load("release.yml")
    jobs = wf["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    dists = jobs["dists"]
    assert "python -m build" in run_text(dists)
    assert 'make release VERSION="$VERSION"' in run_text(dists)
    assert "picofleet release verify" in run_text(dists)
    assert dists["environment"] == "release"  # the signing key is an environment secret
    assert "secrets.PICOFLEET_RELEASE_KEY" in yaml.safe_dump(dists)
    image = jobs["image"]
    build = step_with(image, "docker/build-push-action")
    assert build["push"] is True and build["file"] == "Dockerfile"
    assert "linux/arm64" in build["platforms"]  # the Pi
    assert "PICOFLEET_COMMIT=${{ github.sha }}" in build["build-args"]
    assert "type=sha" in step_with(image, "docker/metadata-action")["tags"]
    assert jobs["scan"]["permissions"] == {"contents": "read", "packages": "read"}
    publish = jobs["publish"]
    assert set(publish["needs"]) >= {"dists", "image", "scan"}
    text = run_text(publish)
    assert '--tag "$IMAGE:$VERSION"' in text and "dist/release/meta.json" in text
    assert '"dist/release/picofleet-$VERSION.tar.gz"' in text
    # Every job that needs more than reading the repository says so itself.
    assert wf["permissions"] == {"contents": "read"}
    for job_id in ("image", "publish"):
        assert "packages" in jobs[job_id]["permissions"], job_id


def test_actions_are_pinned_to_a_version() -> None:
    for name in ("ci.yml", "release.yml"):
        for job in load(name)["jobs"].values():
            for ref in uses(job):
                assert re.match(r"^[\w.-]+/[\w.-]+@v\d+(\.\d+)*$", ref), ref


def test_audit_exceptions_are_written_down() -> None:
    text = (ROOT / ".github" / "audit-exceptions.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("|")][2:]  # header, separator
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert audit.excepted_ids(row), f"no advisory id: {row}"
        assert len(cells) == 5 and all(cells), f"package, reason, owner, review date: {row}"


def test_audit_fails_on_findings_it_was_not_told_to_accept() -> None:
    table = "| GHSA-2c4m-59x9-fr2g | pkg | not reachable | lead | 2027-01 |\n"
    excepted = audit.excepted_ids(table)
    assert excepted == {"GHSA-2c4m-59x9-fr2g"}
    pip_report = {
        "dependencies": [
            {"name": "a", "version": "1", "vulns": [{"id": "PYSEC-2026-1", "aliases": []}]},
            {
                "name": "b",
                "version": "2",
                "vulns": [{"id": "PYSEC-2026-2", "aliases": ["GHSA-2c4m-59x9-fr2g"]}],
            },
            {"name": "c", "version": "3", "vulns": []},
        ]
    }
    left = audit.unexcepted(audit.pip_findings(pip_report), excepted)
    assert [f.package for f in left] == ["a"]
    npm_report = {
        "vulnerabilities": {
            "x": {
                "range": "<2",
                "via": [{"title": "t", "url": "https://github.com/advisories/GHSA-2c4m-59x9-fr2g"}],
            },
            "y": {"range": "*", "via": ["x"]},
        }
    }
    assert audit.unexcepted(audit.npm_findings(npm_report), excepted) == []
    # An audit that could not look (no network, unknown package) is not a clean audit.
    assert audit.not_audited("npm", {"message": "405 Method Not Allowed", "error": {}})
    skipped = {"dependencies": [{"name": "a", "skip_reason": "Dependency not found on PyPI"}]}
    assert audit.not_audited("pip", skipped)
    assert not audit.not_audited("pip", pip_report)

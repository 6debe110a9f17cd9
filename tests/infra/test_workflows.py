"""The GitHub Actions workflows: pinned actions, least privilege, the deploy order and the stacks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml"))


def load(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("name", ["preview.yml", "deploy.yml"])
def test_workflow_actions_are_pinned_to_commits_with_a_version_comment(name: str) -> None:
    uses = [line.strip() for line in (WORKFLOWS / name).read_text(encoding="utf-8").splitlines() if "uses:" in line]

    assert uses
    for line in uses:
        assert re.fullmatch(r"(- )?uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", line), line


@pytest.mark.parametrize("name", ["preview.yml", "deploy.yml"])
def test_workflow_top_level_permissions_are_read_only(name: str) -> None:
    workflow = load(name)

    assert workflow["permissions"] == {"contents": "read"}
    writers = {job for job, spec in workflow["jobs"].items() if "write" in spec.get("permissions", {}).values()}
    assert writers == ({"plan"} if name == "preview.yml" else set())


def test_preview_plans_every_stack_against_the_base_branch() -> None:
    workflow = load("preview.yml")
    plan = workflow["jobs"]["plan"]
    text = (WORKFLOWS / "preview.yml").read_text(encoding="utf-8")

    assert sorted(plan["strategy"]["matrix"]["stack"]) == STACKS == ["dev", "prod", "staging"]
    assert plan["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert plan["needs"] == "test"
    assert workflow["jobs"]["test"]["steps"][-1]["run"] == "make test"
    assert '--against "origin/$BASE_REF"' in text
    assert "<!-- dualcache-plan:${process.env.STACK} -->" in text
    live = next(s for s in plan["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@"))
    assert live["if"] == "steps.creds.outputs.live == 'true'"
    assert live["with"]["comment-on-pr"] is True and live["with"]["edit-pr-comment"] is True


def test_deploy_goes_dev_then_staging_then_prod_behind_an_environment() -> None:
    jobs = load("deploy.yml")["jobs"]

    assert list(jobs) == ["test", "dev", "staging", "prod"]
    assert jobs.pop("test")["steps"][-1]["run"] == "make test"
    assert jobs["dev"]["needs"] == "test"
    assert jobs["staging"]["needs"] == "dev"
    assert jobs["prod"]["needs"] == "staging"
    assert jobs["prod"]["environment"] == "production"
    for stack, job in jobs.items():
        assert job["env"]["STACK"] == stack
        assert job["concurrency"] == {"group": f"deploy-{stack}", "cancel-in-progress": False}
        runs = [s.get("run", "") for s in job["steps"]]
        assert '.venv/bin/dualcache outputs --stack "$STACK" --out "outputs.$STACK.json"' in runs
        upload = job["steps"][-1]
        assert upload["uses"].startswith("actions/upload-artifact@")
        assert upload["with"]["path"] == "outputs.${{ env.STACK }}.json"

"""The GitHub Actions workflows: pinned actions, least privilege, the deploy order and the stacks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
    checkout = plan["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["fetch-depth"] == 0
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


def test_preview_comment_is_updated_in_place_and_skipped_for_forks() -> None:
    steps = load("preview.yml")["jobs"]["plan"]["steps"]
    comment = next(s for s in steps if str(s.get("uses", "")).startswith("actions/github-script@"))
    script = comment["with"]["script"]

    assert comment["if"] == "github.event.pull_request.head.repo.full_name == github.repository"
    # One comment per stack: found by its marker, edited when found, created only otherwise.
    assert "startsWith(marker)" in script
    assert script.index("updateComment") < script.index("createComment")
    assert "if (mine)" in script


def test_preview_live_preview_is_skipped_without_credentials_and_says_so() -> None:
    steps = load("preview.yml")["jobs"]["plan"]["steps"]
    creds = next(s for s in steps if s.get("id") == "creds")

    assert set(creds["env"]) == {"PULUMI_ACCESS_TOKEN", "PULUMI_BACKEND_URL", "CLOUDFLARE_API_TOKEN"}
    assert "exit 1" not in creds["run"]
    assert 'echo "live=false" >> "$GITHUB_OUTPUT"' in creds["run"]
    assert "Live pulumi preview skipped" in creds["run"] and "$GITHUB_STEP_SUMMARY" in creds["run"]


@pytest.mark.parametrize("name", ["preview.yml", "deploy.yml"])
def test_workflow_credentials_never_reach_installs_or_other_actions(name: str) -> None:
    seen = 0
    for job_name, job in load(name)["jobs"].items():
        assert "secrets." not in str(job.get("env", {})), job_name
        for step in job["steps"]:
            given = "secrets." in str(step.get("env", {})) or "secrets." in str(step.get("with", {}))
            uses, run = str(step.get("uses", "")), str(step.get("run", ""))
            assert "secrets." not in run, (job_name, run)
            if given:
                seen += 1
                # pulumi/actions, the credentials check, and `dualcache outputs`; never `make` (pip install).
                assert uses.startswith("pulumi/actions@") or (not uses and "make" not in run), (job_name, step)
    assert seen >= (2 if name == "preview.yml" else 9)


# --------------------------------------------------------------------------------------------------
# actionlint: `make test` runs it on the workflows; these tests make sure it is there and bites.


def _actionlint() -> str:
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.is_file() else shutil.which("actionlint")
    assert found, "actionlint is missing: install the dev extra (pip install -e '.[dev]')"
    return found


def _lint(*files: Path) -> subprocess.CompletedProcess[str]:
    command = [_actionlint(), "-no-color", *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_actionlint_accepts_the_workflows() -> None:
    done = _lint(WORKFLOWS / "preview.yml", WORKFLOWS / "deploy.yml")

    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("name", "old", "new", "rule"),
    [
        pytest.param("preview.yml", "    needs: test\n", "    needs: tset\n", "[job-needs]", id="unknown-needs"),
        pytest.param(
            "preview.yml", "steps.creds.outputs.live", "steps.cred.outputs.live", "[expression]", id="unknown-step"
        ),
        pytest.param(
            "deploy.yml",
            "    runs-on: ubuntu-24.04\n",
            "    runs_on: ubuntu-24.04\n",
            "[syntax-check]",
            id="misspelt-key",
        ),
        pytest.param(
            "deploy.yml",
            'run: .venv/bin/dualcache outputs --stack "$STACK" --out "outputs.$STACK.json"',
            "run: .venv/bin/dualcache outputs --stack $STACK --out outputs.$STACK.json",
            "[shellcheck]",
            id="unquoted-shell-variable",
        ),
    ],
)
def test_actionlint_rejects_a_broken_workflow(tmp_path: Path, name: str, old: str, new: str, rule: str) -> None:
    if rule == "[shellcheck]" and shutil.which("shellcheck") is None:
        pytest.skip("actionlint checks run: scripts only when shellcheck is installed")
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    assert old in text, f"{name} no longer holds {old!r}; update this test"
    broken = tmp_path / name
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")

    done = _lint(broken)

    assert done.returncode == 1, done.stdout + done.stderr
    assert rule in done.stdout and broken.name in done.stdout


def test_workflow_triggers_and_preview_concurrency() -> None:
    preview, deploy = load("preview.yml"), load("deploy.yml")

    # PyYAML reads the key `on` as the boolean True (YAML 1.1). Never `pull_request_target`: it would run
    # the pull request's code with the base repository's secrets and a write token.
    assert preview[True] == {"pull_request": {"branches": ["main"]}}
    assert deploy[True] == {"push": {"branches": ["main"]}}
    assert preview["concurrency"] == {
        "group": "preview-${{ github.event.pull_request.number }}",
        "cancel-in-progress": True,
    }
    assert "concurrency" not in deploy  # per stack, on the jobs: a run of one stack never cancels another's

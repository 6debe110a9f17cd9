"""The offline plan diff: comparing two plan manifests and the Markdown summary of the difference."""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from dualcache._exceptions import ConfigError, InvalidInputError
from infra.plandiff import (
    DEFAULT_MAX_CHARS,
    SECRET,
    ChangeKind,
    Replacement,
    base_manifest_from_git,
    diff_manifests,
    exit_status,
    load_manifest,
    render_markdown,
    run_diff,
    truncate_markdown,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]

GATEWAY = "cloudflare:index/aiGateway:AiGateway"
NAMESPACE = "cloudflare:index/workersKvNamespace:WorkersKvNamespace"
SCRIPT = "cloudflare:index/workersScript:WorkersScript"
COMPONENT = "dualcache:infra:Namespaces"
ACCOUNT = "0123456789abcdef0123456789abcdef"
BINDINGS = ("SESSIONS", "RATE_LIMITS", "OAUTH_STATES", "JOB_ANALYSIS_CACHE", "EMBEDDINGS_CACHE", "API_CACHE")


def _resource(rtype: str, name: str, inputs: dict[str, Any], *, protect: bool = False) -> dict[str, Any]:
    return {"type": rtype, "name": name, "inputs": inputs, "protect": protect, "import": None}


def make_manifest(stack: str = "dev") -> dict[str, Any]:
    """A manifest shaped like `dualcache plan --json` output: gateway, six namespaces, the Worker."""
    resources = [
        _resource(COMPONENT, f"jobmatch-ai-{stack}-namespaces", {}),
        _resource(
            GATEWAY,
            f"jobmatch-ai-{stack}-gateway",
            {
                "accountId": ACCOUNT,
                "aiGatewayId": f"jobmatch-ai-{stack}",
                "cacheTtl": 3600,
                "cacheInvalidateOnUpdate": True,
                "collectLogs": True,
                "rateLimitingInterval": 0,
                "rateLimitingLimit": 0,
                "rateLimitingTechnique": "fixed",
            },
        ),
    ]
    for binding in BINDINGS:
        resources.append(
            _resource(
                NAMESPACE,
                f"jobmatch-ai-{stack}-{binding}",
                {"accountId": ACCOUNT, "title": f"jobmatch-ai-{stack}-{binding}"},
            )
        )
    bindings: list[dict[str, Any]] = [
        {"name": b, "type": "kv_namespace", "namespaceId": f"offline-{stack}-{b.lower()}"} for b in BINDINGS
    ]
    bindings += [
        {"name": "AI", "type": "ai"},
        {"name": "GATEWAY_ID", "type": "plain_text", "text": f"jobmatch-ai-{stack}"},
        {"name": "GATEWAY_TOKEN", "type": "secret_text", "text": SECRET},
    ]
    resources.append(
        _resource(
            SCRIPT,
            f"jobmatch-ai-{stack}-api",
            {
                "accountId": ACCOUNT,
                "scriptName": f"jobmatch-ai-{stack}-api",
                "mainModule": "worker.js",
                "content": "export default {\n  async fetch() { return new Response('ok') }\n}\n",
                "compatibilityDate": "2025-03-11",
                "compatibilityFlags": ["nodejs_compat"],
                "bindings": bindings,
            },
        )
    )
    policies = {
        "embeddings": {"kv": True, "kv_ttl": 2592000, "kv_namespace": "EMBEDDINGS_CACHE", "gateway": "cache"},
        "spam_detection": {"kv": True, "kv_ttl": 604800, "kv_namespace": "API_CACHE", "gateway": "cache"},
    }
    outputs = {
        "dualcache": {
            "stack": stack,
            "accountId": ACCOUNT,
            "gateway_id": f"jobmatch-ai-{stack}",
            "namespaces": {b: f"offline-{stack}-{b.lower()}" for b in BINDINGS},
            "worker_name": f"jobmatch-ai-{stack}-api",
            "policies": policies,
        }
    }
    return {"stack": stack, "resources": resources, "outputs": outputs}


def find(manifest: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(r for r in manifest["resources"] if r["type"] == rtype)


def binding(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    script = find(manifest, SCRIPT)
    return next(b for b in script["inputs"]["bindings"] if b["name"] == name)


def render(base: dict[str, Any], new: dict[str, Any], **kwargs: Any) -> str:
    return render_markdown(diff_manifests(base, new), **kwargs)


# --------------------------------------------------------------------------------------------------
# The comparison


def test_diff_manifests_identical_plans_have_no_changes() -> None:
    diff = diff_manifests(make_manifest(), make_manifest())

    assert not diff.has_changes
    assert exit_status(diff) == 0
    assert "No changes." in render_markdown(diff)


def test_diff_manifests_added_and_removed_resources_are_listed() -> None:
    base, new = make_manifest(), make_manifest()
    removed = new["resources"].pop(2)  # the SESSIONS namespace
    new["resources"].append(_resource(NAMESPACE, "jobmatch-ai-dev-EXTRA", {"accountId": ACCOUNT, "title": "x"}))

    diff = diff_manifests(base, new)
    text = render_markdown(diff)

    assert [(r.kind, r.name) for r in diff.resources] == [
        (ChangeKind.REMOVE, removed["name"]),
        (ChangeKind.ADD, "jobmatch-ai-dev-EXTRA"),
    ]
    assert exit_status(diff) == 2
    assert "**1 to add, 0 to change, 0 to replace, 1 to remove**" in text
    assert f"#### Removed (1)\n\n- `{NAMESPACE}` **jobmatch-ai-dev-SESSIONS**" in text
    assert "**jobmatch-ai-dev-EXTRA**" in text


def test_diff_manifests_changed_input_shows_old_and_new_value() -> None:
    base, new = make_manifest(), make_manifest()
    find(new, GATEWAY)["inputs"]["cacheTtl"] = 600

    diff = diff_manifests(base, new)

    assert [(r.kind, r.type) for r in diff.resources] == [(ChangeKind.UPDATE, GATEWAY)]
    assert "  - `cacheTtl`: `3600` → `600`" in render_markdown(diff)


def test_diff_manifests_reordered_bindings_are_not_a_change() -> None:
    base, new = make_manifest(), make_manifest()
    random.Random(7).shuffle(find(new, SCRIPT)["inputs"]["bindings"])

    assert not diff_manifests(base, new).has_changes


def test_diff_manifests_binding_change_is_named_by_binding() -> None:
    base, new = make_manifest(), make_manifest()
    binding(new, "API_CACHE")["namespaceId"] = "adopted-namespace-id"

    text = render(base, new)

    assert '`bindings[name=API_CACHE].namespaceId`: `"offline-dev-api_cache"` → `"adopted-namespace-id"`' in text


def test_diff_manifests_added_input_and_long_text_are_summarised() -> None:
    base, new = make_manifest(), make_manifest()
    script = find(new, SCRIPT)["inputs"]
    script["content"] += "// one more line\n"
    script["usageModel"] = "standard"

    text = render(base, new)

    assert '`usageModel`: added `"standard"`' in text
    assert re.search(
        r"`content`: changed <text: 4 lines, sha256 [0-9a-f]{12}> → <text: 5 lines, sha256 [0-9a-f]{12}>", text
    )
    assert "fetch()" not in text


@pytest.mark.parametrize(
    ("rtype", "path", "value", "kind", "marker"),
    [
        pytest.param(GATEWAY, "aiGatewayId", "renamed", ChangeKind.REPLACE, "(forces replacement)", id="gateway-id"),
        pytest.param(NAMESPACE, "accountId", "f" * 32, ChangeKind.REPLACE, "(forces replacement)", id="account"),
        pytest.param(SCRIPT, "scriptName", "renamed", ChangeKind.REPLACE, "(forces replacement)", id="script-name"),
        pytest.param(NAMESPACE, "title", "renamed", ChangeKind.UPDATE, None, id="title-in-place"),
        pytest.param(NAMESPACE, "jurisdiction", "eu", ChangeKind.UPDATE, "(may force replacement)", id="maybe"),
        pytest.param(COMPONENT, "accountId", "f" * 32, ChangeKind.UPDATE, None, id="component-never"),
    ],
)
def test_diff_manifests_replacement_follows_the_provider_schema(
    rtype: str, path: str, value: str, kind: ChangeKind, marker: str | None
) -> None:
    base, new = make_manifest(), make_manifest()
    find(new, rtype)["inputs"][path] = value

    diff = diff_manifests(base, new)
    text = render_markdown(diff)

    assert [r.kind for r in diff.resources] == [kind]
    line = next(line for line in text.splitlines() if line.startswith(f"  - `{path}`"))
    if marker is None:
        assert "replacement" not in line
    else:
        assert line.endswith(marker)
    if kind is ChangeKind.REPLACE:
        assert "#### Replaced: deleted and created again (1)" in text
    if marker == "(may force replacement)":
        assert "— may be replaced" in text


def test_diff_manifests_added_and_removed_bindings_are_one_line_each() -> None:
    base, new = make_manifest(), make_manifest()
    bindings = find(new, SCRIPT)["inputs"]["bindings"]
    bindings.remove(binding(new, "GATEWAY_ID"))
    bindings.append({"name": "OPENAI_API_KEY", "type": "secret_text", "text": SECRET_VALUE})

    diff = diff_manifests(base, new)
    text = render_markdown(diff)

    assert [c.path for c in diff.resources[0].changes] == [
        "bindings[name=GATEWAY_ID]",
        "bindings[name=OPENAI_API_KEY]",
    ]
    assert '  - `bindings[name=GATEWAY_ID]`: removed (was `{"name": "GATEWAY_ID", "text": "jobmatch-ai-dev", ' in text
    assert (
        '  - `bindings[name=OPENAI_API_KEY]`: added `{"name": "OPENAI_API_KEY", "text": "[secret]", '
        '"type": "secret_text"}`'
    ) in text
    _assert_no_secret(text, SECRET_VALUE)


def _single(rtype: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"stack": "dev", "resources": [_resource(rtype, "r", inputs)], "outputs": {}}


@pytest.mark.parametrize(
    ("rtype", "inputs", "changed", "kind", "marker"),
    [
        pytest.param(
            "cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain",
            {"accountId": ACCOUNT, "scriptName": "a", "enabled": True},
            {"scriptName": "b"},
            ChangeKind.REPLACE,
            "(forces replacement)",
            id="subdomain-script-name",
        ),
        pytest.param(
            "cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain",
            {"accountId": ACCOUNT, "scriptName": "a", "enabled": True},
            {"enabled": False},
            ChangeKind.UPDATE,
            None,
            id="subdomain-enabled",
        ),
        pytest.param(
            "cloudflare:index/workersRoute:WorkersRoute",
            {"zoneId": "z" * 32, "pattern": "api.example.com/*", "script": "a"},
            {"zoneId": "y" * 32},
            ChangeKind.REPLACE,
            "(forces replacement)",
            id="route-zone",
        ),
        pytest.param(
            "cloudflare:index/workersRoute:WorkersRoute",
            {"zoneId": "z" * 32, "pattern": "api.example.com/*", "script": "a"},
            {"pattern": "api.example.com/v2/*"},
            ChangeKind.UPDATE,
            None,
            id="route-pattern",
        ),
        pytest.param(
            "cloudflare:index/workersCustomDomain:WorkersCustomDomain",
            {"accountId": ACCOUNT, "hostname": "api.example.com", "service": "a", "zoneId": "z" * 32},
            {"hostname": "api2.example.com"},
            ChangeKind.UPDATE,
            "(may force replacement)",
            id="custom-domain-hostname",
        ),
    ],
)
def test_diff_manifests_replacement_of_worker_attachments(
    rtype: str, inputs: dict[str, Any], changed: dict[str, Any], kind: ChangeKind, marker: str | None
) -> None:
    diff = diff_manifests(_single(rtype, inputs), _single(rtype, {**inputs, **changed}))
    line = render_markdown(diff).splitlines()[-1]

    assert [r.kind for r in diff.resources] == [kind]
    assert line.startswith(f"  - `{next(iter(changed))}`")
    if marker is None:
        assert "replacement" not in line
    else:
        assert line.endswith(marker)


def test_diff_manifests_adopting_an_existing_resource_is_an_import_replacement() -> None:
    base, new = make_manifest(), make_manifest()
    namespace = next(r for r in new["resources"] if r["name"].endswith("JOB_ANALYSIS_CACHE"))
    namespace["import"] = f"{ACCOUNT}/existing-namespace"

    diff = diff_manifests(base, new)
    text = render_markdown(diff)

    assert [(r.kind, r.name) for r in diff.resources] == [(ChangeKind.REPLACE, namespace["name"])]
    assert "#### Replaced: deleted and created again (1)" in text
    assert text.rstrip("\n").endswith(
        f'`(import)`: `null` → `"{ACCOUNT}/existing-namespace"` '
        "(forces replacement: adopts the existing resource and deletes the one in the stack)"
    )


def test_diff_manifests_dropping_import_is_an_update_without_effect() -> None:
    base, new = make_manifest(), make_manifest()
    base["resources"][4]["import"] = f"{ACCOUNT}/existing-namespace"

    diff = diff_manifests(base, new)

    assert [r.kind for r in diff.resources] == [ChangeKind.UPDATE]
    assert render_markdown(diff).rstrip("\n").endswith("`null` (no effect on a resource already in the stack)")


def test_diff_manifests_protect_and_import_changes_are_explicit() -> None:
    base, new = make_manifest(), make_manifest()
    namespace = next(r for r in new["resources"] if r["name"].endswith("JOB_ANALYSIS_CACHE"))
    namespace["protect"] = True
    namespace["import"] = f"{ACCOUNT}/existing-namespace"

    text = render(base, new)

    assert "  - `(protect)`: `false` → `true`" in text
    assert f'  - `(import)`: `null` → `"{ACCOUNT}/existing-namespace"`' in text


def test_diff_manifests_removing_a_protected_resource_warns() -> None:
    base, new = make_manifest(), make_manifest()
    base["resources"][2]["protect"] = True
    new["resources"].pop(2)

    assert "protected: `pulumi up` will refuse until `protect` is turned off" in render(base, new)


def test_diff_manifests_added_resource_that_adopts_shows_the_import() -> None:
    base, new = make_manifest(), make_manifest()
    base["resources"].pop(5)
    new["resources"][5]["import"] = f"{ACCOUNT}/abc123"

    assert f"— adopted: imports the existing `{ACCOUNT}/abc123`" in render(base, new)


def test_diff_manifests_policy_changes_per_operation_and_field() -> None:
    base, new = make_manifest(), make_manifest()
    policies = new["outputs"]["dualcache"]["policies"]
    policies["embeddings"]["gateway_ttl"] = 600
    policies["spam_detection"]["kv_ttl"] = 86400

    diff = diff_manifests(base, new)
    text = render_markdown(diff)

    assert [c.path for c in diff.policies] == ["embeddings.gateway_ttl", "spam_detection.kv_ttl"]
    assert not diff.outputs and not diff.resources
    assert "#### Policy changes (2)" in text
    assert "- `embeddings.gateway_ttl`: added `600`" in text
    assert "- `spam_detection.kv_ttl`: `604800` → `86400`" in text
    assert exit_status(diff) == 2


def test_diff_manifests_added_operation_is_one_policy_change() -> None:
    base, new = make_manifest(), make_manifest()
    added = {"kv": False, "gateway": "skip"}
    new["outputs"]["dualcache"]["policies"]["resume_parsing"] = added
    del new["outputs"]["dualcache"]["policies"]["spam_detection"]

    diff = diff_manifests(base, new)
    text = render_markdown(diff)

    assert [c.path for c in diff.policies] == ["resume_parsing", "spam_detection"]
    assert '- `resume_parsing`: added `{"gateway": "skip", "kv": false}`' in text
    assert '- `spam_detection`: removed (was `{"gateway": "cache", "kv": true, ' in text


def test_diff_manifests_output_changes_exclude_policies() -> None:
    base, new = make_manifest(), make_manifest()
    new["outputs"]["dualcache"]["gateway_id"] = "another-gateway"

    diff = diff_manifests(base, new)

    assert [c.path for c in diff.outputs] == ["dualcache.gateway_id"]
    assert '- `dualcache.gateway_id`: `"jobmatch-ai-dev"` → `"another-gateway"`' in render_markdown(diff)


def test_diff_manifests_other_stack_is_named_in_the_heading() -> None:
    text = render(make_manifest("staging"), make_manifest("prod"))

    assert text.startswith("### dualcache plan: stack `prod`\n\nCompared with stack `staging`.")


# --------------------------------------------------------------------------------------------------
# Secrets

SECRET_VALUE = "sk-live-Zq8vN3pW7rT1xY5kL9mB2cD4fG6hJ0aS"  # 37 characters; "37" appears nowhere else
NEW_SECRET_VALUE = "sk-live-Qw2eR4tY6uI8oP0aS1dF3gH5jK7lZ9x"


def _assert_no_secret(text: str, *values: str) -> None:
    for value in values:
        assert value not in text
        assert str(len(value)) not in text
        assert value[:8] not in text


def test_diff_manifests_redacted_secret_binding_is_not_shown() -> None:
    base, new = make_manifest(), make_manifest()

    text = render(base, new)

    assert not diff_manifests(base, new).has_changes
    assert SECRET not in text


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(SECRET_VALUE, NEW_SECRET_VALUE, "changed (secret)", id="changed"),
        pytest.param(None, NEW_SECRET_VALUE, "added (secret)", id="added"),
        pytest.param(SECRET_VALUE, None, "removed (secret)", id="removed"),
        pytest.param(SECRET, NEW_SECRET_VALUE, "changed (secret)", id="redacted-to-raw"),
    ],
)
def test_diff_manifests_secret_key_changes_hide_values_and_lengths(
    old: str | None, new: str | None, expected: str
) -> None:
    base, changed = make_manifest(), make_manifest()
    if old is not None:
        find(base, GATEWAY)["inputs"]["apiToken"] = old
    if new is not None:
        find(changed, GATEWAY)["inputs"]["apiToken"] = new

    text = render(base, changed)

    assert f"  - `apiToken`: {expected}" in text
    _assert_no_secret(text, SECRET_VALUE, NEW_SECRET_VALUE)


def test_diff_manifests_plain_binding_turned_secret_hides_the_old_value() -> None:
    base, new = make_manifest(), make_manifest()
    binding(base, "GATEWAY_TOKEN").update(type="plain_text", text=SECRET_VALUE)
    binding(new, "GATEWAY_TOKEN").update(type="secret_text", text=NEW_SECRET_VALUE)

    text = render(base, new)

    assert "`bindings[name=GATEWAY_TOKEN].text`: changed (secret)" in text
    assert '`bindings[name=GATEWAY_TOKEN].type`: `"plain_text"` → `"secret_text"`' in text
    _assert_no_secret(text, SECRET_VALUE, NEW_SECRET_VALUE)


def test_diff_manifests_pulumi_secret_envelope_is_hidden() -> None:
    base, new = make_manifest(), make_manifest()
    envelope = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": SECRET_VALUE}
    find(new, GATEWAY)["inputs"]["otels"] = [{"url": "https://otel.example", "headers": envelope}]

    text = render(base, new)

    assert '`otels[0]`: added `{"headers": "[secret]", "url": "https://otel.example"}`' in text
    _assert_no_secret(text, SECRET_VALUE)


def test_diff_manifests_pulumi_secret_envelope_change_is_hidden() -> None:
    base, new = make_manifest(), make_manifest()
    signature = {"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270"}
    find(base, GATEWAY)["inputs"]["otels"] = [{"url": "https://otel.example", "headers": {**signature, "value": "a"}}]
    find(new, GATEWAY)["inputs"]["otels"] = [{"url": "https://otel.example", "headers": {**signature, "value": "b"}}]

    text = render(base, new)

    assert "  - `otels[0].headers`: changed (secret)" in text
    assert '"a"' not in text and '"b"' not in text


# --------------------------------------------------------------------------------------------------
# Size bound and determinism


def _many_changes(count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    base, new = make_manifest(), make_manifest()
    for i in range(count):
        new["resources"].append(_resource(NAMESPACE, f"extra-{i:05d}", {"accountId": ACCOUNT, "title": f"t{i}"}))
    return base, new


def test_render_markdown_truncates_at_a_line_with_a_note() -> None:
    base, new = _many_changes(200)
    full = render_markdown(diff_manifests(base, new), max_chars=10**9)

    text = render_markdown(diff_manifests(base, new), max_chars=2_000)

    assert len(text) <= 2_000
    kept, note = text.rstrip("\n").rsplit("\n\n", 1)
    assert full.startswith(kept + "\n")
    match = re.fullmatch(r"_… truncated: (\d+) more lines \(([\d,]+) characters\) left out\. .*_", note)
    assert match is not None
    assert int(match[1]) == len(full.rstrip("\n").split("\n")) - len(kept.split("\n"))
    assert int(match[2].replace(",", "")) == len(full) - len(kept) - 1


def test_render_markdown_default_bound_is_below_github_comment_limit() -> None:
    base, new = _many_changes(1_500)

    text = render_markdown(diff_manifests(base, new))

    assert DEFAULT_MAX_CHARS < 65_536
    assert len(text) <= DEFAULT_MAX_CHARS
    assert "truncated:" in text.splitlines()[-1]


def test_truncate_markdown_leaves_short_text_alone_and_rejects_tiny_bounds() -> None:
    assert truncate_markdown("short\n", 1_000) == "short\n"
    with pytest.raises(InvalidInputError, match="max_chars 10 is too small"):
        truncate_markdown("x" * 50, 10)


def test_diff_manifests_output_is_deterministic_under_reordering() -> None:
    base, new = make_manifest(), make_manifest()
    find(new, GATEWAY)["inputs"]["cacheTtl"] = 60
    new["resources"].pop(3)
    new["outputs"]["dualcache"]["policies"]["embeddings"]["kv_ttl"] = 86400
    expected = render(base, new)

    shuffled_base, shuffled_new = copy.deepcopy(base), copy.deepcopy(new)
    rng = random.Random(1)
    for manifest in (shuffled_base, shuffled_new):
        rng.shuffle(manifest["resources"])
        for resource in manifest["resources"]:
            items = list(resource["inputs"].items())
            rng.shuffle(items)
            resource["inputs"] = dict(items)

    assert render(shuffled_base, shuffled_new) == expected


# --------------------------------------------------------------------------------------------------
# Loading a base manifest


def test_load_manifest_reads_a_plan_json(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text(json.dumps(make_manifest()), encoding="utf-8")

    assert load_manifest(path) == make_manifest()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(None, "does not exist", id="missing"),
        pytest.param("{not json", "is not JSON", id="not-json"),
        pytest.param("[]", "a plan manifest is a JSON object, got list", id="not-object"),
        pytest.param('{"stack": "dev"}', "'resources' must be a list", id="no-resources"),
        pytest.param('{"stack": "dev", "resources": [{"type": "t"}]}', "non-empty string 'type' and 'name'", id="name"),
        pytest.param(
            '{"stack": "dev", "resources": [{"type": "t", "name": "n"}, {"type": "t", "name": "n"}]}',
            "appears twice",
            id="duplicate",
        ),
    ],
)
def test_load_manifest_rejects_bad_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_manifest(path)

    assert str(path) in str(info.value)


def test_run_diff_requires_exactly_one_base(tmp_path: Path) -> None:
    args = argparse.Namespace(stack="dev", diff=None, against=None)

    with pytest.raises(InvalidInputError, match="exactly one of --diff"):
        run_diff(args, tmp_path)


# --------------------------------------------------------------------------------------------------
# --against: the base plan from another git revision


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_base_manifest_from_git_without_the_stack_file_counts_everything_as_added(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Pulumi.yaml").write_text("name: jobmatch-ai\n", encoding="utf-8")
    _git(repo, "init", "-q")
    _git(repo, "add", "Pulumi.yaml")
    _git(repo, "commit", "-q", "-m", "project only")

    manifest, notes = base_manifest_from_git(repo, "HEAD", "dev")

    assert manifest == {"stack": "dev", "resources": [], "outputs": {}}
    assert notes == ["`Pulumi.dev.yaml` does not exist at `HEAD`: every resource counts as added."]
    added = diff_manifests(manifest, make_manifest())
    assert {r.kind for r in added.resources} == {ChangeKind.ADD}
    assert len(added.resources) == len(make_manifest()["resources"])


def test_base_manifest_from_git_unknown_revision_is_a_clear_error(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "commit", "-q", "--allow-empty", "-m", "empty")

    with pytest.raises(ConfigError, match="git revision 'origin/nope' not found"):
        base_manifest_from_git(tmp_path, "origin/nope", "dev")


def test_base_manifest_from_git_outside_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not inside a git repository"):
        base_manifest_from_git(tmp_path, "HEAD", "dev")


def _copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.staging.yaml", "Pulumi.prod.yaml"):
        shutil.copy2(PROJECT_DIR / name, dest / name)
    shutil.copytree(PROJECT_DIR / "infra", dest / "infra", ignore=ignore)
    shutil.copytree(PROJECT_DIR / "runtime", dest / "runtime", ignore=ignore)


def test_run_diff_against_a_git_revision_shows_the_stack_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_project(repo)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    stack_file = repo / "Pulumi.dev.yaml"
    changed = stack_file.read_text(encoding="utf-8").replace("cacheTtl: 3600", "cacheTtl: 7200")
    assert changed != stack_file.read_text(encoding="utf-8")
    stack_file.write_text(changed, encoding="utf-8")
    (repo / "notes.txt").write_text("untracked\n", encoding="utf-8")
    (repo / "scratch").mkdir()
    (repo / "scratch" / "draft.json").write_text("{}\n", encoding="utf-8")
    status_before = _git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored")
    assert "?? notes.txt" in status_before and "?? scratch/draft.json" in status_before
    scratch_tmp = tmp_path / "tmp"
    scratch_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_tmp))

    status = run_diff(argparse.Namespace(stack="dev", diff=None, against="HEAD", project_dir=repo), repo)

    out = capsys.readouterr().out
    assert status == 2
    assert "Compared with the base plan (`HEAD`)." in out
    assert "  - `cacheTtl`: `3600` → `7200`" in out
    assert "**0 to add, 1 to change, 0 to replace, 0 to remove**" in out
    # The working tree is as it was: still modified, untracked files kept, nothing added; no export left.
    assert _git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored") == status_before
    assert stack_file.read_text(encoding="utf-8") == changed
    assert list(scratch_tmp.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# The command line: `dualcache plan --stack S --diff BASE.json`, exit status 0 / 2 / 1


@pytest.fixture(scope="module")
def dev_manifest() -> dict[str, Any]:
    from infra.cli import plan_manifest

    return plan_manifest("dev", PROJECT_DIR)


def _main(*argv: str) -> int:
    from infra.cli import main

    return main(["plan", "--stack", "dev", "--project-dir", str(PROJECT_DIR), *argv])


def test_cli_plan_diff_unchanged_exits_0(
    dev_manifest: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps(dev_manifest), encoding="utf-8")

    status = _main("--diff", str(base))

    assert status == 0
    assert capsys.readouterr().out.endswith("No changes.\n")


def test_cli_plan_diff_changed_policy_exits_2(
    dev_manifest: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = copy.deepcopy(dev_manifest)
    policy = manifest["outputs"]["dualcache"]["policies"]["spam_detection"]
    old_ttl = policy["kv_ttl"]
    policy["kv_ttl"] = old_ttl + 60
    base = tmp_path / "base.json"
    base.write_text(json.dumps(manifest), encoding="utf-8")

    status = _main("--diff", str(base))

    assert status == 2
    assert f"- `spam_detection.kv_ttl`: `{old_ttl + 60}` → `{old_ttl}`" in capsys.readouterr().out


def test_cli_plan_diff_missing_base_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = _main("--diff", str(tmp_path / "nope.json"))

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert "nope.json' does not exist" in captured.err


def test_cli_plan_against_unknown_revision_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    status = _main("--against", "refs/heads/no-such-branch-for-this-test")

    captured = capsys.readouterr()
    assert status == 1
    assert captured.out == ""
    assert "git revision 'refs/heads/no-such-branch-for-this-test' not found" in captured.err


# --------------------------------------------------------------------------------------------------
# A real review: the project copied, its dev stack file edited, diffed against the committed snapshot

# A `secure:` value as `pulumi config set --secret` writes it; neither it nor any part of it may show.
SECURE_VALUE = "v1:Zm9vYmFyYmF6cXV4:c2stbGl2ZS1RdzJlUjR0WTZ1SThvUDBhUzFkRjNnSDVqSzdsWjl4"


def _edit_dev_stack(project: Path) -> None:
    stack_file = project / "Pulumi.dev.yaml"
    text = stack_file.read_text(encoding="utf-8")
    edits = [
        ("    cacheTtl: 3600\n", "    cacheTtl: 7200\n"),
        ("    protect: false\n", '    protect: false\n    adopt:\n      JOB_ANALYSIS_CACHE: "' + "a" * 32 + '"\n'),
        ("    workersDev: true\n", "    workersDev: true\n    name: renamed-api\n"),
        ("      gateway_ttl: 600\n", "      gateway_ttl: 900\n    spam_detection:\n      kv_ttl: 86400\n"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"Pulumi.dev.yaml no longer holds {old!r}; update this test"
        text = text.replace(old, new)
    text += f"  jobmatch-ai:gatewayToken:\n    secure: {SECURE_VALUE}\n"
    stack_file.write_text(text, encoding="utf-8")


def test_cli_plan_diff_of_real_stack_edits_against_the_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from infra.cli import main

    _copy_project(tmp_path)
    _edit_dev_stack(tmp_path)
    snapshot = tmp_path / "infra" / "snapshots" / "dev.json"
    old_ns_id = next(
        b["namespaceId"]
        for r in load_manifest(snapshot)["resources"]
        for b in r["inputs"].get("bindings", [])
        if b["name"] == "JOB_ANALYSIS_CACHE"
    )

    status = main(["plan", "--stack", "dev", "--project-dir", str(tmp_path), "--diff", str(snapshot)])

    out = capsys.readouterr().out
    assert status == 2
    adopted = "a" * 32
    assert out == (
        "### dualcache plan: stack `dev`\n\n"
        "Compared with the base plan (`dev.json`).\n\n"
        "**0 to add, 2 to change, 3 to replace, 0 to remove**; 2 policy changes; 2 output changes.\n\n"
        "#### Replaced: deleted and created again (3)\n\n"
        f"- `{NAMESPACE}` **kv-job-analysis-cache**\n"
        f'  - `(import)`: `null` → `"{ACCOUNT}/{adopted}"` '
        "(forces replacement: adopts the existing resource and deletes the one in the stack)\n"
        f"- `{SCRIPT}` **api-script**\n"
        '  - `bindings[name=CF_AIG_TOKEN]`: added `{"name": "CF_AIG_TOKEN", "text": "[secret]", '
        '"type": "secret_text"}`\n'
        f'  - `bindings[name=JOB_ANALYSIS_CACHE].namespaceId`: `"{old_ns_id}"` → `"{adopted}"`\n'
        '  - `scriptName`: `"jobmatch-ai-api-dev"` → `"renamed-api"` (forces replacement)\n'
        "- `cloudflare:index/workersScriptSubdomain:WorkersScriptSubdomain` **api-subdomain**\n"
        '  - `scriptName`: `"jobmatch-ai-api-dev"` → `"renamed-api"` (forces replacement)\n\n'
        "#### Changed in place (2)\n\n"
        f"- `{GATEWAY}` **ai-gateway**\n"
        "  - `cacheTtl`: `3600` → `7200`\n"
        # The data plane binds the same namespaces, so the adopted id reaches it too (an update in place).
        f"- `{SCRIPT}` **dataplane-script**\n"
        f'  - `bindings[name=JOB_ANALYSIS_CACHE].namespaceId`: `"{old_ns_id}"` → `"{adopted}"`\n\n'
        "#### Policy changes (2)\n\n"
        "- `embeddings.gateway_ttl`: `600` → `900`\n"
        "- `spam_detection.kv_ttl`: `604800` → `86400`\n\n"
        "#### Output changes (2)\n\n"
        f'- `dualcache.namespaces.JOB_ANALYSIS_CACHE`: `"{old_ns_id}"` → `"{adopted}"`\n'
        '- `dualcache.worker_name`: `"jobmatch-ai-api-dev"` → `"renamed-api"`\n'
    )
    # The whole output is pinned above, so no length can hide in it either; the ciphertext, its parts
    # and the plan's stand-in for the secret are checked by name for a readable failure.
    for part in [SECURE_VALUE, *SECURE_VALUE.split(":"), "offline-plan-placeholder"]:
        assert part not in out


def test_plandiff_data_plane_rename_replaces_its_script_and_subdomain_and_a_domain_is_added(
    tmp_path: Path,
) -> None:
    from infra.plan import plan_manifest

    shutil.copy(PROJECT_DIR / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    stack = yaml.safe_load((PROJECT_DIR / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(stack), encoding="utf-8")
    base = plan_manifest("dev", tmp_path)
    stack["config"]["jobmatch-ai:dataPlane"] = {"name": "kv-plane", "customDomain": {"hostname": "kv.example.com"}}
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(stack), encoding="utf-8")
    diff = diff_manifests(base, plan_manifest("dev", tmp_path))

    kinds = {(r.name, r.kind) for r in diff.resources}
    assert kinds == {
        ("dataplane-script", ChangeKind.REPLACE),
        ("dataplane-subdomain", ChangeKind.REPLACE),
        ("dataplane-domain", ChangeKind.ADD),
    }
    script = next(r for r in diff.resources if r.name == "dataplane-script")
    assert [c.path for c in script.changes if c.replacement is Replacement.YES] == ["scriptName"]
    subdomain = next(r for r in diff.resources if r.name == "dataplane-subdomain")
    assert {c.path: c.new for c in subdomain.changes} == {"enabled": False, "scriptName": "kv-plane"}
    # The token binding is unchanged ([secret] on both sides) and never shown.
    assert all("DUALCACHE_TOKEN" not in c.path for c in script.changes)

"""``dualcache plan | outputs | wrangler``: the provisioning commands, next to the Pulumi program they run.

They live in the project's ``infra`` package, not in the installed library: they need the Pulumi program
(``infra/program.py``) and its offline plan (``infra/plan.py``), which only a clone of the repository has.
The ``dualcache`` console script forwards these commands here, running ``python -m infra.cli COMMAND ...``
with the same interpreter from the project it finds (see ``dualcache._cli_infra``); ``python -m infra.cli``
from the project root is the same thing without the console script.

Cheap to import: ``pulumi`` is only imported inside ``plan`` (and ``wrangler`` without ``--outputs``).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from dualcache._cli import add_project_dir_argument, check_output_file, find_project_dir
from dualcache._cli import main as _main
from dualcache._exceptions import ConfigError, InvalidInputError
from dualcache._outputs import OUTPUT_NAME, OUTPUTS_ENV_VAR, StackOutputs
from dualcache._policy import Namespace
from dualcache._stackconfig import DATA_PLANE_TOKEN_KEY, StackConfig, load_stack_config
from dualcache._untrusted import read_text_file

__all__ = [
    "DATA_PLANE_WRANGLER_FILE",
    "PULUMI_INSTALL_HINT",
    "WRANGLER_SPLIT_MARKER",
    "main",
    "plan_manifest",
    "plan_warnings",
    "register",
    "render_data_plane_wrangler_toml",
    "render_plan_text",
    "render_wrangler_toml",
]

PULUMI_INSTALL_HINT = (
    "install the Pulumi CLI: `curl -fsSL https://get.pulumi.com | sh` (Linux, macOS), "
    "`brew install pulumi/tap/pulumi` (macOS) or `choco install pulumi` (Windows); "
    "see https://www.pulumi.com/docs/install/"
)
_SECRET_BINDINGS = {"openaiApiKey": "OPENAI_API_KEY", "gatewayToken": "CF_AIG_TOKEN"}
"""The API Worker's secrets: config key → binding name."""
DATA_PLANE_WRANGLER_FILE = "wrangler.dataplane.toml"
"""Where the data-plane Worker's wrangler config is meant to be saved (the project root: ``main`` is relative)."""
WRANGLER_SPLIT_MARKER = "# ----- 8< -----"
"""The comment line that separates the two TOML documents ``dualcache wrangler`` prints by default."""
_DATA_PLANE_MAIN = "infra/worker/dataplane.js"
_WORKERS = ("both", "api", "data-plane")
_SNAPSHOT_MAX_BYTES = 32 * 1024 * 1024
"""Largest committed snapshot ``plan --check`` reads (the same bound as a ``--diff`` base manifest)."""


def register(subparsers: Any) -> None:
    """Add the ``plan``, ``outputs`` and ``wrangler`` subcommands."""
    plan = subparsers.add_parser(
        "plan",
        help="show the resources a stack declares, offline (Pulumi mock engine; no CLI, token or network)",
        description="Run the Pulumi program under Pulumi's mock engine with Pulumi.<stack>.yaml and print the "
        "resources (type, name, inputs, protect, import) and the outputs.",
    )
    plan.add_argument("--stack", "-s", required=True, help="stack name (a Pulumi.<stack>.yaml must exist)")
    add_project_dir_argument(plan)
    mode = plan.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the manifest as JSON")
    mode.add_argument(
        "--check", action="store_true", help="exit 1 with a unified diff when infra/snapshots/<stack>.json is stale"
    )
    mode.add_argument("--write", action="store_true", help="update infra/snapshots/<stack>.json")
    mode.add_argument("--diff", type=Path, metavar="BASE_JSON", help="review the changes from a base manifest")
    mode.add_argument(
        "--against",
        metavar="GIT_REF",
        help="review the changes from the plan of another git revision (built from that revision's files, "
        "without touching the working tree)",
    )
    plan.add_argument(
        "--max-chars",
        type=int,
        default=None,
        metavar="N",
        help="with --diff/--against: cut the Markdown summary at N characters (default 60000, under GitHub's "
        "65,536-character comment limit)",
    )
    plan.add_argument(
        "--out", type=Path, default=None, help="with --diff/--against: also write the Markdown summary to this file"
    )
    plan.set_defaults(func=_cmd_plan, extra="infra")

    outputs = subparsers.add_parser(
        "outputs",
        help="write a stack's `dualcache` output (from `pulumi stack output`) to the file services load",
        description=f"Run `pulumi stack output {OUTPUT_NAME} --json`, validate it as StackOutputs and write it.",
    )
    outputs.add_argument("--stack", "-s", required=True, help="stack name")
    outputs.add_argument("--out", type=Path, default=None, help="file to write (default: outputs.<stack>.json)")
    add_project_dir_argument(outputs)
    outputs.set_defaults(func=_cmd_outputs)

    wrangler = subparsers.add_parser(
        "wrangler",
        help="print the wrangler configs of the stack's Workers (the API Worker's [env.<stack>], the data plane's)",
        description="Print the wrangler.toml [env.<stack>] section of the API Worker and the wrangler config of "
        f"dualcache's data-plane Worker ({DATA_PLANE_WRANGLER_FILE}), with the same bindings as the Pulumi program, "
        "for teams that deploy Worker code with wrangler. Namespace ids come from --outputs when given, else from "
        "the offline plan (stand-ins until the stack is deployed). By default both are printed, separated by a "
        f"line starting with {WRANGLER_SPLIT_MARKER!r}; --worker prints one.",
    )
    wrangler.add_argument(
        "--worker",
        choices=_WORKERS,
        default="both",
        help="which Worker's config to print: both (default), api (the [env.<stack>] section) or data-plane "
        f"(a complete {DATA_PLANE_WRANGLER_FILE})",
    )
    wrangler.add_argument("--stack", "-s", required=True, help="stack name")
    wrangler.add_argument(
        "--outputs", type=Path, default=None, help="an outputs file written by `dualcache outputs` (real ids)"
    )
    add_project_dir_argument(wrangler)
    wrangler.set_defaults(func=_cmd_wrangler, extra="infra")


def _project_dir(args: argparse.Namespace) -> Path:
    given: Path | None = args.project_dir
    if given is None:
        return find_project_dir()
    if not (given / "Pulumi.yaml").is_file():
        raise ConfigError(f"--project-dir {str(given)!r} holds no Pulumi.yaml")
    return given.resolve()


INFRA_EXTRA_MESSAGE = (
    "the offline plan needs the 'infra' extra (pulumi, pulumi-cloudflare): pip install 'dualcache[infra]'"
)


def _import_plan() -> Any:
    """Import :mod:`infra.plan` (and with it pulumi), saying which extra to install when pulumi is missing."""
    try:
        import infra.plan
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] in ("infra", "dualcache"):
            raise  # our own code is broken: not a missing extra
        raise ModuleNotFoundError(f"{INFRA_EXTRA_MESSAGE} ({exc.name} is missing)", name=exc.name) from exc
    return infra.plan


def plan_manifest(stack: str, project_dir: Path) -> dict[str, Any]:
    """Run the offline plan of ``stack`` and return its manifest.

    The manifest is ``{"stack", "resources": [{"type", "name", "inputs", "protect", "import"}], "outputs"}``
    with secrets as ``"[secret]"``; ``outputs["dualcache"]`` is a serialized :class:`StackOutputs`.

    Raises:
        ConfigError: no such stack file, or its config is invalid.
        ImportError: the ``infra`` extra is not installed.
    """
    manifest: dict[str, Any] = _import_plan().plan_manifest(stack, Path(project_dir))
    return manifest


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def plan_warnings(config: StackConfig) -> list[str]:
    """What the offline plan of ``config`` stands in for, and what a real ``pulumi preview``/``up`` would refuse.

    Args:
        config: The stack's settings (see :func:`dualcache.load_stack_config`).

    Returns:
        One sentence per problem; empty when the stack is complete.
    """
    key = f"{config.project}:{DATA_PLANE_TOKEN_KEY}"
    warnings = []
    if DATA_PLANE_TOKEN_KEY not in config.secrets_set:
        warnings.append(
            f"{key} is not set: the plan binds a stand-in as DUALCACHE_TOKEN (shown [secret]); `pulumi preview` "
            f'and `up` refuse to run until you set it with `pulumi config set --secret {key} "$(openssl rand -hex 32)"'
            f" -s {config.stack}`"
        )
    if config.data_plane_url is None:
        warnings.append(
            f"data_plane_url is null: the data-plane Worker {config.data_plane_name!r} is on workers.dev and "
            f"{config.project}:workersDevSubdomain (your account's `<subdomain>.workers.dev`) is not set, so its URL "
            "is unknown; services would fall back to the KV REST API. `pulumi preview` and `up` refuse this; set "
            f"`pulumi config set workersDevSubdomain <subdomain> -s {config.stack}`, or a dataPlane.customDomain "
            "or dataPlane.route"
        )
    return warnings


def render_plan_text(manifest: dict[str, Any], warnings: list[str] | None = None) -> str:
    """A human-readable rendering of a manifest (what ``dualcache plan`` prints).

    Args:
        manifest: The manifest (see :func:`plan_manifest`).
        warnings: Sentences printed under "Warnings" before the resources (see :func:`plan_warnings`).
    """
    lines = [
        f"Plan of stack {manifest['stack']!r} — offline, Pulumi mock engine: namespace ids are stand-ins "
        "(the local emulator uses the same ones); secrets show as [secret].",
        "",
    ]
    if warnings:
        lines.append("Warnings:")
        lines += [f"  ! {warning}" for warning in warnings]
        lines.append("")
    lines.append(f"Resources ({len(manifest['resources'])}):")
    for res in manifest["resources"]:
        flags = []
        if res.get("protect"):
            flags.append("protect")
        if res.get("import"):
            flags.append(f"import {res['import']}")
        suffix = f"  [{', '.join(flags)}]" if flags else ""
        lines.append(f"  + {res['name']}  ({res['type']}){suffix}")
        inputs: dict[str, Any] = res.get("inputs", {})
        for key in sorted(inputs):
            value = inputs[key]
            if key == "content" and isinstance(value, str):
                digest = hashlib.sha256(value.encode()).hexdigest()[:12]
                lines.append(f"      {key}: {len(value.encode())} bytes, sha256 {digest}…")
            elif key == "bindings" and isinstance(value, list):
                lines.append(f"      {key}:")
                for binding in value:
                    detail = binding.get("namespaceId", binding.get("text", ""))
                    lines.append(
                        f"        {binding.get('name', '?'):<22} {binding.get('type', '?'):<13} {_short(detail)}"
                    )
            else:
                lines.append(f"      {key}: {_short(value)}")
    lines.append("")
    lines.append("Outputs:")
    for name, value in sorted(manifest.get("outputs", {}).items()):
        if name == OUTPUT_NAME and isinstance(value, dict):
            lines += _render_contract(value)
        else:
            text = json.dumps(value, indent=2, sort_keys=True)
            lines.append(f"  {name}: " + text.replace("\n", "\n  "))
    return "\n".join(lines) + "\n"


def _render_contract(value: dict[str, Any]) -> list[str]:
    lines = [f"  {OUTPUT_NAME} (StackOutputs):"]
    keys = ("stack", "account_id", "gateway_id", "worker_name", "data_plane_worker_name", "data_plane_url")
    for key in (*keys, "api_base_url", "gateway_base_url"):
        lines.append(f"      {key}: {_short(value.get(key))}")
    lines.append("      namespaces:")
    for binding, ns_id in value.get("namespaces", {}).items():
        lines.append(f"        {binding:<22} {ns_id}")
    lines.append("      policies:")
    for operation, policy in value.get("policies", {}).items():
        kv = f"kv {policy.get('kv_ttl')}s in {policy.get('kv_namespace')}" if policy.get("kv") else "kv off"
        gateway = policy.get("gateway")
        if gateway == "cache":
            gateway = f"cache {policy.get('gateway_ttl')}s"
        lines.append(f"        {operation:<22} {kv}; gateway {gateway}")
    return lines


def _cmd_plan(args: argparse.Namespace) -> int:
    project_dir = _project_dir(args)
    reviewing = args.diff is not None or args.against is not None
    if not reviewing and (args.max_chars is not None or args.out is not None):
        raise InvalidInputError("--max-chars and --out go with --diff BASE_JSON or --against GIT_REF")
    if args.out is not None:
        check_output_file(args.out, "--out")  # before the plan runs, not after
    # The stack file first, before Pulumi is even imported: a bad or hostile file fails fast, in one line.
    config = load_stack_config(project_dir, args.stack)
    plan = _import_plan()
    if reviewing:
        from infra.plandiff import run_diff

        return run_diff(args, project_dir)
    manifest = plan.plan_manifest(args.stack, project_dir)
    text: str = plan.manifest_json(manifest)
    snapshot: Path = plan.snapshot_path(project_dir, args.stack)
    warnings = plan_warnings(config)
    if args.json or args.write or args.check:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        sys.stdout.write(text)
        return 0
    if args.write:
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        try:
            snapshot.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"could not write the snapshot {str(snapshot)!r}: {exc.strerror or exc}") from None
        print(f"wrote {snapshot}")
        return 0
    if args.check:
        return _check_snapshot(snapshot, text, args.stack)
    sys.stdout.write(render_plan_text(manifest, warnings))
    return 0


def _check_snapshot(snapshot: Path, text: str, stack: str) -> int:
    if not snapshot.exists() and not snapshot.is_symlink():
        print(f"no snapshot {snapshot}; create it with `dualcache plan --stack {stack} --write`", file=sys.stderr)
        return 1
    # Committed files come from pull requests too: a regular file of bounded size (not a link to /dev/zero).
    committed = read_text_file(snapshot, limit=_SNAPSHOT_MAX_BYTES, what="snapshot")
    if committed == text:
        print(f"{snapshot} is up to date")
        return 0
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True),
        text.splitlines(keepends=True),
        fromfile=f"{snapshot} (committed)",
        tofile=f"plan of stack {stack!r}",
    )
    sys.stdout.writelines(diff)
    print(
        f"{snapshot} is stale; review the diff above and run `dualcache plan --stack {stack} --write`", file=sys.stderr
    )
    return 1


def _cmd_outputs(args: argparse.Namespace) -> int:
    project_dir = _project_dir(args)
    out: Path = args.out or project_dir / f"outputs.{args.stack}.json"
    check_output_file(out, "--out")  # before `pulumi stack output` runs, not after
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise ConfigError(f"the Pulumi CLI (`pulumi`) is not on PATH; {PULUMI_INSTALL_HINT}")
    command = [pulumi, "stack", "output", OUTPUT_NAME, "--json", "--stack", args.stack]
    try:
        proc = subprocess.run(command, cwd=project_dir, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run `pulumi stack output`: {exc}") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or "(no message)"
        raise ConfigError(
            f"`pulumi stack output {OUTPUT_NAME} --json --stack {args.stack}` failed with exit status "
            f"{proc.returncode}: {detail}; is the stack deployed (`pulumi up -s {args.stack}`) and are you logged in "
            "(`pulumi login`)?"
        )
    outputs = StackOutputs.from_json(proc.stdout, source=f"`pulumi stack output {OUTPUT_NAME}` of stack {args.stack!r}")
    if outputs.stack != args.stack:
        raise ConfigError(f"the {OUTPUT_NAME} output says stack {outputs.stack!r}, but --stack is {args.stack!r}")
    try:
        outputs.dump(out)
    except OSError as exc:
        raise ConfigError(f"--out {str(out)!r}: could not write the outputs: {exc.strerror or exc}") from None
    print(f"wrote {out}; services load it with StackOutputs.load() or {OUTPUTS_ENV_VAR}={out}")
    return 0


def _toml(value: str) -> str:
    # A JSON string (ASCII-only, \uXXXX escapes) is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def render_wrangler_toml(config: StackConfig, outputs: StackOutputs, *, ids_source: str) -> str:
    """The ``[env.<stack>]`` section of a wrangler.toml with the program's bindings.

    Args:
        config: The stack's settings (compatibility date, route, custom domain, secrets set).
        outputs: Where the ids come from (real outputs, or the offline plan's).
        ids_source: A phrase saying where the ids come from, written as a comment.
    """
    env = f"env.{outputs.stack}"
    lines = [
        f"# [env.{outputs.stack}] for wrangler, generated by `dualcache wrangler --stack {outputs.stack}`.",
        f"# Namespace ids: {ids_source}.",
        "# Top-level keys (name, main) stay yours; deploy with `wrangler deploy --env " + outputs.stack + "`.",
        f"[{env}]",
        f"name = {_toml(outputs.worker_name)}",
        f"account_id = {_toml(outputs.account_id)}",
        f"compatibility_date = {_toml(config.worker.compatibility_date)}",
    ]
    if config.worker.workers_dev is not None:
        lines.append(f"workers_dev = {'true' if config.worker.workers_dev else 'false'}")
    routes = _routes(config.worker.route, config.worker.custom_domain)
    if routes:
        lines.append(f"routes = [{', '.join(routes)}]")
    for binding in Namespace:
        lines += ["", f"[[{env}.kv_namespaces]]", f"binding = {_toml(binding.value)}"]
        lines.append(f"id = {_toml(outputs.namespace_id(binding))}")
    lines += ["", f"[{env}.ai]", 'binding = "AI"', "", f"[{env}.vars]"]
    lines.append(f"AI_GATEWAY_SLUG = {_toml(outputs.gateway_id)}")
    lines.append(f"CLOUDFLARE_ACCOUNT_ID = {_toml(outputs.account_id)}")
    lines += ["", "# Secrets never go in this file. Set them per environment:"]
    for key in sorted(_SECRET_BINDINGS):
        state = "set in this stack" if key in config.secrets_set else "not set in this stack"
        lines.append(f"#   wrangler secret put {_SECRET_BINDINGS[key]} --env {outputs.stack}   ({key}: {state})")
    return "\n".join(lines) + "\n"


def _routes(route: Any, custom_domain: Any) -> list[str]:
    routes = []
    if route is not None:
        routes.append(f"{{ pattern = {_toml(route.pattern)}, zone_id = {_toml(route.zone_id)} }}")
    if custom_domain is not None:
        routes.append(f"{{ pattern = {_toml(custom_domain.hostname)}, custom_domain = true }}")
    return routes


def render_data_plane_wrangler_toml(config: StackConfig, outputs: StackOutputs, *, ids_source: str) -> str:
    """A complete wrangler config of dualcache's data-plane Worker, with the program's bindings.

    Meant to be saved as :data:`DATA_PLANE_WRANGLER_FILE` in the project root (``main`` is relative to the
    file) and deployed with ``wrangler deploy -c wrangler.dataplane.toml``. The token is never in it: a
    comment says to run ``wrangler secret put DUALCACHE_TOKEN``.

    Args:
        config: The stack's settings (data-plane name, compatibility date, route, custom domain, workers.dev).
        outputs: Where the namespace ids come from (real outputs, or the offline plan's).
        ids_source: A phrase saying where the ids come from, written as a comment.
    """
    dp = config.data_plane
    name = outputs.data_plane_worker_name or config.data_plane_name
    url = outputs.data_plane_url or config.data_plane_url
    token_key = f"{config.project}:{DATA_PLANE_TOKEN_KEY}"
    lines = [
        f"# wrangler config of dualcache's data-plane Worker, stack {outputs.stack!r}, generated by "
        f"`dualcache wrangler --stack {outputs.stack} --worker data-plane`.",
        f"# Save it as {DATA_PLANE_WRANGLER_FILE} in the project root; deploy with "
        f"`wrangler deploy -c {DATA_PLANE_WRANGLER_FILE}`.",
        f"# Namespace ids: {ids_source}.",
        f"# URL (data_plane_url): {url or 'unknown until workersDevSubdomain, dataPlane.route or customDomain is set'}",
        f"# The token is a secret and never goes in this file. Set it, the same value as the stack's {token_key}:",
        f"#   wrangler secret put DUALCACHE_TOKEN -c {DATA_PLANE_WRANGLER_FILE}",
        "# Services send it as `Authorization: Bearer <token>`, read from DUALCACHE_DATA_PLANE_TOKEN.",
        f"name = {_toml(name)}",
        f"main = {_toml(_DATA_PLANE_MAIN)}",
        f"account_id = {_toml(outputs.account_id)}",
        f"compatibility_date = {_toml(dp.compatibility_date)}",
        f"workers_dev = {'true' if dp.on_workers_dev else 'false'}",
    ]
    routes = _routes(dp.route, dp.custom_domain)
    if routes:
        lines.append(f"routes = [{', '.join(routes)}]")
    for binding in Namespace:
        lines += ["", "[[kv_namespaces]]", f"binding = {_toml(binding.value)}"]
        lines.append(f"id = {_toml(outputs.namespace_id(binding))}")
    lines += ["", "# GET /health probes the gateway through Workers AI, as the health Worker does.", "[ai]"]
    lines += ['binding = "AI"', "", "[vars]"]
    lines.append(f"AI_GATEWAY_SLUG = {_toml(outputs.gateway_id)}")
    lines.append(f"CLOUDFLARE_ACCOUNT_ID = {_toml(outputs.account_id)}")
    return "\n".join(lines) + "\n"


def _cmd_wrangler(args: argparse.Namespace) -> int:
    project_dir = _project_dir(args)
    config = load_stack_config(project_dir, args.stack)
    if args.outputs is not None:
        outputs = StackOutputs.load(args.outputs)
        if outputs.stack != args.stack:
            raise ConfigError(f"{args.outputs} holds the outputs of stack {outputs.stack!r}, not {args.stack!r}")
        source = f"from {args.outputs}"
    else:
        manifest = plan_manifest(args.stack, project_dir)
        outputs = StackOutputs.from_data(manifest["outputs"][OUTPUT_NAME], source="the offline plan")
        source = (
            "from the offline plan, stand-ins until the stack is deployed; "
            f"for the real ids run `dualcache outputs --stack {args.stack}` and pass --outputs"
        )
    worker: str = args.worker
    parts = []
    if worker in ("both", "api"):
        parts.append(render_wrangler_toml(config, outputs, ids_source=source))
    if worker in ("both", "data-plane"):
        parts.append(render_data_plane_wrangler_toml(config, outputs, ids_source=source))
    separator = (
        f"\n{WRANGLER_SPLIT_MARKER} the data-plane Worker's config follows: save it as {DATA_PLANE_WRANGLER_FILE} "
        "(or print it alone with --worker data-plane)\n\n"
    )
    sys.stdout.write(separator.join(parts))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``plan``, ``outputs`` or ``wrangler`` (``python -m infra.cli COMMAND ...``); return the exit status.

    Errors are reported as by ``dualcache``: one line, ``dualcache COMMAND: error: ...``, exit status 1.
    """
    return _main(argv, modules=("infra.cli",), prog="dualcache")


if __name__ == "__main__":
    sys.exit(main())

"""Secrets out of reach: no token in any error a caller (or an error tracker) can see.

Every failure path of every HTTP layer (KV over REST, KV over the data plane, the AI Gateway, direct Workers AI,
OpenAI through the gateway and direct) is triggered with distinctive tokens; each raised exception is rendered
as an error tracker records it (a traceback with every frame's locals, the ``repr``/``str`` of the exception
and of every exception in its ``__cause__``/``__context__`` chain, and their attributes) and the tokens are
grepped for. None may appear, and no exception in a chain may hold an ``httpx.Request``.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from dualcache import (
    BackendError,
    BreakerPolicy,
    CloudflareKVBackend,
    DataPlaneKVBackend,
    DualCache,
    KVStore,
    MemoryKVBackend,
    Namespace,
    Policies,
    RequestBudget,
    RetryPolicy,
    StackOutputs,
)
from dualcache._redact import SecretHeaders, auth_headers, redact_text, redact_url, scrubbed

API_TOKEN = "cfapi-5ecr3t-TOKEN-a1a1"
GATEWAY_TOKEN = "cfgw-5ecr3t-TOKEN-b2b2"
OPENAI_KEY = "sk-5ecr3t-TOKEN-c3c3"
DATA_PLANE_TOKEN = "dp-5ecr3t-TOKEN-d4d4"
TOKENS = (API_TOKEN, GATEWAY_TOKEN, OPENAI_KEY, DATA_PLANE_TOKEN)
MARK = "5ecr3t"  # in every token: a part of one is a leak too

ACCOUNT = "a" * 32
MSGS = [{"role": "user", "content": "Rate this job for me, answer in JSON"}]
OUTPUTS = StackOutputs.from_data(
    dict(
        stack="test",
        account_id=ACCOUNT,
        gateway_id="gw",
        api_base_url="https://api.test/client/v4",
        gateway_base_url="https://gw.test/v1",
        namespaces={n: f"{i:032x}" for i, n in enumerate(Namespace, start=1)},  # Cloudflare's id format
        worker_name="api",
        data_plane_url="https://dp.test",
    ),
    trusted_hosts=[
        "api.test",
        "gw.test",
        "dp.test",
    ],  # the mock hosts (untrusted hosts are refused: no token leaves for them)
)
FAST = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=5.0, total_timeout=30.0)
NO_BREAKER = BreakerPolicy(enabled=False)  # every call reaches the failing route (no "circuit open" skips)
MODES = ("refused", "timeout", "401", "429", "500", "bad-json")


def chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through ``__cause__``/``__context__``."""
    seen: dict[int, BaseException] = {}
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen[id(item)] = item
        stack += [item.__cause__, item.__context__]
    return list(seen.values())


def render(exc: BaseException) -> str:
    """What an error tracker records of ``exc``: traceback with frame locals, and the whole chain."""
    parts = list(traceback.TracebackException(type(exc), exc, exc.__traceback__, capture_locals=True).format())
    for item in chain(exc):
        parts += [repr(item), str(item), repr(getattr(item, "__dict__", {})), repr(item.args)]
    return "".join(parts)


def assert_clean(exc: BaseException, where: str) -> None:
    text = render(exc)
    for token in TOKENS:
        assert token not in text, f"{where}: {token} in the rendered {type(exc).__name__}"
    assert MARK not in text, f"{where}: part of a token in the rendered {type(exc).__name__}"
    for item in chain(exc):
        # httpx keeps the request in _request; a scrubbed copy has none (and .request raises RuntimeError).
        assert getattr(item, "_request", None) is None, f"{where}: {type(item).__name__} holds its httpx.Request"


def failing(mode: str, seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if mode == "refused":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if mode == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if mode == "bad-json":
            return httpx.Response(200, content=b"<html>oops", headers={"content-type": "application/json"})
        headers = {"retry-after": "1"} if mode == "429" else {}
        body = {"success": False, "errors": [{"code": 10000, "message": f"HTTP {mode} from the mock"}]}
        return httpx.Response(int(mode), json=body, headers=headers)

    return handler


def sent_tokens(requests: list[httpx.Request]) -> set[str]:
    """The tokens the requests carried (so a test knows they were in play)."""
    found = set()
    for request in requests:
        for name in ("authorization", "cf-aig-authorization"):
            value = request.headers.get(name, "")
            found |= {t for t in TOKENS if t in value}
    return found


async def no_sleep(_seconds: float) -> None:
    return None


# -- KV: REST and the data plane ----------------------------------------------------------------------------


def kv_store(kind: str, client: httpx.AsyncClient, base: str) -> KVStore:
    backend: CloudflareKVBackend | DataPlaneKVBackend
    if kind == "rest":
        backend = CloudflareKVBackend(
            client,
            api_base_url=base,
            account_id=ACCOUNT,
            namespace_id="ns",
            api_token=SecretStr(API_TOKEN),
            budget=RequestBudget(),
        )
    else:
        backend = DataPlaneKVBackend(client, data_plane_url=base, binding="API_CACHE", token=DATA_PLANE_TOKEN)
    return KVStore(backend, binding="API_CACHE", timeout=5.0)


async def kv_failures(store: KVStore) -> list[BackendError]:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.get("k"),
        lambda: store.put("k", b"v", ttl=3600),
        lambda: store.get_many(["a", "b"]),
        lambda: store.list_page(),
    ]
    errors = []
    for call in calls:
        try:
            await call()
        except BackendError as exc:
            errors.append(exc)
    return errors


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["rest", "dataplane"])
async def test_kv_errors_carry_no_token(kind: str, mode: str) -> None:
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(failing(mode, seen))) as client:
        store = kv_store(kind, client, "https://api.test/client/v4" if kind == "rest" else "https://dp.test")
        errors = await kv_failures(store)
    assert sent_tokens(seen) == {API_TOKEN if kind == "rest" else DATA_PLANE_TOKEN}
    assert len(errors) >= (1 if mode in ("429", "bad-json") else 4)  # a 429 blocks the REST budget: skips
    for exc in errors:
        assert_clean(exc, f"kv {kind} {mode}")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["rest", "dataplane"])
async def test_kv_real_connection_refused_carries_no_token(kind: str) -> None:
    # A real socket error: the exception passes through httpcore's frames before it reaches the boundary.
    base = f"http://127.0.0.1:{closed_port()}"
    async with httpx.AsyncClient() as client:
        errors = await kv_failures(kv_store(kind, client, base + ("/client/v4" if kind == "rest" else "")))
    assert len(errors) == 4
    for exc in errors:
        assert "ConnectError" in str(exc)
        assert_clean(exc, f"kv {kind} refused")


# -- AI: the gateway, direct Workers AI, OpenAI ---------------------------------------------------------------


def ai_cache(mode: str, seen: list[httpx.Request], route: str, tmp_path: Path) -> DualCache:
    common: dict[str, Any] = {
        "api_token": API_TOKEN,
        "openai_api_key": OPENAI_KEY,
        "kv": lambda _ns: MemoryKVBackend(),
        "transport": httpx.MockTransport(failing(mode, seen)),
        "retry": FAST,
        "sleep": no_sleep,
        "write_behind": False,
        "data_dir": tmp_path,
        "breaker": NO_BREAKER,
    }
    if route == "direct":
        return DualCache(
            account_id=ACCOUNT,
            api_base_url="https://api.test/client/v4",
            openai_base_url="https://openai.test/v1",
            **common,
        )
    overrides = {
        op: {"direct_fallback": route == "gateway+direct"}
        for op in ("embeddings", "job_analysis", "spam_detection", "application_generation", "resume_parsing")
    }
    return DualCache.from_outputs(
        OUTPUTS,
        gateway_token=GATEWAY_TOKEN,
        policies=Policies.with_overrides(overrides),
        openai_base_url="https://openai.test/v1",
        **common,
    )


OPERATIONS: dict[str, Callable[[DualCache], Awaitable[Any]]] = {
    "embed": lambda c: c.embed("some text"),
    "embed_many": lambda c: c.embed_many(["one", "two"]),
    "analyze_job": lambda c: c.analyze_job(user_id="u1", job_id="j1", messages=MSGS),  # Workers AI, then OpenAI
    "detect_spam": lambda c: c.detect_spam(job_id="j1", messages=MSGS),
    "generate_application": lambda c: c.generate_application(messages=MSGS),  # OpenAI
    "parse_resume": lambda c: c.parse_resume(text="Jane Doe, Python engineer"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route", ["gateway", "gateway+direct", "direct"])
async def test_ai_errors_carry_no_token(route: str, mode: str, tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    raised: list[BaseException] = []
    async with ai_cache(mode, seen, route, tmp_path) as cache:
        for name, operation in OPERATIONS.items():
            with pytest.raises(BackendError) as info:
                await operation(cache)
            raised.append(info.value)
            assert_clean(info.value, f"{route} {mode} {name}")
    expected = {API_TOKEN, OPENAI_KEY} | ({GATEWAY_TOKEN} if route != "direct" else set())
    assert sent_tokens(seen) == expected
    assert len(raised) == len(OPERATIONS)


async def test_ai_real_connection_refused_carries_no_token(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    async with DualCache(
        account_id=ACCOUNT,
        api_token=API_TOKEN,
        openai_api_key=OPENAI_KEY,
        api_base_url=base + "/client/v4",
        openai_base_url=base + "/v1",
        kv=lambda _ns: MemoryKVBackend(),
        retry=FAST,
        sleep=no_sleep,
        write_behind=False,
        breaker=NO_BREAKER,
    ) as cache:
        for name, operation in OPERATIONS.items():
            with pytest.raises(BackendError, match="ConnectError") as info:
                await operation(cache)
            assert_clean(info.value, f"refused {name}")


# -- the emulator's faults -----------------------------------------------------------------------------------


@pytest.fixture
def emu(tmp_path: Path) -> Any:
    from dualcache.local import Emulator

    project = Path(__file__).resolve().parents[2]
    with Emulator(stack="dev", project_dir=project, data_dir=tmp_path / "emu", token=API_TOKEN) as emulator:
        yield emulator


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param({"gateway": {"error_rate": 1.0, "status": 503}, "upstream": {"error_rate": 1.0, "status": 500}}),
        pytest.param({"gateway": {"error_rate": 1.0, "status": 429, "retry_after": 1}}, id="gateway-429"),
        pytest.param({"upstream": {"error_rate": 1.0, "status": 401}}, id="upstream-401"),
    ],
)
async def test_emulator_faults_carry_no_token(emu: Any, faults: dict[str, Any]) -> None:
    emu.control.set_faults(faults)
    async with DualCache.from_outputs(
        emu.outputs,
        api_token=API_TOKEN,
        openai_api_key=OPENAI_KEY,
        data_plane_token=emu.data_plane_token,
        retry=FAST,
        sleep=no_sleep,
        write_behind=False,
        breaker=NO_BREAKER,
    ) as cache:
        for name, operation in OPERATIONS.items():
            with pytest.raises(BackendError) as info:
                await operation(cache)
            assert_clean(info.value, f"emulator {faults} {name}")


async def test_emulator_kv_faults_and_wrong_token_carry_no_token(emu: Any) -> None:
    async with httpx.AsyncClient() as client:
        wrong = DataPlaneKVBackend(
            client, data_plane_url=emu.outputs.data_plane_url, binding="API_CACHE", token=OPENAI_KEY
        )
        errors = await kv_failures(KVStore(wrong, binding="API_CACHE"))
        assert len(errors) == 4 and all(e.status_code == 401 for e in errors)
        emu.control.set_faults({"kv": {"error_rate": 1.0, "status": 503}})
        rest = kv_store("rest", client, emu.outputs.api_base_url)
        errors += await kv_failures(rest)
    assert len(errors) == 8
    for exc in errors:
        assert_clean(exc, "emulator kv")


# -- the helpers ---------------------------------------------------------------------------------------------


def test_secret_headers_repr_masks_credentials() -> None:
    headers = auth_headers(SecretStr(API_TOKEN), extra={"content-type": "application/json"})
    headers |= auth_headers(SecretStr(GATEWAY_TOKEN), header="cf-aig-authorization")
    assert isinstance(headers, SecretHeaders)
    assert headers["Authorization"] == f"Bearer {API_TOKEN}"  # what httpx sends
    assert headers["cf-aig-authorization"] == f"Bearer {GATEWAY_TOKEN}"
    for text in (repr(headers), str(headers), repr({"h": headers})):
        assert MARK not in text and "application/json" in text
    assert auth_headers(None) == {} and auth_headers(SecretStr("")) == {}


def test_scrubbed_keeps_type_and_drops_request() -> None:
    request = httpx.Request(
        "GET", "https://user:pw-5ecr3t@api.test/x", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    original = httpx.ConnectError(f"failed for https://user:pw-5ecr3t@api.test/x Bearer {API_TOKEN}", request=request)
    copy = scrubbed(original)
    assert type(copy) is httpx.ConnectError
    assert MARK not in str(copy) and "api.test/x" in str(copy)
    with pytest.raises(RuntimeError):
        _ = copy.request  # type: ignore[attr-defined]
    assert copy.__traceback__ is None and copy.__cause__ is None and copy.__context__ is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("https://user:pw@host/x", "https://***@host/x", id="userinfo"),
        pytest.param("ftp://user:PW@x", "ftp://***@x", id="ftp"),
        pytest.param("https://host/x?a=b", "https://host/x?a=b", id="none"),
        pytest.param("https://tok@host", "https://***@host", id="user-only"),
    ],
)
def test_redact_url_masks_userinfo(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert redact_text(f"see {text} and Bearer abcdef123") == f"see {expected} and Bearer [redacted]"


async def test_kv_backend_keeps_token_secret() -> None:
    async with httpx.AsyncClient() as client:
        backend = DataPlaneKVBackend(
            client, data_plane_url="https://u:pw@dp.test", binding="API_CACHE", token=API_TOKEN
        )
        assert "pw@" not in repr(backend) and "***@dp.test" in repr(backend)
        # No attribute holds the raw token: only SecretStr values (whose repr is masked).
        assert all(API_TOKEN not in repr(v) for v in vars(backend).values())

"""Reading files that may be hostile: bounded reads, bounded JSON and YAML, short quotes, redacted URLs.

Every file the command line reads (``Pulumi.yaml``, ``Pulumi.<stack>.yaml``, an outputs file, a base
manifest, a snapshot) can come from a pull request, so each is read through this module:

* :func:`read_bounded` opens without blocking, refuses anything but a regular file (``/dev/zero``, a
  FIFO, a directory), and reads at most ``limit + 1`` bytes: a file over its limit fails before it is read.
* :func:`parse_json` refuses duplicate keys, ``NaN``/``Infinity``, nesting deeper than
  :data:`MAX_JSON_DEPTH` and more than :data:`MAX_JSON_CONTAINERS` objects and arrays, checked on the
  text before any Python object is built, so a ``RecursionError`` or ``MemoryError`` cannot happen.
* :func:`load_yaml` composes with a SafeLoader that counts (``dualcache._yaml``, imported on first use with
  PyYAML itself): nesting (:data:`MAX_YAML_DEPTH`), alias uses
  (:data:`MAX_YAML_ALIASES`), the size of the document with every alias expanded (:data:`MAX_YAML_NODES`,
  which stops an alias bomb before anything is expanded), scalar length (:data:`MAX_YAML_SCALAR_CHARS`)
  and duplicate keys (an error naming the key and both lines, as Pulumi's Go YAML reader does).
* :func:`quote` shows at most :data:`QUOTE_CHARS` characters of a value, and never a ``secure:`` value.
* :func:`redact_url` drops the ``user:password@`` of a URL before it goes into a message or a log line.

Every error is one line: a :class:`~dualcache.ConfigError` naming the file, and the line where one is known.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualcache._exceptions import ConfigError
from dualcache._redact import redact_url

if TYPE_CHECKING:
    import yaml

__all__ = [
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_DEPTH",
    "MAX_YAML_ALIASES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "MAX_YAML_SCALAR_CHARS",
    "QUOTE_CHARS",
    "STACK_FILE_MAX_BYTES",
    "load_yaml",
    "one_line",
    "parse_json",
    "quote",
    "read_bounded",
    "read_json_file",
    "read_text_file",
    "redact_url",
]

STACK_FILE_MAX_BYTES = 1024 * 1024
"""Largest ``Pulumi.yaml`` / ``Pulumi.<stack>.yaml`` read (1 MiB); the committed stack files are ~2 KB."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings and sequences in a YAML file; a stack file nests 5 levels."""
MAX_YAML_ALIASES = 64
"""Most alias uses (``*name``) in one YAML file. Anchors are allowed (Pulumi's YAML reader takes them)."""
MAX_YAML_NODES = 20_000
"""Most nodes of a YAML document counted with every alias expanded; a stack file has ~100. A 700-byte
alias bomb expands to hundreds of millions and is refused while it is composed, before any expansion."""
MAX_YAML_SCALAR_CHARS = 16 * 1024
"""Longest YAML scalar; stack-file values are ids, names, hostnames and paths (under 300 characters)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of objects and arrays in a JSON file; a plan manifest nests about 8 levels."""
MAX_JSON_CONTAINERS = 200_000
"""Most objects and arrays in a JSON file; a plan manifest has a few hundred."""
QUOTE_CHARS = 60
"""How much of a value an error message shows at most (then ``…``)."""

_SECRET_MARK = "[secure value not shown]"
# Strings of a JSON text, so the structure can be checked without them ("[" inside a string is not one).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# The authority's userinfo: after an optional `scheme:` and `//`, everything up to the last '@' before a path.


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with runs of whitespace (newlines too) as one space, cut at ``limit`` characters (then ``…``)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _has_secure(value: Any, depth: int = 0) -> bool:
    if depth > MAX_JSON_DEPTH:
        return False
    if isinstance(value, Mapping):
        return "secure" in value or any(_has_secure(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_secure(v, depth + 1) for v in value)
    return False


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A short ``repr`` of ``value`` for an error message.

    At most ``limit`` characters of it, then ``…`` and the full length; a value holding a ``secure:``
    entry (a Pulumi secret, even nested) is not shown at all.
    """
    if _has_secure(value):
        return _SECRET_MARK
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    if isinstance(value, Mapping | list | tuple) and len(value) > 50:
        return f"<{type(value).__name__} of {len(value):,} items>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def read_bounded(path: str | os.PathLike[str], *, limit: int, what: str) -> bytes:
    """Read a regular file of at most ``limit`` bytes.

    The file is opened without blocking (a FIFO without a writer does not hang) and refused unless it is
    a regular file; at most ``limit + 1`` bytes are ever read, so ``/dev/zero`` or a growing file cannot
    fill memory.

    Raises:
        ConfigError: missing, unreadable, not a regular file, or over ``limit``; the message names ``what``.
    """
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{what} {name!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {name!r} is not a regular file; give the path of a file")
        if info.st_size > limit:
            raise ConfigError(f"{what} {name!r} is {info.st_size:,} bytes; the limit is {limit:,} bytes")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise ConfigError(f"{what} {name!r} is over the limit of {limit:,} bytes")
    return data


def _decode(data: bytes, *, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{source} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line}) "
            "cannot be decoded; save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def read_text_file(path: str | os.PathLike[str], *, limit: int, what: str) -> str:
    """:func:`read_bounded`, decoded as UTF-8 (a bad byte is a one-line error naming its offset and line)."""
    return _decode(read_bounded(path, limit=limit, what=what), source=f"{what} {str(path)!r}")


# -- JSON ---------------------------------------------------------------------------------------------------


def _no_duplicates(source: str) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConfigError(f"{source}: duplicate key {quote(key)} in a JSON object; each key may appear once")
            result[key] = value
        return result

    return hook


def _refuse_constant(source: str) -> Any:
    def hook(name: str) -> Any:
        raise ConfigError(f"{source}: {name} is not a JSON number; use a finite number")

    return hook


def _check_json_shape(text: str, *, source: str) -> None:
    structure = _JSON_STRING.sub('""', text)
    containers = structure.count("{") + structure.count("[")
    if containers > MAX_JSON_CONTAINERS:
        raise ConfigError(f"{source} holds {containers:,} objects and arrays; the limit is {MAX_JSON_CONTAINERS:,}")
    depth = deepest = 0
    for char in _NOT_BRACKET.sub("", structure):
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    raise ConfigError(f"{source} nests deeper than {MAX_JSON_DEPTH} levels of objects and arrays")
        else:
            depth -= 1


def parse_json(text: str, *, source: str) -> Any:
    """Parse JSON text from an untrusted source (see the module docstring for what is refused).

    Raises:
        ConfigError: not JSON, a duplicate key, ``NaN``/``Infinity``, or over a structural limit; one line.
    """
    _check_json_shape(text, source=source)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(source), parse_constant=_refuse_constant(source))
    except ConfigError:
        raise
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:  # not expected after the depth check; never a traceback
        raise ConfigError(f"{source} nests too deeply to be read") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"{source} is not usable JSON: {one_line(str(exc), 120)}") from None


def read_json_file(path: str | os.PathLike[str], *, limit: int, what: str) -> Any:
    """Read and parse a JSON file with :func:`read_text_file` and :func:`parse_json`."""
    source = f"{what} {str(path)!r}"
    return parse_json(read_text_file(path, limit=limit, what=what), source=source)


# -- YAML ---------------------------------------------------------------------------------------------------


def _yaml_problem(exc: yaml.YAMLError) -> str:
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or type(exc).__name__
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return one_line(f"{problem}{where}", 200)
    return one_line(str(exc), 200)


def load_yaml(text: str, *, source: str) -> Any:
    """Load one YAML document from an untrusted source with :class:`BoundedLoader`.

    Raises:
        ConfigError: not YAML, or over a limit, or a duplicate key; one line naming ``source`` and the line.
    """
    import yaml  # here, not at the top: the runtime reads JSON outputs and never pays for a YAML parser

    from dualcache._yaml import BoundedLoader

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:  # not expected with the depth limit; never a traceback
        raise ConfigError(f"{source} nests too deeply to be read") from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path, *, limit: int = STACK_FILE_MAX_BYTES, what: str = "YAML file") -> Any:
    """Read a YAML file with :func:`read_text_file` and :func:`load_yaml`."""
    text = read_text_file(path, limit=limit, what=what)
    return load_yaml(text, source=str(path))

"""Reading Kubernetes manifests from YAML or JSON files, safely.

``archipel apply -f`` (and ``delete``, ``schedule --simulate``, ``render``) read files
that anyone may have written. A plain ``yaml.safe_load_all`` lets such a file crash or
stall the CLI: an alias bomb expands to billions of values, deep nesting exhausts the
recursion limit, and dates, ``!!binary`` or ``!!set`` values are not JSON, which is all
a Kubernetes manifest may hold. This module reads a file into JSON-compatible
documents, or refuses it with one :class:`ManifestError` whose message names the file,
the document and the field or line.

Every bound is applied while parsing, before anything is expanded:

- a file is read up to :data:`~archipel.limits.MAX_MANIFEST_FILE_BYTES`;
- nesting stops at :data:`~archipel.limits.MAX_MANIFEST_DEPTH`, counting what aliases
  bring in;
- a document holds at most :data:`~archipel.limits.MAX_MANIFEST_NODES` values once its
  aliases are expanded, so an alias bomb is refused after a few hundred events;
- an alias may not refer to a value that contains it.

Values follow what ``kubectl`` (sigs.k8s.io/yaml) makes of YAML: an unquoted date stays
the string it was written as; keys must be strings and appear once per mapping; tags
other than the JSON ones are refused.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from archipel import limits

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (f"{_TAG}{t}" for t in ("str", "int", "float", "bool", "null"))
SEQ, MAP, MERGE, TIMESTAMP, VALUE = (
    f"{_TAG}{t}" for t in ("seq", "map", "merge", "timestamp", "value")
)

# What YAML itself allows in a stream (the YAML 1.1 printable set, as PyYAML's reader
# checks it): checked up front so that the error can name the line.
_NOT_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
# PyYAML's pure-Python scanner turns "\ud800" into a lone surrogate, which no encoder
# (protobuf, JSON to the server) accepts afterwards.
_SURROGATE = re.compile("[\ud800-\udfff]")
# A column-0 "---" starts a document; used only to say which document a byte that
# cannot be decoded belongs to, since the parser never gets to see it.
_DOCUMENT_START = re.compile(r"^---(?:[ \t]|$)", re.MULTILINE)
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Python refuses to convert longer digit strings to int (sys.int_info); a number this
# long is no Kubernetes field's value anyway.
_MAX_INT_CHARS = 4300
_TAG_ADVICE = {
    f"{_TAG}binary": "use a base64 string, as a Secret's data holds",
    f"{_TAG}set": "use a list",
    f"{_TAG}omap": "use a mapping",
    f"{_TAG}pairs": "use a mapping or a list",
}

Manifest = tuple[int, dict[str, Any]]
"""A document's number in its file (from 1, counting empty documents) and its content."""


class ManifestError(ValueError):
    """A file, or a document in it, that is not a manifest; the message is one line."""

    def __init__(self, origin: str, document: int | None, where: str, problem: str) -> None:
        self.origin = origin
        self.document = document
        self.where = where
        self.problem = problem
        located = f"{origin} (document {document})" if document is not None else origin
        super().__init__(f"{located}: {where}: {problem}" if where else f"{located}: {problem}")


class _Problem(Exception):
    """Raised inside the loader; :func:`load_manifests` adds the file and document."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def _line(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return f"line {mark.line + 1}" if mark is not None else ""


# -- reading ----------------------------------------------------------------------------


def read_file(path: Path) -> bytes:
    """A file's bytes, refused without reading it all when it is over the size bound."""
    try:
        with path.open("rb") as stream:
            return read_stream(stream, str(path))
    except OSError as error:
        raise ManifestError(str(path), None, "", error.strerror or str(error)) from error


def read_stream(stream: IO[bytes], origin: str) -> bytes:
    """At most :data:`~archipel.limits.MAX_MANIFEST_FILE_BYTES` of ``stream``, or an error."""
    # One byte more than allowed tells a file at the bound from one over it; a device or
    # a pipe that never ends is read no further.
    data = stream.read(limits.MAX_MANIFEST_FILE_BYTES + 1)
    if len(data) > limits.MAX_MANIFEST_FILE_BYTES:
        mib = limits.MAX_MANIFEST_FILE_BYTES // (1024 * 1024)
        raise ManifestError(origin, None, "", f"larger than {mib} MiB: not read")
    return data


def _decode(data: bytes, origin: str) -> str:
    """Text of a YAML stream: UTF-8, or UTF-16 with a byte order mark, as YAML allows."""
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    encoding = "utf-16" if utf16 else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        before = data[: error.start].decode(encoding, errors="replace")
        byte = data[error.start : error.start + 1].hex()
        raise ManifestError(
            origin,
            _document_at(before),
            f"line {before.count(chr(10)) + 1}",
            f"not valid {'UTF-16' if utf16 else 'UTF-8'} (byte 0x{byte} at offset {error.start})",
        ) from error
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        before = text[: bad.start()]
        raise ManifestError(
            origin,
            _document_at(before),
            f"line {before.count(chr(10)) + 1}",
            f"character U+{ord(bad.group()):04X} is not allowed in YAML",
        )
    return text


def _document_at(before: str) -> int:
    """Which document text ending with ``before`` is in, by its ``---`` lines."""
    starts = [match.start() for match in _DOCUMENT_START.finditer(before)]
    # Content before the first "---" is a document of its own.
    head = before[: starts[0]] if starts else before
    implicit = any(
        line.strip() and not line.lstrip().startswith(("#", "%")) for line in head.splitlines()
    )
    return max(1, len(starts) + implicit)


# -- the loader -------------------------------------------------------------------------


class _GuardedComposer(Composer):
    """PyYAML's composer, bounding depth and alias expansion as it goes.

    Aliases are not copied by PyYAML (they share one node), but everything downstream
    (JSON, protobuf) expands them, so each document is measured as if expanded: the
    size and height of every anchored node is recorded when it closes, and an alias adds
    them where it appears.
    """

    # Provided by the parser (PyYAML's or libyaml's) it is mixed with.
    peek_event: Callable[[], Any]

    def __init__(self) -> None:
        super().__init__()
        self._start_document()

    def _start_document(self) -> None:
        self._depth = 0  # of the node being composed; the root is 1
        self._reach = 0  # deepest level reached so far, aliases expanded
        self._nodes = 0  # values composed so far, aliases expanded
        self._shapes: dict[int, tuple[int, int]] = {}  # anchored node -> (size, height)

    def compose_document(self) -> Node | None:
        self._start_document()
        return super().compose_document()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            return self._compose_alias(event, parent, index)
        self._depth += 1
        if self._depth > limits.MAX_MANIFEST_DEPTH:
            raise _Problem(_line(event), f"nested deeper than {limits.MAX_MANIFEST_DEPTH} levels")
        reach, nodes = self._reach, self._nodes
        self._reach = max(self._reach, self._depth)
        node = super().compose_node(parent, index)
        self._count(1, event)
        if event.anchor is not None and node is not None:
            self._shapes[id(node)] = (self._nodes - nodes, self._reach - self._depth + 1)
        self._reach = max(reach, self._reach)
        self._depth -= 1
        return node

    def _compose_alias(self, event: AliasEvent, parent: Node | None, index: Any) -> Node | None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return super().compose_node(parent, index)  # PyYAML's "undefined alias" error
        shape = self._shapes.get(id(target))
        if shape is None:
            # The anchored node is still open: it would contain itself, endlessly.
            raise _Problem(
                _line(event), f"alias *{event.anchor} refers to a value that contains it"
            )
        size, height = shape
        reach = self._depth + height
        if reach > limits.MAX_MANIFEST_DEPTH:
            raise _Problem(
                _line(event),
                f"alias *{event.anchor} nests the document deeper than "
                f"{limits.MAX_MANIFEST_DEPTH} levels",
            )
        self._reach = max(self._reach, reach)
        self._count(size, event)
        return super().compose_node(parent, index)

    def _count(self, size: int, event: Any) -> None:
        self._nodes += size
        if self._nodes > limits.MAX_MANIFEST_NODES:
            raise _Problem(
                _line(event),
                f"more than {limits.MAX_MANIFEST_NODES} values once aliases are expanded",
            )


def _text(loader: Any, node: ScalarNode) -> str:
    text: str = loader.construct_scalar(node)
    return text


class _Constructor(SafeConstructor):
    """SafeConstructor limited to JSON's types; dates stay the text they were."""

    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        tag: constructor
        for tag, constructor in SafeConstructor.yaml_constructors.items()
        if tag in (STR, INT, FLOAT, BOOL, NULL, SEQ, MAP)
    }


# As sigs.k8s.io/yaml does: a date is the string written, "2024-01-01". A plain "=" is
# YAML 1.1's "value" type, which nothing uses; it is the string "=" elsewhere.
_Constructor.add_constructor(TIMESTAMP, _text)
_Constructor.add_constructor(VALUE, _text)


class _PythonLoader(Reader, Scanner, Parser, _GuardedComposer, _Constructor, Resolver):
    """All in Python: used when PyYAML was built without libyaml."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _GuardedComposer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)


_Loader: type[Any] = _PythonLoader
try:
    from yaml._yaml import CParser

    class _LibyamlLoader(_GuardedComposer, CParser, _Constructor, Resolver):
        """libyaml's parser (about six times faster) under the guarded composer."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _GuardedComposer.__init__(self)
            _Constructor.__init__(self)
            Resolver.__init__(self)

    _Loader = _LibyamlLoader
except ImportError:  # pragma: no cover - PyYAML without libyaml
    pass


# -- checking what was composed --------------------------------------------------------

_Path = tuple[Any, str] | None  # (parent path, segment), built only as deep as needed


def _render(path: _Path) -> str:
    segments: list[str] = []
    while path is not None:
        path, segment = path
        segments.append(segment)
    return "".join(reversed(segments)).lstrip(".")


def _segment(key: str) -> str:
    return f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{limits.echo(key)}]"


def _where(path: _Path, node: Node) -> str:
    field = _render(path)
    return f"{field} ({_line(node)})" if field else _line(node)


def _short(text: str) -> str:
    """``text`` cut to :data:`~archipel.limits.MAX_ECHO_CHARS`, for error messages."""
    if len(text) <= limits.MAX_ECHO_CHARS:
        return text
    return f"{text[: limits.MAX_ECHO_CHARS]}... ({len(text)} characters)"


def _tag_name(tag: str) -> str:
    return f"!!{tag.removeprefix(_TAG)}" if tag.startswith(_TAG) else tag


def _refuse_tag(path: _Path, node: Node) -> _Problem:
    advice = _TAG_ADVICE.get(node.tag, "a manifest holds only JSON values")
    return _Problem(_where(path, node), f"{_tag_name(node.tag)} values are not JSON: {advice}")


_KEY_TYPES = {INT: "an integer", FLOAT: "a number", BOOL: "a boolean", NULL: "null"}


def _check(loader: _Constructor, root: Node) -> None:
    """Refuse what would not be JSON, naming the field and line; iterative, each node once."""
    seen: set[int] = set()
    pending: list[tuple[Node, _Path]] = [(root, None)]
    while pending:
        node, path = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            _check_scalar(loader, node, path)
        elif isinstance(node, SequenceNode):
            if node.tag != SEQ:
                raise _refuse_tag(path, node)
            pending.extend((item, (path, f"[{i}]")) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            if node.tag != MAP:
                raise _refuse_tag(path, node)
            pending.extend(_check_keys(node, path))


def _check_keys(node: MappingNode, path: _Path) -> Iterator[tuple[Node, _Path]]:
    lines: dict[str, int] = {}
    for key, value in node.value:
        if key.tag == MERGE:
            # "<<: *defaults": kubectl merges too; the merged mappings are checked where
            # they are written, and flatten_mapping wants mappings.
            merged = value.value if isinstance(value, SequenceNode) else [value]
            if not all(isinstance(item, MappingNode) for item in merged):
                raise _Problem(_where(path, value), "<< merges only mappings")
            yield value, path
            continue
        if not isinstance(key, ScalarNode) or key.tag not in (STR, VALUE):
            if isinstance(key, ScalarNode) and key.tag == NULL:
                what = "key null is not a string: keys must be strings (give it a name)"
            elif isinstance(key, ScalarNode):
                text = _short(key.value)
                kind = _KEY_TYPES.get(key.tag, _tag_name(key.tag))
                what = f'key {text} is {kind}: keys must be strings (quote it: "{text}")'
            else:
                shape = "a list" if isinstance(key, SequenceNode) else "a mapping"
                what = f"key is {shape}: keys must be strings"
            raise _Problem(_where(path, key), what)
        _check_unicode(key, path)
        child = (path, _segment(key.value))
        first = lines.get(key.value)
        if first is not None:
            raise _Problem(_where(child, key), f"duplicate key: first on line {first}")
        lines[key.value] = key.start_mark.line + 1
        yield value, child


def _check_unicode(node: ScalarNode, path: _Path) -> None:
    if not _SURROGATE.search(node.value):
        return
    # JSON writes an emoji as two escapes ("\\ud83d\\ude00"), which PyYAML's scanner
    # leaves as two halves; joined, they are the character meant. A half alone is not
    # text at all.
    try:
        node.value = node.value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        raise _Problem(_where(path, node), "not valid Unicode (a lone surrogate escape)") from None


def _check_scalar(loader: _Constructor, node: ScalarNode, path: _Path) -> None:
    if node.tag in (STR, VALUE, TIMESTAMP):
        _check_unicode(node, path)
        return
    if node.tag == NULL:
        return
    if node.tag not in (INT, FLOAT, BOOL):
        raise _refuse_tag(path, node)
    if node.tag == INT and len(node.value) > _MAX_INT_CHARS:
        raise _Problem(_where(path, node), f"integer longer than {_MAX_INT_CHARS} digits")
    # Implicit scalars match PyYAML's patterns, but an explicit tag ("!!int x") can put
    # any text here, which its constructor cannot convert.
    constructor = {INT: loader.construct_yaml_int, FLOAT: loader.construct_yaml_float}.get(
        node.tag, loader.construct_yaml_bool
    )
    try:
        value = constructor(node)
    except (ValueError, KeyError):
        raise _Problem(
            _where(path, node), f"{_short(node.value)!r} is not {_KEY_TYPES[node.tag]}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _Problem(_where(path, node), f"{node.value} is not a JSON number")


# -- documents ---------------------------------------------------------------------------


def load_manifests(data: bytes | str, origin: str) -> list[Manifest]:
    """Every non-empty document of a YAML or JSON stream, each a manifest's mapping.

    Raises :class:`ManifestError` for anything else: not YAML, over a bound, not JSON,
    not a mapping, or without a string ``apiVersion``, ``kind`` and ``metadata.name``.
    """
    return load_documents(data, origin, check=_manifest)


def load_documents(
    data: bytes | str, origin: str, *, check: Callable[[Any], Any] | None = None
) -> list[tuple[int, Any]]:
    """Every non-empty document of a YAML or JSON stream, as JSON values (numbered from
    1, counting empty documents), under the same bounds as manifests: for the other
    files the CLI reads (clusters, earlier results, its config).

    ``check`` may refuse a document by raising :class:`_Problem` (see :func:`problem`);
    what it returns is kept. Raises :class:`ManifestError`.
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ManifestError(origin, None, "", "not valid Unicode") from error
    if len(data) > limits.MAX_MANIFEST_FILE_BYTES:
        mib = limits.MAX_MANIFEST_FILE_BYTES // (1024 * 1024)
        raise ManifestError(origin, None, "", f"larger than {mib} MiB: not read")
    loader = _Loader(_decode(data, origin))
    documents: list[tuple[int, Any]] = []
    number = 0
    try:
        while loader.check_node():
            number += 1
            node = loader.get_node()
            if node is None:
                continue
            _check(loader, node)
            document = loader.construct_document(node)
            if document is not None:
                documents.append((number, check(document) if check else document))
    except _Problem as found:
        raise ManifestError(origin, max(number, 1), found.where, found.problem) from None
    except yaml.YAMLError as error:
        where, problem = _yaml_problem(error)
        raise ManifestError(origin, max(number, 1), where, problem) from None
    finally:
        loader.dispose()
    return documents


def problem(where: str, what: str) -> Exception:
    """The exception a ``check`` of :func:`load_documents` raises to refuse a document:
    the error then names the file, the document, ``where`` (a field path) and ``what``."""
    return _Problem(where, what)


def _yaml_problem(error: yaml.YAMLError) -> tuple[str, str]:
    """PyYAML's error as (line, one-line problem)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        if error.context and error.problem:
            problem = f"{error.context}: {error.problem}"
        return _line(mark), " ".join(f"invalid YAML: {problem}".split())
    return "", " ".join(f"invalid YAML: {error}".split())


def _manifest(document: Any) -> dict[str, Any]:
    """The document, if it has what every Kubernetes object has; raises _Problem."""
    if not isinstance(document, dict):
        raise _Problem("", "a document must be a mapping with apiVersion and kind")
    _required_string(document, "apiVersion", "apiVersion")
    _required_string(document, "kind", "kind")
    metadata = document.get("metadata")
    if metadata is None:
        raise _Problem("metadata.name", "required")
    if not isinstance(metadata, dict):
        raise _Problem("metadata", f"must be a mapping, not {_type(metadata)}")
    _required_string(metadata, "name", "metadata.name")
    if metadata.get("namespace") is not None:
        _must_be_string("metadata.namespace", metadata["namespace"])
    for field in ("labels", "annotations"):
        values = metadata.get(field)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise _Problem(f"metadata.{field}", f"must be a mapping, not {_type(values)}")
        for key, value in values.items():
            _must_be_string(f"metadata.{field}{_segment(key)}", value)
    return document


def _required_string(mapping: dict[str, Any], key: str, field: str) -> None:
    if mapping.get(key) is None or mapping[key] == "":
        raise _Problem(field, "required")
    _must_be_string(field, mapping[key])


def _must_be_string(field: str, value: Any) -> None:
    if not isinstance(value, str):
        quoted = f' (quote it: "{value}")' if isinstance(value, int | float) else ""
        raise _Problem(field, f"must be a string, not {_type(value)}{quoted}")


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {limits.echo(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"

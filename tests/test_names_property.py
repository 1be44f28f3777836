"""Property tests (hypothesis) of name and path validation: dfs/names.py and the gateway's URL paths."""

from __future__ import annotations

import errno
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.errors import DfsError
from dfs.gateway.paths import fs_path_of
from dfs.names import CLUSTER_PATH_MAX, NAME_MAX, split_path, validate_name

#: No deadline: the machine is shared, and a slow example is no failure here.
SETTINGS = settings(max_examples=200, deadline=None)

#: Any code point, with lone surrogates and '/', NUL, '.' often (hypothesis rarely draws them by itself).
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
ESCAPES = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF, categories=["Cs"])
ANY_CHAR = st.characters(codec=None) | SURROGATES | ESCAPES | st.sampled_from(["/", "\0", ".", "é"])


def escaped_everywhere(raw: bytes) -> str:
    """Every byte >= 0x80 as its surrogate escape: a second spelling of `raw` where it is valid UTF-8."""
    return "".join(chr(0xDC00 + b) if b >= 0x80 else chr(b) for b in raw)


#: Lists joined rather than st.text: text() would merge the alphabets and all but drop the surrogates.
ANY_TEXT = st.lists(ANY_CHAR, max_size=300).map("".join) \
    | st.text(max_size=80).map(lambda t: escaped_everywhere(t.encode()))


def no_slash_or_nul(raw: bytes) -> bytes:
    return raw.replace(b"/", b"x").replace(b"\0", b"y")


def name_bytes() -> st.SearchStrategy[bytes]:
    """What the kernel allows as a name: 1..255 bytes, no '/' or NUL, not '.' or '..'."""
    return st.binary(min_size=1, max_size=NAME_MAX).map(no_slash_or_nul).filter(lambda b: b not in (b".", b".."))


def as_name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # how FUSE hands names over


#: Valid names that are UTF-8 text (what an HTTP URL can carry).
TEXT_NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60) \
    .filter(lambda n: "/" not in n and "\0" not in n and n not in (".", "..") and len(n.encode()) <= NAME_MAX)


def refused(call, *args: object) -> int:
    with pytest.raises(DfsError) as caught:
        call(*args)
    return caught.value.errno


# -- validate_name ----------------------------------------------------------------------------------------------

@SETTINGS
@given(name_bytes())
def test_every_kernel_name_is_accepted(raw: bytes) -> None:
    name = as_name(raw)
    assert validate_name(name) == name


@SETTINGS
@given(st.binary(min_size=NAME_MAX + 1, max_size=2 * NAME_MAX).map(no_slash_or_nul))
def test_names_over_255_bytes_are_too_long(raw: bytes) -> None:
    assert refused(validate_name, as_name(raw)) == errno.ENAMETOOLONG


@SETTINGS
@given(name_bytes(), st.sampled_from(["/", "\0"]), st.integers(min_value=0))
def test_slash_and_nul_are_refused(raw: bytes, bad: str, where: int) -> None:
    name = as_name(raw)
    where %= len(name) + 1
    assert refused(validate_name, name[:where] + bad + name[where:]) == errno.EINVAL


@SETTINGS
@given(ANY_TEXT)
def test_exactly_the_valid_names_are_accepted(name: str) -> None:
    """Accepted iff `name` is the one spelling of 1..255 bytes without '/' and NUL, not '.' or '..'."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
        canonical = raw.decode("utf-8", "surrogateescape") == name
    except UnicodeEncodeError:  # a lone surrogate that escapes no byte
        raw, canonical = b"", False
    shape_ok = canonical and name not in ("", ".", "..") and "/" not in name and "\0" not in name
    if shape_ok and len(raw) <= NAME_MAX:
        assert validate_name(name) == name
    else:
        assert refused(validate_name, name) == (errno.ENAMETOOLONG if shape_ok else errno.EINVAL)


@SETTINGS
@given(st.sampled_from(["", ".", ".."]) | st.integers() | st.none() | st.binary(min_size=1))
def test_non_names(value: object) -> None:
    assert refused(validate_name, value) == errno.EINVAL


# -- split_path ---------------------------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(name_bytes().map(as_name), max_size=12), st.integers(1, 3), st.booleans())
def test_split_path_round_trips(names: list[str], slashes: int, trailing: bool) -> None:
    assert split_path("/" + "/".join(names)) == names
    sep = "/" * slashes
    assert split_path(sep + sep.join(names) + ("/" if trailing else "")) == names


@SETTINGS
@given(st.lists(TEXT_NAMES, max_size=6), st.sampled_from([".", ".."]), st.integers(min_value=0))
def test_split_path_refuses_dot_components(names: list[str], dots: str, where: int) -> None:
    where %= len(names) + 1
    parts = [*names[:where], dots, *names[where:]]
    assert refused(split_path, "/" + "/".join(parts)) == errno.EINVAL


@SETTINGS
@given(st.lists(TEXT_NAMES, max_size=6))
def test_split_path_wants_absolute_paths(names: list[str]) -> None:
    assert refused(split_path, "/".join(names)) == errno.EINVAL  # "" too
    assert split_path("/") == []


@SETTINGS
@given(st.integers(CLUSTER_PATH_MAX + 1, CLUSTER_PATH_MAX + 1000))
def test_split_path_refuses_over_long_paths(size: int) -> None:
    path = ("/" + "a" * 200) * (size // 201 + 1)
    assert refused(split_path, path[:size]) == errno.ENAMETOOLONG


@SETTINGS
@given(ANY_TEXT.map(lambda t: "/" + t))
def test_split_path_never_yields_an_unsafe_component(path: str) -> None:
    try:
        parts = split_path(path)
    except DfsError as err:
        assert err.errno in (errno.EINVAL, errno.ENAMETOOLONG)
        return
    for part in parts:
        assert validate_name(part) == part


# -- the gateway's URL paths ----------------------------------------------------------------------------------------

def url_of(names: list[str]) -> str:
    return "/fs/" + "/".join(quote(n, safe="") for n in names)


@SETTINGS
@given(st.lists(TEXT_NAMES, max_size=8), st.booleans())
def test_url_paths_decode_to_the_names(names: list[str], trailing: bool) -> None:
    target = url_of(names) + ("/" if trailing and names else "") + "?limit=5"
    assert fs_path_of(target) == "/" + "/".join(names)


#: Ways to spell '.', '..', a separator or NUL in one URL segment.
TRICKS = st.sampled_from([
    "..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2e", "%2E", "a%2fb", "a%2Fb", "%2f", "..%2f..", "%00", "a%00",
    "%2e%2e%2f%2e%2e",
])


@SETTINGS
@given(st.lists(TEXT_NAMES, max_size=4), TRICKS, st.lists(TEXT_NAMES, max_size=4))
def test_url_traversal_tricks_are_refused(before: list[str], trick: str, after: list[str]) -> None:
    target = url_of(before).rstrip("/") + "/" + trick + ("/" + url_of(after)[4:] if after else "")
    assert refused(fs_path_of, target) == errno.EINVAL


@SETTINGS
@given(st.lists(TEXT_NAMES, min_size=1, max_size=4), st.lists(TEXT_NAMES, min_size=1, max_size=4))
def test_empty_segments_are_refused(before: list[str], after: list[str]) -> None:
    assert refused(fs_path_of, url_of(before) + "//" + url_of(after)[4:]) == errno.EINVAL


@SETTINGS
@given(st.text(st.sampled_from(list("ab./\\%2eEfF0%")), max_size=40))
def test_url_paths_never_escape(tail: str) -> None:
    """Whatever the client sends, the result is a clean absolute path of valid names (or a 400)."""
    try:
        path = fs_path_of("/fs/" + tail)
    except DfsError as err:
        assert err.errno in (errno.EINVAL, errno.ENAMETOOLONG)
        return
    assert path.startswith("/") and "//" not in path
    for part in split_path(path):
        assert part not in (".", "..") and validate_name(part) == part


def test_backslashes_are_plain_characters() -> None:
    """Backslash is not a separator on the cluster: "a\\..\\b" is one (odd) name, never a climb."""
    assert fs_path_of("/fs/a%5C..%5Cb") == "/a\\..\\b"
    assert fs_path_of("/fs/a\\..\\b") == "/a\\..\\b"

"""URL checks, line-by-line reading of URL files and templates."""

from __future__ import annotations

import io

import pytest

from fetchq.urls import (
    MAX_URL_LENGTH,
    Rejected,
    argument_urls,
    check_template,
    read_urls,
    template_urls,
    url_problem,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "https://example.com",
        "HTTPS://Example.COM/path",
        "http://example.com:8080/a/b?q=1&r=2#frag",
        "http://h:1/",
        "http://h:65535/",
        "http://user:pw@example.com/",
        "http://[::1]:8080/",
        "http://bücher.example/straße?q=ü",
        "http://xn--bcher-kva.example/",
        "https://example.com/%E4%B8%AD%E6%96%87?q=%20",
        "http://h/" + "a" * (MAX_URL_LENGTH - len("http://h/")),
    ],
)
def test_url_problem_accepts_fetchable_urls(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("example.com/path", "not a URL"),
        ("", "not a URL"),
        ("/just/a/path", "not a URL"),
        ("ftp://example.com/file", "unsupported scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
        ("http:///path", "no host"),
        ("http://", "no host"),
        ("http://:80/", "no host"),
        ("http://h:99999/", "malformed URL"),
        ("http://h:port/", "malformed URL"),
        ("http://h:0/", "port 0"),
        ("http://[::1/", "malformed URL"),
        ("http://h/a b", "column 11"),
        (" http://h/", "column 1"),
        ("http://h/\tx", "control character"),
        ("http://h/\x00", "control character"),
        ("http://h/\x7f", "control character"),
        ("http://h/\r\n", "control character"),
        ("http://h/a\u00a0b", "(U+00A0) at column 11"),
        ("http://h/a\u2028b", "(U+2028) at column 11"),
        ("http://h/a\u2029b", "(U+2029) at column 11"),
        ("http://h/a\u3000b", "(U+3000) at column 11"),
        ("http://h/\u200bx", "(U+200B) at column 10"),
        ("http://h/\u0085x", "(U+0085) at column 10"),
        ("http://ü/\u202ex", "(U+202E) at column 10"),
        ("http://ü/\u00a0 x", "(U+00A0) at column 10"),
        ("http://h/" + "a" * MAX_URL_LENGTH, "longer than 8192"),
    ],
)
def test_url_problem_rejects_with_a_reason(url: str, reason: str) -> None:
    problem = url_problem(url)
    assert problem is not None
    assert reason in problem


def test_argument_urls_numbers_arguments() -> None:
    items = list(argument_urls(["http://h/1", "nope", "http://h/3"]))
    assert items[0] == "http://h/1"
    assert isinstance(items[1], Rejected)
    assert (items[1].source, items[1].line) == ("argument", 2)
    assert items[2] == "http://h/3"


def read(data: bytes) -> list[str | Rejected]:
    return list(read_urls(io.BytesIO(data), "urls.txt"))


def test_read_urls_counts_lines_across_blanks_and_comments() -> None:
    data = b"# header\n\nhttp://h/1\n   \n# http://h/commented\nnot-a-url\n\thttp://h/2  \n"
    items = read(data)
    assert items[0] == "http://h/1"
    bad = items[1]
    assert isinstance(bad, Rejected)
    assert bad.line == 6
    assert bad.source == "urls.txt"
    assert str(bad).startswith("urls.txt:6: not a URL")
    assert items[2] == "http://h/2"
    assert len(items) == 3


def test_read_urls_accepts_crlf_line_endings() -> None:
    assert read(b"http://h/1\r\nhttp://h/2\r\n\r\nhttp://h/3\r\n") == [
        "http://h/1",
        "http://h/2",
        "http://h/3",
    ]


def test_read_urls_rejects_invalid_utf8_and_reads_on() -> None:
    items = read(b"http://h/1\nhttp://h/\xff\xfe\nhttp://h/3\n")
    assert items[0] == "http://h/1"
    bad = items[1]
    assert isinstance(bad, Rejected)
    assert bad.line == 2
    assert "UTF-8" in bad.reason
    assert "byte 10" in bad.reason
    assert items[2] == "http://h/3"


def test_read_urls_accepts_utf8_urls() -> None:
    assert read("http://bücher.example/ü\n".encode()) == ["http://bücher.example/ü"]


def test_read_urls_rejects_a_huge_line_and_keeps_the_next_ones() -> None:
    huge = b"http://h/" + b"x" * (10 * 1024 * 1024)
    items = read(b"http://h/1\n" + huge + b"\nhttp://h/3\n\nhttp://h/5\n")
    assert items[0] == "http://h/1"
    bad = items[1]
    assert isinstance(bad, Rejected)
    assert bad.line == 2
    assert "longer than 8192" in bad.reason
    assert items[2:] == ["http://h/3", "http://h/5"]
    assert [getattr(item, "line", None) for item in items] == [None, 2, None, None]


def test_read_urls_line_limit_is_exact() -> None:
    longest = "http://h/" + "a" * (MAX_URL_LENGTH - len("http://h/"))
    assert read(longest.encode() + b"\r\n") == [longest]
    assert read(longest.encode()) == [longest]
    items = read(longest.encode() + b"ab\nhttp://h/2\n")
    assert isinstance(items[0], Rejected)
    assert items[0].line == 1
    assert items[1] == "http://h/2"


def test_read_urls_reads_a_final_line_without_newline() -> None:
    assert read(b"http://h/1\nhttp://h/2") == ["http://h/1", "http://h/2"]
    items = read(b"\n\nbad url")
    assert len(items) == 1
    assert isinstance(items[0], Rejected)
    assert items[0].line == 3


def test_read_urls_of_an_empty_stream_is_empty() -> None:
    assert read(b"") == []


def test_read_urls_rejects_nul_in_a_line() -> None:
    items = read(b"http://h/\x00x\nhttp://h/2\n")
    assert isinstance(items[0], Rejected)
    assert "control character" in items[0].reason
    assert items[1] == "http://h/2"


def test_template_urls_replaces_the_placeholder() -> None:
    assert list(template_urls("http://h/?q={i}", 3)) == [
        "http://h/?q=0",
        "http://h/?q=1",
        "http://h/?q=2",
    ]
    assert list(template_urls("http://h/{i}/{i}", 2, start=5)) == ["http://h/5/5", "http://h/6/6"]
    many = list(template_urls("http://h{i}.example/x", 1000))
    assert len(many) == 1000
    assert many[-1] == "http://h999.example/x"


def test_template_count_zero_gives_nothing() -> None:
    assert list(template_urls("http://h/{i}", 0)) == []


@pytest.mark.parametrize(
    ("template", "count", "message"),
    [
        ("http://h/", 3, "placeholder"),
        ("http://h/{j}", 3, "placeholder"),
        ("ftp://h/{i}", 3, "invalid URL"),
        ("http://h/{i} x", 3, "invalid URL"),
        ("http://h/{i}", -1, "zero or more"),
        ("http://h:{i}/", 3, "port 0"),
        ("http://h:6553{i}/", 10, "invalid URL"),
    ],
)
def test_bad_templates_raise_value_error(template: str, count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_template(template, count)
    with pytest.raises(ValueError, match=message):
        list(template_urls(template, count))


def test_port_placeholder_that_stays_in_range_works() -> None:
    assert list(template_urls("http://h:6553{i}/", 6))[-1] == "http://h:65535/"


def test_a_template_that_overflows_is_refused_before_any_url_is_made() -> None:
    """The last URL is checked before the first is made: nothing is sent of a job
    that could not be sent whole."""
    made = template_urls("http://h:6553{i}/", 10)
    with pytest.raises(ValueError, match=r"for i=9: malformed URL"):
        next(made)


def test_a_negative_first_number_is_refused() -> None:
    with pytest.raises(ValueError, match="zero or more"):
        check_template("http://h/{i}", 3, start=-1)

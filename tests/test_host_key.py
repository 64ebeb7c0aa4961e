"""One host, one key: every spelling of a site counts as that one site.

Politeness (per-host caps, delays, holds, robots.txt) and the report's target-host
rows count hosts by ``host_key``, and the robots.txt address is built from it.
"""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from fetchq.urls import _general_host_key, host_key, origin, url_problem


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://a.com/", "a.com:80"),
        ("http://A.com./", "a.com:80"),
        ("HTTP://WWW.A.COM/x", "www.a.com:80"),
        ("http://a.com:80/x", "a.com:80"),
        ("http://user:pw@a.com/", "a.com:80"),
        ("http://u@v@a.com/", "a.com:80"),  # the last @ ends the user info, as in urllib3
        ("http://bücher.example/", "xn--bcher-kva.example:80"),
        ("http://xn--bcher-kva.example/", "xn--bcher-kva.example:80"),
        ("http://BÜCHER.Example./", "xn--bcher-kva.example:80"),
        ("http://XN--BCHER-KVA.example/", "xn--bcher-kva.example:80"),
        ("http://bücher\u3002example/", "xn--bcher-kva.example:80"),  # an ideographic full stop
        ("http://straße.de/", "xn--strae-oqa.de:80"),  # IDNA 2008: ß is not ss
        ("https://a.com/", "a.com:443"),
        ("https://a.com:443/", "a.com:443"),
        ("https://a.com:80/", "a.com:80"),
        ("http://a.com:8080/", "a.com:8080"),
        ("http://a.com:08080/", "a.com:8080"),
        ("http://a.com:/", "a.com:80"),
        ("https://a.com:65535?q", "a.com:65535"),
        ("http://a.com?q=1", "a.com:80"),
        ("http://a.com#top", "a.com:80"),
        ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
        ("http://127.0.0.1.:8080/", "127.0.0.1:8080"),
        ("http://[::1]:8080/", "[::1]:8080"),
        ("http://[::1]/", "[::1]:80"),
        ("http://[0:0:0:0:0:0:0:1]/", "[::1]:80"),
        ("https://u:p@[2001:DB8::1]:8443/", "[2001:db8::1]:8443"),
        ("http:///x", ":80"),
        ("http://u@/", ":80"),
        ("http://:8080/", ":8080"),
        ("http://☃.net/", "☃.net:80"),  # IDNA refuses the snowman: its own text
        ("http://☃.NET./", "☃.net:80"),
        ("http://a_b.com/", "a_b.com:80"),
    ],
)
def test_each_spelling_of_a_host_has_one_key(url: str, key: str) -> None:
    assert host_key(url) == key


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://a.com/x", "http://a.com"),
        ("http://user:pw@A.com.:80/x?q", "http://a.com"),
        ("HTTPS://bücher.example:443/", "https://xn--bcher-kva.example"),
        ("https://a.com:8443/", "https://a.com:8443"),
        ("http://a.com:443/", "http://a.com:443"),
        ("http://u:p@[0::1]:8080/x", "http://[::1]:8080"),
    ],
)
def test_the_robots_address_is_the_normal_origin_without_user_info(url: str, address: str) -> None:
    assert origin(url) == address


_ASCII_LABEL = st.text(string.ascii_letters + string.digits + "-", min_size=1)
_LABEL = st.one_of(
    _ASCII_LABEL,
    # Case pairs that IDNA maps its own way (sharp s, dotted and dotless i, final
    # sigma), Cyrillic, CJK, a symbol IDNA refuses, a combining accent, a full stop.
    st.text(
        "aA\u00fc\u00dc\u00df\u1e9e\u0130\u0131\u03c3\u03a3\u03c2\u65e5\u672c"
        "\u043a\u0438\u0440\u2603e\u0301-0\u3002",
        min_size=1,
        max_size=12,
    ),
)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_IPV6 = st.ip_addresses(v=6).map(lambda address: f"[{address.exploded}]")
_HOST = st.one_of(
    st.tuples(st.one_of(_NAME, st.ip_addresses(v=4).map(str)), st.sampled_from(["", "."])).map(
        "".join
    ),
    _IPV6,
)


@st.composite
def _urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    user = draw(st.sampled_from(["", "u@", "user:pw@", "a@b@"]))
    host = draw(_HOST)
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda n: f":{n}")))
    path = draw(st.sampled_from(["", "/", "/x?q=1", "?q", "#f"]))
    url = f"{scheme}://{user}{host}{port}{path}"
    assume(url_problem(url) is None)
    return url


@given(_urls())
@example("http://☃.net/")
@example("http://\u0130.com/")  # dotted I, Kelvin sign, long s: a case-blind regex
@example("http://\u212a.com/")  # would take them for i, k and s
@example("http://\u017f.com/")
def test_the_key_of_a_url_made_from_a_key_is_that_key(url: str) -> None:
    key = host_key(url)
    assert host_key(f"http://{key}/x") == key
    assert host_key(origin(url) + "/robots.txt") == key


@given(_urls())
@example("http://a..b/")
@example("http://.a:81/")
@example("http://a.-:0081/")
@example("http://u@a.b/")
def test_the_quick_path_gives_the_general_parse_s_key(url: str) -> None:
    assert host_key(url) == _general_host_key(url)


@given(_urls(), st.sampled_from(["upper", "user", "dot", "port"]))
def test_another_spelling_of_the_same_url_has_the_same_key(url: str, change: str) -> None:
    scheme, _, rest = url.partition("://")
    authority = rest.split("/")[0].split("?")[0].split("#")[0]
    after = rest[len(authority) :]
    userinfo, at, hostport = authority.rpartition("@")
    host, port = hostport, ""
    if not hostport.endswith("]") and ":" in hostport:
        host, _, port = hostport.rpartition(":")
        port = ":" + port
    if change == "upper":
        assume(host.isascii())
        host = host.upper()
    elif change == "user":
        userinfo, at = "someone:secret", "@"
    elif change == "dot":
        assume(not host.endswith("]") and not host.endswith("."))
        host += "."
    elif change == "port":
        assume(not port)
        port = ":443" if scheme.lower() == "https" else ":80"
    other = f"{scheme}://{userinfo}{at}{host}{port}{after}"
    assert host_key(other) == host_key(url)


@given(st.ip_addresses(v=6))
def test_an_ipv6_address_keeps_its_brackets_whichever_way_it_is_written(
    address: ipaddress.IPv6Address,
) -> None:
    assert host_key(f"http://[{address.exploded.upper()}]:81/") == f"[{address.compressed}]:81"


@given(st.text())
def test_a_key_is_given_for_any_text_and_nothing_raises(text: str) -> None:
    assert isinstance(host_key(text), str)
    assert isinstance(host_key("http://" + text), str)
    assert isinstance(origin("https://" + text), str)

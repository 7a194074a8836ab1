"""The outbound-URL guard as tables: every hostile address refused with its reason, public
ones allowed, the allowlist opening internal ranges but never a metadata service."""

from __future__ import annotations

import ipaddress

import pytest

from kmsd.domain.access import parse_cidrs
from kmsd.domain.outbound import METADATA, check_url, classify, embedded_ipv4
from kmsd.errors import InvalidInput

# (address, words the reason must contain)
REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.8.9.10", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address refused, not bound to
    ("::", "unspecified"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("10.0.0.1", "RFC 1918"),
    ("172.16.5.4", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("fd12:3456::1", "unique local"),
    ("fc00::1", "unique local"),
    ("fec0::1", "site-local"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("100::1", "discard"),
    # cloud metadata, directly and wrapped
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "Alibaba"),
    ("169.254.170.2", "ECS"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("2002:a9fe:a9fe::1", "metadata"),
    # IPv4 written as IPv6: judged by the IPv4
    ("::ffff:127.0.0.1", "loopback address (127.0.0.1, embedded"),
    ("::ffff:7f00:1", "loopback address (127.0.0.1, embedded"),
    ("::127.0.0.1", "loopback address (127.0.0.1, embedded"),
    ("::ffff:10.0.0.1", "RFC 1918"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a00:1", "RFC 1918"),
    ("2002:7f00:1::", "loopback"),
    ("2002:c0a8:101::1", "RFC 1918"),
    ("64:ff9b:1::a00:1", "RFC 1918"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # the same public host, written as IPv6
    "64:ff9b::808:808",  # a public host through the well-known NAT64 prefix
    "2002:808:808::1",  # 6to4 of a public host
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_every_non_public_address_is_refused_with_its_reason(address: str, reason: str) -> None:
    found = classify(ipaddress.ip_address(address))
    assert found is not None, address
    assert reason in found, (address, found)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "cidrs"),
    [
        ("127.0.0.1", ["127.0.0.0/8"]),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"]),  # the IPv4 it reaches is allowed
        ("10.1.2.3", ["10.0.0.0/8"]),
        ("fd12::1", ["fd00::/8"]),
        ("100.64.0.9", ["100.64.0.0/10"]),
    ],
)
def test_the_allowlist_opens_internal_receivers(address: str, cidrs: list[str]) -> None:
    assert classify(ipaddress.ip_address(address), parse_cidrs(cidrs)) is None


@pytest.mark.parametrize("address", [*map(str, METADATA), "::ffff:169.254.169.254"])
def test_the_allowlist_never_opens_a_metadata_service(address: str) -> None:
    everything = parse_cidrs(["0.0.0.0/0", "::/0"])
    reason = classify(ipaddress.ip_address(address), everything)
    assert reason is not None
    assert "metadata" in reason


def test_embedded_ipv4_unwraps_each_form() -> None:
    v4 = ipaddress.IPv4Address("127.0.0.1")
    for wrapped in ("::ffff:127.0.0.1", "::127.0.0.1", "2002:7f00:1::", "64:ff9b::7f00:1"):
        assert embedded_ipv4(ipaddress.ip_address(wrapped)) == v4
    assert embedded_ipv4(ipaddress.ip_address("::1")) is None
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1111")) is None
    assert embedded_ipv4(v4) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/k", ("https", "hooks.example.com", 443)),
        ("http://Hooks.Example.com.:8080/k", ("http", "hooks.example.com", 8080)),
        ("HTTPS://xn--bcher-kva.example/", ("https", "xn--bcher-kva.example", 443)),
        ("http://[2606:4700::1111]/", ("http", "2606:4700::1111", 80)),
        ("http://8.8.8.8:9/", ("http", "8.8.8.8", 9)),
    ],
)
def test_check_url_splits_a_good_url(url: str, expected: tuple[str, str, int]) -> None:
    assert check_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://x/", "http or https"),
        ("hooks.example.com/k", "http or https"),
        ("http://user:pw@hooks.example.com/", "credentials"),
        ("http://user@hooks.example.com/", "credentials"),
        ("http://@hooks.example.com/", "credentials"),
        ("http:///k", "no host"),
        ("http://hooks.example.com:99999/", "not a valid URL"),
        ("http://hooks.example.com:0/", "port 0"),
        ("http://hooks.example.com:x/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://[hooks.example.com]/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://bad_label.example/", "host name"),
        ("http://-x.example/", "host name"),
        ("http://b\u00fccher.example/", "host name"),
        ("http://2130706433/", "canonical"),
        ("http://127.1/", "canonical"),
        ("http://0x7f.1/", "canonical"),
    ],
)
def test_check_url_refuses_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url(url)
    assert reason in caught.value.detail, caught.value.detail

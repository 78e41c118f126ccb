"""Upstream URL safety: what may be saved, and what is dialled, over real loopback sockets."""
import asyncio
import http.server
import ipaddress
import socket
import threading

import httpx
import pytest
from django.urls import reverse

from llmgateway.config import ConfigError, load_config
from providers.models import Provider
from providers.upstream import make_client
from providers.urlsafety import UnsafeUpstream, check_base_url, check_destination, parse_ip

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254.:80/",           # trailing dot
    "http://2852039166/",                     # decimal
    "http://0xa9fea9fe/",                     # hex
    "http://0xA9FEA9FE/",
    "http://0251.0376.0251.0376/",            # octal
    "http://0xa9.0xfe.0xa9.0xfe/",            # hex per byte
    "http://169.254.43518/",                  # a.b.c form: last part fills 16 bits
    "http://169.16689662/",                   # a.b form: last part fills 24 bits
    "http://[::ffff:169.254.169.254]/",       # IPv4-mapped IPv6
    "http://[::ffff:a9fe:a9fe]/",
    "http://[::169.254.169.254]/",            # IPv4-compatible IPv6
    "http://[64:ff9b::a9fe:a9fe]/",           # NAT64
    "http://[2002:a9fe:a9fe::1]/",            # 6to4
    "http://[fd00:ec2::254]/",                # AWS metadata over IPv6
    "http://[fe80::1]/",                      # IPv6 link-local
    "http://[fe80::1%25eth0]/",
    "http://100.100.100.200/",                # Alibaba Cloud metadata
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./",
    "http://0.0.0.0:8000/",
    "http://0/",
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_link_local_and_metadata_addresses_are_refused_in_every_spelling_even_when_private_is_allowed(url):
    with pytest.raises(UnsafeUpstream):
        check_base_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://example.com/",
                                 "https://user:secret@api.example.com/v1", "https://@api.example.com/v1",
                                 "http:///v1", "http://1.2.3.4.5/", "http://0x1g/", "http://%31%36%39.254.169.254/"])
def test_other_schemes_user_info_and_malformed_hosts_are_refused(url):
    with pytest.raises(UnsafeUpstream):
        check_base_url(url, allow_private=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:11434/v1", "http://localhost:8000/v1", "http://vllm.localhost/v1",
                                 "http://2130706433/v1", "http://0x7f000001/", "http://127.1/", "http://[::1]:8000/v1",
                                 "http://[::ffff:127.0.0.1]/", "http://10.1.2.3/v1", "http://192.168.1.20/v1",
                                 "http://172.16.0.9/v1", "http://100.64.0.1/", "http://[fd12:3456::1]/v1"])
def test_loopback_and_private_addresses_need_the_setting(url):
    check_base_url(url, allow_private=True)
    with pytest.raises(UnsafeUpstream, match="GATEWAY_ALLOW_PRIVATE_UPSTREAMS"):
        check_base_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "https://my-resource.openai.azure.com/openai",
                                 "http://8.8.8.8/v1", "https://[2606:4700::1111]/v1"])
def test_public_upstreams_are_allowed(url):
    check_base_url(url, allow_private=False)


@pytest.mark.parametrize("spelling", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518",
                                      "0xa9.254.0251.254", "169.254.169.254"])
def test_ipv4_is_read_the_way_inet_aton_reads_it(spelling):
    assert str(parse_ip(spelling)) == "169.254.169.254"


@pytest.mark.parametrize("name", ["api.openai.com", "256.1.1.1", "1.2.3.4.5", "08.1.1.1", ""])
def test_names_and_impossible_numbers_are_not_addresses(name):
    assert parse_ip(name) is None


# ---------------------------------------------------------------- saving


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_admin_shows_a_refused_base_url_as_an_error_on_the_field(staff):
    response = staff.post(reverse("admin:providers_provider_add"), {
        "name": "sneaky", "type": "openai", "base_url": "http://[::ffff:a9fe:a9fe]/latest", "enabled": "on",
        "timeout_s": "60", "weight": "1", "extra_headers": "{}",
        "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0", "catalog-TOTAL_FORMS": "0", "catalog-INITIAL_FORMS": "0",
    })

    assert response.status_code == 200
    assert "base_url" in response.context["adminform"].form.errors
    assert "link-local and cloud metadata addresses" in response.context["adminform"].form.errors["base_url"][0]
    assert not Provider.objects.filter(name="sneaky").exists()


@pytest.mark.django_db
def test_the_admin_refuses_a_private_upstream_when_the_setting_is_off(staff, settings):
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = False
    response = staff.post(reverse("admin:providers_provider_add"), {
        "name": "local", "type": "openai", "base_url": "http://127.0.0.1:11434/v1", "enabled": "on",
        "timeout_s": "60", "weight": "1", "extra_headers": "{}",
        "keys-TOTAL_FORMS": "0", "keys-INITIAL_FORMS": "0", "catalog-TOTAL_FORMS": "0", "catalog-INITIAL_FORMS": "0",
    })

    assert "GATEWAY_ALLOW_PRIVATE_UPSTREAMS" in response.context["adminform"].form.errors["base_url"][0]


@pytest.mark.django_db
def test_the_config_file_refuses_a_metadata_base_url_naming_the_place():
    document = "providers:\n  sneaky:\n    base_url: http://[::ffff:169.254.169.254]/v1\n"

    with pytest.raises(ConfigError) as refused:
        load_config(document)

    assert len(refused.value.messages) == 1
    assert refused.value.messages[0].startswith("providers.sneaky.base_url: ")
    assert "link-local and cloud metadata addresses" in refused.value.messages[0]


# ---------------------------------------------------------------- connecting


def causes(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def fetch(url: str, transport: str) -> httpx.Response:
    async def go():
        async with make_client(transport, connect_timeout=2) as client:
            return await client.get(url)

    return asyncio.run(go())


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", socket.gethostname()])
def test_neither_transport_dials_a_refused_address_by_name_or_literal(host, transport, mock_upstream, settings):
    if ipaddress.ip_address(socket.gethostbyname(host)).is_global:
        pytest.skip(f"{host} resolves to a public address on this machine")
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = False
    port = mock_upstream.base_url.split(":")[2].split("/")[0]
    mock_upstream.clear()

    with pytest.raises(httpx.TransportError) as refused:
        fetch(f"http://{host}:{port}/v1/models", transport)

    assert "refused to connect to 127.0.0.1" in " ".join(str(e) for e in causes(refused.value))
    assert mock_upstream.requests == []


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_both_transports_dial_a_private_upstream_when_allowed(transport, mock_upstream, settings):
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = True
    port = mock_upstream.base_url.split(":")[2].split("/")[0]

    assert fetch(f"http://localhost:{port}/v1/models", transport).status_code in (200, 401)


def test_check_destination_refuses_a_name_that_resolves_to_a_refused_address(settings):
    name = socket.gethostname()  # this machine's name: resolves to a loopback or private address
    if ipaddress.ip_address(socket.gethostbyname(name)).is_global:
        pytest.skip("this machine's name resolves to a public address")
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = False
    with pytest.raises(UnsafeUpstream, match=f"{name} resolves to"):
        asyncio.run(check_destination(f"http://{name}:9/v1"))
    settings.GATEWAY_ALLOW_PRIVATE_UPSTREAMS = True
    asyncio.run(check_destination(f"http://{name}:9/v1"))
    with pytest.raises(UnsafeUpstream):
        asyncio.run(check_destination("http://169.254.169.254/latest"))


class Redirecting(http.server.BaseHTTPRequestHandler):
    """Answers every request with a redirect to a second server, and counts what that one gets."""

    target_hits = []

    def do_GET(self):
        if self.path == "/landing":
            Redirecting.target_hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            return
        self.send_response(302)
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/landing")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_redirects_are_never_followed(transport):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Redirecting.target_hits.clear()
    try:
        response = fetch(f"http://127.0.0.1:{server.server_port}/v1/models", transport)
    finally:
        server.shutdown()
        server.server_close()

    assert response.status_code == 302
    assert Redirecting.target_hits == []


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_the_gateway_on_either_guarded_transport_still_serves_and_streams(transport, live, gateway_factory):
    from .conftest import FULL_KEY, wait_for_model

    gateway = gateway_factory(GATEWAY_UPSTREAM_TRANSPORT=transport)
    wait_for_model(gateway, "gpt-4o-mini")
    headers = {"Authorization": f"Bearer {FULL_KEY}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

    answer = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, json=body, timeout=10)
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers=headers, timeout=10,
                      json={**body, "stream": True}) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data:")]

    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert streamed.status_code == 200 and events[-1] == "data: [DONE]" and len(events) > 2

"""Session fixtures: TLS material, a token server, real registries and seeded test images.

The harness lives in ``tests/support`` (importable as ``support``: ``tests/`` is on
``sys.path`` because it holds this conftest and has no ``__init__.py``).

Fixtures (all session-scoped unless noted):

``tls_material`` -> :class:`support.tls.TLSMaterial`
    ``ca_cert``, ``server_cert``, ``server_key``, ``ca_dir``; ``ssl_context()``.
``token_server`` -> :class:`support.tokenserver.TokenServer`
    ``realm``, ``service``, ``issuer``, ``url``, ``policy.users``, ``log`` / ``log_dicts()`` /
    ``clear_log()`` / ``requested_scopes()``, ``issue(user, access)``.
    Users: ``alice``/``alice-secret`` (everything), ``reader``/``reader-secret`` (pull only),
    ``admin``/``admin-secret`` (everything plus ``registry:catalog:*``).
    ``public/*`` may be pulled anonymously; everything else needs credentials.
``token_log`` (function scope) -> the same ``TokenServer`` with its log cleared.
``registry_open``   -> :class:`support.registry.RegistryProcess`: HTTP, no auth.
``registry_basic``  -> HTTP, htpasswd auth; ``tester``/``tester-secret`` and
    ``other``/``other-secret`` (``username``/``password`` are the first pair).
``registry_token``  -> HTTP, token auth via ``token_server``; ``username``/``password`` are
    ``alice``/``alice-secret``.
``registry_tls``    -> HTTPS (certificate from ``tls_material``), no auth; ``ca_cert`` set.
    Each has ``host`` (``127.0.0.1:PORT``), ``url``, ``scheme``, ``ca_cert``, ``credentials``,
    ``storage_dir``, ``log_text()``, ``log_size()``/``log_since()``, ``client()``, ``stop()``.
``test_images`` -> ``dict[str, LayoutImage]`` with keys ``single``, ``multi``, ``eight``,
    ``docker``, ``dockerlist`` (layouts tagged ``v1``; see :mod:`support.images`).
``seeded_registries`` -> :class:`support.seed.SeededRegistries` with ``open``, ``basic``,
    ``token``, ``tls`` (each a :class:`support.seed.SeededRegistry`, indexable by repository):
    ``test/{single,multi,eight,docker,dockerlist}:v1`` in open/basic/tls, and
    ``public/<name>:v1`` plus ``private/<name>:v1`` in the token registry, pushed with
    ``support.transfers.push`` (skopeo is used only as an independent check in tests).
    Do not modify the seeded repositories; push to ``unique_repo()`` names instead.
``unique_repo`` (function scope) -> ``callable(prefix="scratch") -> str``, a fresh repository
    name derived from the test name (``scratch/<test-name>-<n>``; on the token registry
    pass e.g. ``"private/scratch"`` -- only ``public/`` differs in policy, for pulls).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest

from support.images import LayoutImage, generate_all
from support.registry import REGISTRY_BINARY, RegistryProcess, start_registry
from support.seed import SeededRegistries, seed_registries
from support.tls import TLSMaterial, generate_tls_material
from support.tokenserver import TokenServer
from support.tools import require


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return generate_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("token-server")).start()
    yield server
    server.stop()


@pytest.fixture
def token_log(token_server: TokenServer) -> TokenServer:
    token_server.clear_log()
    return token_server


def _registry(
    factory: pytest.TempPathFactory, name: str, **kwargs: object
) -> Iterator[RegistryProcess]:
    require(REGISTRY_BINARY)
    reg = start_registry(factory.mktemp(name), name=name, **kwargs)  # type: ignore[arg-type]
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def registry_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    yield from _registry(tmp_path_factory, "registry-open")


@pytest.fixture(scope="session")
def registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    require("htpasswd")
    yield from _registry(tmp_path_factory, "registry-basic", auth="htpasswd")


@pytest.fixture(scope="session")
def registry_token(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[RegistryProcess]:
    yield from _registry(
        tmp_path_factory, "registry-token", auth="token", token_server=token_server
    )


@pytest.fixture(scope="session")
def registry_tls(
    tmp_path_factory: pytest.TempPathFactory, tls_material: TLSMaterial
) -> Iterator[RegistryProcess]:
    yield from _registry(tmp_path_factory, "registry-tls", tls=tls_material)


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LayoutImage]:
    return generate_all(tmp_path_factory.mktemp("layouts"))


@pytest.fixture(scope="session")
def seeded_registries(
    tmp_path_factory: pytest.TempPathFactory,
    test_images: dict[str, LayoutImage],
    registry_open: RegistryProcess,
    registry_basic: RegistryProcess,
    registry_token: RegistryProcess,
    registry_tls: RegistryProcess,
) -> SeededRegistries:
    seeded = seed_registries(
        {
            "open": (registry_open, ["test"]),
            "basic": (registry_basic, ["test"]),
            "token": (registry_token, ["public", "private"]),
            "tls": (registry_tls, ["test"]),
        },
        test_images,
    )
    return SeededRegistries(**seeded)


_repo_counter = itertools.count(1)


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> Callable[..., str]:
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60].strip("-")

    def make(prefix: str = "scratch") -> str:
        return f"{prefix}/{base or 'test'}-{next(_repo_counter)}"

    return make

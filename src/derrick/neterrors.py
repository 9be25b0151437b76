"""What a failed HTTP exchange means: whether to send the request again, and the error to
raise (:func:`transport_error`), for :mod:`derrick.transport`.

httpx and httpcore say what went wrong in their exception types and messages; these
functions read them once, here.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from derrick.errors import DerrickError, Remedy, TLSError, TransportError

__all__ = [
    "failed_url",
    "is_cert_problem",
    "is_client_cert_problem",
    "is_not_http",
    "is_refused",
    "is_tls_problem",
    "is_unknown_host",
    "retryable",
    "transport_error",
]

#: How h11 begins the message of an answer that is not HTTP at all (the status line or
#: the headers cannot be read), as opposed to an HTTP answer that broke off.
_NOT_HTTP = (
    "illegal ",
    "no response line",
    "receive buffer too long",
    "malformed data",
    "continuation line",
)


def failed_url(e: Exception, url: str | httpx.URL) -> httpx.URL:
    """The URL the failed request went to: a redirect's target, or ``url``."""
    if isinstance(e, httpx.RequestError):
        try:
            return e.request.url
        except RuntimeError:  # raised before a request was made
            pass
    return httpx.URL(str(url))


def short(e: Exception) -> str:
    s = str(e) or type(e).__name__
    return s.splitlines()[0][:200]


def is_cert_problem(e: Exception) -> bool:
    s = str(e).lower()
    return "certificate" in s and ("verify" in s or "self-signed" in s or "self signed" in s)


def is_tls_problem(e: Exception) -> bool:
    s = str(e).lower()
    return any(
        k in s
        for k in ("ssl", "tls", "wrong version number", "record layer", "handshake", "certificate")
    )


def is_client_cert_problem(e: Exception) -> bool:
    """The server's TLS alert for a client certificate it wanted and did not get (or refused)."""
    s = str(e).lower()
    return "alert bad certificate" in s or "alert certificate required" in s


def is_refused(e: Exception) -> bool:
    """A connection to the host itself (not to a proxy) was refused."""
    if not isinstance(e, httpx.ConnectError) or is_tls_problem(e):
        return False
    s = str(e).lower()
    return "refused" in s or "errno 111" in s


#: What resolvers say of a host name that has no address (not of one they could not ask).
_NO_SUCH_HOST = (
    "name or service not known",  # glibc EAI_NONAME
    "no address associated with hostname",  # glibc EAI_NODATA
    "nodename nor servname provided",  # BSD, macOS
)


def is_unknown_host(e: Exception) -> bool:
    """The registry's host name does not resolve (a misspelt name, as a wrong port, will
    not mend; a resolver that could not be asked is another error, which may)."""
    if not isinstance(e, httpx.ConnectError) or is_tls_problem(e):
        return False
    s = str(e).lower()
    return any(k in s for k in _NO_SUCH_HOST)


def is_not_http(e: Exception) -> bool:
    """The host answered, with something that is not HTTP."""
    return isinstance(e, httpx.RemoteProtocolError) and str(e).lower().startswith(_NOT_HTTP)


def retryable(e: Exception) -> bool:
    """Whether a failure may mend by itself: a timeout or a dropped connection may; a
    refused connection, a host name that does not resolve, a TLS mismatch, a refused
    client certificate, a proxy that cannot be reached and an answer that is not HTTP
    will not."""
    if is_refused(e) or is_unknown_host(e) or is_not_http(e) or is_client_cert_problem(e):
        return False
    if isinstance(e, httpx.ConnectError) and is_tls_problem(e):
        return False
    if isinstance(e, httpx.ProxyError):
        return False
    return isinstance(
        e,
        httpx.TimeoutException
        | httpx.NetworkError
        | httpx.RemoteProtocolError
        | httpx.ConnectError,
    )


def transport_error(
    e: Exception, target: httpx.URL, *, shown: str, certs: Path | None, answered: bool = False
) -> DerrickError:
    """The error to raise for a request to ``target`` that failed with ``e``.

    ``shown`` is the URL as messages may show it (no credentials); ``certs`` the host's
    certs.d directory (named in hints about certificates); ``answered`` says the host
    had answered other requests in this run.
    """
    host = target.netloc.decode("ascii")
    hostdir = certs or Path("/etc/docker/certs.d") / host
    tls = _tls_error(e, host, hostdir)
    if tls is not None:
        return tls
    if isinstance(e, httpx.ProxyError):
        return TransportError(
            f"cannot reach {host}: {short(e)}",
            hint="check the proxy settings (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY)",
        )
    if is_not_http(e):
        return TransportError(
            f"{host} does not speak HTTP: what it sent back for {shown} is not an HTTP response",
            hint="check the host name and port",
        )
    if isinstance(e, httpx.TimeoutException):
        return TransportError(
            f"timed out talking to {host} ({shown})",
            hint="check the registry is up",
            remedy=Remedy("timeout"),
        )
    if isinstance(e, httpx.ConnectError):
        if answered:
            return TransportError(
                f"cannot connect to registry {host} any more: {short(e)}",
                hint="it answered earlier and may be restarting",
                remedy=Remedy("retries"),
            )
        return TransportError(
            f"cannot connect to registry {host}: {short(e)}",
            hint="check the host name and port, and that the registry is running",
        )
    return TransportError(
        f"connection to {host} failed: {short(e)} ({shown})",
        hint="the connection was dropped",
        remedy=Remedy("retries"),
    )


def _tls_error(e: Exception, host: str, hostdir: Path) -> DerrickError | None:
    if is_client_cert_problem(e):
        return TLSError(
            f"{host} refused the TLS connection: it asks for a client certificate ({short(e)})",
            hint=f"put the certificate and its key in {hostdir}/client.cert and client.key",
        )
    if not isinstance(e, httpx.ConnectError):
        return None
    if is_cert_problem(e):
        return TLSError(
            f"TLS certificate of {host} could not be verified ({short(e)})",
            remedy=Remedy("ca-cert", host=host, path=str(hostdir / "ca.crt")),
        )
    if is_tls_problem(e):
        return TLSError(
            f"TLS handshake with {host} failed ({short(e)})",
            hint="the registry may speak plain http",
            remedy=Remedy("insecure", host=host),
        )
    return None

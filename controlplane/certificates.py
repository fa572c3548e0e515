"""The control plane's transport security: its CA, its serving certificate, and the
credentials of its two ports.

* The API port (``--listen``) serves TLS with a server certificate; people, programs and
  agents that register or still use a join token connect there.
* The agent port (``--agent-listen``) asks every client for a certificate issued by the
  control plane's CA (mutual TLS). gRPC in Python cannot make a client certificate
  optional on one port, so agents with certificates have a port of their own.

On first start the CA is created in ``--pki-dir`` (shared by the replicas of one
control plane: the first to start creates it, see :func:`archipel.pki.ensure_ca`).
The serving certificate is issued at every start, in memory only, for the listen
address, localhost, 127.0.0.1 and the ``--tls-san`` names: nothing on disk to race on
or to go stale. ``--tls-cert-file``/``--tls-key-file`` replace it with the operator's
own, and ``--client-ca-file``/``--client-ca-key-file`` replace the CA that issues and
checks agent certificates.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import grpc

from archipel import pki

log = logging.getLogger(__name__)

CA_COMMON_NAME = "archipel-control-plane-ca"


@dataclasses.dataclass
class TransportSecurity:
    """What the two ports serve with, and the CA that signs agents' certificates."""

    serving_cert: bytes
    serving_key: bytes
    # The bundle clients verify the serving certificate with (for the logs and docs).
    ca_file: Path | None
    # Issues and checks agents' client certificates.
    agent_ca: pki.CertificateAuthority

    def api_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.serving_key, self.serving_cert)])

    def agent_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.serving_key, self.serving_cert)],
            root_certificates=self.agent_ca.cert_pem,
            require_client_auth=True,
        )


def serving_hosts(listen: str, extra: tuple[str, ...]) -> list[str]:
    """The names a serving certificate covers: the listen host (unless a wildcard),
    localhost, 127.0.0.1, ::1 and ``extra``, each once, in that order."""
    host, _ = pki.split_host_port(listen)
    hosts: list[str] = []
    for name in (host, "localhost", "127.0.0.1", "::1", *extra):
        if name and name not in ("0.0.0.0", "::") and name not in hosts:
            hosts.append(name)
    return hosts


def load(
    *,
    pki_dir: Path,
    listen: str,
    sans: tuple[str, ...] = (),
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    client_ca_file: Path | None = None,
    client_ca_key_file: Path | None = None,
) -> TransportSecurity:
    """The control plane's certificates, creating its CA on first start."""
    if client_ca_file is not None and client_ca_key_file is not None:
        agent_ca = pki.CertificateAuthority.load(client_ca_file, client_ca_key_file)
    else:
        agent_ca = pki.ensure_ca(pki_dir, common_name=CA_COMMON_NAME)
    if tls_cert_file is not None and tls_key_file is not None:
        return TransportSecurity(
            serving_cert=tls_cert_file.read_bytes(),
            serving_key=tls_key_file.read_bytes(),
            ca_file=None,
            agent_ca=agent_ca,
        )
    ca = agent_ca if client_ca_file is None else pki.ensure_ca(pki_dir, common_name=CA_COMMON_NAME)
    cert, key = ca.issue_server(serving_hosts(listen, sans))
    # The chain: clients that trust the CA need nothing else, and a CA given as a
    # bundle file is served whole.
    return TransportSecurity(
        serving_cert=pki.cert_pem(cert),
        serving_key=pki.key_pem(key),
        ca_file=pki.ca_cert_path(pki_dir),
        agent_ca=agent_ca,
    )

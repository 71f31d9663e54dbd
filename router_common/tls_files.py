"""Loading a TLS certificate and key named by flags: the router's and the sidecar's one way.

Why shared: both load a PEM pair from operator-given files and must fail the
same way, in one line naming the flags and files. Two things decide the shape:

* **No passphrase prompt.** Without a passphrase callback OpenSSL asks for one
  itself, on the controlling terminal (a process started in a shell, or
  ``docker run -t``, hung at start, and a reload on the event loop froze every
  call) or, with no terminal, wrote a plain-text ``Enter PEM pass phrase:`` to
  stderr and failed with a bare ``Invalid argument``. Neither process takes a
  passphrase, so an encrypted key is refused with the command that decrypts it.
* **The reason, not the library's text.** ``ssl`` errors read ``[SSL] PEM lib
  (_ssl.c:3905)`` or a bare ``[Errno 2]``; the message keeps their reason and
  puts the flags and files in front.
"""

from __future__ import annotations

import ssl


class TlsPairError(ValueError):
    """TLS files that do not load (a pair, or a CA), named by their flags (one line)."""


class _EncryptedKey(Exception):
    """Raised from the passphrase callback: the key file is encrypted."""


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def why(exc: OSError) -> str:
    """The short reason of an ``ssl``/OS error (its ``reason``, else ``strerror``)."""
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


def load_pair(
    context: ssl.SSLContext, cert: str, key: str, cert_flag: str, key_flag: str, program: str
) -> None:
    """``context.load_cert_chain(cert, key)``, or TlsPairError naming the flags and files."""
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TlsPairError(
            f"{key_flag} {key}: the private key is encrypted and the {program} takes no "
            "passphrase; give it the decrypted key (openssl pkey -in KEY -out KEY.plain)"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise TlsPairError(
            f"{cert_flag} {cert} / {key_flag} {key}: not a usable PEM certificate "
            f"and matching key ({why(exc)})"
        ) from None


def load_ca(context: ssl.SSLContext, ca: str, flag: str) -> None:
    """``context.load_verify_locations(ca)``, or TlsPairError naming the flag and file."""
    try:
        context.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsPairError(f"{flag} {ca}: not a usable PEM CA certificate ({why(exc)})") from None

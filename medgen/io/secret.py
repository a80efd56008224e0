"""The secret that keys every pseudonym (subject labels, replaced UIDs): where it comes from.

The secret is read from the environment variable :data:`SECRET_ENV` or from a file, never from a
command line (which other users of the machine can read in the process list) and never written
anywhere by medgen. The same secret gives the same pseudonyms in every job and rerun; without it
nobody can go back from a pseudonym to the original. The phantom demo uses :data:`DEMO_SECRET`,
which is public: its pseudonyms protect nothing (the phantom holds nobody's data).
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_ENV = "MEDGEN_UID_SALT"

#: The phantom demo's secret: public, so only for data that identifies nobody.
DEMO_SECRET = "medgen-phantom-demo-secret-public"

HOW_TO_SET = (
    f"set the environment variable {SECRET_ENV} (e.g. `export {SECRET_ENV}=$(openssl rand -hex 32)`) "
    "or write the secret into a file only you can read and name it (medgen: --uid-salt-file FILE; "
    "workflow: config key ingest.uid_salt_file); keep the same secret for every run of a study"
)


class SecretMissing(ValueError):
    """No secret was configured for data that needs one."""


def load_secret(salt_file: Path | str | None = None) -> str:
    """The secret from ``salt_file`` if given (surrounding whitespace stripped), else from the environment.

    Raises :class:`SecretMissing` saying how to set one; errors name the file, never its content.
    """
    if salt_file:
        path = Path(salt_file)
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretMissing(f"{path}: cannot read the secret file ({exc.strerror}); {HOW_TO_SET}") from None
        if not secret:
            raise SecretMissing(f"{path}: the secret file is empty; {HOW_TO_SET}")
        return secret
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not secret:
        raise SecretMissing(f"no secret for pseudonyms: {HOW_TO_SET}")
    return secret

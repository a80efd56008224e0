"""The secret that keys every pseudonym (subject labels, replaced UIDs): where it comes from.

The secret is read from the environment variable :data:`SECRET_ENV` or from a file, never from a
command line (which other users of the machine can read in the process list) and never written
anywhere by medgen. The same secret gives the same pseudonyms in every job and rerun; without it
nobody can go back from a pseudonym to the original. The phantom demo uses :data:`DEMO_SECRET`,
which is public: its pseudonyms protect nothing (the phantom holds nobody's data).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

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


#: Config keys that hold or lead to the secret or the original -> pseudonym map: never copied
#: into results or shown in the report.
SECRET_BEARING_KEYS: tuple[tuple[str, str], ...] = (
    ("ingest", "uid_salt"), ("ingest", "uid_salt_file"), ("ingest", "mapping_file"),
)


def public_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a workflow config without :data:`SECRET_BEARING_KEYS`."""
    out = copy.deepcopy(dict(config))
    for section, key in SECRET_BEARING_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def privacy_note(config: Mapping[str, Any]) -> str:
    """One sentence for the report: how subjects were named and with which kind of secret."""
    data = config.get("data") or {}
    if "phantom" in data:
        return ("Pseudonyms (subject labels, UIDs) of this phantom demo are keyed with medgen's public demo secret: "
                "they protect nothing, which is fine for phantom data; real data needs a secret of its own "
                f"({SECRET_ENV} or ingest.uid_salt_file).")
    if data.get("keep_subject_labels"):
        return "Subject labels are the input's own (data.keep_subject_labels); UIDs are keyed pseudonyms."
    return "Subject labels and UIDs are keyed pseudonyms; the secret is not shown or stored anywhere in the results."

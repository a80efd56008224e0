"""Overview: when and from what the report was made, package versions, the configuration."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from typing import Any, Mapping

import medgen
from medgen.io.secret import privacy_note, public_config
from medgen.report.format import esc, facts, note, table
from medgen.report.results import Results

#: packages whose versions the overview lists (distribution names)
PACKAGES: tuple[str, ...] = ("torch", "monai", "nibabel", "SimpleITK", "pydicom", "snakemake")


def package_versions() -> dict[str, str]:
    """Python and the versions of :data:`PACKAGES` ("not installed" when missing)."""
    versions = {"medgen": medgen.__version__, "Python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _yaml_text(config: Mapping[str, Any]) -> str:
    plain = json.loads(json.dumps(config, default=str))
    try:
        import yaml

        return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=100)
    except ImportError:
        return json.dumps(plain, indent=2)


def build(ctx: Results, title: str) -> str:
    """The overview (always present)."""
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = package_versions()
    listed = facts([("report", esc(title)), ("generated", esc(now)), ("results", f"<code>{esc(ctx.results)}</code>")])
    versions_table = table(["package", "version"], ([esc(k), esc(v)] for k, v in versions.items()), numeric_from=2)
    parts = [listed, '<div class="row">', versions_table, "</div>"]
    if ctx.config:
        parts.append(note(privacy_note(ctx.config)))
        parts += ["<h3>Configuration</h3>", f'<pre class="yaml"><code>{esc(_yaml_text(public_config(ctx.config)))}</code></pre>']
    else:
        parts.append(note("no configuration given (and no results/config.yaml)"))
    return "".join(parts)

"""The README's configuration table covers every setting a user can set."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z0-9_]+)`", table))
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in documented]
    assert not missing, f"settings missing from README's configuration table: {missing}"

"""docs/configuration.md is what the configuration's models say, and the check notices when not."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from devstack import config_docs
from tasks.config.settings import GuardSettings

pytestmark = pytest.mark.fast


def test_the_committed_configuration_doc_is_the_generated_one() -> None:
    committed = config_docs.DOC.read_text(encoding="utf-8")
    assert committed == config_docs.render(), (
        "docs/configuration.md is stale: run `make docs` and commit it"
    )


def test_every_key_of_every_section_and_kind_is_in_the_doc() -> None:
    text = config_docs.render()
    for section in ("lightspeed", "catalog", "report", "state", "guards", "watch"):
        model = config_docs._model_of(config_docs.Settings.model_fields[section])
        for key in model.model_fields:
            assert f"| `{section}.{key}` |" in text
    for name, model in config_docs._kind_models().items():
        assert f'### `kind = "{name}"`' in text
        for key in model.model_fields:
            assert f"| `{key}` |" in text or f"| `warehouses[].{key}` |" in text


def test_check_fails_on_a_stale_file_and_passes_once_rewritten(tmp_path: Path) -> None:
    doc = tmp_path / "configuration.md"
    doc.write_text(config_docs.render().replace("`500`", "`400`", 1), encoding="utf-8")
    assert config_docs.main(["--check", "--out", str(doc)]) == 1
    assert config_docs.main(["--out", str(doc)]) == 0
    assert config_docs.main(["--check", "--out", str(doc)]) == 0


def test_a_key_without_a_description_stops_the_generator() -> None:
    class Undescribed(GuardSettings):
        new_key: int = Field(1)

    with pytest.raises(ValueError, match=r"Undescribed\.new_key has no description"):
        config_docs._table(Undescribed, "guards.")

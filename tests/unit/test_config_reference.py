"""The configuration reference in docs/ is generated from the settings model."""

from __future__ import annotations

from pathlib import Path

from detector.tools.config_reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reference_is_up_to_date() -> None:
    """docs/configuration.md equals what the settings model renders today."""
    assert DOC.read_text() == render(), (
        "regenerate: python -m detector.tools.config_reference > docs/configuration.md"
    )


def test_every_section_and_key_is_listed() -> None:
    """Each settings section has a heading and each key a row."""
    from detector.settings import Settings

    text = render()
    for section, field in Settings.model_fields.items():
        assert f"## [{section}]" in text
        for key in field.annotation.model_fields:  # type: ignore[union-attr]
            assert f"| `{key}` |" in text

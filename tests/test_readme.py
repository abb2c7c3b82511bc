"""The README's tables that are generated from code stay in step with the code."""

from pathlib import Path

from stretto.cache.families import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_supported_models_table_is_the_generated_one():
    table = markdown_table()
    assert table.count("\n") > 30, "the families table lost its rows"
    assert table in README.read_text(), "README's diffusers table is stale: paste markdown_table() again"

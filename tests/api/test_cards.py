"""Method cards: every bundled method carries one, `zsqbench plugins NAME` shows it, and README's
method table says what the cards say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import one_line_error

from zsqbench.api import MethodCard
from zsqbench.api.cards import method_table
from zsqbench.api.plugins import build_plugins
from zsqbench.cli.main import main

PLUGINS = build_plugins()
METHODS = [e for kind in ("generators", "losses", "quantizers") for e in getattr(PLUGINS, kind)
           if e.source == "bundled"]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("entry", METHODS, ids=lambda e: e.name)
def test_every_bundled_method_carries_a_complete_card(entry):
    card = entry.obj.card
    assert isinstance(card, MethodCard), f"{entry.kind} '{entry.name}' has no method card"
    assert card.code and card.code_license and card.spec and card.verified
    for number in card.published:
        assert number.model in PLUGINS.models.names(), number
        assert re.fullmatch(r"W\dA\d", number.bits), number


def test_plugins_name_prints_the_card_and_options(capsys):
    assert main(["plugins", "gdfq"]) == 0
    text = capsys.readouterr().out
    assert "xushoukai/GDFQ @ a93210e" in text
    assert "bns_weight = 0.1" in text
    assert "resnet20_cifar10 W4A4: 90.25 %" in text


def test_plugins_name_json_holds_options_and_card(capsys):
    assert main(["plugins", "akt", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "loss"
    assert {o["name"]: o["default"] for o in shown["options"]}["lam"] == 1000.0
    assert shown["card"]["commit"] == "9f49af0"
    assert any("identically 0" in d for d in shown["card"]["differences"])


def test_an_unknown_plugin_name_is_one_line(capsys):
    err = one_line_error(capsys, ["plugins", "gdfqq"])
    assert "no plugin named 'gdfqq'" in err and "gdfq" in err


def test_readme_method_table_matches_the_cards():
    """README's table is method_table() of the bundled cards, row for row (regenerate it with
    ``cd tests && python -c "import test_cards; test_cards.print_table()"`` after changing a card)."""
    section = README.read_text().split("## Methods", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table == method_table([(e.name, e.kind, e.obj.card) for e in METHODS])


def print_table() -> None:
    print("\n".join(method_table([(e.name, e.kind, e.obj.card) for e in METHODS])))

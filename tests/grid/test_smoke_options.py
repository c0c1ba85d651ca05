"""A generator's small settings come from its own ``smoke`` budget overrides, for every generator
registered, a third party's too: the contract suite and ``zsqbench bench`` read them there."""

from __future__ import annotations

import pytest

from zsqbench.api import BudgetOverride, hookimpl
from zsqbench.api.plugins import build_plugins
from zsqbench.grid.budgets import resolve_budget, smoke_generator_options
from zsqbench.perf.bench import BenchConfig, setup_options


@pytest.fixture(scope="module")
def outside():
    """Plugins with two generators from outside the bundle: 'outside' with smoke overrides of its own
    (for it alone, and for it with the loss kd), 'plain' with none."""
    gdfq = build_plugins().generators.get("gdfq")

    class Outside(gdfq):
        name = "outside"
        description = "GDFQ under another name, with smoke settings of its own (for tests)"

    class Plain(gdfq):
        name = "plain"
        description = "GDFQ under another name, without budget overrides (for tests)"

    class ThirdParty:
        @hookimpl
        def register_generators(self, register):
            register(Outside)
            register(Plain)

        @hookimpl
        def register_budget_overrides(self, register):
            register(BudgetOverride(preset="smoke", generator="outside",
                                    generator_options={"num_images": 16, "synthesis_iters": 2}))
            register(BudgetOverride(preset="smoke", generator="outside", loss="kd",
                                    generator_options={"synthesis_iters": 5}))
            register(BudgetOverride(preset="cpu", generator="outside", generator_options={"num_images": 512}))

    return build_plugins(extra={"third-party": ThirdParty()})


def test_a_third_party_generator_gets_its_own_smoke_options(outside):
    assert smoke_generator_options(outside, "outside") == {"num_images": 16, "synthesis_iters": 2}
    assert smoke_generator_options(outside, "outside", "akt") == {"num_images": 16, "synthesis_iters": 2}
    with_kd = smoke_generator_options(outside, "outside", "kd")  # the pair's override on top
    assert with_kd == {"num_images": 16, "synthesis_iters": 5}
    assert with_kd == resolve_budget(outside, "smoke", "outside", "kd").generator_options


def test_a_generator_without_a_smoke_override_gets_none(outside):
    assert smoke_generator_options(outside, "plain") == {}
    assert smoke_generator_options(outside, "plain", "kd") == {}
    assert smoke_generator_options(outside, "gdfq", "kd") == {}


def test_the_smoke_options_are_what_a_smoke_trial_gets(plugins):
    for name in plugins.generators.names():
        for loss in plugins.losses.names():
            expected = resolve_budget(plugins, "smoke", name, loss).generator_options
            assert smoke_generator_options(plugins, name, loss) == expected, (name, loss)
    assert smoke_generator_options(plugins, "hast") == {"num_images": 16, "synthesis_batch": 8, "synthesis_iters": 3}


def test_bench_sets_up_on_the_smoke_options_with_a_set_of_at_least_one_batch(outside):
    def options(batch_size, **given):
        return setup_options(outside, BenchConfig(generator="outside", loss="kd", batch_size=batch_size,
                                                  options=given))

    assert options(4) == {"num_images": 16, "synthesis_iters": 5}
    assert options(200) == {"num_images": 200, "synthesis_iters": 5}  # one shuffled pass per timed step
    assert options(200, outside={"num_images": 3, "lr_g": 0.1}) == {"num_images": 3, "synthesis_iters": 5,
                                                                   "lr_g": 0.1}  # -o wins
    assert setup_options(outside, BenchConfig(generator="plain", loss="kd")) == {}

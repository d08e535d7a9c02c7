"""The Keras contract a new user relies on (issue 17, "the rest of the contract"): the interface apart from the
methods, metrics on every label form, clear errors for string labels and colliding task names, honest memory
figures, real output shapes in `summary()`, and a quiet export."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys

import pytest

import keras_bayesagg as kb
from keras_bayesagg.interface import Aggregator, AggregatorInputs, TaskLayout
from tests.conftest import make_mixed_model


def test_kb_aggregators_exports_methods_only_and_the_interface_has_its_own_module():
    for name in kb.aggregators.__all__:
        cls = getattr(kb.aggregators, name)
        assert inspect.isclass(cls) and issubclass(cls, Aggregator) and cls is not Aggregator, name
    for name in ("Aggregator", "AggregatorInputs", "TaskLayout", "TaskUnit", "ObjectiveAggregation"):
        assert not hasattr(kb.aggregators, name), name
        assert getattr(kb.interface, name) is getattr(kb.aggregators.base, name)
    assert {"peek_seed", "peek_seeds", "Aggregation", "RepresentationAggregation"} <= set(kb.interface.__all__)
    assert AggregatorInputs is kb.aggregators.base.AggregatorInputs and TaskLayout is kb.aggregators.base.TaskLayout


def test_the_bare_interface_is_refused_at_compile_with_a_message_that_says_what_to_use():
    model = make_mixed_model()
    with pytest.raises(TypeError, match=r"Aggregator does not implement aggregate.*kb\.aggregators"):
        model.compile(optimizer="adam", aggregator=Aggregator())
    with pytest.raises(NotImplementedError, match="is the interface, not a method"):
        Aggregator().aggregate(None)


def test_the_paper_scripts_offer_methods_only():
    paper = str(pathlib.Path(__file__).resolve().parents[1] / "examples" / "paper")
    if paper not in sys.path:
        sys.path.insert(0, paper)
    paper_common = importlib.import_module("paper_common")
    with pytest.raises(SystemExit, match="choose one of") as raised:
        paper_common.make_aggregator("ObjectiveAggregation", None, 0)
    assert "ObjectiveAggregation" not in str(raised.value).split("choose one of")[1]
    assert "Aggregator'" not in str(raised.value)

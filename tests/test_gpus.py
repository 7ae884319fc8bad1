"""The one GPU matcher every provider uses (vp/platforms/gpus.py)."""

from __future__ import annotations

import pytest

from vp.platforms import gpus
from vp.platforms.gpus import GpuName, matches, parse

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Names as the providers spell them (vast gpu_name, RunPod id/displayName, AWS/GCE catalogs).
SPELLINGS = {
    "4090": ["RTX 4090", "NVIDIA GeForce RTX 4090", "rtx4090", "RTX-4090", "geforce rtx 4090"],
    "A100": [
        "A100 PCIE",
        "A100 SXM4",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA A100-SXM4-80GB",
        "a100",
        "NVIDIA A100 (80GB)",
    ],  # Thunder's displayName
    "L4": ["L4", "NVIDIA L4", "nvidia-l4"],
    "L40S": ["L40S", "NVIDIA L40S", "l40s"],
    "A10G": ["A10G", "A10", "NVIDIA A10"],
    "T4": ["T4", "Tesla T4", "nvidia-tesla-t4"],
    "H100": ["H100 SXM", "H100 PCIe", "NVIDIA H100 80GB HBM3", "H100 NVL"],
    "A6000": ["RTX A6000", "NVIDIA RTX A6000"],
    "6000ADA": ["RTX 6000 Ada Generation", "NVIDIA RTX 6000 Ada Generation"],
}


@pytest.mark.parametrize("model", SPELLINGS)
def test_every_spelling_names_one_model(model):
    assert {parse(name).model for name in SPELLINGS[model]} == {model}


@pytest.mark.parametrize(
    ("wanted", "offered"),
    [
        ("A10", "A100 PCIE"),
        ("A10", "NVIDIA A100-SXM4-80GB"),
        ("L4", "L40S"),
        ("L4", "NVIDIA L40"),
        ("L40", "L40S"),
        ("H100", "H200"),
        ("4090", "RTX 4080"),
        ("RTX 6000 Ada", "Quadro RTX 6000"),
        ("A6000", "RTX 6000 Ada Generation"),
    ],
)
def test_a_model_never_matches_a_longer_or_other_model(wanted, offered):
    assert not matches(wanted, offered)


def test_memory_is_matched_only_when_asked_for():
    assert matches("A100", "A100-80GB") and matches("A100", "A100 SXM4", memory_gb=40)
    assert matches("A100-80GB", "NVIDIA A100 80GB PCIe")
    assert matches("A100-80GB", "A100 PCIE", memory_gb=79.6)  # vast reports MiB / 1024
    assert not matches("A100-80GB", "A100 SXM4", memory_gb=40)
    assert not matches("A100-80GB", "A100")  # size unknown: never guess the bigger card
    assert not matches("A100 40GB", "NVIDIA A100-SXM4-80GB")


def test_no_gpu_asked_matches_everything():
    assert matches(None, "anything") and matches("", "RTX 4090")


def test_the_alias_table_is_a_dated_data_file():
    table = gpus.catalog("gpus")
    assert table["as_of"] and table["aliases"]
    for name in ("aws", "gce"):
        assert gpus.catalog(name)["as_of"]


_model = st.sampled_from(sorted({m for names in SPELLINGS.values() for m in names}))
_noise = st.sampled_from(["", " ", "-", "_", "  "])


@given(_model, st.sampled_from(["", "NVIDIA ", "nvidia-", "GeForce "]), _noise)
def test_case_separators_and_brand_words_do_not_count(name, brand, sep):
    messy = brand + sep.join(name.split(" "))
    assert parse(messy.lower()) == parse(name) == parse(messy.upper())


@given(st.sampled_from(list(SPELLINGS)), st.sampled_from(list(SPELLINGS)))
def test_models_match_exactly_their_own_spellings(a, b):
    for offered in SPELLINGS[b]:
        assert matches(a, offered) == (a == b), (a, offered)


@given(st.text(max_size=30))
def test_any_text_parses_without_error(text):
    assert isinstance(parse(text), GpuName)

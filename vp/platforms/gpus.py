"""One GPU matcher for every provider: `gpu = "A100"` means the same thing on vast, RunPod,
AWS and GCE, so `auto` compares like with like.

Names are parsed into a model, a memory size and form-factor words (the alias table and word
lists live in `data/gpus.toml`). A model matches only the same model: `A10` never matches
`A100`, `L4` never `L40S`. A memory size asked for must be the card's (`A100-80GB` matches only
80 GB parts); a name without one matches every size.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass

_MEMORY = re.compile(r"^(\d+)(?:G|GB)$")
# Sizes GPUs are sold with, for a size written onto the model ("A10080GB").
_GLUED_MEMORY = re.compile(r"(8|10|12|16|20|24|32|40|48|80|94|96|141|192)GB$")


@dataclass(frozen=True)
class GpuName:
    """A parsed GPU name: `model` canonical (upper case, no separators), `memory_gb` if named."""

    model: str
    memory_gb: int | None = None


@functools.cache
def catalog(name: str) -> dict:
    """A dated data file under `vp/platforms/data/` (`gpus`, `aws`, `gce`), parsed."""
    from importlib import resources  # not at import: it pulls in zipfile

    text = resources.files("vp.platforms").joinpath(f"data/{name}.toml").read_text()
    return tomllib.loads(text)


def _table() -> dict:
    return catalog("gpus")


@functools.cache
def _aliases() -> dict[str, str]:
    out = {}
    for canonical, others in _table()["aliases"].items():
        out[canonical] = canonical
        for other in others:
            out[other] = canonical
    return out


@functools.cache
def parse(name: str) -> GpuName:
    """`"NVIDIA A100-SXM4-80GB"` -> GpuName("A100", 80); `"rtx4090"` -> GpuName("4090")."""
    table = _table()
    brand, forms = set(table["brand_words"]), set(table["form_factors"])
    words = re.split(r"[\s_/()-]+", name.upper().strip())
    model, memory = [], None
    for word in words:
        if not word:
            continue
        found = _MEMORY.match(word)
        if found and model:  # "80GB" after the model; a leading number is the model ("4090")
            memory = int(found.group(1))
        elif word in brand or word in forms:
            continue
        else:
            model.append(word)
    return _unglue("".join(model), memory, brand, forms)


def _unglue(joined: str, memory: int | None, brand: set[str], forms: set[str]) -> GpuName:
    """Words written together ("RTX4090", "A100PCIE", "A10080GB"): peel known brand prefixes,
    form-factor suffixes and a trailing memory size off the model until none is left."""
    aliases = _aliases()
    changed = True
    while changed and joined not in aliases:
        changed = False
        for word in brand:
            if joined.startswith(word) and len(joined) > len(word):
                joined, changed = joined[len(word) :], True
        for word in forms:
            if joined.endswith(word) and len(joined) > len(word):
                joined, changed = joined[: -len(word)], True
        glued = _GLUED_MEMORY.search(joined)
        if glued and glued.start() > 0:
            memory = memory or int(glued.group(1))
            joined, changed = joined[: glued.start()], True
    return GpuName(aliases.get(joined, joined), memory)


def matches(wanted: str | None, offered: str, memory_gb: float | None = None) -> bool:
    """Does the provider's GPU name `offered` satisfy the user's `wanted`? No wanted GPU
    matches anything. `memory_gb` is the card's memory when the provider reports it apart from
    the name (vast's gpu_ram, RunPod's memoryInGb)."""
    if not wanted:
        return True
    want, have = parse(wanted), parse(offered)
    if want.model != have.model:
        return False
    if want.memory_gb is None:
        return True
    size = have.memory_gb if have.memory_gb is not None else memory_gb
    # A card's reported memory is a little under its marketing size (80 GB reads as 79.6).
    return size is not None and abs(float(size) - want.memory_gb) <= max(2.0, 0.06 * want.memory_gb)

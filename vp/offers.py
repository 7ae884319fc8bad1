"""Offers across every platform that has credentials: the `auto` platform picks the cheapest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from vp.config import Config
from vp.errors import VpError
from vp.platforms import CLOUDS
from vp.platforms.base import HostSpec, Offer
from vp.ui import UI


def all_offers(cfg: Config, spec: HostSpec, ui: UI) -> list[Offer]:
    """Ask every cloud at once; one without credentials or SDK is skipped with a debug note."""
    from vp.hosts import platform_for

    def ask(name: str) -> list[Offer]:
        try:
            return platform_for(cfg, name).offers(spec)
        except VpError as exc:
            ui.debug(f"{name}: skipped ({exc})")
            return []

    with ThreadPoolExecutor(max_workers=len(CLOUDS)) as pool:
        results = list(pool.map(ask, CLOUDS))
    offers = [o for batch in results for o in batch]
    if spec.max_price is not None:
        offers = [o for o in offers if o.price <= spec.max_price]
    return sorted(offers, key=lambda o: o.price)


def cheapest(cfg: Config, ui: UI) -> Offer:
    from vp.hosts import spec_from_config

    spec = spec_from_config(cfg)
    offers = all_offers(cfg, spec, ui)
    if not offers:
        what = f"{spec.gpus}x {spec.gpu}" if spec.gpu else "a host"
        limit = f" under ${spec.max_price}/h" if spec.max_price is not None else ""
        raise VpError(
            f"no configured platform offers {what}{limit}",
            hint="check credentials (vp -v offers shows why each platform was skipped)",
        )
    return offers[0]

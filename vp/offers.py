"""The configured providers: the platform a config names (`platform_for`), what the project
asks for (`spec_from_config`), and offers across every platform that has credentials (the
`auto` platform picks the cheapest).

Below `vp.lifecycle` in the import order: it knows config and the platform registry only.
"""

from __future__ import annotations

from vp.config import Config, check_platform_endpoint
from vp.errors import VpError
from vp.platforms import clouds, get_platform
from vp.platforms.base import HostSpec, Offer, Platform
from vp.ui import UI


def spec_from_config(cfg: Config) -> HostSpec:
    h = cfg.host
    return HostSpec(
        gpu=cfg.gpus_wanted[0],  # a fallback list is walked by vp/capacity.py
        gpus=h.gpus,
        max_price=h.max_price,
        disk_gb=h.disk_gb,
        image=h.image,
        spot=h.spot,
        cpus=h.cpus,
        memory_gb=h.memory_gb,
        region=h.region,
        idle_stop_minutes=h.idle_stop_minutes,
    )


def platform_for(cfg: Config, name: str | None = None) -> Platform:
    name = name or cfg.platform
    check_platform_endpoint(name)  # VAST_URL & co. get the same https rule as a file's url
    return get_platform(name, cfg.section(name))


def all_offers(cfg: Config, spec: HostSpec, ui: UI) -> list[Offer]:
    """Ask every cloud at once; one without credentials or SDK is skipped with a debug note."""

    def ask(name: str) -> list[Offer]:
        try:
            return platform_for(cfg, name).offers(spec)
        except VpError as exc:
            ui.debug(f"{name}: skipped ({exc})")
            return []

    from concurrent.futures import ThreadPoolExecutor

    names = clouds()
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(ask, names))
    offers = [o for batch in results for o in batch]
    if spec.max_price is not None:
        offers = [o for o in offers if o.price <= spec.max_price]
    return sorted(offers, key=lambda o: o.price)


def cheapest(cfg: Config, ui: UI) -> Offer:
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

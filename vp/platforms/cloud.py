"""What every provider is, and the create flow every cloud provider shares.

A provider module holds its API calls and one `Declaration` (its kind, settings, secrets,
idle-stop command, the `HostSpec` fields it honours, its ownership rule). The rest of vp reads
the declaration (`vp.platforms.declaration(name)`) and never switches on a provider's name.

`CloudPlatform` owns the create flow as a template method: `_search` → make a key pair → try
the offers in order (`_launch`; a `Capacity` error moves on to the next) → `_accepted` → the
caller records the host, waits for RUNNING and ssh and pins the host key (`adopt`). On any
failure after the provider accepted, Ctrl-C included, what was made is destroyed and its key
discarded; if that destroy fails or is interrupted, the host stays recorded with its key and
the message says so. Providers implement only the `_`-methods marked abstract.
"""

from __future__ import annotations

import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Protocol

from vp import keys
from vp.errors import Interrupted, VpError
from vp.platforms.base import PENDING, Host, HostSpec, Offer, Platform
from vp.platforms.common import (
    affordable,
    describe,
    discard_key,
    no_offer,
    wait_until_ready,
)
from vp.platforms.declare import Declaration, Ownership
from vp.settings import of_table, positive


@dataclass(frozen=True)
class CloudSettings:
    """The keys every cloud provider's table has; each provider's table extends this one."""

    poll_interval: float | None = positive()  # seconds between API polls (provider default)


# HostSpec fields with a value that asks for nothing: not worth a warning when unhonoured.
_NEUTRAL: dict[str, Any] = {
    "gpus": 1,
    "disk_gb": 50,
    "spot": False,
    "idle_stop_minutes": None,
    "max_price": None,
}


def configured(decl: Declaration, settings: Any) -> bool:
    """Does this machine hold credentials for `decl`'s provider (as far as its declaration
    says where to look)? `settings` is its config table. A provider that declares none counts
    as configured."""
    import os

    if decl.credential is not None:  # an API key: the resolver's own order and files
        from vp.credentials import resolve

        try:
            resolve(decl, settings)
        except VpError:
            return False
        return True
    if not decl.credentials or any(getattr(settings, key) for key in decl.secrets):
        return True
    for where in decl.credentials:
        if where.isupper() and where.replace("_", "").isalnum():
            if os.environ.get(where):
                return True
            continue
        path = os.path.expanduser(os.path.expandvars(where))
        if "$" not in path and os.path.isfile(path):
            return True
    return False


def unhonoured(decl: Declaration, spec: HostSpec) -> list[str]:
    """The `[host]` settings in `spec` that `decl`'s provider would silently ignore."""
    out = []
    for f in fields(HostSpec):
        value = getattr(spec, f.name)
        if f.name in decl.honours or f.name == "idle_stop_minutes":
            continue
        if value is None or value == _NEUTRAL.get(f.name):
            continue
        out.append(f"{f.name} = {value!r}")
    return out


def owned(decl: Declaration, hosts: Sequence[Host], recorded: Callable[[Host], bool]) -> list:
    """The hosts that are the project's under `decl`'s ownership rule. `hosts` is what
    `list(project)` returned; `recorded(host)` says whether vp's state recorded creating it."""
    if decl.ownership is Ownership.LABEL:
        return list(hosts)
    if decl.ownership is Ownership.STATE:
        return [h for h in hosts if recorded(h)]
    return []


def labelled(rows: Any, project: str | None, label_of: Callable[[Any], str]) -> list:
    """The provider's rows whose label is `vp-PROJECT` or, a node of a multi-node run,
    `vp-PROJECT.RANK` (with no project: any `vp-` label)."""
    wanted = f"vp-{project}" if project else None
    out = []
    for row in rows or []:
        label = split_node_label(label_of(row) or "")[0]
        if label == wanted if wanted else label.startswith("vp-"):
            out.append(row)
    return out


# A node of rank R >= 1 of a multi-node run whose rank 0 is labelled `vp-P` is labelled
# `vp-P.R` where the label is all a provider keeps (vast's label, RunPod's pod name). A dot is
# never in a project name ([a-z0-9-]), so node 1 of `p` is never taken for project `p-1`.
NODE_LABEL = re.compile(r"(.+)\.([1-9][0-9]{0,3})")


def split_node_label(label: str) -> tuple[str, int]:
    """`vp-P.R` -> (`vp-P`, R); any other label -> (label, 0)."""
    m = NODE_LABEL.fullmatch(label)
    return (m.group(1), int(m.group(2))) if m else (label, 0)


def node_host_name(label: str) -> str:
    """The name vp shows for a labelled host: rank R of `vp-P` is `vp-P-R`, as vp names the
    node on every provider (vp/nodes.py node_name)."""
    group, rank = split_node_label(label)
    return f"{group}-{rank}" if rank else label


def node_rank(host: Host) -> int:
    """The host's rank in the multi-node run it was made for (0: rank 0, or a single host)."""
    value = host.labels.get("node", "")
    return int(value) if value.isdigit() else 0


class Recorder(Protocol):
    """Where a new host is written down the moment the provider accepts it (vp's state)."""

    def save(self, host: Host) -> None: ...

    def forget(self, host: Host) -> None: ...


class Unavailable(VpError):
    """The provider cannot rent what was asked right now: no offer in stock, no capacity,
    quota exceeded. A fallback list (vp/capacity.py) moves on to its next GPU or platform;
    any other VpError (rejected key, bad setting) stops it at once."""


class Capacity(Unavailable):
    """This offer cannot be had right now (rented away, no room): try the next one."""


def unavailable(exc: VpError) -> Unavailable:
    """`exc` (a provider's "nothing fits" or "no capacity" message) as an Unavailable."""
    if isinstance(exc, Unavailable):
        return exc
    return Unavailable(exc.message, hint=exc.hint)


class NotFound(VpError):
    """The instance does not exist (any more)."""


class CloudPlatform(ABC):
    """A provider that rents hosts. Subclasses set `declaration` and implement the provider
    calls; the create flow, readiness wait and failure cleanup are shared."""

    declaration: ClassVar[Declaration]
    max_offers: ClassVar[int] = 3  # the cheapest may be rented away under us: try the next
    status_label: ClassVar[str | None] = None  # Host.labels key with the provider's own status
    ready_hint: ClassVar[str] = "raise [host] ready_timeout, or try another offer"
    stopped_grace: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.__dict__.get("declaration"), Declaration):
            raise TypeError(f"{cls.__name__} must declare `declaration = Declaration(...)`")
        if not issubclass(cls.declaration.settings, CloudSettings):
            raise TypeError(f"{cls.__name__}: its settings table must extend CloudSettings")

    def __init__(self, settings: Any = None):
        self.settings = of_table(self.declaration.settings, settings)
        self.poll_interval = float(self.settings.poll_interval or 3.0)
        self._key_paths: dict[str, str] = {}  # instance id -> key made for it in this process
        self.nodes_of: str | None = None  # set by expect_nodes

    def expect_nodes(self, group: str) -> None:
        """The hosts created from now on are nodes of one multi-node run whose rank 0 is named
        `group`. A provider whose nodes share a network places them together and opens their
        ports to each other (never to the internet); a node's create fails if it cannot,
        where a single host's would carry on without."""
        self.nodes_of = group

    def node_rank_of(self, name: str) -> int:
        """The rank of a new host named `name` in the run `expect_nodes` announced (rank R
        is named `GROUP-R`); 0 for rank 0 and for a single host."""
        group = self.nodes_of
        if not group or not name.startswith(group + "-"):
            return 0
        rest = name[len(group) + 1 :]
        return int(rest) if rest.isdigit() else 0

    def label_of(self, name: str) -> str:
        """The label a new host named `name` carries where the label is the only field a
        provider keeps: `name`, or for node R of `GROUP`, `GROUP.R` (split_node_label)."""
        rank = self.node_rank_of(name)
        return f"{self.nodes_of}.{rank}" if rank else name

    def project_of(self, name: str) -> str:
        """The project a new host named `name` is labelled with: a node's is its rank 0's,
        so `list(project)` finds every node (later runs reuse them, `vp down` finds them)."""
        base = self.nodes_of or name
        return base[3:] if base.startswith("vp-") else base

    @property
    def name(self) -> str:
        return self.declaration.name

    def what(self, host_id: str) -> str:
        """How messages name one host: "vast instance 42"."""
        return f"{self.declaration.noun} {host_id}"

    # -- the provider calls ---------------------------------------------------------------------

    @abstractmethod
    def _search(self, spec: HostSpec) -> list[Offer]:
        """Every offer matching `spec`, cheapest first (max_price is applied by the caller)."""

    @abstractmethod
    def _launch(self, offer: Any, spec: HostSpec, name: str, key: keys.KeyPair) -> str:
        """Ask for one host; return its id once the provider accepted. `offer` is an item of
        `_attempts`. Raise `Capacity` to move on to the next offer."""

    @abstractmethod
    def _get(self, host_id: str) -> Host:
        """The host as the provider sees it now; `HostGone` if it does not exist."""

    @abstractmethod
    def list(self, project: str | None = None) -> list[Host]: ...

    @abstractmethod
    def start(self, host_id: str) -> Host: ...

    @abstractmethod
    def stop(self, host_id: str) -> None: ...

    @abstractmethod
    def destroy(self, host_id: str) -> None:
        """Destroy the host; a host that is already gone is not an error."""

    # -- hooks with a default ------------------------------------------------------------------

    def _attempts(self, spec: HostSpec, fitting: list[Offer]) -> list[Any]:
        """What `_launch` is tried with, in order."""
        return fitting[: self.max_offers]

    def _key_name(self, name: str) -> str:
        return name

    def _register_key(self, key: keys.KeyPair) -> None:
        """Hand the public key to the provider before any launch (AWS key pairs)."""
        return None

    def _unregister_key(self, key: keys.KeyPair) -> None:
        """Undo `_register_key` when nothing was launched."""
        return None

    def _accepted(self, host_id: str, spec: HostSpec, name: str, key: keys.KeyPair) -> Host:
        """After the provider accepted: finish the create (attach the key, check the price)
        and return the host. Anything raised here destroys it."""
        return self._get(host_id)

    def _launched(self, name: str, key: keys.KeyPair) -> list[str] | None:
        """After a create request was cut off before the provider answered (Ctrl-C): the ids of
        the hosts that request made, found by what only it carried (`name` and `key`, see
        `launch_token`), or None when the provider cannot tell."""
        return None

    def _no_offer(self, spec: HostSpec, found: list[Offer]) -> VpError:
        return no_offer(spec, found, what=f"{self.declaration.provider} offer", platform=self.name)

    def unmatched_gpu(self, spec: HostSpec, named: str, hint: str | None = None) -> VpError | None:
        """When `spec.gpu` names no GPU this provider offers at all (`named` says where it was
        asked for: "--gpu RTX4909"): an error naming the nearest offered ones, compared on the
        normalised names `gpus.parse` makes. None when the name is offered, so the count, disk
        or price is what left no offer."""
        if not spec.gpu:
            return None
        if self._search(replace(spec, gpus=1, max_price=None)):
            return None  # offered (some providers only in larger machines, e.g. AWS's 8x A100)
        survey = replace(spec, gpu=None, gpus=1, max_price=None)
        return unmatched_gpu(
            spec.gpu,
            [o.gpu for o in self._search(survey)],
            f"no {self.declaration.provider} offer matches {named}",
            hint or f"run `vp offers -p {self.name}` to see what is available",
        )

    def _no_capacity(self, spec: HostSpec, failures: list[VpError]) -> VpError:
        last = failures[-1].message if failures else "no offer could be rented"
        return VpError(
            f"{self.declaration.provider} has no capacity for {describe(spec)}: {last}",
            hint="try again, pick another gpu, or raise max_price",
        )

    # -- the shared flow -------------------------------------------------------------------------

    def offers(self, spec: HostSpec) -> list[Offer]:
        return [o for o in self._search(spec) if affordable(o, spec)]

    def create(self, spec: HostSpec, name: str, recorder: Recorder | None = None) -> Host:
        """Rent the cheapest offer that fits, with a key pair made for this host alone.

        `recorder` writes the host down as soon as the provider accepted it, so an interrupted
        create leaves it either destroyed or recorded with its key, never unreachable."""
        found = self._search(spec)
        fitting = [o for o in found if affordable(o, spec)]
        if not found:
            named = f"[host] gpu = {spec.gpu!r}"
            unknown = self.unmatched_gpu(spec, named, "set a GPU it offers: " + SET_GPU)
            if unknown is not None:
                raise unknown
        if not fitting:
            raise unavailable(self._no_offer(spec, found))
        attempts = self._attempts(spec, fitting)
        pair = keys.new_keypair(self._key_name(name))
        host_id: str | None = None
        cut: BaseException | None = None  # the create request was cut off mid-flight
        try:
            self._register_key(pair)
            failures: list[VpError] = []
            for attempt in attempts:
                try:
                    host_id = self._launch(attempt, spec, name, pair)
                    break
                except Capacity as exc:
                    failures.append(exc)
                except VpError:
                    raise  # the provider answered: it said what it did
                except BaseException as exc:  # noqa: BLE001 - Ctrl-C before the answer came
                    cut = exc
                    break
            if host_id is None and cut is None:
                raise unavailable(self._no_capacity(spec, failures))
        except BaseException:
            self._unregister_key(pair)
            discard_key(pair.private_path)
            raise
        if host_id is None:
            self._settle_cut_launch(name, pair, cut, recorder)
        self._key_paths[host_id] = str(pair.private_path)
        rank = self.node_rank_of(name)
        placeholder = Host(
            id=host_id,
            name=name,
            platform=self.name,
            status=PENDING,
            key_path=str(pair.private_path),
            host_key_alias=f"vp-{self.name}-{host_id}",
            created_at=time.time(),
            labels={"node": str(rank)} if rank else {},
        )
        try:
            if recorder is not None:
                recorder.save(placeholder)
            host = self._accepted(host_id, spec, name, pair)
            return replace(
                host,
                key_path=host.key_path or placeholder.key_path,
                labels={**placeholder.labels, **host.labels},  # a node's rank, if unlabelled
            )
        except BaseException as exc:
            self._key_paths.pop(host_id, None)
            settle_failed_create(self, placeholder, exc, recorder)

    def _settle_cut_launch(
        self, name: str, pair: keys.KeyPair, exc: BaseException | None, recorder: Recorder | None
    ) -> NoReturn:
        """The create request was cut off (Ctrl-C) before the provider said whether it made a
        host: look for what it made under this create's token, destroy it (or, failing that,
        record it with its key) and re-raise saying which."""
        assert exc is not None
        decl = self.declaration
        try:
            found = self._launched(name, pair)
        except BaseException as lookup:  # noqa: BLE001 - a second Ctrl-C lands here too
            why = "interrupted again" if isinstance(lookup, KeyboardInterrupt) else str(lookup)
            found = []
            done = (
                f"could not check whether {decl.provider} made a {decl.noun} ({why}); "
                "if it did, `vp cleanup` lists it"
            )
        else:
            done = (
                f"{decl.provider} made no {decl.noun} for it"
                if found == []
                else f"{decl.provider} may have made a {decl.noun}: check its console"
            )
        if not found:
            self._unregister_key(pair)
            discard_key(pair.private_path)
            reraise_after_cleanup(exc, done, decl.provider)
        outcomes = []
        for host_id in found:
            host = Host(
                id=host_id,
                name=name,
                platform=self.name,
                status=PENDING,
                key_path=str(pair.private_path),
                host_key_alias=f"vp-{self.name}-{host_id}",
                created_at=time.time(),
            )
            outcomes.append(settle(self, host, recorder, discard=False))
        if all(destroyed for _, destroyed in outcomes):
            discard_key(pair.private_path)
        reraise_after_cleanup(exc, "; ".join(text for text, _ in outcomes), decl.provider)

    def wait_ready(self, host_id: str, timeout: float) -> Host:
        return wait_until_ready(
            lambda: self._get(host_id),
            what=self.what(host_id),
            timeout=timeout,
            poll_interval=self.poll_interval,
            status_label=self.status_label,
            hint=self.ready_hint,
            stopped_grace=self.stopped_grace,
        )


SET_GPU = "`vp config set host.gpu NAME`"


def unmatched_gpu(wanted: str, offered: Sequence[str], message: str, hint: str) -> VpError | None:
    """`message` plus the offered GPU names nearest to `wanted` (difflib over the normalised
    models, so `RTX4909` finds `RTX 4090`), or None when `wanted` is among them."""
    import difflib

    from vp.platforms import gpus

    models: dict[str, str] = {}  # normalised model -> the first (cheapest) name offered for it
    for name in offered:
        models.setdefault(gpus.parse(name).model, name)
    want = gpus.parse(wanted).model
    if want in models:
        return None
    score = {m: difflib.SequenceMatcher(None, want, m).ratio() for m in models}
    best = max(score.values(), default=0.0)
    # The clearly nearest only: `4909` is `4090`, not also `A40` and `3090`.
    near = sorted((m for m in models if score[m] >= max(0.5, best - 0.1)), key=lambda m: -score[m])
    near = near[:3]
    if near:
        tail = "; nearest offered: " + ", ".join(models[m] for m in near)
    elif models:
        tail = "; offered: " + ", ".join(list(models.values())[:6])
    else:
        tail = "; none is offered right now"
    return VpError(message + tail, hint=hint)


def declaration_of(platform: Platform) -> Declaration | None:
    return getattr(type(platform), "declaration", None)


def launch_token(key: keys.KeyPair) -> str:
    """A token only one create carries (from the public key made for it alone): providers that
    can store it on the host (an env var) find what a cut-off create request made by it."""
    return hashlib.sha256(key.public_key.strip().encode()).hexdigest()[:20]


def settle_failed_create(
    platform: Platform, host: Host, exc: BaseException, recorder: Recorder | None
) -> NoReturn:
    """A create failed after the provider accepted `host`: destroy it, or, when that fails or
    a second Ctrl-C interrupts it, keep it recorded with its key. Re-raise `exc` saying which."""
    decl = declaration_of(platform)
    provider = (decl.provider if decl else "") or platform.name
    done, _ = settle(platform, host, recorder)
    reraise_after_cleanup(exc, done, provider)


def settle(
    platform: Platform, host: Host, recorder: Recorder | None, *, discard: bool = True
) -> tuple[str, bool]:
    """Destroy `host`, which a failed create made, and forget it (and, with `discard`, its key);
    if that fails, record it as an orphan with its key. (What became of it, destroyed?)"""
    decl = declaration_of(platform)
    verb, past = decl.destroy_words if decl else ("destroy", "destroyed")
    what = f"{decl.noun if decl else platform.name + ' host'} {host.id}"
    try:
        platform.destroy(host.id)
    except BaseException as cleanup:  # noqa: BLE001 - a second Ctrl-C lands here too
        why = "interrupted again" if isinstance(cleanup, KeyboardInterrupt) else str(cleanup)
        if recorder is not None:
            try:
                recorder.save(replace(host, labels={**host.labels, "orphan": "create failed"}))
                return (
                    f"could not {verb} the new {what} ({why}); it may be running and billing: "
                    f"it is recorded with its key, {verb} it with: vp down {host.id}"
                ), False
            except BaseException:  # noqa: BLE001
                pass
        return (
            f"could not {verb} the new {what} ({why}); it may be running and billing: "
            f"its key is kept at {host.key_path}; {verb} it in the provider's console"
        ), False
    if discard and host.key_path:  # the key of a host that no longer exists opens nothing
        discard_key(Path(host.key_path))
    if recorder is not None:
        try:
            recorder.forget(host)
        except BaseException:  # noqa: BLE001 - the host is gone; a stale row is harmless
            pass
    return f"{past} the new {what}", True


def reraise_after_cleanup(
    exc: BaseException, done: str, provider: str, describe: Callable[[BaseException], str] = str
) -> NoReturn:
    """Re-raise a create's failure with what became of the host appended (`done`, may be "").
    Ctrl-C becomes `Interrupted` (exit 130); anything that is not a VpError becomes one, its
    text made by `describe`."""
    tail = f"; {done}" if done else ""
    a = "an" if provider[:1] in "AEIOU" else "a"
    if isinstance(exc, KeyboardInterrupt):
        raise Interrupted(f"interrupted while creating {a} {provider} host{tail}") from None
    if isinstance(exc, VpError):
        raise type(exc)(f"{exc.message}{tail}", hint=exc.hint) from None
    raise VpError(f"creating {a} {provider} host failed ({describe(exc)}){tail}") from None


def adopt(
    platform: Platform,
    host: Host,
    *,
    timeout: float,
    recorder: Recorder,
    pin: Callable[[Host], Any],
    waiting: Callable[[Host], Any] | None = None,
) -> tuple[Host, Any]:
    """A host the provider just made (create or clone): record it, wait for RUNNING and ssh,
    pin its host key (`pin` connects and returns the transport). Any failure, Ctrl-C included,
    destroys it and its key, or leaves it recorded if that fails, and re-raises saying which."""
    if host.created_at is None:
        host = replace(host, created_at=time.time())
    recorder.save(host)
    try:
        if waiting is not None:
            with waiting(host):
                ready = platform.wait_ready(host.id, timeout)
        else:
            ready = platform.wait_ready(host.id, timeout)
        host = replace(
            ready,
            key_path=ready.key_path or host.key_path,
            host_key_alias=ready.host_key_alias or host.host_key_alias,
            created_at=ready.created_at or host.created_at,
            price=ready.price if ready.price is not None else host.price,
            labels={**host.labels, **ready.labels},
        )
        recorder.save(host)
        return host, pin(host)
    except BaseException as exc:
        settle_failed_create(platform, host, exc, recorder)

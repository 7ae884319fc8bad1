"""What a provider is (`Declaration`), apart from the create flow (vp/platforms/cloud.py):
config validation and the `ssh` and `local` providers read declarations without importing
the cloud machinery (a warm run on an ssh host loads none of it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal

from vp.platforms.base import HostSpec
from vp.settings import NoSettings

if TYPE_CHECKING:
    from vp.credentials import Credential

Kind = Literal["vm", "container", "ssh", "local"]


class Ownership(enum.Enum):
    """How a provider tells the project's hosts from everything else on the account."""

    LABEL = "label"  # the provider stores vp's label on the host; list(project) filters by it
    STATE = "state"  # the provider keeps no label: only hosts vp's state recorded creating


@dataclass(frozen=True)
class Declaration:
    """Everything the rest of vp may know about a provider, in one place."""

    name: str
    kind: Kind
    # Required: which hosts on the account are the project's. Nothing else is ever adopted,
    # stopped or destroyed.
    ownership: Ownership | None
    # The provider's config table (`[vast]`): a frozen dataclass whose fields are its keys,
    # types, defaults and range rules (vp/settings.py). The platform gets an instance.
    settings: type = NoSettings
    # Keys of that table holding secrets: masked when shown, refused in project files.
    secrets: tuple[str, ...] = ()
    # The API credential, if the provider has one vp reads (vp/credentials.py resolves it in
    # the one documented order); its `key` is one of `secrets`.
    credential: Credential | None = None
    # The environment variable that points vp at another API endpoint (an emulator, a proxy)
    # and, if the table has one, its key for the same (`url`): the user file or environment
    # only, since the endpoint receives the API key.
    endpoint_env: str | None = None
    endpoint_key: str | None = None
    # Shell command that stops the host from inside (idle stop), or None.
    idle_stop: str | None = None
    # Where the provider's credentials may be found: environment variables and files (`~` and
    # `$VARS` expanded), for providers whose SDK finds its own credentials (AWS, GCE); one
    # with an API key (`credential` below) is configured when the key resolves. Any present,
    # or a secret of its table set, means "configured": `vp ls --all` and `vp cleanup` ask
    # it. Neither declared: vp cannot tell, so it asks anyway.
    credentials: tuple[str, ...] = ()
    # What the provider bills, $/GB/month, for the disk of a STOPPED host (None: nothing or
    # unknown). The spend ledger charges it while a host is stopped; running, the host's own
    # $/h (`Host.price`) is the whole bill. List prices; the comment at each value dates it.
    storage_price: float | None = None
    # Whether the provider can stop a host and start it again with its disk (`vp stop` /
    # `vp start`, a stopped host started on use). False: a host runs, and bills, until it is
    # destroyed; `stop`/`start` refuse in one line.
    can_stop: bool = True
    # HostSpec fields the provider acts on. Any other field set in [host] is warned about.
    honours: frozenset[str] = frozenset()
    # Multi-node runs (vp/nodes.py): whether the provider's hosts of one project reach each
    # other on a private network. True: MASTER_ADDR and VP_NODE_IPS are the addresses the
    # nodes report for themselves (their private ones) and `network` says which rule opens
    # their ports to each other (only to each other, never to the internet). False: the
    # public ssh addresses, where only the ports the provider maps are reachable.
    private_network: bool = False
    network: str = "public addresses only: open ports between nodes are the provider's mapped ports"
    # Words for its hosts in messages ("vast instance 42") and for destroying one.
    noun: str = "instance"
    provider: str = ""
    destroy_words: tuple[str, str] = ("destroy", "destroyed")

    def __post_init__(self) -> None:
        unknown = self.honours - {f.name for f in fields(HostSpec)}
        if unknown:
            raise TypeError(f"{self.name}: honours unknown HostSpec fields {sorted(unknown)}")
        if self.kind not in ("ssh", "local") and self.ownership is None:
            raise TypeError(f"{self.name}: a provider that makes hosts must declare ownership")
        undeclared = set(self.secrets) - {f.name for f in fields(self.settings)}
        if undeclared:
            raise TypeError(f"{self.name}: secrets {sorted(undeclared)} are not keys of its table")
        if self.credential is not None and self.credential.key not in self.secrets:
            raise TypeError(f"{self.name}: its credential key must be one of its secrets")

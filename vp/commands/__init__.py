"""The subcommand registry: each name, the module that defines it and its one-line summary.

`vp.cli` imports a command's module only when that command runs (or its own help is asked
for), the way `vp.platforms` imports a provider only when it is used: `vp python train.py`
and `vp --help` load no command module. Every module here defines its commands on its own
`app = typer.Typer()` and never imports `vp.cli`. tests/test_local.py checks that the
registry and the modules agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    module: str
    summary: str  # shown by `vp --help` without importing the module
    hidden: bool = False  # aliases (`vp create`): accepted, not listed


_HOSTS = "vp.commands.hosts"
_ACCESS = "vp.commands.access"
_RUNS = "vp.commands.runs"
_CAPS = "vp.commands.modify"

COMMANDS: dict[str, Entry] = {
    "init": Entry("vp.commands.init", "Write vp.toml and .vpignore for this project."),
    "config": Entry("vp.commands.config", "Show, read and change configuration."),
    "runs": Entry(_RUNS, "Run history: id, command, host, start, duration, exit, cost."),
    "logs": Entry(_RUNS, "Print a run's output; -f follows it until it ends."),
    "attach": Entry(_RUNS, "Follow a detached run (Ctrl-C interrupts it), then fetch results."),
    "kill": Entry(_RUNS, "Stop a run (SIGTERM to its process group, then SIGKILL)."),
    "ls": Entry(_HOSTS, "List the project's hosts (--all: every vp host on the platform)."),
    "list-instances": Entry(_HOSTS, "Alias of `vp ls`.", hidden=True),
    "offers": Entry(_HOSTS, "Search GPUs and prices that meet [host] (cheapest first)."),
    "up": Entry(_HOSTS, "Create the project's host from [host] (or start its stopped one)."),
    "create": Entry(_HOSTS, "Alias of `vp up`.", hidden=True),
    "start": Entry(_HOSTS, "Start a stopped host and wait until ssh answers."),
    "stop": Entry(_HOSTS, "Stop a host (keeps its disk; billing for compute stops)."),
    "down": Entry(_HOSTS, "Destroy a host and its disk. Asks first unless --yes."),
    "destroy": Entry(_HOSTS, "Alias of `vp down`.", hidden=True),
    "status": Entry(_HOSTS, "The project's host: state, uptime, $/h and cost so far."),
    "gpu": Entry(_HOSTS, "nvidia-smi summary of the project's host."),
    "modify": Entry(_CAPS, "Change a host's GPU, GPU count, vCPUs or disk in place."),
    "clone": Entry(_CAPS, "Make a new host from a host's disk (same GPU and size)."),
    "ssh": Entry(_ACCESS, "Shell on the project's host, in its workdir, inside tmux."),
    "ssh-config": Entry(_ACCESS, "Write (or --remove) the alias vp-PROJECT in ~/.ssh/config."),
    "cleanup": Entry(_ACCESS, "Remove aliases and pins of gone hosts; list orphaned instances."),
    "tunnel": Entry(_ACCESS, "Forward host ports here until Ctrl-C: REMOTE[:LOCAL] ..."),
    "upload": Entry(_ACCESS, "Copy a file or folder to the host, outside the sync rules."),
    "download": Entry(_ACCESS, "Copy a file or folder from the host."),
    "sync": Entry(_ACCESS, "Upload the workspace now; --watch keeps going, --status shows."),
    "secret": Entry("vp.commands.secret", "Tokens your runs need (HF_TOKEN...), kept here."),
    "setup": Entry(
        "vp.commands.secret", "Run the project's [setup] on its host now if its inputs changed."
    ),
    "trust": Entry("vp.commands.trust", "Trust the ssh host(s) this project's vp.toml names."),
    "spend": Entry("vp.commands.spend", "What vp's hosts cost: compute running, disk stopped."),
    "ui": Entry("vp.commands.web", "Serve the web control page: hosts, runs, live logs, apps."),
}

# Every subcommand name, so dispatch can tell `vp ls` from `vp python ...` without importing
# the command modules.
SUBCOMMANDS = frozenset({"run", *COMMANDS})

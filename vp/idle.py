"""Idle stop: a small watchdog on the host stops it after `idle_stop_minutes` with no vp run.

It is installed by the run's own launch session (no extra round trip) and survives the
connection. Activity is a live run under the runs dir, or a vp session touching the activity
file. How a host stops itself depends on the platform: VMs shut down (AWS and GCE turn a guest
shutdown into a stop), vast.ai and RunPod containers call their provider with the scoped key
the provider injects into the instance. Thunder Compute has none: it cannot stop an instance,
a guest shutdown stops no billing there, and its only credential is the account-wide token,
which never goes to a rented host; `vp run` says so on every run instead.
`[host] idle_stop_command` replaces the built-in one.
"""

from __future__ import annotations

import shlex


def from_pid1(*names: str) -> str:
    """Shell text exporting `names` from the container's PID 1 environment: providers put their
    scoped credentials there, and an ssh session does not inherit them."""
    return (
        "eval \"$(tr '\\0' '\\n' < /proc/1/environ 2>/dev/null"
        f" | grep -E '^({'|'.join(names)})=[A-Za-z0-9_.-]*$'"
        " | sed 's/^/export /')\"; "
    )


VM_SHUTDOWN = (
    "sudo -n shutdown -h now 2>/dev/null || shutdown -h now || sudo -n poweroff || poweroff"
)


def stop_command(platform: str, override: str | None) -> str | None:
    """The shell command that stops this host from inside, or None if there is none. Each
    provider declares its own (`Declaration.idle_stop`); `[host] idle_stop_command` wins."""
    if override:
        return override
    from vp.platforms import declaration

    return declaration(platform).idle_stop


def unavailable(platform: str) -> str:
    """Why idle stop does nothing on `platform` (which declares no idle-stop command): said on
    every run, since a silently ignored autostop costs money."""
    from vp.platforms import declaration

    decl = declaration(platform)
    if not decl.can_stop:
        provider = decl.provider or platform
        return (
            f"idle_stop_minutes has no effect on {platform} hosts: {provider} cannot stop an "
            "instance, it bills until deleted (`vp down`); set [host] idle_stop_command to "
            "act from the host"
        )
    return (
        f"idle_stop_minutes has no effect on {platform} hosts (vp cannot stop them) unless "
        "[host] idle_stop_command says how"
    )


def watchdog_snippet(
    runs_dir_sh: str, minutes: float | None, command: str, budget_seconds: float | None = None
) -> str:
    """Shell text for the launch script: record activity, (re)configure and start the watchdog.

    `minutes`: idle stop after that long with no run (None: no idle stop). `budget_seconds`:
    stop the host that many seconds from now whatever runs, because the spend cap would be
    reached then (vp/spend.py); the deadline is set on the host's clock, so it holds with
    the laptop closed. Each run start rewrites both."""
    seconds = max(1, int(minutes * 60)) if minutes else 0
    budget = max(1, int(budget_seconds)) if budget_seconds is not None else 0
    interval = max(1, min(30, min(s for s in (seconds, budget, 120) if s) // 4))
    limit = seconds or 10**9  # no idle stop: a limit no host reaches
    base = f"{runs_dir_sh}/../watchdog"
    body = f"""echo $$ > "$W.pid"
while :; do
  . "$W.conf"
  sleep "$vp_interval"
  if [ "${{vp_deadline:-0}}" -gt 0 ] && [ "$(date +%s)" -ge "$vp_deadline" ]; then
    echo "$(date) the spend cap would be reached: stopping" >> "$W.log"
    rm -f "$W.pid"
    sh "$W.stop" >> "$W.log" 2>&1
    exit 0
  fi
  vp_busy=0
  for vp_d in {runs_dir_sh}/*/; do
    [ -e "$vp_d/exit" ] && continue
    vp_p=$(cat "$vp_d/pid" 2>/dev/null) && kill -0 "$vp_p" 2>/dev/null && vp_busy=1
  done
  if [ "$vp_busy" = 1 ]; then touch "$W.activity"; continue; fi
  vp_last=$(stat -c %Y "$W.activity" 2>/dev/null || echo 0)
  if [ $(( $(date +%s) - vp_last )) -ge "$vp_limit" ]; then
    echo "$(date) idle for $vp_limit s: stopping" >> "$W.log"
    rm -f "$W.pid"
    sh "$W.stop" >> "$W.log" 2>&1
    exit 0
  fi
done
"""
    # On every run start, so builtins only while this very watchdog runs (no process: each
    # costs a warm call 1-2 ms): its version is a digest of its text, kept beside it.
    import hashlib

    script = f"W={base}\n{body}"
    version = hashlib.sha1(script.encode()).hexdigest()[:16]
    return f"""W={base}
: > "$W.activity"
vp_dl=0; [ {budget} -gt 0 ] && vp_dl=$(( $(date +%s) + {budget} ))
printf 'vp_limit=%s\\nvp_interval=%s\\nvp_deadline=%s\\n' {limit} {interval} "$vp_dl" > "$W.conf"
printf '%s\\n' {shlex.quote(command)} > "$W.stop"
vp_wp=; vp_wv=; {{ read -r vp_wp < "$W.pid"; read -r vp_wv < "$W.ver"; }} 2>/dev/null
if [ -n "$vp_wp" ] && kill -0 "$vp_wp" 2>/dev/null && [ "$vp_wv" = {version} ]; then :
else  # none running, or one from another vp version: start this one
  [ -n "$vp_wp" ] && kill "$vp_wp" 2>/dev/null
  printf %s {shlex.quote(script)} > "$W.sh.new" && mv "$W.sh.new" "$W.sh"
  echo {version} > "$W.ver"
  setsid -f /bin/sh "$W.sh" < /dev/null > /dev/null 2>&1
fi
"""

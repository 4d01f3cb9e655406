"""Ending a terminal session where the back end does not: its processes carry a mark.

Docker does not kill an exec'd process when its client goes away, and an SSH server only
hangs up the terminal (a shell's background jobs live on). Such a provider gives each
session's process a random token in its environment (``MARKER_VARIABLE``) and, at
``close``, runs ``KILL_SCRIPT`` inside the instance with the token as ``$1``: it kills
every process bearing the token and every process of their terminal sessions, again until
a pass finds none (a shell may fork while it is being killed).
"""

from __future__ import annotations

MARKER_VARIABLE = "SBX_TERMINAL"

#: Run by ``close`` with the session's token as $1: kill its processes and their sessions,
#: again until a pass finds none (a shell may fork while it is being killed).
KILL_SCRIPT = r"""
t="$MARKER_VARIABLE=$1"
for round in $(seq 1 200); do
  sids=""
  # One grep over every environment (a fork per process made this take a second on a
  # host with hundreds); a substring match, so only a sandbox's own process can fake one.
  for f in $(grep -lsF "$t" /proc/[0-9]*/environ); do
    d=${f%/environ}
    read -r s < "$d/stat" 2>/dev/null || continue
    set -- ${s##*) }
    sids="$sids $4"
    kill -9 "${d#/proc/}" 2>/dev/null
  done
  found=""
  for d in /proc/[0-9]*; do
    read -r s < "$d/stat" 2>/dev/null || continue
    set -- ${s##*) }
    [ "$1" = Z ] && continue
    for sid in $sids; do
      if [ "$4" = "$sid" ] && [ "${d#/proc/}" != "$$" ]; then
        kill -9 "${d#/proc/}" 2>/dev/null; found=1
      fi
    done
  done
  [ -z "$sids" ] && [ -z "$found" ] && exit 0
  sleep 0.01
done
""".replace("$MARKER_VARIABLE", MARKER_VARIABLE)

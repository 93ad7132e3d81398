# Sourced (not run) by scripts/demo and scripts/test, from the repository's root.
#
# apt_install PACKAGE...   Debian packages, without prompts (sudo when not root).
# use_venv [EXTRAS]        The project's virtual environment: make .venv (or reuse it
#                          when healthy), install meshrun into it (editable, with EXTRAS),
#                          put its bin/ first on PATH and set PY to its python.
#
# Python packages never go into the system Python: Debian's python3 is "externally
# managed" (PEP 668), and that is right. PYTHON=/path/to/python3 picks the interpreter
# the venv is made from (default: python3 on PATH); MESHRUN_VENV moves the venv.

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

_apt_updated=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$_apt_updated" ]; then
    $SUDO apt-get update -qq
    _apt_updated=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Which interpreter a venv was made from: its base prefix and version.
_PY_ID='import sys; print(sys.base_prefix, *sys.version_info[:3])'

use_venv() {
  local spec="." base venv stamp want
  if [ -n "${1:-}" ]; then spec=".[$1]"; fi
  base=${PYTHON:-python3}
  venv=${MESHRUN_VENV:-.venv}
  if ! command -v "$base" >/dev/null 2>&1; then
    if [ -n "${PYTHON:-}" ]; then
      echo "PYTHON=$PYTHON: no such interpreter" >&2
      exit 1
    fi
    apt_install python3 python3-venv
  fi
  # Debian ships the venv module without ensurepip (and so without pip) until
  # python3-venv is installed; python3.X-venv when PYTHON is another version.
  if ! "$base" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv || true
    if ! "$base" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      apt_install "python$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" ||
        true
    fi
    "$base" -c 'import ensurepip, venv' >/dev/null 2>&1 || {
      echo "$base cannot make a virtual environment: install python3-venv" >&2
      exit 1
    }
  fi
  # Reuse the venv only if it runs, has pip, and comes from the interpreter asked for.
  want=$("$base" -c "$_PY_ID")
  if [ ! -x "$venv/bin/python" ] ||
    [ "$("$venv/bin/python" -c "import pip; $_PY_ID" 2>/dev/null)" != "$want" ]; then
    echo "meshrun: making the virtual environment $venv ($base)" >&2
    "$base" -m venv --clear "$venv"
  fi
  VIRTUAL_ENV=$(cd "$venv" && pwd)
  export VIRTUAL_ENV
  export PATH="$VIRTUAL_ENV/bin:$PATH"
  unset PYTHONHOME
  PY="$VIRTUAL_ENV/bin/python"
  # Install again only when pyproject.toml (dependencies, extras, entry points) changed:
  # the install is editable, so the sources themselves are always the live ones.
  stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $spec $PWD"
  if ! grep -qxF "$stamp" "$VIRTUAL_ENV/.meshrun-installed" 2>/dev/null ||
    ! "$PY" -c 'import meshrun' >/dev/null 2>&1; then
    "$PY" -m pip install -q --disable-pip-version-check -e "$spec"
    echo "$stamp" >>"$VIRTUAL_ENV/.meshrun-installed"
  fi
}

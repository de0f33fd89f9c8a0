# Sourced by scripts/dev and scripts/test: makes .venv with Python 3.11+ and installs leadsync into it from the
# lock files with hashes (requirements/runtime.txt, or requirements/test.txt when the extras include `test`;
# scripts/lock refreshes them). Extras that are not locked (bench) are resolved on top, keeping the locked pins.
# Re-installs only when pyproject.toml or a lock file changed. Usage: source scripts/bootstrap.sh [extras]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  echo "leadsync needs Python 3.11 or newer (apt-get install python3)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="$(find_python)"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian and Ubuntu ship venv's ensurepip separately.
    rm -rf "$VENV"
    version="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${version}-venv" ||
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$PYTHON" -m venv "$VENV"
  fi
fi

case ",$EXTRAS," in
  *,test,*) LOCK="$ROOT/requirements/test.txt" ;;
  *) LOCK="$ROOT/requirements/runtime.txt" ;;
esac
# The stamp names what was installed: a changed pyproject.toml or lock file (a pull, a refresh) re-installs.
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT"/requirements/*.txt | sha256sum | cut -c1-16)${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # Exactly the locked versions, each checked against its hash (the build backend included: no build isolation,
  # so nothing unpinned is fetched to build leadsync itself).
  "$VENV/bin/python" -m pip install --quiet --require-hashes -r "$LOCK"
  "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
  unlocked="$(tr ',' '\n' <<<"$EXTRAS" | grep -vx -e test -e '' | paste -sd, || true)"
  if [ -n "$unlocked" ]; then
    "$VENV/bin/python" -m pip install --quiet --no-build-isolation -e "$ROOT[$unlocked]"
  fi
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

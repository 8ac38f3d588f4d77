# Sourced by scripts/test, scripts/demo and scripts/bench: create or reuse .venv and install
# ringwal (editable) with the extras named in RINGWAL_EXTRAS. Re-installs only when
# pyproject.toml or the extras change.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($py --version)" >&2
  "$py" -m venv .venv
fi
extras=${RINGWAL_EXTRAS:-}
stamp=".venv/.ringwal-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) [$extras]"
have=$(cat "$stamp" 2>/dev/null || true)
# An install with the test extras also serves a run that asks for none.
if [ "$have" != "$want" ] && { [ -n "$extras" ] || [ "${have%% *}" != "${want%% *}" ]; }; then
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  echo "installing ringwal${extras:+ with $extras} into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
  echo "$want" > "$stamp"
fi
VPY="$root/.venv/bin/python"

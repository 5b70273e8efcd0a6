#!/usr/bin/env bash
# The system packages the test suite starts servers from: PostgreSQL's server binaries and
# Chromium (for the Prefect UI tests). As root with apt-get, installs whichever is missing.
# Otherwise, if one is missing, prints one line naming the command to run and exits 1.
# Used by `make test` and .ci/run.
set -euo pipefail

has_postgresql() {  # initdb and pg_ctl side by side, where tests/support/postgres.py looks for them
  local initdb dir
  initdb=$(command -v initdb || true)
  for dir in /usr/lib/postgresql/*/bin ${initdb:+"$(dirname "$initdb")"}; do
    [[ -x $dir/initdb && -x $dir/pg_ctl ]] && return 0
  done
  return 1
}

missing=()
has_postgresql || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
((${#missing[@]})) || exit 0

if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  exit 0
fi
if command -v apt-get >/dev/null; then
  how="run \`sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}\`"
else
  how="install them with your system's package manager (these are Debian's package names)"
fi
echo "make test needs ${missing[*]}, not installed here: $how, then make test again (make test-fast needs neither)" >&2
exit 1

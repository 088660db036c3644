#!/usr/bin/env bash
# Set-up shared by `make demo` and `make test`: Debian packages the testbed needs,
# then a Python 3.13 virtual environment with danescan installed in it.
set -euo pipefail
venv=${1:-.venv}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

need_pkgs=()
for pair in nsd:nsd unbound:unbound unbound-control:unbound dig:bind9-dnsutils \
            dnsperf:dnsperf ldns-dane:ldnsutils posttls-finger:postfix openssl:openssl; do
    cmd=${pair%%:*}; pkg=${pair##*:}
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "danescan set-up: missing ${need_pkgs[*]} and no apt-get here; install them with your package manager" >&2
        exit 1
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "danescan set-up: missing ${need_pkgs[*]}; run as root (apt-get install ${need_pkgs[*]})" >&2
        exit 1
    fi
    echo "danescan set-up: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

py=""
for cand in "${PYTHON:-}" "$HOME/.pyenv/versions/3.13.0/bin/python3" python3.13; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
        py=$cand; break
    fi
done
if [ -z "$py" ]; then
    echo "danescan set-up: Python 3.13 not found (pyenv install 3.13.0, or set PYTHON=)" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[report,test,lint,notebooks]" 2>&1 | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -c 'import scanner, danescan_migrations, trio, dns, sqlalchemy, psycopg, pandas, matplotlib'
echo "danescan set-up: ready ($venv)"

#!/usr/bin/env bash
# Installs the server binaries that the integration tests start themselves
# (tests/support/services.py): redis-server and PostgreSQL (initdb + postgres),
# and Debian's chromium, which the browser tests (tests/browser) drive with Playwright
# (Playwright never downloads a browser here).
#
# - Idempotent and fast: when everything is present it only prints where it is.
# - Never starts a system service: tests run their own processes on free ports.
#   A temporary /usr/sbin/policy-rc.d blocks service starts during the install
#   (the packages still enable their units for a boot), and Debian's automatic
#   "main" PostgreSQL cluster is not created.
# - Without root it still succeeds when everything is there; otherwise it says
#   what to install and exits 1.
#
# Debian 12 paths: /usr/bin/redis-server (package redis-server),
# /usr/lib/postgresql/15/bin/{initdb,postgres,pg_dump,pg_restore} (package postgresql -> postgresql-15),
# /usr/bin/chromium (package chromium), /usr/bin/promtool (package prometheus),
# /usr/sbin/nginx (nginx-light), /usr/bin/envsubst (gettext-base), /usr/bin/openssl (openssl),
# /usr/bin/spamassassin (spamassassin).
set -euo pipefail

log() { printf 'install-test-services: %s\n' "$*"; }

# The newest /usr/lib/postgresql/<ver>/bin holding both initdb and postgres, else PATH.
find_pg_bindir() {
    local dir initdb
    while IFS= read -r dir; do
        if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/postgres" ]]; then
            echo "$dir"
            return 0
        fi
    done < <(shopt -s nullglob; printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rn)
    if initdb="$(command -v initdb 2>/dev/null)"; then
        dir="$(dirname "$(readlink -f "$initdb")")"
        if [[ -x "$dir/postgres" ]]; then
            echo "$dir"
            return 0
        fi
    fi
    return 1
}

find_redis() {
    command -v redis-server 2>/dev/null || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; }
}

find_chromium() {
    command -v chromium 2>/dev/null || { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }
}

missing=()
find_redis >/dev/null || missing+=(redis-server)
find_chromium >/dev/null || missing+=(chromium)
find_pg_bindir >/dev/null || missing+=(postgresql)
# Validates the alert rules and scrape config in config/prometheus (`promtool`, Debian package prometheus;
# its service is never started: policy-rc.d below).
command -v promtool >/dev/null || missing+=(prometheus)
# Validates docker-compose.yml without a Docker engine (`docker-compose config -q`).
command -v docker-compose >/dev/null || missing+=(docker-compose)
# Installs axe-core (tests/browser/package-lock.json) for the accessibility tests.
command -v npm >/dev/null || missing+=(npm)
# The production rehearsal (tests/deploy): Debian's nginx runs the compose file's proxy template, rendered by
# envsubst as the official nginx image does, with a throwaway certificate from openssl. nginx-light's own
# service is never started (policy-rc.d below); the tests run nginx as an unprivileged user on free ports.
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx-light)
command -v envsubst >/dev/null || missing+=(gettext-base)
command -v openssl >/dev/null || missing+=(openssl)
# Scores the packet emails as a receiving mail server would (the mail tests).
command -v spamassassin >/dev/null || missing+=(spamassassin)

if ((${#missing[@]} > 0)); then
    if [[ "$(id -u)" != 0 ]]; then
        log "missing: ${missing[*]}; not root, so not installing." >&2
        log "install as root: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        log "missing: ${missing[*]} and no apt-get here: install them with this system's package manager" >&2
        exit 1
    fi

    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold "$@"
    }

    # Block service starts during the install (invoke-rc.d and deb-systemd-invoke honour it).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# temporary, from install-test-services.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi

    log "installing: ${missing[*]}"
    apt-get update -qq
    for pkg in "${missing[@]}"; do
        if [[ "$pkg" == postgresql ]]; then
            # Like the official postgres image: no system cluster, tests initdb their own.
            apt_install postgresql-common
            conf=/etc/postgresql-common/createcluster.conf
            if [[ -f "$conf" ]]; then
                sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' "$conf"
            fi
        fi
    done
    apt_install "${missing[@]}"
fi

redis="$(find_redis)" || { log "redis-server still missing after install" >&2; exit 1; }
pg_bindir="$(find_pg_bindir)" || { log "PostgreSQL initdb/postgres still missing after install" >&2; exit 1; }
log "redis-server: $redis ($("$redis" --version | grep -o 'v=[^ ]*'))"
chromium="$(find_chromium)" || { log "chromium still missing after install" >&2; exit 1; }
log "postgres:     $pg_bindir ($("$pg_bindir/postgres" --version))"
log "chromium:     $chromium ($("$chromium" --version 2>/dev/null || echo 'version unknown'))"
log "promtool:     $(command -v promtool) ($(promtool --version 2>&1 | head -1))"
log "compose:      $(command -v docker-compose) ($(docker-compose version --short 2>/dev/null))"
nginx="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
log "nginx:        $nginx ($("$nginx" -v 2>&1 | sed 's/^nginx version: //'))"
log "envsubst:     $(command -v envsubst); openssl: $(command -v openssl) ($(openssl version | cut -d' ' -f1-2))"
log "spamassassin: $(command -v spamassassin) ($(spamassassin --version 2>/dev/null | head -1 | grep -o '[0-9][0-9.]*' | head -1))"

#!/bin/sh
# Install Debian's `prometheus` package for its two binaries: `promtool` (the rule and config checks in
# tests/deploy) and `prometheus` (the real server that tests/deploy/prometheus_server.py starts).
#
# Why a script and not a bare `apt-get install`: the package's postinst runs
# `invoke-rc.d prometheus start || exit 1`. Without systemd (containers, CI) that starts a daemon on :9090
# from /etc/init.d, and if that fails the package is left half-configured. The tests need the binaries
# only, so installation runs under a policy-rc.d that forbids starting services (exit 101), and on hosts
# with systemd the unit is disabled again. Idempotent: an installed package returns at once.
#
# Usage (as root): sh deploy/install-prometheus.sh
set -eu

if dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q 'install ok installed' \
    && command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-prometheus.sh: run as root (it calls apt-get install prometheus)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
backup=""

restore_policy() {
    if [ -n "$backup" ]; then
        mv -f "$backup" "$policy"
    else
        rm -f "$policy"
    fi
}

# Keep whatever policy the host had (Docker images ship one) and put it back afterwards.
if [ -e "$policy" ]; then
    backup=$(mktemp /usr/sbin/policy-rc.d.eluserve.XXXXXX)
    cp -p "$policy" "$backup"
fi
trap restore_policy EXIT
trap 'exit 1' HUP INT TERM
printf '#!/bin/sh\n# eluserve install-prometheus.sh: start no service while installing\nexit 101\n' >"$policy"
chmod 0755 "$policy"

# Quiet on success; the whole apt/dpkg transcript on failure.
log=$(mktemp)
apt_get() {
    if ! apt-get -q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300 "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-prometheus.sh: apt-get $* failed (transcript above)" >&2
        exit 1
    fi
}

# Refresh the package lists only when they do not know the package yet (a fresh machine).
if ! apt-cache show prometheus >/dev/null 2>&1; then
    apt_get update
fi
apt_get install --no-install-recommends prometheus
rm -f "$log"

# With systemd, deb-systemd-helper has enabled the unit for the next boot even though policy-rc.d
# stopped it starting now; the project needs no resident Prometheus.
if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

echo "install-prometheus.sh: $(promtool --version 2>&1 | head -n 1)"

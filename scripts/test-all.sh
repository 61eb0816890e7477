#!/usr/bin/env bash
# Runs every test of the workspace, then lists the tests that skipped themselves. On Debian, as
# root, it first installs what the tests need (etcd, protoc for etcd-client's build script,
# nftables/iptables/iproute2 for the agent, systemd's `systemd-analyze` for the agent's unit file
# and util-linux's `setpriv` to run the agent with its unit's privileges, valgrind for the C ABI,
# nginx for the benchmark report) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/timestamp.proto ] || need+=(libprotobuf-dev)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# nginx: the central gRPC proxy lb-report (bench/) compares LbChannel with; it starts its own.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${need[*]}"
    # The tests start their own etcd and nginx on loopback: keep the packages' system services
    # (port 80, port 2379) from starting, where nothing already prevents it.
    created_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ -z "$created_policy" ] || rm -f /usr/sbin/policy-rc.d
  else
    echo "missing packages: ${need[*]} (run as root on Debian to install them)" >&2
    exit 1
  fi
fi

# etcd 3.4 refuses to start on arm64 without this; harmless elsewhere.
export ETCD_UNSUPPORTED_ARCH="${ETCD_UNSUPPORTED_ARCH:-$(uname -m | sed 's/aarch64/arm64/;s/x86_64//')}"

# Tests that cannot run here say so (lb_core::test_util::skip, lb-agent's support) in this file;
# the list is printed at the end, so a skip is never mistaken for a pass.
skip_log="$(mktemp -t lb-test-skips.XXXXXX)"
trap 'rm -f "$skip_log"' EXIT
export LB_TEST_SKIP_LOG="$skip_log"

status=0
cargo test --workspace --all-features --no-fail-fast "$@" || status=$?

echo
if [ -s "$skip_log" ]; then
  echo "skipped tests ($(sort -u "$skip_log" | wc -l)):"
  sort -u "$skip_log" | sed 's/^SKIPPED /  /'
else
  echo "skipped tests: none"
fi
exit "$status"

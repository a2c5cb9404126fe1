#!/usr/bin/env bash
# Installs what the test suite and the benchmarks need on a fresh Debian machine:
#   - Postfix's smtp-source and smtp-sink (interop and side-by-side peers),
#     from Debian's `postfix` package, with the system daemon left stopped;
#   - swaks (an independent SMTP client) with its TLS module;
#   - Python packages used by tests as independent implementations
#     (hdrhistogram decoder, dkimpy verifier with pynacl for Ed25519, aiosmtpd
#     server, dnslib DNS server); openssl makes the DKIM test keys.
# Idempotent: does nothing for what is already there. Needs root for apt.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DEBIAN_FRONTEND=noninteractive

need_apt=()
[ -x /usr/sbin/smtp-source ] || need_apt+=(postfix)
[ -x /usr/bin/time ] || need_apt+=(time)
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# swaks' STARTTLS (the interop test with TLS and AUTH) needs Net::SSLeay.
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || need_apt+=(libnet-ssleay-perl)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: need root to install ${need_apt[*]} (sudo $0)" >&2
    exit 2
  fi
  # Postfix asks questions on install; preseed 'No configuration' so the
  # system instance is installed but never configured to listen on :25.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string sluice.invalid" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# A system postfix master left running would hold :25; the tests never use it.
if [ -s /var/spool/postfix/pid/master.pid ]; then
  pid=$(tr -d ' \n' </var/spool/postfix/pid/master.pid)
  if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = master ]; then
    /usr/sbin/postfix stop >/dev/null 2>&1 || kill -TERM "$pid" || true
  fi
fi

py_need=()
python3 -c 'import hdrh' 2>/dev/null || py_need+=(hdrhistogram)
python3 -c 'import dkim' 2>/dev/null || py_need+=(dkimpy)
python3 -c 'import nacl' 2>/dev/null || py_need+=(pynacl)
python3 -c 'import aiosmtpd' 2>/dev/null || py_need+=(aiosmtpd)
python3 -c 'import dnslib' 2>/dev/null || py_need+=(dnslib)
python3 -c 'import prometheus_client' 2>/dev/null || py_need+=(prometheus-client)
if [ ${#py_need[@]} -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check "${py_need[@]}"
fi
echo "setup: ok (smtp-source: $(command -v smtp-source || echo /usr/sbin/smtp-source), swaks: $(command -v swaks))"

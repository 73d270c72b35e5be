#!/usr/bin/env bash
# The system tools that `npm test` (and `npm run bench`) use, in one list: called by `pretest`
# and by .ci/run. Missing ones are installed with apt-get when we are root on Debian/Ubuntu;
# otherwise this stops with the exact command to run. It never lets a test be skipped.
set -euo pipefail

# Debian package → how to tell it is present.
have_mosquitto() { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null 2>&1; }
have_clients() { command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1; }
# The interop tests look for paho in $PYTHON, then python3 on PATH, then /usr/bin/python3.
have_paho() {
  local py
  for py in ${PYTHON:-} python3 /usr/bin/python3; do
    "$py" -c 'import paho.mqtt.client' >/dev/null 2>&1 && return 0
  done
  return 1
}
# test/browser.test.ts loads examples/browser/ in headless Chromium (MQTT over WebSocket).
have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
# node-gyp builds the fd addon (native/) with make and a C/C++ compiler.
have_compiler() { command -v make >/dev/null 2>&1 && command -v cc >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1; }

need=()
have_mosquitto || need+=(mosquitto)
have_clients || need+=(mosquitto-clients)
have_paho || need+=(python3-paho-mqtt)
have_compiler || need+=(build-essential)
have_chromium || need+=(chromium)

[ ${#need[@]} -eq 0 ] && exit 0

cmd="apt-get update && apt-get install -y ${need[*]}"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: installing ${need[*]} (system packages the tests use)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  # Check again: a package that installed but did not provide the tool is still a failure.
  have_mosquitto && have_clients && have_paho && have_compiler && have_chromium && exit 0
  echo "test-deps: still missing after apt-get install ${need[*]}" >&2
  exit 1
fi
echo "test-deps: missing system packages the tests need: ${need[*]}" >&2
echo "test-deps: run as root:  $cmd" >&2
echo "test-deps: (on other systems install mosquitto, its clients, python3 paho-mqtt, Chromium and a C/C++ toolchain)" >&2
exit 1

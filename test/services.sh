#!/usr/bin/env bash
# Brings up the services that the integration tests use: PostgreSQL on
# 127.0.0.1:5432, Redis on 127.0.0.1:6379 and NATS with JetStream on
# 127.0.0.1:4222; and installs Chromium, which the console's browser test
# (test/console) drives headless.
#
# For each service:
#   - if its MILLRACE_TEST_*_URL variable is set, the service is left alone
#     (the user runs their own and the tests use that URL);
#   - if something already listens on its port, nothing is done;
#   - otherwise it is installed from the Debian packages when its binary is
#     missing, started, and waited for (at most MILLRACE_SERVICES_TIMEOUT
#     seconds, default 30).
#
# The script is idempotent and non-interactive (it runs under CI as root).
# Installing and starting services needs root; as another user it uses
# `sudo -n` when that works and fails with a clear message otherwise.
# It exits non-zero when a service cannot be brought up.

set -euo pipefail

TIMEOUT="${MILLRACE_SERVICES_TIMEOUT:-30}"
PG_PORT=5432
REDIS_PORT=6379
NATS_PORT=4222

# apt_stamp marks that apt-get update ran; it is a file because each service
# runs in a subshell. main sets it.
apt_stamp=

log() { printf '%s: %s\n' "$1" "$2"; }

# port_open PORT: true when a TCP connection to 127.0.0.1:PORT succeeds.
port_open() {
	timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# wait_port NAME PORT [PIDFILE]: waits until the port answers, at most
# TIMEOUT seconds; gives up early when the process in PIDFILE has exited.
wait_port() {
	local name=$1 port=$2 pidfile=${3:-} i pid
	for ((i = 0; i < TIMEOUT * 2; i++)); do
		if port_open "$port"; then
			return 0
		fi
		if [[ -n $pidfile ]] && pid=$(as_root cat "$pidfile" 2>/dev/null) &&
			! as_root kill -0 "$pid" 2>/dev/null; then
			log "$name" "the server (pid $pid) exited before 127.0.0.1:$port answered" >&2
			return 1
		fi
		sleep 0.5
	done
	log "$name" "127.0.0.1:$port did not answer within ${TIMEOUT}s" >&2
	return 1
}

# as_root CMD...: runs CMD as root (directly, or through non-interactive sudo).
as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		echo "services: '$*' needs root; run this script as root or allow passwordless sudo" >&2
		return 1
	fi
}

# install_packages NAME PKG...: installs Debian packages, running apt-get update once.
install_packages() {
	local name=$1
	shift
	if ! command -v apt-get >/dev/null 2>&1; then
		log "$name" "cannot install $*: apt-get not found (this script supports Debian/Ubuntu)" >&2
		return 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if [[ -z $apt_stamp || ! -e $apt_stamp ]]; then
		log "$name" "running apt-get update"
		as_root apt-get -o DPkg::Lock::Timeout=120 update -qq
		if [[ -n $apt_stamp ]]; then : >"$apt_stamp"; fi
	fi
	log "$name" "installing $*"
	as_root apt-get -o DPkg::Lock::Timeout=120 -o Dpkg::Use-Pty=0 install -y -qq --no-install-recommends "$@" </dev/null
}

# show_log NAME FILE: prints the end of a log file to help diagnose a failure.
show_log() {
	if [[ -r $2 ]]; then
		log "$1" "last lines of $2:" >&2
		tail -n 20 "$2" >&2 || true
	fi
}

# ---------------------------------------------------------------- PostgreSQL

# pg_cluster: prints "VERSION NAME" of the cluster configured on PG_PORT, if any.
pg_cluster() {
	pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }'
}

# pg_trust_hba FILE: makes sure local and loopback connections use trust auth,
# by putting trust lines first (the first matching line wins in pg_hba.conf).
pg_trust_hba() {
	local hba=$1 marker="# millrace test/services.sh: trust local connections"
	if as_root grep -qF "$marker" "$hba"; then
		return 0
	fi
	# A file holding only trust lines, including local and 127.0.0.1, is fine.
	if as_root awk '
		/^[[:space:]]*(#|$)/ { next }
		$NF != "trust" { bad = 1 }
		$1 == "local" { l = 1 }
		$1 == "host" && $4 ~ /^127\.0\.0\.1\// { h = 1 }
		END { exit !(l && h && !bad) }' "$hba"; then
		return 0
	fi
	log postgres "setting trust auth for local and 127.0.0.1 connections in $hba"
	local tmp
	tmp=$(mktemp)
	{
		echo "$marker"
		echo "local all all trust"
		echo "host all all 127.0.0.1/32 trust"
		echo "host all all ::1/128 trust"
		echo
		as_root cat "$hba"
	} >"$tmp"
	as_root cp "$tmp" "$hba"
	rm -f "$tmp"
}

# pg_psql SQL...: runs SQL as the postgres superuser over the local socket.
# It runs from / because the postgres user may not be able to read the
# current directory.
pg_psql() {
	(cd / && as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@")
}

pg_setup_databases() {
	pg_psql -c "DO \$\$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'root') THEN
			CREATE ROLE root SUPERUSER LOGIN;
		ELSE
			ALTER ROLE root SUPERUSER LOGIN;
		END IF;
	END \$\$;"
	local db
	for db in test root; do
		if [[ -z $(pg_psql -Atc "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
			log postgres "creating database $db"
			pg_psql -c "CREATE DATABASE $db OWNER root"
		fi
	done
}

start_postgres() {
	if [[ -n ${MILLRACE_TEST_POSTGRES_URL:-} ]]; then
		log postgres "MILLRACE_TEST_POSTGRES_URL is set; not managing PostgreSQL"
		return 0
	fi
	if port_open "$PG_PORT"; then
		log postgres "already running"
		pg_logical
		return
	fi
	if ! command -v pg_ctlcluster >/dev/null 2>&1 ||
		! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
		install_packages postgres postgresql
	fi

	local cluster version name
	cluster=$(pg_cluster)
	if [[ -z $cluster ]]; then
		version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
		name=main
		if [[ -d /etc/postgresql/$version/main ]]; then
			name=millrace
		fi
		log postgres "creating cluster $version/$name on port $PG_PORT"
		as_root pg_createcluster --port "$PG_PORT" "$version" "$name" >/dev/null
		cluster="$version $name"
	fi
	read -r version name <<<"$cluster"

	pg_trust_hba "/etc/postgresql/$version/$name/pg_hba.conf"

	if pg_lsclusters -h | awk -v v="$version" -v n="$name" '$1 == v && $2 == n && $4 ~ /^online/ { f = 1 } END { exit !f }'; then
		# Running but not answering on 127.0.0.1: restart to pick up the config.
		log postgres "cluster $version/$name is running but not listening on 127.0.0.1:$PG_PORT; restarting it"
		as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" restart
	else
		log postgres "starting cluster $version/$name"
		as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
	fi
	if ! wait_port postgres "$PG_PORT"; then
		show_log postgres "/var/log/postgresql/postgresql-$version-$name.log"
		return 1
	fi
	pg_setup_databases
	pg_logical || return 1
	log postgres "started on 127.0.0.1:$PG_PORT"
}

# pg_logical: WAL capture (sources[].capture = "wal") needs wal_level =
# logical, and its tests, run in parallel, a replication slot and a
# walsender each. When the server has less, it is set with ALTER SYSTEM
# and the cluster restarted (said on stderr): wal_level only changes at
# a restart.
PG_MIN_SLOTS=32
pg_logical() {
	local url="postgresql://postgres@127.0.0.1:$PG_PORT/postgres" level slots senders
	read -r level slots senders < <(psql -X -At -F ' ' "$url" -c \
		"SELECT current_setting('wal_level'), current_setting('max_replication_slots'), current_setting('max_wal_senders')") || {
		echo "postgres: cannot read wal_level on 127.0.0.1:$PG_PORT" >&2
		return 1
	}
	if [[ $level == logical && $slots -ge $PG_MIN_SLOTS && $senders -ge $PG_MIN_SLOTS ]]; then
		return 0
	fi
	echo "postgres: wal_level = $level, max_replication_slots = $slots, max_wal_senders = $senders;" \
		"setting wal_level = logical and $PG_MIN_SLOTS slots and senders (ALTER SYSTEM) and restarting PostgreSQL" >&2
	psql -X -q -v ON_ERROR_STOP=1 "$url" -c "ALTER SYSTEM SET wal_level = logical" \
		-c "ALTER SYSTEM SET max_replication_slots = $(( slots > PG_MIN_SLOTS ? slots : PG_MIN_SLOTS ))" \
		-c "ALTER SYSTEM SET max_wal_senders = $(( senders > PG_MIN_SLOTS ? senders : PG_MIN_SLOTS ))" || return 1
	local cluster version name
	cluster=$(pg_cluster)
	if [[ -z $cluster ]]; then
		echo "postgres: the server on port $PG_PORT is not a pg_ctlcluster cluster; restart it yourself to apply wal_level = logical" >&2
		return 1
	fi
	read -r version name <<<"$cluster"
	as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$name" restart
	if ! wait_port postgres "$PG_PORT"; then
		show_log postgres "/var/log/postgresql/postgresql-$version-$name.log"
		return 1
	fi
	echo "postgres: restarted with wal_level = logical" >&2
}

# --------------------------------------------------------------------- Redis

start_redis() {
	if [[ -n ${MILLRACE_TEST_REDIS_URL:-} ]]; then
		log redis "MILLRACE_TEST_REDIS_URL is set; not managing Redis"
		return 0
	fi
	if port_open "$REDIS_PORT"; then
		log redis "already running"
		return 0
	fi
	if ! command -v redis-server >/dev/null 2>&1; then
		install_packages redis redis-server
		# The package may have started its own instance.
		if port_open "$REDIS_PORT"; then
			log redis "started by the package on 127.0.0.1:$REDIS_PORT"
			return 0
		fi
	fi
	local logfile=/var/log/redis/ci.log pidfile=/run/millrace-redis-server.pid
	as_root mkdir -p /var/lib/redis /var/log/redis
	as_root rm -f "$pidfile"
	log redis "starting redis-server"
	as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
		--save "" --appendonly no --dir /var/lib/redis --logfile "$logfile" \
		--pidfile "$pidfile"
	if ! wait_port redis "$REDIS_PORT" "$pidfile"; then
		show_log redis "$logfile"
		return 1
	fi
	log redis "started on 127.0.0.1:$REDIS_PORT"
}

# ---------------------------------------------------------------------- NATS

start_nats() {
	if [[ -n ${MILLRACE_TEST_NATS_URL:-} ]]; then
		log nats "MILLRACE_TEST_NATS_URL is set; not managing NATS"
		return 0
	fi
	if port_open "$NATS_PORT"; then
		log nats "already running"
		return 0
	fi
	if ! command -v nats-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/nats-server ]]; then
		install_packages nats nats-server
		if port_open "$NATS_PORT"; then
			log nats "started by the package on 127.0.0.1:$NATS_PORT"
			return 0
		fi
	fi
	local bin logfile=/var/log/nats-server.log pidfile=/run/millrace-nats-server.pid
	local outfile=/var/log/nats-server.out
	bin=$(command -v nats-server 2>/dev/null || echo /usr/sbin/nats-server)
	as_root mkdir -p /var/lib/nats-server
	log nats "starting nats-server with JetStream"
	# The pid file makes start-stop-daemon track this instance only, not any
	# other nats-server that may run on another port. --output keeps what the
	# server prints before its log file is open (bad flags, for instance).
	as_root start-stop-daemon --start --oknodo --background \
		--make-pidfile --pidfile "$pidfile" --output "$outfile" --exec "$bin" -- \
		-a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l "$logfile"
	if ! wait_port nats "$NATS_PORT" "$pidfile"; then
		show_log nats "$outfile"
		show_log nats "$logfile"
		return 1
	fi
	log nats "started on 127.0.0.1:$NATS_PORT (JetStream enabled)"
}

# ------------------------------------------------------------------ Chromium

# start_chromium installs Debian's chromium (and a font, so that the
# console's screenshots have readable text) when no Chromium is on PATH.
# Nothing runs: the browser test starts its own headless browser.
start_chromium() {
	local bin
	for bin in chromium chromium-browser google-chrome; do
		if command -v "$bin" >/dev/null 2>&1; then
			log chromium "already installed ($(command -v "$bin"))"
			return 0
		fi
	done
	install_packages chromium chromium fonts-dejavu-core
	if ! command -v chromium >/dev/null 2>&1; then
		log chromium "the chromium package installed no chromium binary" >&2
		return 1
	fi
	log chromium "installed ($(command -v chromium))"
}

# ---------------------------------------------------------------------- main

main() {
	local svc rc failed=()
	apt_stamp=$(mktemp -u "${TMPDIR:-/tmp}/millrace-apt-updated.XXXXXX")
	trap 'rm -f "$apt_stamp"' EXIT
	for svc in postgres redis nats chromium; do
		# Each service runs in its own subshell with errexit, so that a failure
		# stops that service's steps without hiding the state of the others.
		# (errexit would be ignored inside `if ! (...)`, hence the explicit form.)
		set +e
		(
			set -e
			start_"$svc"
		)
		rc=$?
		set -e
		if ((rc != 0)); then
			failed+=("$svc")
		fi
	done

	if ((${#failed[@]} > 0)); then
		echo "services: could not bring up: ${failed[*]}" >&2
		exit 1
	fi
	echo "services: ready"
}

# Sourcing the file (to test its functions) does not run it.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi

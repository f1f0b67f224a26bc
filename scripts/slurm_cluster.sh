#!/usr/bin/env bash
# A real SLURM cluster on this Debian 12 machine, for the integration tests and for running the
# workflow with `snakemake --profile slurm` on one box. It looks like a site's cluster: two nodes
# (node1, node2: two slurmd daemons on this machine, each with all its CPUs), a partition `batch`
# (the default, not `debug`) and accounting that enforces associations: a job runs only under an
# account its user belongs to (root: `general`, its default, and the project account `mae`). No
# systemd: every daemon is started by hand, keeps a pid file under the state dir and is stopped by pid,
# in reverse order.
#
#   scripts/slurm_cluster.sh start  [--state-dir DIR]   # munged, mariadbd, slurmdbd, slurmctld, 2 slurmd
#   scripts/slurm_cluster.sh status [--state-dir DIR]   # exit 0 when both nodes are up and sacct works
#   scripts/slurm_cluster.sh stop   [--state-dir DIR]
#
# State dir (default .services/slurm in the repo): etc/ (slurm.conf, slurmdbd.conf), run/ (pids,
# sockets), log/, spool/, mysql/ (a private MariaDB on 127.0.0.1:$MAE_SLURM_DB_PORT, default 33306).
# Ports: slurmctld 6817, slurmd 6818 (node1) and 6820 (node2), slurmdbd 6819.
# Needs root: the daemons run as SlurmUser=root, and the jobstep plugin strips SLURM_CONF inside jobs,
# so /etc/slurm/slurm.conf must be a symlink to the generated file (docs: shared/notes/local-slurm.md).
# Daemons bind loopback (CommunicationParameters=NoCtldInAddrAny,NoInAddrAny; MariaDB 127.0.0.1).
# Node names resolve as on a site's cluster (multi-node jobs rendezvous on the first node's name):
# `start` adds "127.0.0.1 node1 node2" to /etc/hosts where they do not, `stop` removes that line.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-}; shift || true
state=$repo/.services/slurm
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) state=$2; shift 2 ;;
    --state-dir=*) state=${1#*=}; shift ;;
    *) echo "slurm_cluster: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$cmd" in start|stop|status) ;; *)
  echo "usage: scripts/slurm_cluster.sh start|stop|status [--state-dir DIR]" >&2; exit 2 ;;
esac
mkdir -p "$state"; state=$(cd "$state" && pwd)

db_port=${MAE_SLURM_DB_PORT:-33306}
cluster=${MAE_SLURM_CLUSTER:-maelocal}
etc=$state/etc; run=$state/run; logd=$state/log; spool=$state/spool; dbdir=$state/mysql
conf=$etc/slurm.conf; dbdconf=$etc/slurmdbd.conf
# Two nodes on one machine: slurmd -N NAME reads its own NodeName line (Port=, and %n in the spool, pid
# and log paths). Ports are fixed: one cluster per machine.
nodes=(node1 node2)
declare -A node_port=([node1]=6818 [node2]=6820)
partition=batch
default_account=general       # root's default account: a job without --account runs under it
project_account=mae           # a second account, as a site's project: the tests name it explicitly
export SLURM_CONF=$conf
t0=$(date +%s%N)

say() { local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf 'slurm_cluster: [%3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || { echo "slurm_cluster: timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.5
  done
}

# node_states: "node1 idle" lines, one per node.
node_states() { timeout 20 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }
sacct_works() { sacct -n -X -S now-1hours -o JobID >/dev/null 2>&1; }
munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
db() { mariadb --no-defaults --socket="$run/mysqld.sock" -u root "$@"; }

hosts_mark="# mae-harness scripts/slurm_cluster.sh"

add_host_names() {
  local n missing=()
  for n in "${nodes[@]}"; do getent hosts "$n" >/dev/null || missing+=("$n"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "/etc/hosts: adding 127.0.0.1 ${missing[*]} (node names must resolve for a multi-node rendezvous)"
  echo "127.0.0.1 ${missing[*]} $hosts_mark" >>/etc/hosts
}

remove_host_names() {
  grep -qF "$hosts_mark" /etc/hosts 2>/dev/null || return 0
  # Rewritten in place (not sed -i's rename): /etc/hosts is often a bind mount in containers.
  local kept; kept=$(grep -vF "$hosts_mark" /etc/hosts || true)
  printf '%s\n' "$kept" >/etc/hosts
}

show_log_tail() { [ -f "$1" ] && { echo "--- last lines of $1:" >&2; tail -n 20 "$1" >&2; }; return 0; }

# ---------------------------------------------------------------------------------------------------
status() {
  local ok=0 d
  for d in mariadbd slurmdbd slurmctld "${nodes[@]/#/slurmd-}"; do
    if pid_alive "$run/$d.pid"; then echo "$d: running (pid $(cat "$run/$d.pid"))"; else echo "$d: stopped"; ok=1; fi
  done
  # sinfo/sacct retry for many seconds against a dead daemon: only ask them when the daemons run.
  [ $ok -eq 0 ] || { echo "cluster: down (state dir $state)"; return 1; }
  if munge_works; then echo "munge: ok"; else echo "munge: not working"; return 1; fi
  local n st states; states=$(node_states || true)
  for n in "${nodes[@]}"; do
    st=$(awk -v n="$n" '$1 == n {print $2}' <<<"$states")
    case "$st" in idle|mixed|allocated|completing) echo "node $n: $st" ;; *) echo "node $n: not up (${st:-no answer})"; ok=1 ;; esac
  done
  if timeout 20 sacct -n -X -S now-1hours -o JobID >/dev/null 2>&1; then echo "sacct: ok"; else echo "sacct: not working"; ok=1; fi
  return $ok
}

# ---------------------------------------------------------------------------------------------------
install_packages() {
  local pkgs=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing Debian packages (${missing[*]}); run as root or install them"
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
  mkdir -p "$etc" "$run" "$logd" "$spool/ctld" "${nodes[@]/#/$spool/d-}"
  # Node size from the hardware; RealMemory a little below the total so slurmd does not drain the node.
  local hw cpus mem gres="" grestypes=""
  hw=$(slurmd -C | head -1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(( mem * 98 / 100 ))
  # GPUs (if any): plain device files, no NVML autodetect in Debian's build.
  local ngpu=0
  if compgen -G "/dev/nvidia[0-9]*" >/dev/null; then
    ngpu=$(find /dev -maxdepth 1 -regex '/dev/nvidia[0-9]+' | wc -l)
  fi
  if [ "$ngpu" -gt 0 ]; then
    # The GPUs belong to node1 only: two nodes claiming the same devices would hand each GPU out twice.
    grestypes="GresTypes=gpu"; gres="Gres=gpu:$ngpu"
    echo "NodeName=${nodes[0]} Name=gpu File=/dev/nvidia[0-$((ngpu - 1))]" >"$etc/gres.conf"
  else
    rm -f "$etc/gres.conf"
  fi
  cat >"$conf.tmp" <<EOF
# Generated by scripts/slurm_cluster.sh; do not edit (rewritten on every start).
ClusterName=$cluster
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
# Speed for a test cluster, not a site's values: a requeued job may start again cred_expire seconds
# after its requeue (default 120), and a job that became eligible waits for the next scheduling pass
# (sched_interval 60 s, bf_interval 30 s). The chained-segments test requeues a job every minute.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=600
SlurmdTimeout=300
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d-%n
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd-%n.pid
SlurmctldLogFile=$logd/slurmctld.log
SlurmdLogFile=$logd/slurmd-%n.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# As at a site: a job needs an association (user + account); an unknown --account is refused at sbatch.
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$grestypes
$(for n in "${nodes[@]}"; do
  echo "NodeName=$n NodeHostname=localhost NodeAddr=127.0.0.1 Port=${node_port[$n]} CPUs=$cpus RealMemory=$mem $([ "$n" = "${nodes[0]}" ] && echo "$gres") State=UNKNOWN"
done)
PartitionName=$partition Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"

  local pass_file=$etc/db.pass
  [ -s "$pass_file" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$pass_file")
  (umask 077; cat >"$dbdconf.tmp" <<EOF
# Generated by scripts/slurm_cluster.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$run/slurmdbd.pid
LogFile=$logd/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$(cat "$pass_file")
StorageLoc=slurm_acct_db
EOF
  )
  mv "$dbdconf.tmp" "$dbdconf"; chmod 600 "$dbdconf"

  # Pitfall 1: srun inside a job only finds /etc/slurm/slurm.conf. slurmdbd looks for its conf next to
  # slurm.conf. A pre-existing regular file is kept as *.mae-orig and put back by `stop`.
  mkdir -p /etc/slurm
  local f
  for f in slurm.conf slurmdbd.conf gres.conf; do
    if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
      mv "/etc/slurm/$f" "/etc/slurm/$f.mae-orig"; say "kept the existing /etc/slurm/$f as $f.mae-orig"
    fi
    if [ -e "$etc/$f" ]; then ln -sfn "$etc/$f" "/etc/slurm/$f"; else rm -f "/etc/slurm/$f"; fi
  done
}

start_munge() {
  if munge_works; then say "munge: already working"; return 0; fi
  [ -s /etc/munge/munge.key ] || { say "munge: creating /etc/munge/munge.key"; mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge 2>/dev/null || true
  say "munge: starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  wait_for 15 "munged" munge_works || die "munged does not answer (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$run/munged.pid"   # started by us: `stop` stops it
}

start_mariadb() {
  if pid_alive "$run/mariadbd.pid"; then say "mariadb: already running"; return 0; fi
  if [ ! -d "$dbdir/mysql" ]; then
    say "mariadb: initialising a private datadir $dbdir"
    rm -rf "$dbdir"; mkdir -p "$dbdir"
    mariadb-install-db --no-defaults --user=root --datadir="$dbdir" --skip-test-db \
      --auth-root-authentication-method=socket >"$logd/mariadb-install.log" 2>&1 \
      || { show_log_tail "$logd/mariadb-install.log"; die "mariadb-install-db failed"; }
  fi
  if port_open "$db_port"; then
    die "port $db_port is taken by another process (set MAE_SLURM_DB_PORT)"
  fi
  say "mariadb: starting on 127.0.0.1:$db_port"
  setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$dbdir" \
    --socket="$run/mysqld.sock" --pid-file="$run/mariadbd.pid" --bind-address=127.0.0.1 \
    --port="$db_port" --skip-name-resolve --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
    --log-error="$logd/mariadb.log" </dev/null >/dev/null 2>&1 &
  wait_for 60 "mariadbd" db -e 'select 1' || { show_log_tail "$logd/mariadb.log"; die "mariadbd did not start"; }
  local pass; pass=$(cat "$etc/db.pass")
  db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
         CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
         ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
    || die "could not create the accounting database"
}

start_slurmdbd() {
  if pid_alive "$run/slurmdbd.pid"; then say "slurmdbd: already running"; return 0; fi
  say "slurmdbd: starting"
  /usr/sbin/slurmdbd || { show_log_tail "$logd/slurmdbd.log"; die "slurmdbd failed to start"; }
  wait_for 30 "slurmdbd on port 6819" port_open 6819 \
    || { show_log_tail "$logd/slurmdbd.log"; die "slurmdbd is not listening"; }
}

start_slurmctld() {
  if pid_alive "$run/slurmctld.pid"; then say "slurmctld: already running"; return 0; fi
  say "slurmctld: starting"
  # -c: a test cluster starts empty. Jobs saved by a controller that was stopped (or lost to a reboot)
  # would be recovered as RUNNING with no process behind them and hold the node's CPUs forever.
  /usr/sbin/slurmctld -c || { show_log_tail "$logd/slurmctld.log"; die "slurmctld failed to start"; }
  wait_for 30 "slurmctld" scontrol ping || { show_log_tail "$logd/slurmctld.log"; die "slurmctld does not answer"; }
}

start_slurmd() {  # start_slurmd NODE
  local n=$1
  if pid_alive "$run/slurmd-$n.pid"; then say "slurmd $n: already running"; return 0; fi
  say "slurmd $n: starting (port ${node_port[$n]})"
  /usr/sbin/slurmd -N "$n" || { show_log_tail "$logd/slurmd-$n.log"; die "slurmd -N $n failed to start"; }
  # slurmd writes its pid file slightly after forking.
  wait_for 15 "slurmd $n pid file" test -s "$run/slurmd-$n.pid" || { show_log_tail "$logd/slurmd-$n.log"; die "slurmd -N $n did not start"; }
}

# The associations AccountingStorageEnforce=associations asks for: accounts general and mae, root in
# both (general its default). sacctmgr -i commits without asking; an existing entry is left as is.
add_associations() {
  local a
  for a in "$default_account" "$project_account"; do
    if [ -z "$(sacctmgr -n -P list account "$a" format=account 2>/dev/null)" ]; then
      sacctmgr -i -Q add account "$a" cluster="$cluster" description="$a" organization=mae-harness >/dev/null \
        || die "sacctmgr could not add account $a"
    fi
  done
  if [ -z "$(sacctmgr -n -P list assoc user=root account="$project_account" format=account 2>/dev/null)" ]; then
    sacctmgr -i -Q add user root account="$default_account","$project_account" \
      defaultaccount="$default_account" cluster="$cluster" >/dev/null || die "sacctmgr could not add user root"
  fi
}

start() {
  [ "$(id -u)" -eq 0 ] || die "needs root (daemons run as SlurmUser=root; /etc/slurm/slurm.conf is a symlink)"
  install_packages
  add_host_names   # also for a cluster already up (started before this step existed)
  if status >/dev/null 2>&1; then say "cluster already up (state dir $state)"; return 0; fi
  say "starting a two-node cluster (state dir $state)"
  # Another cluster (another state dir) would hold the SLURM ports: say so instead of failing later.
  local port
  for port in 6817 6818 6819 6820; do
    if port_open "$port" && ! pid_alive "$run/slurmctld.pid" && ! pid_alive "$run/slurmd-node1.pid" && ! pid_alive "$run/slurmdbd.pid"; then
      die "port $port is in use by another process (another cluster? stop it first)"
    fi
  done
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  local n
  for n in "${nodes[@]}"; do start_slurmd "$n"; done
  # A node left DOWN/DRAIN by an earlier unclean stop comes back with ReturnToService=2; nudge it anyway.
  wait_for 60 "nodes ${nodes[*]} to be idle" bash -c '
    idle=0
    while read -r n st; do
      case "$st" in idle) idle=$((idle + 1)) ;; down*|drain*) scontrol update nodename="$n" state=resume ;; esac
    done < <(sinfo -h -N -o "%N %T" 2>/dev/null | sort -u)
    [ "$idle" -eq '"${#nodes[@]}"' ]' \
    || { status >&2 || true; for n in "${nodes[@]}"; do show_log_tail "$logd/slurmd-$n.log"; done
         show_log_tail "$logd/slurmctld.log"; die "the nodes did not become idle"; }
  wait_for 60 "sacct (slurmctld registering with slurmdbd)" sacct_works \
    || { show_log_tail "$logd/slurmdbd.log"; die "sacct does not work"; }
  add_associations
  say "cluster up: partition $partition, nodes $(sinfo -h -N -o '%N (%c CPUs, %m MB)' | sort -u | paste -sd ' '), accounts $default_account (default) and $project_account, sacct ok"
}

# ---------------------------------------------------------------------------------------------------
stop_pid() {  # stop_pid NAME: TERM, wait up to 20 s, then KILL.
  local name=$1 f=$run/$1.pid pid i
  if ! pid_alive "$f"; then rm -f "$f"; return 0; fi
  pid=$(cat "$f")
  say "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then say "$name: still alive, sending KILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
  rm -f "$f"
}

stop() {
  local any=0 d f
  for d in "${nodes[@]/#/slurmd-}" slurmd slurmctld slurmdbd mariadbd munged; do [ -f "$run/$d.pid" ] && any=1; done
  [ $any -eq 1 ] || { say "nothing to stop (state dir $state)"; }
  for d in "${nodes[@]}"; do stop_pid "slurmd-$d"; done
  stop_pid slurmd   # run/slurmd.pid: a cluster started by the single-node version of this script
  stop_pid slurmctld
  stop_pid slurmdbd
  stop_pid mariadbd
  stop_pid munged
  remove_host_names
  # Remove our symlinks in /etc/slurm and put back what was there before.
  for f in slurm.conf slurmdbd.conf gres.conf; do
    if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$etc/$f" ]; then
      rm -f "/etc/slurm/$f"
      [ -e "/etc/slurm/$f.mae-orig" ] && mv "/etc/slurm/$f.mae-orig" "/etc/slurm/$f"
    fi
  done
  say "stopped"
}

"$cmd"

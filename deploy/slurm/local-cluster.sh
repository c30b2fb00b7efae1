#!/usr/bin/env bash
# A throwaway one-node Slurm cluster on a Debian host, to try lazyavg.sbatch
# where there is no real cluster. Needs root; overwrites
# /etc/slurm/slurm.conf and starts munged, slurmctld and slurmd. The node
# claims 8 CPUs and 8000 MB whatever it has (memory is tracked, as on most
# clusters), so jobs of up to 8 tasks fit.
#   apt-get install -y slurm-wlm munge && deploy/slurm/local-cluster.sh
#   LAZYAVG=$PWD/target/release/lazyavg LAZYAVG_DATA_DIR=../shared/data/mnist \
#     sbatch --ntasks=3 deploy/slurm/lazyavg.sbatch --epochs 2
set -euo pipefail
node=$(hostname -s)
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurmctld.log
SlurmdLogFile=/var/log/slurmd.log
NodeName=$node CPUs=8 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p /var/spool/slurmctld /var/spool/slurmd /run/munge
chown munge:munge /run/munge
runuser -u munge -- /usr/sbin/munged
slurmctld
slurmd
for _ in $(seq 50); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 0.2; done
sinfo

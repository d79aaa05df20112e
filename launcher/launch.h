// `fjord launch`: gate 1 of tenancy (docs/SOVEREIGNTY.md). Reads the operator's inventory, places
// the job's ranks on nodes whose jurisdiction and site the tenant allows, and starts them: an
// Open MPI hostfile + mpirun, or with --slurm an sbatch script that it submits (--wait: and follows to
// its end), or srun --mpi=pmix inside an allocation. With --slurm the inventory may name only a
// slurm { } block: the nodes and their jurisdictions then come from Slurm's node features (sinfo;
// launcher/slurm.h), and a job needing more allowed nodes than Slurm has is refused before sbatch.
// Too few allowed nodes is a refusal that names what was needed, what exists and what was excluded
// and why; placement never spills onto other nodes. Every decision goes to the job's audit log.
//
// The plan is computed without side effects (PlanLaunch), so --dry-run prints exactly the command
// a real launch runs; a real launch then writes RUN_DIR/launch/{hostfile,job.textproto}, appends
// launch_plan to the audit log, runs the command, appends launch_exit, and returns the job's exit
// code. Ranks train RUN_DIR/launch/job.textproto, the resolved job spec (overrides applied), so
// launch and every rank record the same job digest.
//
// What launch does not do: it trusts the inventory for placement. Each rank checks its own node
// identity (gate 2, runtime/tenancy/tenancy.h RankGate) because an inventory can be wrong.
//
// The pieces, in the order a launch uses them: launch/inventory.h (the operator's nodes),
// launch/placement.h (where the ranks go), launch/plan.h (the command, without side effects),
// launch/run.h (running it).
#pragma once

#include "launcher/launch/inventory.h"
#include "launcher/launch/placement.h"
#include "launcher/launch/plan.h"
#include "launcher/launch/run.h"

// Tenancy: who may run where, and the gates that enforce it inside a rank (docs/SOVEREIGNTY.md).
//
//   Gate 1 (launcher/launch.h) places ranks on inventory nodes the tenant allows.
//   Gate 2 (RankGate) runs first in every rank: it reads the node's own identity file, written by
//          root at provisioning, and refuses to go on when that node is outside the tenant's
//          residency. It trusts neither the job spec nor the inventory for where it is, so it
//          catches a hand-written mpirun, a stale hostfile and a mislabelled inventory.
//   Gate 3 (runtime/tenancy/manifest.h for data; CheckCheckpointTenant here for checkpoints) refuses data
//          and checkpoints of another tenant, outside the residency, or modified since written.
//
// A job without tenant.id has no gates (it has no residency to enforce); the audit log says so.
//
// Call order in `fjord train` (the wiring lives in launcher/main.cc and runtime/train/trainer.cc):
//   job  = LoadJobSpec(...)
//   gate = RankGate(job)                         // before data, communicators, GPU
//   comm = CreateCommunicator(...)
//   ten  = Tenancy::Start(job, gate, comm)       // collective: rank 0 audits every rank's identity
//   Train(job, {.tenancy = ten}, comm)           // loaders get ten->data_policy(); checkpoints
//                                                // go through ten->checkpoint_seal()
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "collectives/communicator.h"
#include "common/file_util.h"
#include "common/status.h"
#include "proto/job.pb.h"
#include "proto/tenancy.pb.h"
#include "runtime/tenancy/audit.h"
#include "runtime/tenancy/crypto.h"
#include "runtime/tenancy/manifest.h"

namespace fjord {

// ---- Names and codes ------------------------------------------------------------------------

// True for an officially assigned ISO 3166-1 alpha-2 code in upper case ("NO", "SE").
bool IsIsoCountryCode(std::string_view code);
// "" when `code` is a valid jurisdiction, else what is wrong and how to write it (e.g. "is lower
// case; write \"NO\"", "is a 3-letter code; use the 2-letter ISO 3166-1 alpha-2 code \"NO\"").
std::string JurisdictionProblem(std::string_view code);
// Tenant ids: 1..64 of [a-z0-9._-], starting with a letter or digit.
bool IsValidTenantId(std::string_view id);
// Site names: 1..64 of [A-Za-z0-9._-].
bool IsValidSiteName(std::string_view site);

// ---- Residency policy -----------------------------------------------------------------------

// A tenant's residency: jurisdictions, and optionally sites inside them.
struct ResidencyPolicy {
  std::string tenant;                      // "" = tenancy off
  std::vector<std::string> jurisdictions;  // allowed ISO codes
  std::vector<std::string> sites;          // allowed sites; empty = any

  bool enabled() const { return !tenant.empty(); }
  // True when a node in `jurisdiction` at `site` is inside the residency (always when disabled).
  bool Allows(std::string_view jurisdiction, std::string_view site) const;
  // Why a node is outside ("jurisdiction SE is not allowed"), "" when inside.
  std::string WhyNot(std::string_view jurisdiction, std::string_view site) const;
  // "jurisdictions NO; sites: any" for messages.
  std::string Describe() const;
};

ResidencyPolicy PolicyOf(const proto::JobSpec& job);

// The job's audit log: audit_log, or run_dir/audit.jsonl.
std::string AuditPathFor(const proto::JobSpec& job);
// SHA-256 of the resolved job spec in text format (identical to Sha256Hex(JobSpecToText(job))).
StatusOr<std::string> JobDigest(const proto::JobSpec& job);

// ---- Node identity --------------------------------------------------------------------------

// The node's own files, written by root at provisioning, in FJORD_SYSCONFDIR (a build setting,
// /etc/fjord unless configured otherwise; never taken from the environment).
extern const char kDefaultNodeIdentityPath[];  // FJORD_SYSCONFDIR/node.textproto
extern const char kNodeSettingsPath[];         // FJORD_SYSCONFDIR/settings.textproto (NodeSettings)

// Whether this process sees the node's own file at `path` (`what` names it in the message), not a
// view someone arranged: refused when the process runs in a user namespace other than the initial
// one (where an unprivileged user can mount files that look root-owned over /etc/fjord), and, where
// /proc/1 can be read (root), when its mount namespace differs from init's and `path` is not the
// same file (or the same absence) there. docs/SOVEREIGNTY.md, "Node identity", says why that is
// enough.
Status CheckHostView(const std::string& path, const std::string& what);

// Reads the operator's node settings (proto NodeSettings) at `path`: a missing file gives the
// defaults (test overrides off); an existing one must pass CheckHostView and be root-owned and not
// writable by group or others, as must its directory; parse errors name file:line:column.
StatusOr<proto::NodeSettings> ReadNodeSettings(const std::string& path);

// The test overrides (FJORD_NODE_IDENTITY, FJORD_TEST_HOOK): OK when neither is set, or when
// ReadNodeSettings(kNodeSettingsPath) says allow_test_overrides: true. Otherwise FailedPrecondition
// naming the variables, why they are refused and how the operator enables them. `fjord` calls it
// before any command; ReadNodeIdentity before it reads an override.
Status CheckTestOverrides();

// What this node says about itself, and where that came from.
struct LocalNode {
  proto::NodeIdentity identity;
  std::string path;         // the file read
  bool overridden = false;  // path came from FJORD_NODE_IDENTITY (a test override; audited)
  std::string hostname;     // gethostname() of the process that read it
};

// The identity file this process would read: $FJORD_NODE_IDENTITY when set, else
// /etc/fjord/node.textproto. `overridden` tells which. In the override, "%n" is replaced by
// $SLURMD_NODENAME when that is set (the Slurm test cluster runs several slurmd on one machine, which
// share its hostname and /etc; each fake node gets its own file); ReadNodeIdentity refuses a path
// still holding "%n".
std::string NodeIdentityPath(bool* overridden);

// What reading a node identity would find: the identity (when the file parses), where it came from,
// and every reason the rank gate would refuse it, not only the first, in the order the gate checks.
// ReadNodeIdentityFile and ReadNodeIdentity return the first of these problems; `fjord node show` and
// `fjord doctor` print them all. One set of checks, so what they show is what the gate does.
struct NodeInspection {
  std::string path;
  bool overridden = false;        // path came from FJORD_NODE_IDENTITY
  std::optional<LocalNode> node;  // set when the file parsed (even with problems)
  std::vector<Status> problems;   // empty: the gate accepts this identity
};

// The checks of ReadNodeIdentityFile on `path` (strict: CheckHostView, root-only file and directory),
// all of them.
NodeInspection InspectNodeIdentityFile(const std::string& path, bool strict);
// The checks of ReadNodeIdentity (the rank gate's): the test override when FJORD_NODE_IDENTITY is
// set, the file, and that it names this host.
NodeInspection InspectNodeIdentity();
// The strict checks and the hostname check on an identity at `path` other than the node's own (the
// test root of `fjord node show --root`). The rank gate never reads such a path.
NodeInspection InspectNodeIdentityAt(const std::string& path);

// What weakens the gate on this node without making it refuse: an identity from a test override,
// test overrides enabled in the node settings, unprivileged user namespaces enabled (sysctl). One
// sentence each, with what the operator does about it; empty when none. `user_namespaces`: include
// UnprivilegedUserNamespacesWarning().
std::vector<std::string> NodeTrustWarnings(const NodeInspection& inspection, bool user_namespaces = true);
// "" when unprivileged user namespaces are disabled (user.max_user_namespaces = 0, or Debian's
// kernel.unprivileged_userns_clone = 0), else a sentence saying so and how to disable them.
std::string UnprivilegedUserNamespacesWarning();

// Reads and validates a node identity file: text format of fjord.proto.NodeIdentity with hostname,
// jurisdiction (ISO 3166-1 alpha-2) and site. Parse errors name file:line:column. With `strict`
// (the default path), the file must pass CheckHostView, and it and its directory must be owned by
// root and not writable by group or others, so that no other user can change where the node claims
// to be.
StatusOr<LocalNode> ReadNodeIdentityFile(const std::string& path, bool strict);

// Reads the identity at NodeIdentityPath(), strict unless overridden, and checks that it names
// this host (gethostname, compared up to the first '.'). An override is refused unless
// CheckTestOverrides allows it.
StatusOr<LocalNode> ReadNodeIdentity();

// ---- Gate 2: the rank gate --------------------------------------------------------------------

struct RankGateResult {
  bool enabled = false;  // false: the job has no tenant; nothing was checked
  RankInfo rank;         // from the launcher's environment
  LocalNode node;        // valid when enabled
};

// Call first in `fjord train`, before opening data, creating a communicator or touching a GPU.
// For a job with a tenant: reads this node's identity and refuses (FailedPrecondition) when it
// cannot be read, names another host, or is outside the tenant's residency. The message names the
// rank, host, jurisdiction and site found, the identity file and the allowed set, and says what to
// do. A refusal is also appended to the job's audit log by this rank itself, when the log's
// directory exists (the rank does not create directories on a node it should not be on).
// The caller exits non-zero at once; under mpirun that ends the other ranks too (they are still
// waiting in MPI_Init for this one).
StatusOr<RankGateResult> RankGate(const proto::JobSpec& job);

// ---- Gate 3 for checkpoints -----------------------------------------------------------------

inline constexpr char kCheckpointTenantRecord[] = "tenant.textproto";
// Beside the record of an encrypted checkpoint: the record's exact text sealed with the tenant's
// key, so an edit of the plaintext record (its residency, its step, the digest of any file) is
// refused by whoever holds the key.
inline constexpr char kCheckpointTenantSeal[] = "tenant.seal";
// The record version this fjord writes (proto/tenancy.proto CheckpointTenancy).
inline constexpr int kCheckpointTenantRecordVersion = 2;

// True for a name that denotes a file directly inside a directory: not empty, not "." or "..",
// no '/' and no NUL. Names read from a record or manifest must pass before they are opened.
bool IsPlainFileName(std::string_view name);

// How a job writes (and reads) checkpoint files: the tenant and residency recorded beside them and
// the key that seals them (null = plaintext). Cheap to copy (the key is shared).
struct CheckpointSeal {
  std::string tenant;
  std::vector<std::string> allowed_jurisdictions;
  std::vector<std::string> allowed_sites;
  std::shared_ptr<const EncryptionKey> key;
  proto::NodeIdentity node;       // where this process runs, for the record (may be empty)
  std::string identity_override;  // the FJORD_NODE_IDENTITY file `node` came from; "" = the node's own
  std::string key_source = "checkpoint.encryption_key_file";  // where `key` came from, for messages
  // Which checkpoint the files belong to; with `tenant` and the file name, the authenticated data
  // of every sealed file. SaveCheckpoint sets them when writing; CheckCheckpointTenant returns them
  // from the checkpoint's authenticated record for reading.
  std::string job_sha256;  // JobDigest of the job that wrote the checkpoint
  int64_t step = -1;
  // The audit chain the checkpoint belongs to. Writing (rank 0 of a Tenancy): the job's audit log,
  // whose head each tenant record anchors. Returned by CheckCheckpointTenant: the log anchored in
  // the checkpoint's record ("" when it has none).
  std::string audit_log;
};

// The seal a job asks for: its tenant and residency, and the key of
// checkpoint.encryption_key_file (loaded and checked here: missing, unreadable by us, readable by
// others, or of the wrong length are refused naming the field).
StatusOr<CheckpointSeal> CheckpointSealFor(const proto::JobSpec& job);

// Writes one checkpoint file atomically (temporary name, fsync, rename): sealed with seal.key when
// set, with tenant, seal.job_sha256, seal.step and the file name bound into its authentication tag
// (Internal when a sealing seal lacks job_sha256 or step); plain otherwise.
Status WriteCheckpointFile(const std::string& path, const std::vector<ByteSpan>& pieces,
                           const CheckpointSeal& seal);

// Reads one checkpoint file whole. A sealed file needs seal.key (else: "is encrypted; set
// checkpoint.encryption_key_file"); a plain file is refused when seal.key is set (a plaintext
// file where an encrypted one belongs may have been substituted). Wrong key, modified file, or a
// file of another checkpoint, job or name: DataLoss naming the path and the checkpoint it was
// expected to belong to.
StatusOr<std::string> ReadCheckpointFile(const std::string& path, const CheckpointSeal& seal);

// Writes DIR/tenant.textproto (version 2): tenant, residency, cipher and key id, where it was
// written (and the identity override, if any), seal.job_sha256 and seal.step, the head of
// seal.audit_log when set (from its head file; refused when that is malformed), and the SHA-256 of each of
// `files` (plain names inside dir, as they are on disk, sealed or not); with seal.key also
// DIR/tenant.seal. Call after every other file is written and before the checkpoint directory is
// renamed into place. Does nothing for a seal without tenant and key (a plain checkpoint of a job
// without tenant stays as it was).
Status WriteCheckpointTenantRecord(const std::string& dir, const CheckpointSeal& seal,
                                   const std::vector<std::string>& files);

// Reads DIR/tenant.textproto; NotFound when the checkpoint has none.
StatusOr<proto::CheckpointTenancy> ReadCheckpointTenantRecord(const std::string& dir);

// The audit head anchored in checkpoint `dir`'s tenant record: the writing job's log (absolute
// path), the seq and hash of its last record when the checkpoint was written. NotFound when the
// checkpoint has no tenant record or its record no anchor (written without a Tenancy, or by a
// version 1 fjord). Without `key` the plaintext record is read as it is (for an encrypted
// checkpoint an attacker who rewrites the log could rewrite it too); with the tenant's `key` the
// record must match tenant.seal (DataLoss otherwise), so the anchor is the one the job wrote.
// For `fjord audit verify`: the log must hold that record at that seq.
StatusOr<proto::AuditAnchor> ReadCheckpointAuditAnchor(const std::string& dir,
                                                       const EncryptionKey* key = nullptr);

enum class CheckpointUse {
  kResume,    // continue this job: the checkpoint must be this tenant's, sealed when the job seals
  kInitFrom,  // start from its weights: also accepts an untenanted plain checkpoint (public weights)
  kEval,      // the commands outside a training job (OpenCheckpointOutsideJob)
  kSample,
  kExport,  // writes the weights out in plaintext
};

// "resume", "init_from", "eval", "sample", "export".
const char* CheckpointUseName(CheckpointUse use);

// Gate 3 for checkpoints: whether the job with `job_seal`, on `node` (may be null: no residency
// check), may load the checkpoint in `dir`; returns the seal to read its files with (its
// job_sha256, step and audit_log from the record). Refuses: another tenant's checkpoint; a
// tenanted checkpoint for a job without tenant; an untenanted one for kResume of a tenant job; a
// node outside the checkpoint's recorded residency; an encrypted checkpoint without a key or with
// a different key (by key id, before any decryption); an encrypted checkpoint whose record is not
// version 2 or does not match tenant.seal; a record naming a file that is not a plain regular file
// inside dir; a record whose step differs from a step_N directory name; a plain checkpoint for
// kResume of a job that seals; any listed file (sealed or not) whose SHA-256 differs from the
// record. Sealed files are also authenticated, against this checkpoint's tenant, job, step and
// their own name, when read (ReadCheckpointFile).
StatusOr<CheckpointSeal> CheckCheckpointTenant(const std::string& dir, const CheckpointSeal& job_seal,
                                               const proto::NodeIdentity* node, CheckpointUse use);

// ---- Gate 3 for commands outside a training job (fjord eval, sample, export) -------------------

// How such a command was told to open a checkpoint.
struct CheckpointAccess {
  CheckpointUse use = CheckpointUse::kEval;
  std::string key_file;   // --key: the tenant's checkpoint key; "" = none
  std::string audit_log;  // --audit-log: a second log for the record, besides the checkpoint's own; "" = none
};

// A checkpoint such a command may read.
struct OpenedCheckpoint {
  CheckpointSeal seal;  // to read its files with (LoadCheckpointWeights)
  // Where the opening was recorded: the checkpoint's own chain first, then --audit-log when given;
  // empty for an untenanted checkpoint.
  std::vector<std::unique_ptr<AuditLog>> audit;
  std::string tenant;  // from its tenant record; "" when it has none

  // Appends `event` to every log in `audit`; the first failure, after trying them all.
  Status Record(std::string_view event, const AuditRecord& fields) const;
  // Appends a "refusal" (gate checkpoint, dir, use, the message) to every log in `audit`, e.g. a
  // sealed file that fails authentication after OpenCheckpointOutsideJob; returns `status`.
  Status Refuse(const std::string& dir, CheckpointUse use, const Status& status) const;
};

// Gate 3 for a command that reads the checkpoint in `dir` outside a training job; `job` is the
// checkpoint's own job.textproto. A checkpoint with a tenant record is checked as resume checks it
// (CheckCheckpointTenant): the record's tenant against the job's, this node (ReadNodeIdentity)
// against the recorded residency, the key of access.key_file against the recorded key id, every
// listed file against its recorded SHA-256. The opening, or the refusal, is appended as
// "checkpoint_opened" or "refusal" to the checkpoint's own chain -- the audit log anchored in its
// record, else the log of the job that wrote it (AuditPathFor(job)); its directory must exist --
// and also to access.audit_log when given. When the opening cannot be appended to its own chain
// (or to access.audit_log) the checkpoint is refused: no command-line flag moves the record
// elsewhere. Also refused: a sealed checkpoint without access.key_file (the message names the
// tenant, the key id and --key), and access.key_file for a plaintext checkpoint (it may have been
// substituted). An untenanted plain checkpoint opens without checks or audit.
StatusOr<OpenedCheckpoint> OpenCheckpointOutsideJob(const std::string& dir, const proto::JobSpec& job,
                                                    const CheckpointAccess& access);

// ---- The per-rank tenancy context -------------------------------------------------------------

// What the trainer needs from tenancy, made once per rank after the communicator exists.
// Rank 0 owns the audit log; other ranks have none. Not thread-safe except where noted.
class Tenancy {
 public:
  // Collective over `comm` (every rank calls it once, in the same place): gathers every rank's gate
  // result and job digest. Refuses on every rank, naming the ranks, when the ranks were given
  // different job specs. Rank 0 appends job_start, one rank_identity record per rank, and a
  // test_override record when any rank read its identity from FJORD_NODE_IDENTITY (or no_tenant
  // for a job without tenant). Loads the checkpoint key (CheckpointSealFor) on every rank first,
  // so a job that cannot seal its checkpoints stops before anything else (rank 0 audits the refusal).
  static StatusOr<std::unique_ptr<Tenancy>> Start(const proto::JobSpec& job, const RankGateResult& gate,
                                                  Communicator& comm);

  bool enabled() const { return policy_.enabled(); }
  const ResidencyPolicy& policy() const { return policy_; }
  // For DataLoader::Open: the data gate of this rank (audits through rank 0's log).
  const DataPolicy& data_policy() const { return data_policy_; }
  // For SaveCheckpoint / WriteCheckpointFile / WriteCheckpointTenantRecord.
  const CheckpointSeal& checkpoint_seal() const { return seal_; }
  // Rank 0's audit log, null on other ranks.
  AuditLog* audit() const { return audit_.get(); }

  // CheckCheckpointTenant for this job on this node, with the outcome audited (rank 0):
  // checkpoint_opened or refusal, in this job's log and, when the checkpoint's own chain (the log
  // anchored in its record) is another file, there too; an opening that cannot be appended to both
  // is refused. Returns the seal to read the checkpoint's files with.
  StatusOr<CheckpointSeal> CheckCheckpoint(const std::string& dir, CheckpointUse use) const;
  // Rank 0, after a checkpoint directory is complete: audits checkpoint_written with its files'
  // SHA-256 (from tenant.textproto when present). No-op on other ranks.
  Status RecordCheckpointWritten(const std::string& dir) const;
  // Rank 0: audits the end of the job (ok, or the error). No-op on other ranks.
  // `signal` (non-zero): the rank is ending on that signal (the trainer's signal watcher), recorded
  // as job_end's "signal". Recorded once: a later call (the normal end after a signal's) is a no-op.
  Status RecordJobEnd(const Status& result, int signal = 0) const;

 private:
  Tenancy() = default;
  ResidencyPolicy policy_;
  DataPolicy data_policy_;
  CheckpointSeal seal_;
  proto::NodeIdentity node_;
  bool has_node_ = false;
  std::unique_ptr<AuditLog> audit_;
  mutable std::atomic<bool> job_end_recorded_{false};
};

}  // namespace fjord

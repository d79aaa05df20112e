// `fjord report` (report_cmd.h): the training record, from the run's own artefacts only: the audit
// log (verified first), the checkpoints (verified against their digests), metrics.jsonl and the
// newest checkpoint's job spec; the inventory adds the operator's energy declarations.
#include "launcher/report_cmd.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/file_util.h"
#include "common/host.h"
#include "common/json.h"
#include "common/sha256.h"
#include "common/time_util.h"
#include "launcher/audit_cmd.h"
#include "launcher/cli.h"
#include "launcher/launch/inventory.h"
#include "proto/record.pb.h"
#include "runtime/model/mfu.h"
#include "runtime/tenancy/audit.h"
#include "runtime/tenancy/tenancy.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/config.h"
#include "runtime/train/metrics.h"

namespace fjord {
namespace fs = std::filesystem;
namespace {

struct ReportArgs {
  std::vector<std::string> run_dir;
  std::string inventory, key;
};

std::string Str(const JsonValue& record, std::string_view key) {
  const JsonValue* v = record.Find(key);
  return v != nullptr && v->is_string() ? v->text() : "";
}

std::string Fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

// One start of the job (a job_start record and what follows it, until the next).
struct Start {
  std::string job_sha256;
  int start_step = 0;  // train_devices: the step it resumed from
  std::vector<proto::RecordRank> ranks;
};

// What the audit log says about the run.
struct AuditFacts {
  std::vector<Start> starts;
  std::string tenant, data_train;
  std::vector<std::string> jurisdictions, sites, unmanifested;
  std::vector<proto::RecordManifest> manifests;
  std::set<std::string> counters;
  std::vector<std::string> test_overrides;
};

StatusOr<AuditFacts> ReadAuditFacts(const std::string& path) {
  FJORD_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, "audit log"));
  AuditFacts facts;
  std::set<std::string> manifests_seen;
  std::istringstream in(text);
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    FJORD_ASSIGN_OR_RETURN(JsonValue record, ParseJson(line, path + " line " + std::to_string(number)));
    const std::string event = Str(record, "event");
    auto strings = [&](const char* key) {
      std::vector<std::string> out;
      if (const JsonValue* v = record.Find(key); v != nullptr && v->is_array()) {
        for (const JsonValue& s : v->array()) out.push_back(s.text());
      }
      return out;
    };
    if (event == "job_start") {
      facts.starts.push_back({Str(record, "job_sha256"), 0, {}});
      facts.tenant = Str(record, "tenant");
      facts.data_train = Str(record, "data_train");
      facts.jurisdictions = strings("allowed_jurisdictions");
      facts.sites = strings("allowed_sites");
    } else if (facts.starts.empty()) {
      continue;  // launch's records before the job's
    } else if (event == "train_devices") {
      Start& s = facts.starts.back();
      if (const JsonValue* v = record.Find("start_step"); v && v->AsInt64()) s.start_step = *v->AsInt64();
      std::vector<proto::RecordRank> ranks;
      if (const JsonValue* list = record.Find("ranks"); list && list->is_array()) {
        for (const JsonValue& r : list->array()) {
          proto::RecordRank rank;
          rank.set_start(static_cast<int>(facts.starts.size()));
          if (const JsonValue* n = r.Find("rank"); n && n->AsInt64())
            rank.set_rank(static_cast<int>(*n->AsInt64()));
          rank.set_host(Str(r, "host"));
          rank.set_device(Str(r, "device"));
          if (const JsonValue* c = r.Find("energy_counters"); c && c->is_array()) {
            for (const JsonValue& name : c->array()) facts.counters.insert(name.text());
          }
          // The identity checks (tenant jobs) came before: keep their jurisdiction and site.
          for (const proto::RecordRank& known : s.ranks) {
            if (known.rank() == rank.rank()) {
              rank.set_jurisdiction(known.jurisdiction());
              rank.set_site(known.site());
              if (known.identity_override()) rank.set_identity_override(true);
            }
          }
          ranks.push_back(rank);
        }
      }
      s.ranks = ranks;
    } else if (event == "rank_identity") {
      const JsonValue* check = record.Find("check");
      if (check == nullptr) continue;
      proto::RecordRank rank;
      rank.set_start(static_cast<int>(facts.starts.size()));
      if (const JsonValue* n = check->Find("rank"); n && n->AsInt64())
        rank.set_rank(static_cast<int>(*n->AsInt64()));
      rank.set_host(Str(*check, "host"));
      rank.set_jurisdiction(Str(*check, "jurisdiction"));
      rank.set_site(Str(*check, "site"));
      if (const JsonValue* o = check->Find("override"); o && o->is_bool() && o->bool_value())
        rank.set_identity_override(true);
      facts.starts.back().ranks.push_back(rank);
    } else if (event == "manifest_opened") {
      const std::string key = Str(record, "path") + " " + Str(record, "sha256");
      if (!manifests_seen.insert(key).second) continue;
      proto::RecordManifest m;
      m.set_path(Str(record, "path"));
      m.set_sha256(Str(record, "sha256"));
      m.set_tenant(Str(record, "tenant"));
      for (const std::string& j : strings("allowed_jurisdictions")) m.add_allowed_jurisdictions(j);
      facts.manifests.push_back(m);
    } else if (event == "data_unmanifested") {
      facts.unmanifested.push_back(Str(record, "path"));
    } else if (event == "test_override") {
      std::string ranks;
      if (const JsonValue* list = record.Find("ranks"); list && list->is_array()) {
        for (const JsonValue& r : list->array()) {
          const JsonValue* n = r.Find("rank");
          ranks += std::string(ranks.empty() ? "" : ", ") + (n && n->is_number() ? n->text() : "?");
        }
      }
      facts.test_overrides.push_back("start " + std::to_string(facts.starts.size()) + ": " +
                                     Str(record, "variable") + " on rank(s) " + ranks + ": " +
                                     Str(record, "note"));
    }
  }
  return facts;
}

// The record's markdown: the same facts, for a reader.
std::string Markdown(const proto::TrainingRecord& r, const std::string& json_sha256) {
  std::string md;
  auto line = [&md](const std::string& s) { md += s + "\n"; };
  line("# Training record: " + r.run_dir());
  line("");
  line("Written " + r.written_at() + " by `fjord report`; training_record.json SHA-256 " + json_sha256 + ".");
  line("Bound to the audit log " + r.audit().log() +
       ", verified before writing: " + std::to_string(r.audit().records()) + " records, head seq " +
       std::to_string(r.audit().head_seq()) + " hash " + r.audit().head_hash() + ".");
  line("");
  line("## Model");
  const proto::RecordModel& m = r.model();
  line("- " + m.architecture() + ", " + std::to_string(m.parameters()) + " parameters (n_layer " +
       std::to_string(m.n_layer()) + ", n_head " + std::to_string(m.n_head()) + ", n_embd " +
       std::to_string(m.n_embd()) + ", seq_len " + std::to_string(m.seq_len()) + ", vocab " +
       std::to_string(m.vocab_size()) + ")");
  for (const std::string& d : m.job_sha256()) line("- job spec SHA-256: " + d);
  line("");
  line("## Data");
  const proto::RecordData& d = r.data();
  line("- tenant: " + (d.tenant().empty() ? std::string("none") : d.tenant()));
  if (!d.allowed_jurisdictions().empty()) {
    std::string j;
    for (const std::string& s : d.allowed_jurisdictions()) j += (j.empty() ? "" : ", ") + s;
    line("- residency: " + j);
  }
  line("- tokens seen: " + std::to_string(d.tokens_seen()));
  for (const proto::RecordManifest& x : d.manifest())
    line("- manifest " + x.path() + " (tenant " + x.tenant() + "): SHA-256 " + x.sha256());
  for (const std::string& u : d.unmanifested()) line("- read without a manifest: " + u);
  if (d.has_note()) line("- " + d.note());
  line("");
  line("## Checkpoints");
  for (const proto::RecordCheckpoint& c : r.checkpoint())
    line("- step " + std::to_string(c.step()) + ": " + c.dir() + ", manifest.json SHA-256 " +
         c.manifest_sha256());
  line("");
  line("## Compute");
  const proto::RecordCompute& c = r.compute();
  line("- training FLOPs: " + Fmt("%.6e", c.total_flops()) + " = " + Fmt("%.0f", c.flops_per_token()) +
       " FLOPs/token x " + std::to_string(c.tokens()) + " tokens");
  line("- formula: " + c.flops_formula());
  line("- steps: " + std::to_string(c.steps()) +
       "; wall time of the steps: " + Fmt("%.3f", c.wall_seconds()) + " s");
  for (const proto::RecordDeviceHours& h : c.device_hours())
    line("- device-hours on " + h.device() + ": " + Fmt("%.6f", h.hours()));
  line("");
  line("## Energy");
  const proto::RecordEnergy& e = r.energy();
  line("- " + e.status());
  if (e.has_measured_j())
    line("- measured: " + Fmt("%.3f", e.measured_j()) + " J (" + Fmt("%.6f", e.measured_j() / 3.6e6) +
         " kWh), covering " + Fmt("%.1f", 100.0 * e.measured_share()) + "% of the rank-steps");
  if (e.has_estimated_j())
    line("- estimated (energy.rank_power_w, not measured): " + Fmt("%.3f", e.estimated_j()) + " J");
  if (e.has_j_per_token()) line("- J/token: " + Fmt("%.6g", e.j_per_token()));
  for (const std::string& k : e.counters()) line("- counter: " + k);
  for (const proto::RecordSiteEnergy& s : e.declared()) {
    line("- site " + s.site() + " (operator's declaration): source " +
         (s.source().empty() ? std::string("not declared") : s.source()) + ", emission factor " +
         (s.has_emission_factor_g_per_kwh() ? Fmt("%g", s.emission_factor_g_per_kwh()) + " gCO2e/kWh"
                                            : std::string("not declared")) +
         (s.reference().empty() ? "" : " (" + s.reference() + ")"));
  }
  if (e.has_note()) line("- " + e.note());
  line("");
  if (!r.test_override().empty()) {
    line("## Test overrides");
    line(
        "This run had test overrides (docs/SOVEREIGNTY.md, \"Test overrides\"): a test record, not "
        "evidence.");
    for (const std::string& o : r.test_override()) line("- " + o);
    line("");
  }
  line("## Where it ran");
  line("| start | rank | host | jurisdiction | site | device |");
  line("|---|---|---|---|---|---|");
  for (const proto::RecordRank& k : r.rank()) {
    line("| " + std::to_string(k.start()) + " | " + std::to_string(k.rank()) + " | " + k.host() + " | " +
         (k.jurisdiction().empty() ? "not checked" : k.jurisdiction()) +
         (k.identity_override() ? " (FJORD_NODE_IDENTITY, a test override)" : "") + " | " +
         (k.site().empty() ? "-" : k.site()) + " | " + k.device() + " |");
  }
  return md;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "fjord report: error: %s\n", message.c_str());
  return 1;
}

int Report(const cli::Command& c, const ReportArgs& a) {
  if (a.run_dir.size() != 1) return cli::UsageError(c, "expected `report RUN_DIR`");
  const std::string run_dir = a.run_dir[0];
  const std::string checkpoints_dir = (fs::path(run_dir) / "checkpoints").string();
  const std::vector<std::string> checkpoints = ListCheckpoints(checkpoints_dir);
  if (checkpoints.empty()) {
    return Fail(checkpoints_dir +
                " holds no checkpoint: the record describes a run through its checkpoints "
                "(every run writes one after its last step); name the run directory of a finished run");
  }
  std::optional<proto::Inventory> inventory;
  if (!a.inventory.empty()) {
    StatusOr<proto::Inventory> inv = LoadInventory(a.inventory);
    if (!inv.ok()) return Fail(inv.status().message());
    inventory = std::move(*inv);
  }
  // The newest checkpoint's job spec: the model and where the audit log is.
  StatusOr<proto::JobSpec> job = LoadCheckpointJob(checkpoints.front());
  if (!job.ok()) return Fail(job.status().message());
  const std::string log =
      job->audit_log().empty() ? (fs::path(run_dir) / "audit.jsonl").string() : job->audit_log();

  // 1. The audit chain, with the heads the tenant checkpoints anchored.
  StatusOr<std::vector<AuditAnchor>> anchors = CheckpointAnchors(log, {run_dir}, a.key);
  if (!anchors.ok() && anchors.status().code() != StatusCode::kNotFound)
    return Fail(anchors.status().message());
  StatusOr<AuditVerifyReport> verified =
      VerifyAuditLog(log, anchors.ok() ? *anchors : std::vector<AuditAnchor>());
  if (!verified.ok()) return Fail(verified.status().message() + "; no record written");
  if (!verified->ok) {
    return Fail("the audit log " + log + " is broken" +
                (verified->bad_line > 0 ? " at line " + std::to_string(verified->bad_line) : " at its end") +
                ": " + verified->problem +
                ". The record quotes the log it is bound to, so none is written; find what changed the log "
                "(fjord audit verify " +
                log + ")");
  }
  // 2. Every checkpoint against its digests.
  std::vector<proto::RecordCheckpoint> recorded;
  for (auto it = checkpoints.rbegin(); it != checkpoints.rend(); ++it) {
    if (Status ok = VerifyCheckpoint(*it); !ok.ok()) {
      return Fail("checkpoint " + *it + " disagrees with its digests: " + ok.message() +
                  "; no record written. Restore the checkpoint, or remove it if it is not part of the run");
    }
    StatusOr<CheckpointState> state = ReadCheckpointState(*it);
    StatusOr<std::string> digest =
        Sha256File((fs::path(*it) / "manifest.json").string(), "checkpoint manifest");
    if (!state.ok()) return Fail(state.status().message());
    if (!digest.ok()) return Fail(digest.status().message());
    proto::RecordCheckpoint ck;
    ck.set_dir(*it);
    ck.set_step(state->step);
    ck.set_manifest_sha256(*digest);
    recorded.push_back(ck);
  }
  StatusOr<AuditFacts> facts = ReadAuditFacts(log);
  if (!facts.ok()) return Fail(facts.status().message());
  if (facts->starts.empty())
    return Fail("the audit log " + log + " has no job_start record: it is not this run's log");

  // 3. The steps, from metrics.jsonl.
  const std::string metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();
  std::ifstream metrics_in(metrics_path);
  if (!metrics_in) return Fail("cannot read " + metrics_path + ": the record counts the steps from it");
  std::vector<StepMetrics> steps;
  int number = 0;
  for (std::string line; std::getline(metrics_in, line);) {
    StatusOr<StepMetrics> m = ParseStepMetrics(line, metrics_path + " line " + std::to_string(++number));
    if (!m.ok()) return Fail(m.status().message());
    steps.push_back(*m);
  }

  proto::TrainingRecord r;
  r.set_run_dir(run_dir);
  r.set_written_at(UtcNow());
  const GptConfig config = GptConfig::FromSpec(job->model());
  proto::RecordModel* model = r.mutable_model();
  model->set_architecture("GPT-2 (pre-LayerNorm, learned positions, tanh GELU, tied embeddings)");
  model->set_parameters(static_cast<int64_t>(ParamCount(config)));
  model->set_n_layer(config.n_layer);
  model->set_n_head(config.n_head);
  model->set_n_embd(config.n_embd);
  model->set_seq_len(config.max_seq_len);
  model->set_vocab_size(config.vocab_size);
  std::set<std::string> digests;
  for (const Start& s : facts->starts) {
    if (digests.insert(s.job_sha256).second) model->add_job_sha256(s.job_sha256);
  }
  for (const proto::RecordCheckpoint& ck : recorded) *r.add_checkpoint() = ck;

  // Compute: the same formula as MFU (runtime/model/mfu.h).
  const int T = TrainSeqLen(*job);
  const double flops_per_token = ModelFlopsPerToken(config, T);
  proto::RecordCompute* compute = r.mutable_compute();
  compute->set_flops_formula(
      "6 N + 6 L C T per token (forward + backward; runtime/model/mfu.h, as MFU): N = " +
      std::to_string(ParamCount(config)) + " parameters, L = " + std::to_string(config.n_layer) +
      " layers, C = " + std::to_string(config.n_embd) + ", T = " + std::to_string(T) +
      " tokens per sequence");
  compute->set_flops_per_token(flops_per_token);
  int64_t tokens = 0;
  double seconds = 0.0;
  std::map<std::string, double> device_seconds;
  double rank_steps = 0.0, measured_rank_steps = 0.0, counted_rank_steps = 0.0, measured_j = 0.0,
         estimated_j = 0.0;
  bool any_measured = false, any_estimated = false;
  for (const StepMetrics& m : steps) {
    const int64_t step_tokens = m.tokens ? static_cast<int64_t>(std::llround(*m.tokens))
                                         : static_cast<int64_t>(std::llround(m.tokens_per_s * m.ms / 1000.0));
    tokens += step_tokens;
    seconds += m.ms / 1000.0;
    const Start* start = &facts->starts.front();
    for (const Start& s : facts->starts) {
      if (s.start_step < m.step) start = &s;
    }
    for (const proto::RecordRank& k : start->ranks) device_seconds[k.device()] += m.ms / 1000.0;
    rank_steps += static_cast<double>(std::max<size_t>(start->ranks.size(), 1));
    if (m.energy_from_step) {
      const double window = m.step - *m.energy_from_step + 1;
      measured_rank_steps += window * m.energy_measured_ranks.value_or(0);
      if (m.j_per_token) counted_rank_steps += window * m.energy_ranks.value_or(0);
      if (m.energy_j) {
        measured_j += *m.energy_j;
        any_measured = true;
      }
      if (m.energy_estimated_j) {
        estimated_j += *m.energy_estimated_j;
        any_estimated = true;
      }
    }
  }
  compute->set_tokens(tokens);
  compute->set_steps(steps.empty() ? 0 : steps.back().step);
  compute->set_total_flops(flops_per_token * static_cast<double>(tokens));
  compute->set_wall_seconds(seconds);
  for (const auto& [device, s] : device_seconds) {
    proto::RecordDeviceHours* h = compute->add_device_hours();
    h->set_device(device);
    h->set_hours(s / 3600.0);
  }

  proto::RecordData* data = r.mutable_data();
  data->set_tenant(facts->tenant);
  for (const std::string& j : facts->jurisdictions) data->add_allowed_jurisdictions(j);
  for (const std::string& s : facts->sites) data->add_allowed_sites(s);
  for (const proto::RecordManifest& m : facts->manifests) *data->add_manifest() = m;
  for (const std::string& u : facts->unmanifested) data->add_unmanifested(u);
  data->set_tokens_seen(tokens);
  if (facts->tenant.empty()) {
    data->set_note("a job without tenant: no data manifest was checked or recorded; data.train was \"" +
                   facts->data_train + "\"");
  }

  proto::RecordEnergy* energy = r.mutable_energy();
  const double share = rank_steps > 0 ? measured_rank_steps / rank_steps : 0.0;
  energy->set_status(!any_measured && !any_estimated  ? "not measured"
                     : share >= 1.0 && !any_estimated ? "measured"
                     : any_measured                   ? "partly measured, partly estimated or not measured"
                                                      : "estimated (no counter could be read)");
  if (any_measured) {
    energy->set_measured_j(measured_j);
    energy->set_measured_share(share);
  }
  if (any_estimated) energy->set_estimated_j(estimated_j);
  if (rank_steps > 0 && counted_rank_steps >= rank_steps && tokens > 0)
    energy->set_j_per_token((measured_j + estimated_j) / static_cast<double>(tokens));
  for (const std::string& k : facts->counters) energy->add_counters(k);
  std::set<std::string> sites;
  for (const Start& s : facts->starts) {
    for (const proto::RecordRank& k : s.ranks) {
      *r.add_rank() = k;
      if (!k.site().empty()) sites.insert(k.site());
    }
  }
  if (!inventory) {
    energy->set_note(
        "no inventory given (--inventory): the site's energy source and emission factor are not "
        "recorded");
  } else {
    for (const std::string& site : sites) {
      bool declared = false;
      for (const proto::SiteEnergy& se : inventory->site_energy()) {
        if (se.site() != site) continue;
        declared = true;
        proto::RecordSiteEnergy* out = energy->add_declared();
        out->set_site(site);
        out->set_source(se.source());
        if (se.emission_factor_g_per_kwh() >= 0)
          out->set_emission_factor_g_per_kwh(se.emission_factor_g_per_kwh());
        out->set_reference(se.reference());
      }
      if (!declared) {
        energy->set_note(energy->note() + (energy->note().empty() ? "" : "; ") + "the inventory " +
                         a.inventory + " declares no energy source for site " + site);
      }
    }
    if (sites.empty()) {
      energy->set_note(
          "the ranks' sites are not known (a job without tenant checks no node identity), so no "
          "site declaration of the inventory applies");
    }
  }
  for (const std::string& o : facts->test_overrides) r.add_test_override(o);
  proto::RecordAudit* audit = r.mutable_audit();
  audit->set_log(log);
  audit->set_records(verified->records);
  audit->set_head_seq(verified->records);
  audit->set_head_hash(verified->head_hash);

  // 4. Write both files, then the event that binds them to the log.
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (const auto printed = google::protobuf::util::MessageToJsonString(r, &json, options); !printed.ok())
    return Fail("cannot print the record as JSON: " + std::string(printed.message()));
  StatusOr<std::string> json_digest = Sha256Hex(json);
  if (!json_digest.ok()) return Fail(json_digest.status().message());
  const std::string md = Markdown(r, *json_digest);
  StatusOr<std::string> md_digest = Sha256Hex(md);
  if (!md_digest.ok()) return Fail(md_digest.status().message());
  const std::string json_path = (fs::path(run_dir) / "training_record.json").string();
  const std::string md_path = (fs::path(run_dir) / "training_record.md").string();
  for (const auto& [path, text] :
       {std::pair<std::string, const std::string*>{json_path, &json}, {md_path, &md}}) {
    if (Status w = WriteFileAtomic(path, {{text->data(), text->size()}}); !w.ok()) return Fail(w.message());
  }
  StatusOr<std::unique_ptr<AuditLog>> opened = AuditLog::Open(log, "report@" + ThisHostname(), false);
  if (!opened.ok()) return Fail(opened.status().message());
  StatusOr<AuditAnchor> appended =
      (*opened)->Append("training_record", AuditRecord()
                                               .Str("path", json_path)
                                               .Str("sha256", *json_digest)
                                               .Str("md_path", md_path)
                                               .Str("md_sha256", *md_digest)
                                               .Int("quotes_head_seq", verified->records)
                                               .Str("quotes_head", verified->head_hash));
  if (!appended.ok()) return Fail(appended.status().message());
  std::fputs(md.c_str(), stdout);
  std::printf("\nfjord report: wrote %s and %s; audit record %lld (training_record, sha256 %s)\n",
              json_path.c_str(), md_path.c_str(), static_cast<long long>(appended->seq),
              json_digest->c_str());
  return 0;
}

}  // namespace

void AddReportCommand(CLI::App& app) {
  auto a = std::make_shared<ReportArgs>();
  cli::Command* c =
      cli::AddCommand(app, "report",
                      "write the training record of a run (compute, energy, data, where it ran), "
                      "after verifying its audit log and checkpoints");
  c->add_option("RUN_DIR", a->run_dir, "the run directory (metrics.jsonl, checkpoints/, audit.jsonl)")
      ->type_name("");
  c->add_option("--inventory", a->inventory,
                "the operator's inventory: the sites' declared energy source and "
                "emission factor")
      ->type_name("INV");
  c->add_option("--key", a->key, "the tenant's checkpoint key: each checkpoint's record must match its seal")
      ->type_name("FILE");
  c->run = [c, a] { return Report(*c, *a); };
}

}  // namespace fjord

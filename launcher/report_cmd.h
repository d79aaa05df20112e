// `fjord report RUN_DIR`: the training record of a run (proto/record.proto).
#pragma once

namespace CLI {
class App;
}

namespace fjord {

// `fjord report RUN_DIR [--inventory INV] [--key FILE]`: verifies the run's audit log first (chain,
// head, and the heads its tenant checkpoints anchored, as `fjord audit verify --checkpoints RUN_DIR`)
// and every checkpoint under RUN_DIR/checkpoints against its manifest's digests, and refuses,
// exit 1 with what is wrong and nothing written, when either fails. Else it writes
// RUN_DIR/training_record.json (the TrainingRecord as protobuf's JSON) and training_record.md (the
// same for a reader; printed on stdout), each atomically, and appends a training_record event with
// both files' SHA-256 to the audit log, so the record is itself in the chain it quotes.
// Added as `report` to `app` (launcher/cli.h).
void AddReportCommand(CLI::App& app);

}  // namespace fjord

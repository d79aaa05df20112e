// The fjord command line on CLI11 (cli.h): the formatter that writes usage lines and help from the
// definitions, and the one place argument errors are worded and printed.
#include "launcher/cli.h"

#include <cstdio>
#include <regex>
#include <vector>

namespace fjord::cli {
namespace {

// "fjord audit verify": the names from the app down to `command`.
std::string Path(const CLI::App& command) {
  const CLI::App* parent = command.get_parent();
  return parent == nullptr ? command.get_name() : Path(*parent) + " " + command.get_name();
}

// The name after "fjord" in messages: "audit verify".
std::string CommandName(const CLI::App& command) {
  const std::string path = Path(command);
  const size_t space = path.find(' ');
  return space == std::string::npos ? path : path.substr(space + 1);
}

constexpr char kRequiredGroup[] = "Required";

// "-b/--minbytes" for an option CLI11 names "--minbytes"; the name itself when it is no option.
std::string DisplayName(const CLI::App& command, const std::string& name) {
  const CLI::Option* option = command.get_option_no_throw(name);
  if (option == nullptr) return name;
  std::string out;
  for (const std::string& s : option->get_snames()) out += (out.empty() ? "-" : "/-") + s;
  for (const std::string& l : option->get_lnames()) out += (out.empty() ? "--" : "/--") + l;
  return out;
}

// CLI11's messages in the words the rest of fjord uses.
std::string Reword(const CLI::App& command, const CLI::Error& error) {
  const std::string what = error.what();
  std::smatch m;
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&error) != nullptr &&
      std::regex_match(what, m, std::regex(R"((\S+): \d+ required .* missing)"))) {
    return DisplayName(command, m[1]) + " needs a value";
  }
  if (dynamic_cast<const CLI::ValidationError*>(&error) != nullptr &&
      std::regex_match(what, m, std::regex(R"((\S+): (.*))"))) {
    return DisplayName(command, m[1]) + " " + m[2].str();
  }
  if (dynamic_cast<const CLI::ConversionError*>(&error) != nullptr &&
      std::regex_match(what, m, std::regex(R"(Could not convert: (\S+) = (.*))"))) {
    return DisplayName(command, m[1]) + " '" + m[2].str() + "' is not a valid value";
  }
  if (dynamic_cast<const CLI::RequiredError*>(&error) != nullptr && !command.get_subcommands({}).empty()) {
    std::string names;
    for (const CLI::App* sub : command.get_subcommands({}))
      names += (names.empty() ? "" : ", ") + sub->get_name();
    return "give a command: " + names;
  }
  return what;
}

// The deepest subcommand the arguments chose (the app itself when none).
CLI::App* Chosen(CLI::App& app) {
  const std::vector<CLI::App*> chosen = app.get_subcommands();
  return chosen.empty() ? &app : Chosen(*chosen.front());
}

class Formatter : public CLI::Formatter {
 public:
  Formatter() {
    column_width(30);
    label("Positionals", "Arguments");
  }
  std::string make_usage(const CLI::App* app, std::string) const override {
    return "usage: " + Usage(*app) + "\n";
  }
  std::string make_description(const CLI::App* app) const override {
    return app->get_description().empty() ? "" : app->get_description() + "\n";
  }
  // In `fjord --help`: each command's summary and usage line.
  std::string make_subcommand(const CLI::App* sub) const override {
    std::string out;
    char line[64];
    std::snprintf(line, sizeof(line), "  %-8s ", sub->get_name().c_str());
    out += line + sub->get_description() + "\n";
    if (sub->get_subcommands({}).empty()) return out + "           " + Usage(*sub) + "\n";
    for (const CLI::App* leaf : sub->get_subcommands({})) out += "           " + Usage(*leaf) + "\n";
    return out;
  }
};

}  // namespace

std::unique_ptr<CLI::App> MakeApp() {
  auto app = std::make_unique<CLI::App>(
      "fjord: data-parallel GPT training that keeps every tenant inside its "
      "jurisdictions",
      "fjord");
  app->formatter(std::make_shared<Formatter>());
  app->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app->require_subcommand(1);
  app->footer("fjord COMMAND --help describes the options of a command.");
  return app;
}

Command* AddCommand(CLI::App& parent, const std::string& name, const std::string& summary) {
  auto command = std::make_shared<Command>(name, summary);
  command->formatter(parent.get_formatter());
  command->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  command->allow_extras();  // Run refuses them, in fjord's words
  command->group("Commands");
  Command* raw = command.get();
  parent.add_subcommand(command);
  if (dynamic_cast<Command*>(&parent) != nullptr) {
    parent.allow_extras(false);
    parent.require_subcommand(1);
  }
  return raw;
}

CLI::Option* Required(CLI::Option* option) { return option->group(kRequiredGroup); }

std::string Usage(const CLI::App& command) {
  std::string out;
  if (const auto* c = dynamic_cast<const Command*>(&command)) out += c->launcher;
  out += Path(command);
  if (command.get_parent() == nullptr) return out + " COMMAND [options]";
  const std::vector<const CLI::App*> subs = command.get_subcommands({});
  for (size_t i = 0; i < subs.size(); ++i) out += (i ? "|" : " ") + subs[i]->get_name();
  for (const CLI::Option* o : command.get_options([](const CLI::Option* o) { return o->get_positional(); })) {
    out += " " + o->get_name(true, false);
  }
  for (const CLI::Option* o : command.get_options([](const CLI::Option* o) { return o->nonpositional(); })) {
    if (o == command.get_help_ptr() || o->get_group().empty()) continue;  // hidden (internal) options
    std::string item =
        o->get_snames().empty() ? "--" + o->get_lnames().front() : "-" + o->get_snames().front();
    // A flag has no value name, or "[=SECONDS]" when it takes a value after '='.
    const std::string value = o->get_type_name();
    item += value.empty() || value[0] == '[' ? value : " " + value;
    const bool repeats = o->get_items_expected_max() > 1;
    out += o->get_group() == kRequiredGroup ? " " + item : " [" + item + "]" + (repeats ? "..." : "");
  }
  return out;
}

int UsageError(const CLI::App& command, const std::string& message) {
  const std::string name = CommandName(command);
  std::fprintf(stderr, "fjord %s: error: %s\nusage: %s\n(fjord %s --help explains every option)\n",
               name.c_str(), message.c_str(), Usage(command).c_str(), name.c_str());
  return 2;
}

int Run(CLI::App& app, int argc, char** argv) {
  if (argc < 2) {
    std::fputs(app.help().c_str(), stderr);
    return 2;
  }
  const std::string first = argv[1];
  if (first == "help") {  // `fjord help SUB [SUB2]` is `fjord SUB [SUB2] --help`
    CLI::App* command = &app;
    for (int i = 2; i < argc; ++i) {
      CLI::App* sub = nullptr;
      for (CLI::App* candidate : command->get_subcommands({}))
        if (candidate->get_name() == argv[i]) sub = candidate;
      if (sub == nullptr) {
        std::fprintf(stderr, "fjord: error: no command '%s' in '%s'\n\n%s", argv[i], Path(*command).c_str(),
                     command->help().c_str());
        return 2;
      }
      command = sub;
    }
    std::fputs(command->help().c_str(), stdout);
    return 0;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForVersion& version) {
    std::printf("%s\n", version.what());
    return 0;
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);  // the chosen command's help
    return 0;
  } catch (const CLI::ParseError& e) {
    CLI::App* chosen = Chosen(app);
    if (chosen == &app) {
      std::fprintf(stderr, "fjord: error: unknown command '%s'\n\n%s", first.c_str(), app.help().c_str());
      return 2;
    }
    return UsageError(*chosen, Reword(*chosen, e));
  }
  CLI::App* chosen = Chosen(app);
  if (const std::vector<std::string> extra = chosen->remaining(); !extra.empty()) {
    const std::string& a = extra.front();
    return UsageError(*chosen,
                      (a.size() > 1 && a[0] == '-' ? "unknown option '" : "unexpected argument '") + a + "'");
  }
  auto* command = dynamic_cast<Command*>(chosen);
  if (command == nullptr || !command->run) return UsageError(*chosen, "give a command");
  return command->run();
}

}  // namespace fjord::cli

// The name of this machine, asked of the system in one place (messages, audit actors, rank
// identities, TensorBoard file names all use it).
#pragma once

#include <string>
#include <string_view>

namespace fjord {

// gethostname(2) as the system reports it (possibly fully qualified); "unknown-host" when the call
// fails or the name is empty. Thread-safe.
std::string ThisHostname();

// `host` up to its first '.': "node1.example.org" -> "node1".
std::string ShortHostName(std::string_view host);

}  // namespace fjord

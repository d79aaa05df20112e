// What `fjord --version` prints, fixed when the build was configured (launcher/CMakeLists.txt).
#pragma once

#include <string>

namespace fjord {

// "0.1.0+g1a2b3c4": from `git describe` (CMakeLists.txt); also the Debian package's version.
const char* FjordVersion();

// "fjord VERSION\ncommit ...\nbuild type ...\nCUDA ...\nNCCL ...\nMPI ...\nOpenBLAS ...": one "name value"
// per line, the libraries as the build found them.
std::string VersionText();

}  // namespace fjord

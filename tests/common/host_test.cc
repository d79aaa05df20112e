// The host name, against uname(2) (the kernel's nodename, the same name gethostname reads).
#include "common/host.h"

#include <gtest/gtest.h>
#include <sys/utsname.h>

namespace fjord {
namespace {

TEST(CommonHost, ThisHostnameIsTheKernelsNodename) {
  struct utsname u;
  ASSERT_EQ(::uname(&u), 0);
  ASSERT_NE(u.nodename[0], '\0');
  EXPECT_EQ(ThisHostname(), u.nodename);
}

TEST(CommonHost, ShortHostNameStopsAtTheFirstDot) {
  EXPECT_EQ(ShortHostName("node1.example.org"), "node1");
  EXPECT_EQ(ShortHostName("node1"), "node1");
  EXPECT_EQ(ShortHostName(""), "");
  EXPECT_EQ(ShortHostName(".x"), "");
}

}  // namespace
}  // namespace fjord

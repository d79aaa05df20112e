// The census datagrams (collectives/mpi/datagrams.h) between channels of one process on loopback:
// a request and its answer travel; a datagram without the job's key, addressed to another rank, or
// cut short is dropped, so nobody outside the job can answer a census for a dead rank. Whether the
// census survives an outage through them is tested on real hosts (tenancy NetnsFaultTest).
#include "collectives/mpi/datagrams.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace fjord {
namespace {

std::unique_ptr<DatagramChannel> OpenOnLoopback() {
  StatusOr<std::unique_ptr<DatagramChannel>> ch = DatagramChannel::Open("lo");
  if (!ch.ok()) return nullptr;
  return std::move(ch).value();
}

// Polls for up to a second.
bool ReceiveSoon(DatagramChannel& ch, DatagramChannel::Received* out) {
  for (int i = 0; i < 1000; ++i) {
    if (ch.Receive(out)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

// The header as datagrams.cc lays it out, for forging datagrams by hand.
struct Forged {
  char magic[4] = {'F', 'J', 'C', '1'};
  uint8_t key[16] = {};
  uint32_t kind = 1;
  int32_t from = 1;
  int32_t to = 0;
  uint32_t round = 1;
  uint32_t bytes = 4;
  char payload[4] = {'p', 'i', 'n', 'g'};
};

class DatagramsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = OpenOnLoopback();
    b_ = OpenOnLoopback();
    if (a_ == nullptr || b_ == nullptr) GTEST_SKIP() << "no UDP socket on loopback here";
    peers_ = {a_->local(), b_->local()};
    a_->SetPeers(0, peers_);
    b_->SetPeers(1, peers_);
  }
  // Sends `f` from a socket of its own to channel a's port on loopback.
  void SendRaw(const void* bytes, size_t n) {
    const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    to.sin_port = peers_[0].port;
    ASSERT_EQ(::sendto(fd, bytes, n, 0, reinterpret_cast<const sockaddr*>(&to), sizeof(to)),
              static_cast<ssize_t>(n));
    ::close(fd);
  }
  std::unique_ptr<DatagramChannel> a_, b_;
  std::vector<DatagramEndpoint> peers_;
};

TEST_F(DatagramsTest, ARequestAndItsAnswerTravelWithTheirRoundAndSender) {
  ASSERT_TRUE(a_->Reaches(1));
  ASSERT_FALSE(a_->Reaches(0)) << "a rank does not send to itself";
  ASSERT_FALSE(a_->Reaches(2));
  const char ask[] = "census #7";
  a_->Send(1, 1, 42, ask, sizeof(ask));
  DatagramChannel::Received got;
  ASSERT_TRUE(ReceiveSoon(*b_, &got));
  EXPECT_EQ(got.from, 0);
  EXPECT_EQ(got.kind, 1u);
  EXPECT_EQ(got.round, 42u);
  ASSERT_EQ(got.bytes, sizeof(ask));
  EXPECT_EQ(std::memcmp(got.payload.data(), ask, sizeof(ask)), 0);
  const char answer[] = "arrived";
  b_->Reply(got, 2, got.round, answer, sizeof(answer));
  DatagramChannel::Received back;
  ASSERT_TRUE(ReceiveSoon(*a_, &back));
  EXPECT_EQ(back.from, 1);
  EXPECT_EQ(back.kind, 2u);
  EXPECT_EQ(back.round, 42u);
  ASSERT_EQ(back.bytes, sizeof(answer));
  EXPECT_EQ(std::memcmp(back.payload.data(), answer, sizeof(answer)), 0);
  EXPECT_FALSE(a_->Receive(&back)) << "one answer, received once";
}

TEST_F(DatagramsTest, ForgedMisaddressedOrTruncatedDatagramsAreDropped) {
  // The key is rank 0's, as SetPeers made it the job's; a forger without it gets nowhere.
  Forged good;
  std::memcpy(good.key, peers_[0].key, sizeof(good.key));
  Forged wrong_key = good;
  wrong_key.key[5] ^= 1;
  Forged to_other = good;
  to_other.to = 1;
  Forged from_self = good;
  from_self.from = 0;
  Forged from_outside = good;
  from_outside.from = 2;
  Forged overlong = good;
  overlong.bytes = 5;  // says more than it carries
  Forged magic = good;
  magic.magic[3] = '2';
  for (const Forged* f : {&wrong_key, &to_other, &from_self, &from_outside, &overlong, &magic})
    SendRaw(f, sizeof(*f));
  SendRaw(&good, 10);            // shorter than a header
  SendRaw(&good, sizeof(good));  // the control: the same bytes with the key do arrive
  DatagramChannel::Received got;
  ASSERT_TRUE(ReceiveSoon(*a_, &got));
  EXPECT_EQ(got.from, 1);
  EXPECT_EQ(got.round, 1u);
  ASSERT_EQ(got.bytes, 4u);
  EXPECT_EQ(std::memcmp(got.payload.data(), "ping", 4), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(a_->Receive(&got)) << "a forged datagram was taken, from rank " << got.from;
}

TEST_F(DatagramsTest, NothingIsTakenBeforeThePeersAreKnown) {
  std::unique_ptr<DatagramChannel> c = OpenOnLoopback();
  ASSERT_NE(c, nullptr);
  std::vector<DatagramEndpoint> peers = {peers_[0], c->local()};
  b_->SetPeers(1, peers);  // b now sends to c as rank 0
  b_->Send(0, 1, 1, "x", 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  DatagramChannel::Received got;
  EXPECT_FALSE(c->Receive(&got)) << "c has no key yet";
  EXPECT_FALSE(c->Reaches(0));
}

TEST(DatagramAddressesTest, InterfacesAreSelectedByNameOrRangeAndLoopbackOnlyWhenAsked) {
  const uint32_t loopback = htonl(INADDR_LOOPBACK);
  auto has = [](const std::vector<uint32_t>& v, uint32_t a) {
    return std::find(v.begin(), v.end(), a) != v.end();
  };
  const std::vector<uint32_t> lo = SelectInterfaceAddresses("lo");
  if (lo.empty()) GTEST_SKIP() << "no IPv4 loopback interface here";
  EXPECT_TRUE(has(lo, loopback));
  EXPECT_TRUE(has(SelectInterfaceAddresses("127.0.0.0/8"), loopback));
  EXPECT_TRUE(has(SelectInterfaceAddresses("10.0.0.0/8, 127.0.0.1/32"), loopback));
  EXPECT_FALSE(has(SelectInterfaceAddresses("128.0.0.0/8"), loopback));
  EXPECT_FALSE(has(SelectInterfaceAddresses(""), loopback)) << "by default loopback is not advertised";
  EXPECT_TRUE(SelectInterfaceAddresses("no-such-interface0").empty());
  EXPECT_TRUE(SelectInterfaceAddresses("not-an-address/8").empty());
  EXPECT_TRUE(SelectInterfaceAddresses("127.0.0.0/40").empty());
}

}  // namespace
}  // namespace fjord

#include "collectives/mpi/datagrams.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/text.h"

namespace fjord {
namespace {

constexpr char kMagic[4] = {'F', 'J', 'C', '1'};

struct Header {
  char magic[4];
  uint8_t key[16];
  uint32_t kind;
  int32_t from;
  int32_t to;
  uint32_t round;
  uint32_t bytes;
};

// Whether `addr` (network byte order) lies in "A.B.C.D/N".
bool InCidr(uint32_t addr, const std::string& cidr) {
  const size_t slash = cidr.find('/');
  in_addr net{};
  if (inet_pton(AF_INET, cidr.substr(0, slash).c_str(), &net) != 1) return false;
  int bits = 32;
  if (slash != std::string::npos) {
    try {
      bits = std::stoi(cidr.substr(slash + 1));
    } catch (...) {
      return false;
    }
  }
  if (bits < 0 || bits > 32) return false;
  const uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
  return (ntohl(addr) & mask) == (ntohl(net.s_addr) & mask);
}

bool SameKey(const uint8_t* a, const uint8_t* b) {
  uint8_t diff = 0;
  for (int i = 0; i < 16; ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

std::vector<uint32_t> SelectInterfaceAddresses(const std::string& interfaces) {
  const std::vector<std::string> wanted = SplitList(interfaces);
  std::vector<uint32_t> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_UP) == 0) continue;
    const uint32_t addr = reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr;
    bool take = false;
    if (wanted.empty()) {
      take = (i->ifa_flags & IFF_LOOPBACK) == 0;
    } else {
      for (const std::string& w : wanted) {
        take = take || (w.find('/') != std::string::npos ? InCidr(addr, w) : w == i->ifa_name);
      }
    }
    if (take && out.size() < DatagramEndpoint::kMaxAddrs) out.push_back(addr);
  }
  freeifaddrs(list);
  return out;
}

StatusOr<std::unique_ptr<DatagramChannel>> DatagramChannel::Open(const std::string& interfaces) {
  std::unique_ptr<DatagramChannel> ch(new DatagramChannel());
  if (getrandom(ch->local_.key, sizeof(ch->local_.key), 0) != static_cast<ssize_t>(sizeof(ch->local_.key)))
    return Internal(std::string("getrandom: ") + std::strerror(errno));
  ch->fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (ch->fd_ < 0) return Internal(std::string("socket(AF_INET, SOCK_DGRAM): ") + std::strerror(errno));
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(any);
  if (::bind(ch->fd_, reinterpret_cast<const sockaddr*>(&any), sizeof(any)) != 0 ||
      ::getsockname(ch->fd_, reinterpret_cast<sockaddr*>(&any), &len) != 0)
    return Internal(std::string("bind (UDP, any port): ") + std::strerror(errno));
  std::vector<uint32_t> addrs = SelectInterfaceAddresses(interfaces);
  if (addrs.empty()) addrs.push_back(htonl(INADDR_LOOPBACK));
  for (uint32_t a : addrs) ch->local_.addrs[ch->local_.count++] = a;
  ch->local_.port = any.sin_port;
  return ch;
}

DatagramChannel::~DatagramChannel() {
  if (fd_ >= 0) ::close(fd_);
}

void DatagramChannel::SetPeers(int rank, const std::vector<DatagramEndpoint>& peers) {
  rank_ = rank;
  peers_ = peers;
  if (!peers_.empty()) std::memcpy(key_.data(), peers_[0].key, key_.size());
}

bool DatagramChannel::Reaches(int peer) const {
  return rank_ >= 0 && peer >= 0 && static_cast<size_t>(peer) < peers_.size() && peer != rank_ &&
         peers_[peer].count > 0 && peers_[peer].port != 0 && local_.count > 0;
}

void DatagramChannel::SendTo(const sockaddr_in& addr, int to, uint32_t kind, uint32_t round,
                             const void* payload, size_t bytes) {
  if (bytes > kMaxPayload) return;
  std::byte buf[sizeof(Header) + kMaxPayload];
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  std::memcpy(h.key, key_.data(), key_.size());
  h.kind = kind;
  h.from = rank_;
  h.to = to;
  h.round = round;
  h.bytes = static_cast<uint32_t>(bytes);
  std::memcpy(buf, &h, sizeof(h));
  std::memcpy(buf + sizeof(h), payload, bytes);
  (void)::sendto(fd_, buf, sizeof(h) + bytes, MSG_DONTWAIT | MSG_NOSIGNAL,
                 reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
}

void DatagramChannel::Send(int peer, uint32_t kind, uint32_t round, const void* payload, size_t bytes) {
  if (!Reaches(peer)) return;
  const DatagramEndpoint& p = peers_[static_cast<size_t>(peer)];
  for (uint32_t i = 0; i < p.count && i < DatagramEndpoint::kMaxAddrs; ++i) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = p.addrs[i];
    addr.sin_port = p.port;
    SendTo(addr, peer, kind, round, payload, bytes);
  }
}

void DatagramChannel::Reply(const Received& to, uint32_t kind, uint32_t round, const void* payload,
                            size_t bytes) {
  SendTo(to.sender, to.from, kind, round, payload, bytes);
}

bool DatagramChannel::Receive(Received* out) {
  if (fd_ < 0 || rank_ < 0) return false;
  std::byte buf[sizeof(Header) + kMaxPayload + 1];
  for (int tries = 0; tries < 256; ++tries) {
    socklen_t len = sizeof(out->sender);
    const ssize_t n =
        ::recvfrom(fd_, buf, sizeof(buf), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&out->sender), &len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;  // EAGAIN: nothing waiting (or an ICMP error on an earlier send: ignored)
    }
    if (static_cast<size_t>(n) < sizeof(Header)) continue;
    Header h;
    std::memcpy(&h, buf, sizeof(h));
    if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0 || !SameKey(h.key, key_.data()) || h.to != rank_ ||
        h.from < 0 || static_cast<size_t>(h.from) >= peers_.size() || h.from == rank_ ||
        h.bytes > kMaxPayload || static_cast<size_t>(n) != sizeof(Header) + h.bytes) {
      continue;  // not for this rank of this job
    }
    out->from = h.from;
    out->kind = h.kind;
    out->round = h.round;
    out->bytes = h.bytes;
    std::memcpy(out->payload.data(), buf + sizeof(h), h.bytes);
    return true;
  }
  return false;
}

}  // namespace fjord

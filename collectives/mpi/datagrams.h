// The census's own path between ranks: UDP datagrams, beside MPI's TCP streams.
//
// Why: after a network outage TCP resends a lost segment only on its retransmission backoff, which
// doubles from 0.2 s (resends 0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4 s ... after the loss, each gap at
// most 120 s). A census sent over MPI queues behind that segment in the same stream, so a rank that
// is alive and waiting looks dead until the resend: an outage shorter than the timeout then ends the
// job. A datagram has no backoff and no stream to queue in: once the link is back, a census answer
// comes in milliseconds, the census sees every rank arrived, and the collective waits for the resend.
//
// What travels: a fixed header (a magic word, the job's random key, the kind, sender and receiver
// ranks, a round number) and a small payload, as raw bytes (every rank runs the same build). A
// datagram whose magic, key or receiver does not match is dropped, so stray or forged datagrams, or
// ones reaching another job's socket that reused the port, do nothing. The key (16 bytes from
// getrandom) travels once, in the communicator's setup allgather over MPI.
//
// Addresses: each rank advertises the IPv4 addresses of the interfaces MPI's TCP transport uses
// (OMPI_MCA_btl_tcp_if_include: interface names or CIDR ranges, which `fjord launch` sets to the
// inventory's interface; without it every interface that is up except loopback), so the census
// crosses the same network as the data and a partition of the data network is not hidden by another
// network. A rank with no such address advertises 127.0.0.1, reachable from its own host only. A
// request goes to every advertised address of the peer; the answer goes back to where the request
// came from. Without a usable socket (socket(2) refused, no address) a rank advertises none, and the
// census to and from it travels over MPI alone.
#pragma once

#include <netinet/in.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace fjord {

// One rank's address card, exchanged as raw bytes by the setup allgather.
struct DatagramEndpoint {
  static constexpr int kMaxAddrs = 8;
  uint32_t addrs[kMaxAddrs] = {};  // IPv4, network byte order
  uint32_t count = 0;              // 0: this rank takes no datagrams
  uint16_t port = 0;               // network byte order
  uint8_t key[16] = {};            // this rank's random key; rank 0's becomes the job's
};

class DatagramChannel {
 public:
  static constexpr size_t kMaxPayload = 256;
  struct Received {
    int from = -1;
    uint32_t kind = 0;
    uint32_t round = 0;
    size_t bytes = 0;
    std::array<std::byte, kMaxPayload> payload{};
    sockaddr_in sender{};
  };

  // A non-blocking UDP socket on every IPv4 address, port chosen by the kernel. `interfaces`: as
  // OMPI_MCA_btl_tcp_if_include ("eth0,ib0", "10.1.0.0/16"); empty: every interface that is up except
  // loopback. An error when no socket can be made; the caller goes on without datagrams.
  static StatusOr<std::unique_ptr<DatagramChannel>> Open(const std::string& interfaces);
  ~DatagramChannel();
  DatagramChannel(const DatagramChannel&) = delete;
  DatagramChannel& operator=(const DatagramChannel&) = delete;

  const DatagramEndpoint& local() const { return local_; }
  // Every rank's card (this rank's included); rank 0's key becomes the job's key.
  void SetPeers(int rank, const std::vector<DatagramEndpoint>& peers);
  bool Reaches(int peer) const;
  // To every advertised address of `peer` (best effort: a full socket buffer drops it, as UDP may).
  void Send(int peer, uint32_t kind, uint32_t round, const void* payload, size_t bytes);
  // Back to the address `to` came from.
  void Reply(const Received& to, uint32_t kind, uint32_t round, const void* payload, size_t bytes);
  // The next datagram of this job addressed to this rank; false when none is waiting.
  bool Receive(Received* out);

 private:
  DatagramChannel() = default;
  void SendTo(const sockaddr_in& addr, int to, uint32_t kind, uint32_t round, const void* payload,
              size_t bytes);

  int fd_ = -1;
  int rank_ = -1;
  DatagramEndpoint local_;
  std::array<uint8_t, 16> key_{};
  std::vector<DatagramEndpoint> peers_;
};

// The IPv4 addresses (network byte order) of the interfaces that `interfaces` selects, as Open()
// advertises them; exposed for tests.
std::vector<uint32_t> SelectInterfaceAddresses(const std::string& interfaces);

}  // namespace fjord

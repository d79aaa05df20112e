// Status and StatusOr: how library code reports an error a user can act on.
//
// Library code returns Status / StatusOr<T> and never throws across module boundaries. A failure
// carries one message that says what was wrong, where (file:line, field, rank, host) and what to
// do. FJORD_RETURN_IF_ERROR appends the caller's context as the error travels up, so a failure
// reads as a short trace from the outermost operation to the root cause.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace fjord {

enum class StatusCode { kOk = 0, kInvalidArgument, kNotFound, kFailedPrecondition, kDataLoss, kInternal };

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Returns a copy whose message is prefixed with `context` ("context: message").
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }
inline Status InvalidArgument(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
inline Status NotFound(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }
inline Status FailedPrecondition(std::string m) {
  return Status(StatusCode::kFailedPrecondition, std::move(m));
}
inline Status DataLoss(std::string m) { return Status(StatusCode::kDataLoss, std::move(m)); }
inline Status Internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }

// Holds either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design
  StatusOr(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace fjord

#define FJORD_CONCAT_INNER(a, b) a##b
#define FJORD_CONCAT(a, b) FJORD_CONCAT_INNER(a, b)

// Returns early with `expr`'s status when it is not OK.
#define FJORD_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::fjord::Status fjord_status_ = (expr);        \
    if (!fjord_status_.ok()) return fjord_status_; \
  } while (0)

// Evaluates a StatusOr<T> expression; on error returns its status, else moves the value into `lhs`.
#define FJORD_ASSIGN_OR_RETURN(lhs, expr)                    \
  auto FJORD_CONCAT(fjord_statusor_, __LINE__) = (expr);     \
  if (!FJORD_CONCAT(fjord_statusor_, __LINE__).ok())         \
    return FJORD_CONCAT(fjord_statusor_, __LINE__).status(); \
  lhs = std::move(FJORD_CONCAT(fjord_statusor_, __LINE__)).value()

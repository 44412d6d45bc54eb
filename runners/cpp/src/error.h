// The one exception type of the library: a status for the C API and a message for the user.
#pragma once

#include <stdexcept>
#include <string>

#include "seqedge.h"

namespace seqedge {

class Error : public std::runtime_error {
 public:
  Error(seqedge_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  seqedge_status status() const { return status_; }

 private:
  seqedge_status status_;
};

}  // namespace seqedge

// libFuzzer entry point for the sidecar parser: any bytes must give a code, never a crash or leak.
#include <cstddef>
#include <cstdint>

#include "cc/tinyq/sidecar.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tinyq_sidecar* sc = nullptr;
  tinyq_status status;
  if (tinyq_sidecar_parse(reinterpret_cast<const char*>(data), size, &sc, &status) == TINYQ_OK) {
    tinyq_sidecar_free(sc);
  }
  return 0;
}

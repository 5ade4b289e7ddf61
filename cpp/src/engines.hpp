// The Engine implementations compiled into this build (see CMakeLists.txt: ZSCIR_WITH_ONNXRUNTIME).
#pragma once
#include "zscir/zscir.hpp"

namespace zscir {
std::unique_ptr<Engine> open_openvino(const std::string& path, const GraphSpec& spec, const EngineOptions& options);
#ifdef ZSCIR_WITH_ONNXRUNTIME
std::unique_ptr<Engine> open_onnxruntime(const std::string& path, const GraphSpec& spec, const EngineOptions& options);
#endif
}  // namespace zscir
